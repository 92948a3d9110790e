"""An inference engine's server process killed in the middle of a run (train.py --debug-rollout-only, real Ray,
router and CPU engines). With --use-fault-tolerance the rollout manager's health check (/health_generate) finds it,
takes it off the router, and a new engine starts in its slot and serves the next rollouts; without it the run ends
with the engine's error instead of hanging, and leaves no process behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest
import requests
import torch

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "tests" / "backends" / "sglang_utils"))
from engine_helpers import build_tiny_qwen3  # noqa: E402
from test_train_drivers import RAY_TAG, is_alive  # noqa: E402

pytestmark = pytest.mark.slow

PROMPTS = ["Count to five:", "Name a colour:", "Say hello:", "Add 2 and 3:", "Spell dog:", "Pick a number:"]
HTTP = requests.Session()
HTTP.trust_env = False


def server_kind(process: psutil.Process) -> str | None:
    """"engine" or "router" for the servers a run starts (the router renames itself sglang::router)."""
    try:
        cmdline = " ".join(process.cmdline())
        if process.name() == "sglang::router" or "sglang_router" in cmdline:
            return "router"
        return "engine" if "slime.backends.sglang_utils.cpu_engine" in cmdline else None
    except psutil.Error:
        return None


class Run:
    """train.py as a child process whose output is collected line by line while the test acts on it, and whose
    router and engine processes are recorded as they appear (to check that none outlives the run)."""

    def __init__(self, flags: list[str], cwd, tag: str, env_extra: dict[str, str] | None = None):
        env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "tests" / "ray")]), RAY_TAG: tag,
               **(env_extra or {})}
        self.process = subprocess.Popen([sys.executable, str(REPO_ROOT / "train.py"), *flags], cwd=cwd, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.servers: dict[int, tuple[str, psutil.Process]] = {}  # pid -> (kind, process)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        threading.Thread(target=self._record_servers, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    def _record_servers(self) -> None:
        while self.process.poll() is None:
            try:
                for child in psutil.Process(self.process.pid).children(recursive=True):
                    if child.pid not in self.servers and (kind := server_kind(child)):
                        self.servers[child.pid] = (kind, child)
            except psutil.Error:
                pass
            time.sleep(0.3)

    def server_kinds(self) -> list[str]:
        return sorted(kind for kind, _ in self.servers.values())

    def leftover_servers(self, grace: float = 30) -> list[str]:
        """Command lines of the recorded routers and engines still running `grace` seconds after the run."""
        deadline = time.monotonic() + grace
        while True:
            alive = [p for _, p in self.servers.values() if is_alive(p)]
            if not alive or time.monotonic() > deadline:
                return [" ".join(p.cmdline()) for p in alive if is_alive(p)]
            time.sleep(0.5)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert self.process.poll() is None, f"the run ended before {text!r}:\n{self.output[-4000:]}"
            assert time.monotonic() < deadline, f"no {text!r} after {timeout} s:\n{self.output[-4000:]}"
            time.sleep(0.1)

    def engines(self) -> dict[int, int]:
        """{pid: port} of the CPU engine servers this run has started and that are alive."""
        found = {}
        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.Error:
            return found
        for child in children:
            try:
                cmdline = child.cmdline()
            except psutil.Error:
                continue
            if "slime.backends.sglang_utils.cpu_engine" in cmdline and child.status() != psutil.STATUS_ZOMBIE:
                found[child.pid] = int(cmdline[cmdline.index("--port") + 1])
        return found

    def finish(self, timeout: float) -> int:
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            pytest.fail(f"the run did not end within {timeout} s:\n{self.output[-4000:]}")
        self.reader.join(timeout=10)
        return code


def _flags(tmp_path, num_rollout: int, *extra: str) -> list[str]:
    model = build_tiny_qwen3(str(tmp_path / "model"), seed=0)
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(f'{{"prompt": "{p}"}}\n' for p in PROMPTS))
    return ["--debug-rollout-only", "--actor-num-gpus-per-node", "1", "--rollout-num-gpus", "2",
            "--hf-checkpoint", model, "--prompt-data", str(data), "--input-key", "prompt",
            "--num-rollout", str(num_rollout), "--rollout-batch-size", "2", "--n-samples-per-prompt", "2",
            "--global-batch-size", "4", "--rollout-max-response-len", "6",
            "--custom-rm-path", "rl_plugins.last_token_parity",
            "--save-debug-rollout-data", str(tmp_path / "rollouts" / "{rollout_id}.pt"), *extra]


def test_fault_tolerance_restarts_a_killed_engine_which_then_serves(tmp_path):
    # 8 rollouts: the replacement must be seen serving by a watcher polling from this busy machine.
    run = Run(_flags(tmp_path, 8, "--use-fault-tolerance", "--rollout-health-check-interval", "0.5",
                     "--rollout-health-check-timeout", "10"), tmp_path, "fault-tolerance")
    try:
        run.wait_for("rollout 1/8", timeout=180)
        original = run.engines()
        assert len(original) == 2, original
        victim, victim_port = next(iter(original.items()))
        os.kill(victim, signal.SIGKILL)

        # Watch for the replacement while the run goes on, and see it finish requests (it is gone after the run).
        served: dict[int, int] = {}
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                for pid, port in run.engines().items():
                    if pid in original:
                        continue
                    try:
                        state = HTTP.get(f"http://127.0.0.1:{port}/get_server_info", timeout=2).json()
                        served[pid] = max(served.get(pid, 0), state["internal_states"][0]["requests_finished"])
                    except (requests.RequestException, ValueError, KeyError):
                        pass
                time.sleep(0.2)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        code = run.finish(timeout=240)
        stop.set()
        watcher.join(timeout=10)
    finally:
        if run.process.poll() is None:
            run.process.kill()
    output = run.output
    assert code == 0, output[-4000:]
    failed = re.search(r"inference engine (\d) at http://127\.0\.0\.1:(\d+) failed its health check", output)
    assert failed and int(failed.group(2)) == victim_port, output[-4000:]
    assert re.search(rf"inference engine {failed.group(1)} restarted at http://127\.0\.0\.1:\d+ and registered "
                     "with the router", output), output[-4000:]
    assert served and max(served.values()) > 0, served  # the new engine served the rollouts after the restart
    for rollout_id in range(5):  # no rollout lost a group to the dead engine
        samples = torch.load(tmp_path / "rollouts" / f"{rollout_id}.pt", weights_only=False)["samples"]
        assert len(samples) == 4 and all(1 <= s["response_length"] <= 6 for s in samples)
    assert run.server_kinds() == ["engine"] * 3 + ["router"]
    assert not run.leftover_servers()


def test_without_fault_tolerance_a_dead_engine_ends_the_run_with_its_error(tmp_path):
    run = Run(_flags(tmp_path, 100), tmp_path, "no-fault-tolerance")
    try:
        run.wait_for("rollout 1/100", timeout=180)
        engines = run.engines()
        assert len(engines) == 2, engines
        victim, victim_port = next(iter(engines.items()))
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        code = run.finish(timeout=120)
    finally:
        if run.process.poll() is None:
            run.process.kill()
    assert code != 0 and time.monotonic() - killed_at < 90, run.output[-4000:]
    assert re.search(rf"inference engine \d stopped: the server at http://127\.0\.0\.1:{victim_port} exited with "
                     r"code -9: .*\(with --use-fault-tolerance a dead engine is restarted instead\)", run.output), \
        run.output[-4000:]
    # The router and the other engine go with the run.
    assert set(run.server_kinds()) == {"router", "engine"}
    assert not run.leftover_servers()

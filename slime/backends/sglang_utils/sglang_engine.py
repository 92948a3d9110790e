"""One inference engine: the server process it owns, its registration with the router, and the calls slime makes.

`SGLangEngine` is a plain class; the rollout manager makes it a Ray actor, one per engine, placed on the rollout
share of the placement group. On GPUs the server is real SGLang (`python -m sglang.launch_server`, with slime's
server arguments and every `--sglang-*` flag passed through); without GPUs it is the CPU engine
(`slime.backends.sglang_utils.cpu_engine`), which serves the same HTTP API. Everything after start-up is HTTP, so
the two are driven by the same code.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import time
from argparse import Namespace
from typing import Any

import requests

from slime.backends.sglang_utils.cpu_engine.launcher import launch_cpu_engine, start_server
from slime.utils.logging_utils import configure_worker_process
from slime.utils.misc import free_port

logger = logging.getLogger(__name__)
# Engines and the router are on this node or the cluster's network: never reach them through an HTTP proxy that
# the environment may configure for the outside world. Shared with the trainer's weight sync.
HTTP = requests.Session()
HTTP.trust_env = False

START_TIMEOUT_S = 600.0
FLUSH_ATTEMPTS = 60  # slime's flush loop: one try a second until the engine is idle
# Flags slime sets itself; a --sglang-<same> pass-through would contradict them.
_OWN_SERVER_FLAGS = {"model_path", "host", "port", "tp_size", "random_seed", "nnodes", "node_rank"}


def flush_cache(url: str, attempts: int = FLUSH_ATTEMPTS) -> None:
    """GET /flush_cache until it succeeds, which it does only once the engine is idle (as slime loops before a
    weight update or a memory release); raises TimeoutError naming the URL after `attempts` tries."""
    for attempt in range(attempts):
        if HTTP.get(f"{url}/flush_cache", timeout=30).status_code == 200:
            return
        if attempt < attempts - 1:
            time.sleep(1.0)
    raise TimeoutError(f"{url}/flush_cache did not succeed in {attempts} tries: the engine is still busy")


def _declared_flags(args: Namespace) -> list[str]:
    """slime's declared --sglang-* server settings, which the CPU engine also honours (KV budget, context limit,
    batch-invariant inference)."""
    flags = []
    if args.sglang_enable_deterministic_inference:
        flags.append("--enable-deterministic-inference")
    if args.sglang_mem_fraction_static is not None:
        flags += ["--mem-fraction-static", str(args.sglang_mem_fraction_static)]
    if args.sglang_context_length is not None:
        flags += ["--context-length", str(args.sglang_context_length)]
    return flags


def _passthrough_flags(args: Namespace) -> list[str]:
    """`--sglang-<name> value` flags as `--<name> value` for the real SGLang server."""
    flags = []
    for dest in getattr(args, "sglang_passthrough", []):
        name = dest[len("sglang_"):]
        if name in _OWN_SERVER_FLAGS:
            continue
        value = getattr(args, dest)
        flag = "--" + name.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif isinstance(value, list):
            flags += [flag, *map(str, value)]
        elif value is not False and value is not None:
            flags += [flag, str(value)]
    return flags


class SGLangEngine:
    def __init__(self, args: Namespace, rank: int, uses_gpus: bool):
        # Set up here, not by a runtime environment's hook: Ray would start a fresh process for each engine.
        configure_worker_process()
        self.args, self.rank, self.uses_gpus = args, rank, uses_gpus
        self.host = "127.0.0.1" if not uses_gpus else _node_ip()
        self.port = free_port(self.host)
        self.process: Any = None
        self._offload_noted = False
        self.router_url = (f"http://{args.sglang_router_ip}:{args.sglang_router_port}"
                           if args.sglang_router_ip else None)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def init(self) -> str:
        """Start the server, wait until it serves, register it with the router. Returns its URL."""
        if not self.args.hf_checkpoint:
            raise ValueError("the inference engines need --hf-checkpoint (the model they serve)")
        seed = self.args.seed + self.rank
        if self.uses_gpus:
            self._launch_sglang(seed)
        else:
            ignored = _passthrough_flags(self.args)
            if ignored and self.rank == 0:
                logger.warning("the CPU engine ignores SGLang's server settings %s (they apply to SGLang on GPUs)",
                               " ".join(ignored))
            self.process = launch_cpu_engine(
                self.args.hf_checkpoint, self.port, host=self.host, timeout=START_TIMEOUT_S,
                extra_args=["--random-seed", str(seed), "--skip-server-warmup",
                            "--max-running-requests", str(self.args.sglang_server_concurrency),
                            *_declared_flags(self.args)],
                # One intra-op thread per engine unless asked otherwise: engines and trainers share this machine's
                # cores, and oversubscribed OpenMP threads make small models' steps many times slower.
                env={"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
        if self.router_url:
            HTTP.post(f"{self.router_url}/workers", json={"url": self.url}, timeout=30).raise_for_status()
        logger.info("engine %d serving %s at %s", self.rank, self.args.hf_checkpoint, self.url)
        return self.url

    def _launch_sglang(self, seed: int) -> None:
        tp = self.args.rollout_num_gpus_per_engine
        cmd = [sys.executable, "-m", "sglang.launch_server", "--model-path", self.args.hf_checkpoint,
               "--host", self.host, "--port", str(self.port), "--tp-size", str(tp), "--random-seed", str(seed),
               "--trust-remote-code", "--skip-server-warmup", *_declared_flags(self.args),
               *_passthrough_flags(self.args)]
        if self.args.offload_rollout:  # what lets /release_memory_occupation give the GPU memory back
            cmd.append("--enable-memory-saver")
        handle, log_path = tempfile.mkstemp(prefix=f"sglang_engine_{self.rank}_", suffix=".log")
        os.close(handle)
        self.process = start_server(cmd, self.url, f"SGLang server for {self.args.hf_checkpoint} at {self.url}",
                                    log_path, START_TIMEOUT_S)

    def offload(self) -> None:
        """--offload-rollout: give the engine's GPU memory (weights, KV cache, CUDA graphs) back while the trainers
        use the devices, as slime's rollout manager does after generating. On CPU there is nothing to give back."""
        if not self.uses_gpus:
            if self.rank == 0 and not self._offload_noted:
                logger.info("--offload-rollout: CPU engines keep their memory (a no-op without GPUs)")
                self._offload_noted = True
            return
        flush_cache(self.url)
        self._control("/release_memory_occupation", {})

    def onload(self, tags: list[str] | None = None) -> None:
        """Take the memory back: slime resumes ["weights"] before a weight update, then ["kv_cache", "cuda_graph"]
        after it (None: all). Resumed weights hold no values until the update overwrites them."""
        if self.uses_gpus:
            self._control("/resume_memory_occupation", {"tags": tags})

    def _control(self, path: str, body: dict[str, Any]) -> None:
        reply = HTTP.post(f"{self.url}{path}", json=body, timeout=START_TIMEOUT_S)
        if reply.status_code != 200:
            raise RuntimeError(f"{self.url}{path} failed with HTTP {reply.status_code}: {reply.text[:500]}")

    def shutdown(self) -> None:
        if self.router_url:
            unregister_worker(self.router_url, self.url)
        if self.process is not None:
            if hasattr(self.process, "stop"):
                self.process.stop()
            elif self.process.poll() is None:
                self.process.terminate()
                self.process.wait(timeout=30)
            self.process = None

    def exit_status(self) -> str | None:
        """None while the server process runs (or before it starts / after shutdown); once it has exited, how:
        the exit code and, for the CPU engine, its last log line. The rollout manager ends a run without
        --use-fault-tolerance with this."""
        process = getattr(self.process, "process", self.process)  # the CPU engine's handle wraps its Popen
        if process is None or process.poll() is None:
            return None
        log_path = getattr(self.process, "log_path", None)
        if log_path is None:
            return f"the server at {self.url} exited with code {process.returncode}"
        from slime.backends.sglang_utils.cpu_engine.launcher import _last_line

        return (f"the server at {self.url} exited with code {process.returncode}: {_last_line(log_path)} "
                f"(log: {log_path})")


def unregister_worker(router_url: str, url: str) -> None:
    """Take `url` off the router (sglang-router removes a worker by its id, not its URL); best effort, logged."""
    try:
        workers = HTTP.get(f"{router_url}/workers", timeout=10).json().get("workers", [])
        for worker in workers:
            if worker.get("url") == url:
                HTTP.delete(f"{router_url}/workers/{worker['id']}", timeout=10).raise_for_status()
    except (requests.RequestException, ValueError) as exc:
        logger.warning("could not remove %s from the router: %s", url, exc)


def _node_ip() -> str:
    import ray

    return ray.util.get_node_ip_address()


class Router:
    """The real `sglang-router` (pip), started as a subprocess on a free port unless --sglang-router-ip is given."""

    def __init__(self, args: Namespace):
        self.process: subprocess.Popen | None = None
        if args.sglang_router_ip:
            return
        args.sglang_router_ip = "127.0.0.1"
        args.sglang_router_port = free_port()
        cmd = [sys.executable, "-m", "sglang_router.launch_router", "--host", args.sglang_router_ip,
               "--port", str(args.sglang_router_port), "--policy", args.router_policy or "round_robin",
               # Its metrics exporter's default port would collide with any other router on the machine.
               "--prometheus-port", str(free_port()),
               "--log-level", args.router_log_level, "--disable-circuit-breaker", "--disable-health-check",
               "--request-timeout-secs", str(args.sglang_router_request_timeout_secs),
               "--balance-abs-threshold", str(args.router_balance_abs_threshold),
               "--balance-rel-threshold", str(args.router_balance_rel_threshold)]
        handle, log_path = tempfile.mkstemp(prefix="sglang_router_", suffix=".log")
        os.close(handle)
        url = f"http://{args.sglang_router_ip}:{args.sglang_router_port}"
        self.process = start_server(cmd, url, f"sglang-router at {url}", log_path, timeout=60)
        logger.info("sglang-router at %s", url)

    def wait_for_workers(self, args: Namespace, urls: list[str], timeout: float = 60.0) -> None:
        """Worker registration is queued by the router: wait until it lists every engine as healthy."""
        deadline = time.monotonic() + timeout
        listed: set[str] = set()
        while time.monotonic() < deadline:
            reply = HTTP.get(f"http://{args.sglang_router_ip}:{args.sglang_router_port}/workers", timeout=5)
            listed = {w["url"] for w in reply.json().get("workers", []) if w.get("is_healthy", True)}
            if set(urls) <= listed:
                return
            time.sleep(0.2)
        raise RuntimeError(f"the router lists {sorted(listed)} after {timeout:.0f} s; expected {sorted(urls)}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process = None

"""train.py and train_async.py end to end on CPU with real Ray: learning, checkpoints, validation loss, resume after a
crash, failures that end the run with their traceback, and a custom rollout function loaded by path."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import uuid

import psutil
import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO_ROOT

pytestmark = pytest.mark.slow
HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def quick_task(tmp_path_factory):
    """A tiny model with the real SmolLM2 tokenizer, and the quick start's word-reversal task as parquet."""
    root = tmp_path_factory.mktemp("task")
    examples = REPO_ROOT / "examples" / "quickstart"
    for command in (
        [examples / "make_task.py", "--output-dir", root / "data", "--train", "256", "--validation", "8"],
        [examples / "make_model.py", "--output-dir", root / "model", "--hidden-size", "32", "--layers", "1"],
        [REPO_ROOT / "tools" / "prepare_openhermes.py", "--input", root / "data" / "train.json",
         "--output", root / "data" / "train.parquet"],
        [REPO_ROOT / "tools" / "prepare_openhermes.py", "--input", root / "data" / "validation.json",
         "--output", root / "data" / "validation.parquet"],
    ):
        subprocess.run([sys.executable, *map(str, command)], check=True, capture_output=True)
    return root


def sft_flags(task, out, actors=1, rollouts=8, *extra):
    return [
        "--actor-num-gpus-per-node", str(actors), "--hf-checkpoint", str(task / "model"),
        # As the seed script: initial weights from --ref-load, and --load = --save so the same command resumes.
        "--ref-load", str(task / "model"), "--load", str(out / "ckpt"),
        "--rollout-function-path", "slime.rollout.sft_rollout.generate_rollout",
        "--prompt-data", str(task / "data" / "train.parquet"), "--input-key", "messages", "--rollout-shuffle",
        "--num-rollout", str(rollouts), "--rollout-batch-size", "16", "--global-batch-size", "16",
        "--loss-type", "sft_loss", "--calculate-per-token-loss", "--disable-compute-advantages-and-returns",
        "--debug-train-only", "--use-dynamic-batch-size", "--max-tokens-per-gpu", "1024", "--lr", "2e-2",
        "--lr-decay-style", "constant", "--attention-dropout", "0", "--hidden-dropout", "0",
        "--data-pad-size-multiplier", "8", "--save", str(out / "ckpt"), "--save-hf", str(out / "hf_{rollout_id}"),
        *extra,
    ]


def run_driver(script, flags, cwd, env_extra=None, timeout=600):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), HERE]), **(env_extra or {})}
    started = time.monotonic()
    result = subprocess.run([sys.executable, str(REPO_ROOT / script), *flags], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=timeout)
    return result.returncode, result.stdout + result.stderr, time.monotonic() - started


# Set in the environment of a process that starts Ray: Ray's daemons inherit it, which tells this test's Ray apart
# from any other Ray on the machine (other tests, other users).
RAY_TAG = "SLIME_TEST_RAY_TAG"


def own_ray_processes(tag: str, roots: tuple[int, ...] = ()) -> set[psutil.Process]:
    """The live processes started under `tag`: those whose environment carries it, the `roots`, and all their
    descendants (Ray workers rename themselves, which overwrites their environment, but they are raylet's
    children)."""
    found = set()
    for process in psutil.process_iter():
        try:
            if process.environ().get(RAY_TAG) == tag:
                found.add(process)
        except psutil.Error:  # other users' processes, or gone meanwhile
            continue
    for pid in roots:
        with contextlib.suppress(psutil.Error):
            found.add(psutil.Process(pid))
    for process in list(found):
        with contextlib.suppress(psutil.Error):
            found.update(process.children(recursive=True))
    return {p for p in found if is_alive(p)}


def is_alive(process: psutil.Process) -> bool:
    """Running, and the same process (psutil compares start times, so a reused pid does not count)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def command_line(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return "(gone)"


def stop_processes(processes: set[psutil.Process], grace: float = 10) -> None:
    """SIGTERM, then SIGKILL for what is still running after `grace` seconds (zombies count as stopped: an
    orphan's exit status may never be collected in a container without a reaping init)."""
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(is_alive(p) for p in processes):
        time.sleep(0.2)
    for process in processes:
        if is_alive(process):
            with contextlib.suppress(psutil.Error):
                process.kill()


def summary(output):
    match = re.search(r"done: first_loss ([\d.]+), last_loss ([\d.]+)", output)
    assert match, output[-3000:]
    return float(match[1]), float(match[2])


def test_train_py_one_actor_learns_and_checkpoints(quick_task, tmp_path):
    code, output, _ = run_driver("train.py", sft_flags(quick_task, tmp_path, 1, 8, "--save-interval", "4"), tmp_path)
    assert code == 0, output[-4000:]
    first, last = summary(output)
    # A random initialisation predicts uniformly: ln(49,152) = 10.80 for SmolLM2's vocabulary. Measured: 10.78
    # -> 3.84 in 8 rollouts.
    assert abs(first - math.log(49152)) < 0.3 and last < 0.5 * first
    assert (tmp_path / "ckpt" / "latest_checkpointed_iteration.txt").read_text() == "7"
    assert (tmp_path / "ckpt" / "iter_0000003").is_dir() and (tmp_path / "ckpt" / "iter_0000007").is_dir()
    assert (tmp_path / "ckpt" / "rollout" / "global_dataset_state_dict_7.pt").exists()
    assert (tmp_path / "hf_7" / "model.safetensors").exists() and (tmp_path / "hf_7" / "tokenizer.json").exists()
    assert re.search(r"rollout 8/8 \(epoch 0\) \| loss [\d.]+ \| lr [\de.-]+ \| grad norm [\d.]+ \| \d+ tokens/s \| ETA",
                     output)


def test_train_async_two_actors_with_validation_loss(quick_task, tmp_path):
    flags = sft_flags(quick_task, tmp_path, 2, 8, "--eval-prompt-data", "val",
                      str(quick_task / "data" / "validation.parquet"), "--eval-interval", "4")
    code, output, _ = run_driver("train_async.py", flags, tmp_path)
    assert code == 0, output[-4000:]
    first, last = summary(output)
    assert last < 0.5 * first  # measured: 10.78 -> 3.84, as with one trainer
    evals = [float(v) for v in re.findall(r"eval after rollout \d+: eval/val/loss ([\d.]+)", output)]
    assert len(evals) == 2 and evals[1] < 0.6 * evals[0], evals  # measured: 7.08 -> 3.22


@pytest.mark.parametrize("driver, overlaps", [("train_async.py", True), ("train.py", False)])
def test_only_train_async_generates_the_next_rollout_during_training(quick_task, tmp_path, driver, overlaps):
    """Timestamps from the rollout function and from the trainer's loss (tests/ray/timing_plugins.py): with
    train_async.py rollout N+1 starts before training N has left its loss (so before its backward and optimizer
    step); with train.py, the control, only after."""
    log = tmp_path / "timing.jsonl"
    rollouts = 4
    flags = sft_flags(quick_task, tmp_path, 1, rollouts, "--rollout-function-path", "timing_plugins.timed_rollout",
                      "--loss-type", "custom_loss", "--custom-loss-function-path", "timing_plugins.timed_loss")
    code, output, _ = run_driver(driver, flags, tmp_path, {"TIMING_LOG": str(log)})
    assert code == 0, output[-4000:]
    events = [json.loads(line) for line in log.read_text().splitlines()]
    starts = {e["rollout_id"]: e["time"] for e in events if e["event"] == "rollout_start"}
    ends = {e["rollout_id"]: e["time"] for e in events if e["event"] == "rollout_end"}
    enters = [e["time"] for e in events if e["event"] == "loss_enter"]
    exits = [e["time"] for e in events if e["event"] == "loss_exit"]
    # 16 short conversations fit one micro-batch of --max-tokens-per-gpu 1024, and there is no evaluation: the
    # trainer's k-th loss call is rollout k's training.
    assert sorted(starts) == sorted(ends) == list(range(rollouts)) and len(enters) == len(exits) == rollouts
    for n in range(rollouts):
        assert ends[n] < enters[n]  # a rollout is trained on only once it is complete
    for n in range(rollouts - 1):
        assert (starts[n + 1] < exits[n]) == overlaps, (n, starts[n + 1] - exits[n])


def test_resume_after_a_crash_equals_the_uninterrupted_run(quick_task, tmp_path):
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    straight.mkdir()
    interrupted.mkdir()
    path = "failing_plugins.rollout_failing_at"

    def flags(out):
        return sft_flags(quick_task, out, 1, 6, "--save-interval", "2", "--rollout-function-path", path)

    code, output, _ = run_driver("train_async.py", flags(straight), straight)
    assert code == 0, output[-4000:]
    code, output, _ = run_driver("train_async.py", flags(interrupted), interrupted, {"FAIL_AT_ROLLOUT": "4"})
    assert code != 0 and "simulated crash at rollout 4" in output
    assert (interrupted / "ckpt" / "latest_checkpointed_iteration.txt").read_text() == "3"
    code, output, _ = run_driver("train_async.py", flags(interrupted), interrupted)  # the same command again
    assert code == 0, output[-4000:]
    assert "rollout 5/6" in output and "rollout 4/6" not in output  # continued at rollout 4 (0-based)
    expected = load_file(straight / "hf_5" / "model.safetensors")
    resumed = load_file(interrupted / "hf_5" / "model.safetensors")
    for name, tensor in expected.items():
        assert torch.equal(resumed[name], tensor), name


def test_an_exception_in_one_trainer_ends_the_run_with_its_traceback(quick_task, tmp_path):
    flags = sft_flags(quick_task, tmp_path, 2, 8, "--loss-type", "custom_loss", "--custom-loss-function-path",
                      "failing_plugins.loss_failing_on_rank_1")
    code, output, seconds = run_driver("train.py", flags, tmp_path, timeout=300)
    assert code != 0
    assert "boom from trainer rank 1" in output and "loss_failing_on_rank_1" in output  # the remote traceback
    assert seconds < 120


def test_a_queued_step_that_fails_is_reported_with_the_next_rollouts_failure(quick_task, tmp_path):
    """train_async.py hands the trainers step N+1 before reading step N's outcome: when training rollout 2 fails
    (the loss's third call) and generating rollout 3 fails too, the run ends with both errors, not the rollout's
    alone."""
    flags = sft_flags(quick_task, tmp_path, 1, 6, "--rollout-function-path", "failing_plugins.rollout_failing_at",
                      "--loss-type", "custom_loss", "--custom-loss-function-path", "failing_plugins.loss_failing_at_call")
    code, output, _ = run_driver("train_async.py", flags, tmp_path, {"FAIL_AT_ROLLOUT": "3", "FAIL_LOSS_AT_CALL": "3"})
    assert code == 1, output[-4000:]
    assert "simulated crash at rollout 3" in output and "boom in loss call 3" in output, output[-4000:]
    assert output.index("simulated crash at rollout 3") < output.index("boom in loss call 3")  # the step's last


def test_custom_rollout_function_by_path(quick_task, tmp_path):
    flags = ["--actor-num-gpus-per-node", "1", "--hf-checkpoint", str(quick_task / "model"),
             "--load", str(quick_task / "model"),
             "--rollout-function-path", "examples.custom_rollout.arithmetic_rollout.generate_rollout",
             "--disable-rollout-global-dataset", "--num-rollout", "6", "--rollout-batch-size", "16",
             "--global-batch-size", "16", "--loss-type", "sft_loss", "--calculate-per-token-loss",
             "--disable-compute-advantages-and-returns", "--debug-train-only", "--lr", "5e-3",
             "--lr-decay-style", "constant", "--data-pad-size-multiplier", "8"]
    code, output, _ = run_driver("train.py", flags, REPO_ROOT)
    assert code == 0, output[-4000:]
    first, last = summary(output)
    assert first - last > 0.8, (first, last)  # measured: 10.79 -> 9.28 at this small learning rate


def test_ctrl_c_stops_the_run_and_its_ray(quick_task, tmp_path):
    tag = uuid.uuid4().hex
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO_ROOT),
           RAY_TAG: tag}
    process = subprocess.Popen([sys.executable, str(REPO_ROOT / "train_async.py"),
                                *sft_flags(quick_task, tmp_path, 1, 200)], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ours = set()
    try:
        lines = []
        for line in process.stdout:
            lines.append(line)
            if "rollout 2/200" in line:
                break
        # While it trains: this run's Ray (the driver's descendants and whatever carries its tag), and only it.
        ours = own_ray_processes(tag, roots=(process.pid,)) - {psutil.Process(process.pid)}
        commands = [command_line(p) for p in ours]
        assert any("gcs_server" in c for c in commands) and any("raylet" in c for c in commands), commands
        assert any(c.startswith("ray::") for c in commands), commands  # the actors' worker processes
        process.send_signal(signal.SIGINT)
        output = "".join(lines) + process.communicate(timeout=60)[0]
        assert process.returncode != 0 and "interrupted: stopping the trainers and Ray" in output
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(is_alive(p) for p in ours):
            time.sleep(0.5)
        left = [f"{p.pid} {command_line(p)[:100]}" for p in ours | own_ray_processes(tag) if is_alive(p)]
        assert not left, f"this run's Ray processes are still running: {left}"
    finally:
        process.kill()
        stop_processes(ours | own_ray_processes(tag))

"""train.py and train_async.py end to end on CPU with real Ray: learning, checkpoints, validation loss, resume after a
crash, failures that end the run with their traceback, and a custom rollout function loaded by path."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

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


def summary(output):
    match = re.search(r"done: first_loss ([\d.]+), last_loss ([\d.]+)", output)
    assert match, output[-3000:]
    return float(match[1]), float(match[2])


def test_train_py_one_actor_learns_and_checkpoints(quick_task, tmp_path):
    code, output, _ = run_driver("train.py", sft_flags(quick_task, tmp_path, 1, 8, "--save-interval", "4"), tmp_path)
    assert code == 0, output[-4000:]
    first, last = summary(output)
    assert last < 0.8 * first
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
    assert last < 0.8 * first
    evals = [float(v) for v in re.findall(r"eval after rollout \d+: eval/val/loss ([\d.]+)", output)]
    assert len(evals) == 2 and evals[1] < evals[0]


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
    expected, resumed = load_file(straight / "hf_5" / "model.safetensors"), load_file(interrupted / "hf_5" / "model.safetensors")
    for name, tensor in expected.items():
        assert torch.equal(resumed[name], tensor), name


def test_an_exception_in_one_trainer_ends_the_run_with_its_traceback(quick_task, tmp_path):
    flags = sft_flags(quick_task, tmp_path, 2, 8, "--loss-type", "custom_loss", "--custom-loss-function-path",
                      "failing_plugins.loss_failing_on_rank_1")
    code, output, seconds = run_driver("train.py", flags, tmp_path, timeout=300)
    assert code != 0
    assert "boom from trainer rank 1" in output and "loss_failing_on_rank_1" in output  # the remote traceback
    assert seconds < 120


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
    assert last < first


def test_ctrl_c_stops_the_run_and_ray(quick_task, tmp_path):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen([sys.executable, str(REPO_ROOT / "train_async.py"),
                                *sft_flags(quick_task, tmp_path, 1, 200)], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if "rollout 2/200" in line:
            break
    process.send_signal(signal.SIGINT)
    output = "".join(lines) + process.communicate(timeout=60)[0]
    assert process.returncode != 0 and "interrupted: stopping the trainers and Ray" in output
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and subprocess.run(["pgrep", "-f", "gcs_server"], capture_output=True).stdout:
        time.sleep(1)
    assert not subprocess.run(["pgrep", "-f", "gcs_server"], capture_output=True).stdout, "Ray is still running"

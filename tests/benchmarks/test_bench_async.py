"""The async benchmark runs (small) so it cannot rot: its costs are measured, sync pays rollout and training one
after the other, and async overlaps them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def test_bench_async_small(tmp_path):
    out = tmp_path / "async.json"
    result = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "bench_async.py"), "--rollouts", "6",
                             "--rollout-seconds", "1.0", "--output", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    report = json.loads(out.read_text())
    runs = report["runs"]
    # The rollout times itself: the 1 s sleep plus a few milliseconds of reading, with the trainer idle (train.py).
    assert 1.0 <= report["measured_rollout_seconds"] < 1.3, report
    assert runs["train_only"]["median_rollout_function_seconds"] < 0.3, report
    assert report["measured_train_seconds_per_rollout"] > 0.1, report
    # Within each run (one machine load): sync pays the rollout and the trainer's step one after the other; async
    # clearly less than their sum. Comparisons across runs are left to the report: on a shared machine the load,
    # and so the training cost, can change between runs.
    sync, asynchronous = runs["train.py"], runs["train_async.py"]
    assert sync["median_seconds_per_rollout"] >= 0.9 * (
        sync["median_rollout_function_seconds"] + sync["median_trainer_step_seconds"]), report
    assert asynchronous["median_seconds_per_rollout"] < 0.9 * (
        asynchronous["median_rollout_function_seconds"] + asynchronous["median_trainer_step_seconds"]), report

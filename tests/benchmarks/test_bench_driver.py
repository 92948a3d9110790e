"""The driver benchmark runs (tiny) so that it cannot rot: its report holds both parts, the run's own start-up
report adds up to the time the benchmark measured from outside, and a step through the driver costs about what it
costs in process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

pytestmark = pytest.mark.slow

DRIVER_PHASES = ["imports", "arguments", "ray", "rollout_manager", "trainers", "first_rollout", "first_step"]
TRAINER_MILESTONES = ["process_started", "imported", "init_started", "process_group", "model_and_optimizer",
                      "weights_loaded", "initialised"]


def test_bench_driver_tiny(tmp_path):
    out = tmp_path / "driver.json"
    result = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "bench_driver.py"), "--steps", "5",
                             "--warm-up", "2", "--layers", "1", "--hidden", "32", "--batch", "4",
                             "--tokenizer", "smollm2", "--output", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    report = json.loads(out.read_text())

    step = report["step"]
    assert step["ratio"] == round(step["through_driver_s"] / step["in_process_s"], 3), step
    assert step["overhead_fraction"] == round(step["driver_overhead_s"] / step["in_process_s"], 3), step
    # Speed itself is the benchmark's to measure, not this test's (a loaded CI machine moves it freely).
    assert step["in_process_s"] > 0 and step["through_driver_s"] > 0, step

    startup = report["startup"]
    phases = startup["phases_s"]
    assert list(phases) == DRIVER_PHASES and all(seconds >= 0 for seconds in phases.values()), startup
    assert sum(phases.values()) == pytest.approx(startup["reported_total_s"], abs=0.01), startup
    # The run counts from its process's start (known to the kernel's 10 ms clock tick); the benchmark from just
    # before it launched the command up to the first step's log line, written after the report.
    assert startup["command_to_first_step_s"] >= startup["reported_total_s"] - 0.02, startup
    trainer = startup["trainer_milestones_at_s"]
    assert list(trainer) == TRAINER_MILESTONES, startup
    assert sorted(trainer.values()) == list(trainer.values()), startup
    # The trainers were built before the driver's "trainers" milestone, and their processes started before the
    # rollout manager was ready (created first, they import the trainer while it starts).
    trainers_at = sum(phases[name] for name in DRIVER_PHASES[:DRIVER_PHASES.index("trainers") + 1])
    assert trainer["initialised"] <= trainers_at + 0.01, startup
    rollout_manager_at = sum(phases[name] for name in DRIVER_PHASES[:DRIVER_PHASES.index("rollout_manager") + 1])
    assert trainer["process_started"] < rollout_manager_at, startup

    inside = report["in_process_startup"]
    assert list(inside["phases_s"]) == ["imports", "process group", "model and optimizer", "checkpoint", "data",
                                        "first step"], inside
    assert sum(inside["phases_s"].values()) == pytest.approx(inside["total_s"], abs=0.01), inside

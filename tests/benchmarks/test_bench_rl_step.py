"""The RL step benchmark runs (its --tiny configuration) so it cannot rot: every phase it reports was measured in a
real GRPO run, and together they account for the driver's iteration."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def test_bench_rl_step_tiny(tmp_path):
    out = tmp_path / "rl_step.json"
    result = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "bench_rl_step.py"), "--tiny",
                             "--rollouts", "3", "--output", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    (label, seconds), = json.loads(out.read_text())["seconds"].items()
    assert label in result.stdout and "old_log_probs" in result.stdout  # the table
    # Two optimizer steps per rollout and --use-kl-loss: both forward-only passes ran, as did every other phase.
    assert seconds["steps_per_rollout"] == 2
    for phase in ("generate", "reward", "ref_log_probs", "old_log_probs", "advantages", "train", "sync", "rollout"):
        assert seconds[phase] > 0, (phase, seconds)
    assert seconds["reward"] < seconds["generate"] <= seconds["rollout"], seconds
    # train.py runs the phases one after the other: an iteration (the previous rollout's sync, then this rollout's
    # generation and training) takes at least their sum, Ray calls on top.
    rollouts = seconds["per_rollout"]
    for previous, current in zip(rollouts, rollouts[1:]):
        parts = ("rollout", "ref_log_probs", "old_log_probs", "advantages", "train")
        assert previous["sync"] + sum(current[p] for p in parts) <= current["wall"], rollouts
    # The quick start's tied-embedding Qwen3 at hidden 32 (SmolLM2's 49,152-token vocabulary): ~1.6M fp32 values.
    assert 6.0 < seconds["sync_megabytes"] < 7.0, seconds

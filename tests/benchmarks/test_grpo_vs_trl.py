"""The GRPO comparison's tiny form runs in CI so it cannot rot: TRL's GRPOTrainer and train.py (CPU engines) each
run two steps in their own process, on the same prompts in the same order, and both report times, rewards and
held-out accuracy."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def test_tiny_both_sides_same_steps_same_prompts(tmp_path):
    output = tmp_path / "grpo_vs_trl_tiny.json"
    result = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "grpo_vs_trl.py"), "--tiny",
                             "--output", str(output), "--work-dir", str(tmp_path / "work")],
                            env={**os.environ, "RAY_AUTH_MODE": "disabled"}, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    report = json.loads(output.read_text())
    trl, ours = report["trl"], report["ours"]
    assert ours["ran"], ours.get("reason")
    assert report["trl_prompts_in_file_order"] is True
    assert report["same_steps_and_prompts"] is True
    for side in (trl, ours):
        assert side["steps"] == 2 and len(side["prompts_per_step"]) == 2
        assert all(len(step) == 2 for step in side["prompts_per_step"])  # --tiny: 2 prompts x 4 completions
        assert len(side["mean_reward_per_step"]) == 2 and all(0 <= r <= 1 for r in side["mean_reward_per_step"])
        assert len(side["generation_seconds_per_step"]) == len(side["train_seconds_per_step"]) == 2
        assert all(t > 0 for t in side["generation_seconds_per_step"] + side["train_seconds_per_step"])
        assert side["generation_tokens_per_s"] > 0 and side["process_seconds"] > 0
        assert side["held_out"]["total"] == 30 and 0 <= side["held_out"]["accuracy"] <= 1
    assert len(ours["weight_sync_seconds_per_step"]) == 2
    # The two steps trained different prompts (the data advanced), and the quick start's task was used.
    assert trl["prompts_per_step"][0] != trl["prompts_per_step"][1]
    assert all(q.startswith("Calculate ") for step in trl["prompts_per_step"] for q in step)

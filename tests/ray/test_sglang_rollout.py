"""The default RL rollout end to end on CPU: train.py --debug-rollout-only starts the real sglang-router and two CPU
engine processes, generates groups through the router, rewards them, filters zero-variance groups with
over-sampling, saves the rollouts, and stops every process it started."""

from __future__ import annotations

import json
import os
import sys

import psutil
import pytest
import torch

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "tests" / "backends" / "sglang_utils"))
from engine_helpers import build_tiny_qwen3  # noqa: E402
from test_train_drivers import RAY_TAG, run_driver  # noqa: E402

pytestmark = pytest.mark.slow

PROMPTS = ["Count to five:", "Name a colour:", "Say hello:", "Add 2 and 3:", "Spell dog:", "Pick a number:",
           "What is red?", "Greet me:"]


def _engine_processes() -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        # The router renames itself (setproctitle) to sglang::router.
        if "slime.backends.sglang_utils.cpu_engine" in cmdline or process.info["name"] == "sglang::router":
            found.append(process)
    return found


def test_rollout_only_run_generates_filters_rewards_and_saves(tmp_path):
    model = build_tiny_qwen3(str(tmp_path / "model"), seed=0)
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "label": ""}) + "\n" for p in PROMPTS))
    before = {p.pid for p in _engine_processes()}
    flags = [
        "--debug-rollout-only", "--actor-num-gpus-per-node", "1", "--rollout-num-gpus", "2",
        "--hf-checkpoint", model, "--prompt-data", str(data), "--input-key", "prompt", "--label-key", "label",
        "--num-rollout", "2", "--rollout-batch-size", "2", "--n-samples-per-prompt", "4",
        "--over-sampling-batch-size", "3", "--global-batch-size", "8",
        "--rollout-max-response-len", "6", "--rollout-temperature", "1.0", "--sglang-server-concurrency", "8",
        "--custom-rm-path", "rl_plugins.last_token_parity",
        "--dynamic-sampling-filter-path",
        "slime.rollout.filter_hub.dynamic_sampling_filters.check_reward_nonzero_std",
        "--save-debug-rollout-data", str(tmp_path / "rollouts" / "{rollout_id}.pt"),
        "--metrics-file", str(tmp_path / "metrics.jsonl"),
    ]
    code, output, _ = run_driver("train.py", flags, tmp_path, env_extra={RAY_TAG: "sglang-rollout",
                                                                         "OMP_NUM_THREADS": "1"})
    assert code == 0, output[-4000:]

    for rollout_id in range(2):
        saved = torch.load(tmp_path / "rollouts" / f"{rollout_id}.pt", weights_only=False)
        samples = saved["samples"]
        assert saved["rollout_id"] == rollout_id and len(samples) == 2 * 4
        groups = [samples[i:i + 4] for i in range(0, 8, 4)]
        for group in groups:
            assert len({s["group_index"] for s in group}) == 1
            rewards = [s["reward"] for s in group]
            assert len(set(rewards)) > 1, rewards  # the filter kept only groups whose rewards differ
            for s in group:
                assert 1 <= s["response_length"] <= 6
                assert len(s["rollout_log_probs"]) == s["response_length"] == len(s["loss_mask"])
                assert all(lp <= 0 for lp in s["rollout_log_probs"])
                assert s["tokens"][-s["response_length"]:] and s["status"] in ("completed", "truncated")
                assert s["reward"] == float(s["tokens"][-1] % 2)
                assert s["weight_versions"]
    rollout_rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    rollout_rows = [row for row in rollout_rows if "rollout/step" in row]
    assert len(rollout_rows) == 2
    for row in rollout_rows:
        assert row["rollout/groups_submitted"] >= 3 and row["perf/generation_tokens_per_s"] > 0
        assert 0.0 <= row["rollout/raw_reward"] <= 1.0
        # Every submitted group is either kept, dropped (counted by reason), or still in flight when aborted.
        dropped = sum(v for k, v in row.items() if k.startswith("rollout/dynamic_filter/drop_"))
        assert dropped <= row["rollout/groups_submitted"] - 2
    # The router and the engine processes are gone with the run.
    leftover = [p for p in _engine_processes() if p.pid not in before and p.is_running()]
    assert not leftover, [p.cmdline() for p in leftover]

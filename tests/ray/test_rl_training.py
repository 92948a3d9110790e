"""GRPO end to end on CPU: train.py and train_async.py with real Ray, the real sglang-router and CPU engine
processes, weights synced to the engines after every rollout, on a reward a tiny model can learn."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "tests" / "backends" / "sglang_utils"))
from engine_helpers import build_tiny_qwen3  # noqa: E402
from test_train_drivers import RAY_TAG, run_driver  # noqa: E402

pytestmark = pytest.mark.slow

PROMPTS = ["Count to five:", "Name a colour:", "Say hello:", "Add 2 and 3:", "Spell dog:", "Pick a number:",
           "What is red?", "Greet me:"]


def peaked_tiny_qwen3(directory: str) -> str:
    """The engines' tiny Qwen3 with the (tied) embeddings of rl_plugins.BOOSTED scaled up: its samples concentrate
    on those 64 tokens, and which half of them it prefers is one direction of its 32-wide hidden state, so GRPO on
    boosted_even_fraction moves the reward within a few steps (a parity of all 49k ids would not be learnable)."""
    from safetensors.torch import load_file, save_file

    from rl_plugins import BOOSTED

    build_tiny_qwen3(directory, seed=0)
    path = f"{directory}/model.safetensors"
    tensors = load_file(path)
    embedding = tensors["model.embed_tokens.weight"]
    embedding[BOOSTED.start:BOOSTED.stop] *= 4.0
    save_file(tensors, path, metadata={"format": "pt"})
    return directory


def grpo_flags(tmp_path, model, trainers, engines, rollouts, *extra):
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "label": ""}) + "\n" for p in PROMPTS))
    return [
        "--actor-num-gpus-per-node", str(trainers), "--rollout-num-gpus", str(engines),
        "--hf-checkpoint", model, "--ref-load", model,
        "--prompt-data", str(data), "--input-key", "prompt", "--label-key", "label", "--rollout-shuffle",
        "--num-rollout", str(rollouts), "--rollout-batch-size", "4", "--n-samples-per-prompt", "4",
        "--global-batch-size", "16", "--rollout-max-response-len", "8", "--rollout-temperature", "1.0",
        "--sglang-server-concurrency", "16", "--custom-rm-path", "rl_plugins.boosted_even_fraction",
        "--loss-type", "policy_loss", "--advantage-estimator", "grpo", "--optimizer", "adam", "--lr", "3e-2",
        "--lr-decay-style", "constant", "--attention-dropout", "0", "--hidden-dropout", "0",
        "--use-dynamic-batch-size", "--max-tokens-per-gpu", "2048", "--data-pad-size-multiplier", "8",
        "--save-debug-rollout-data", str(tmp_path / "rollouts" / "{rollout_id}.pt"),
        "--metrics-file", str(tmp_path / "metrics.jsonl"), *extra,
    ]


def rewards_per_rollout(tmp_path, rollouts):
    means, versions = [], []
    for rollout_id in range(rollouts):
        samples = torch.load(tmp_path / "rollouts" / f"{rollout_id}.pt", weights_only=False)["samples"]
        means.append(sum(s["reward"] for s in samples) / len(samples))
        versions.append({v for s in samples for v in s["weight_versions"]})
    return means, versions


@pytest.mark.parametrize("script, trainers, engines, staleness", [("train.py", 2, 2, 0), ("train_async.py", 1, 1, 1)])
def test_grpo_learns_and_the_engines_serve_the_trained_weights(tmp_path, script, trainers, engines, staleness):
    rollouts = 6
    model = peaked_tiny_qwen3(str(tmp_path / "model"))
    flags = grpo_flags(tmp_path, model, trainers, engines, rollouts)
    code, output, _ = run_driver(script, flags, tmp_path, env_extra={RAY_TAG: f"grpo-{script}",
                                                                      "OMP_NUM_THREADS": "1"})
    assert code == 0, output[-4000:]
    means, versions = rewards_per_rollout(tmp_path, rollouts)
    # Rollout r is generated on the weights trained on rollouts 0..r-1 (train.py), or one step staler (async).
    for rollout_id, seen in enumerate(versions):
        assert seen == {str(max(rollout_id - staleness, 0))}, (rollout_id, seen)
    # The first two rollouts against all later ones: with its learning rate the reward sometimes peaks early and
    # drifts back (0.28, 0.41, 0.66, 0.65, 0.55, 0.45 in 1 of about 10 runs; the others gained 0.34-0.65).
    first, later = sum(means[:2]) / 2, sum(means[2:]) / (rollouts - 2)
    assert later > first + 0.2, means
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_rows = [row for row in rows if "train/step" in row]
    assert len(train_rows) == rollouts and all("train/pg_loss" in row for row in train_rows)
    assert any(row.get("perf/update_weights_time", 0) > 0 for row in rows)


def test_ppo_with_a_critic_trains_critic_first_and_checkpoints(tmp_path):
    rollouts, steps_per_rollout, critic_only = 8, 4, 2
    model = peaked_tiny_qwen3(str(tmp_path / "model"))
    # Four optimizer steps per rollout: one critic step per rollout made its value loss a coin toss over 6 rollouts
    # (the returns move with the policy), four make the fall plain. Two critic-only rollouts: the actor's first
    # steps then use values fitted to its returns (after one, its reward collapsed in about 1 run in 4).
    flags = grpo_flags(tmp_path, model, 1, 1, rollouts, "--advantage-estimator", "ppo", "--num-critic-only-steps",
                       str(critic_only), "--normalize-advantages", "--save", str(tmp_path / "ckpt"),
                       "--save-interval", "3", "--global-batch-size", str(16 // steps_per_rollout))
    code, output, _ = run_driver("train.py", flags, tmp_path, env_extra={RAY_TAG: "ppo", "OMP_NUM_THREADS": "1"})
    assert code == 0, output[-4000:]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_rows = [row for row in rows if "train/step" in row]
    assert len(train_rows) == rollouts * steps_per_rollout
    value_losses = [row["train/critic/value_loss"] for row in train_rows]
    # The critic's value loss is reported for every step; whether it falls over 8 rollouts is not asserted: with
    # the returns moving with the policy it fell 1.9-20x in 6 runs and not at all in an 8th (medians 0.35 -> 0.32).
    assert all(math.isfinite(v) and v >= 0 for v in value_losses), value_losses
    # The first rollouts trained the critic only; the actor trained on the others.
    assert not any("train/pg_loss" in row for row in train_rows[:critic_only * steps_per_rollout])
    assert all("train/pg_loss" in row for row in train_rows[critic_only * steps_per_rollout:])
    assert (tmp_path / "ckpt" / "critic" / "latest_checkpointed_iteration.txt").exists()
    # No reward claim here: that the policy learns is the GRPO tests' to show. Over this test's 6 actor rollouts
    # the reward rose by 0.48-0.69 in 6 runs and stayed flat in a 7th (0.23, 0.28 ... 0.25, 0.20): the engines'
    # sampling decides, and a CI that fails 1 run in 7 lands nothing.

"""The trainer's slime hooks and flags in-process: init and before-train-step hooks, rollout-data post-processing,
--log-interval, --save-debug-train-data, and what runs without --disable-compute-advantages-and-returns."""

from __future__ import annotations

import logging

import pytest
import torch

import hook_plugins
from slime.backends.megatron_utils.actor import MegatronTrainRayActor

from megatron_helpers import random_samples, shards_for, tiny_args

pytestmark = pytest.mark.usefixtures("megatron_world")
HOOKS = "hook_plugins."


def train_rollouts(args, rollouts=2):
    actor = MegatronTrainRayActor()
    actor.init(args)
    metrics = []
    for rollout_id in range(rollouts):
        metrics += actor.train(rollout_id, shards_for(args, random_samples(8, seed=rollout_id))[0])
    return actor, metrics


@pytest.fixture(autouse=True)
def fresh_calls():
    hook_plugins.CALLS.clear()


def test_init_and_before_train_step_hooks():
    args = tiny_args("--global-batch-size", "4", "--custom-megatron-init-path", HOOKS + "init_hook",
                     "--custom-megatron-before-train-step-hook-path", HOOKS + "before_train_step")
    actor = MegatronTrainRayActor()
    actor.init(args)
    assert hook_plugins.CALLS[0] == ("init", True, 1.0)  # after the process group, with the run's args
    fc1 = dict(actor.model.named_parameters())["module.decoder.layers.0.mlp.linear_fc1.weight"]
    assert not fc1.any()  # ... and before the model: its args change made the initialisation zero
    for rollout_id in range(2):
        actor.train(rollout_id, shards_for(args, random_samples(8, seed=rollout_id))[0])
    steps = [call[1:3] for call in hook_plugins.CALLS[1:]]
    assert steps == [(0, 0), (0, 1), (1, 0), (1, 1)]  # before every optimizer step
    # Called before the step: the scheduler has counted the samples of the previous steps only (4 per step).
    assert [call[4] for call in hook_plugins.CALLS[1:]] == [0, 4, 8, 12]


def test_rollout_data_postprocess_sees_and_changes_the_shard():
    args = tiny_args("--calculate-per-token-loss")
    _, plain = train_rollouts(args, rollouts=1)
    _, processed = train_rollouts(tiny_args("--calculate-per-token-loss", "--rollout-data-postprocess-path",
                                            HOOKS + "drop_trained_tokens"), rollouts=1)
    (call,) = hook_plugins.CALLS
    assert call[0] == "postprocess" and call[1] == 0 and {"tokens", "loss_masks", "micro_batches"} <= set(call[2])
    assert plain[0]["loss"] > 1 and processed[0]["loss"] == 0.0


@pytest.mark.parametrize("interval, lines", [(1, 4), (2, 2), (3, 1)])
def test_log_interval_counts_optimizer_steps(caplog, interval, lines):
    caplog.set_level(logging.INFO, logger="slime.backends.megatron_utils.actor")
    train_rollouts(tiny_args("--global-batch-size", "4", "--log-interval", str(interval)))
    logged = [r.getMessage() for r in caplog.records if " step " in r.getMessage() and "loss" in r.getMessage()]
    assert len(logged) == lines, logged


def test_save_debug_train_data(tmp_path):
    args = tiny_args("--save-debug-train-data", str(tmp_path / "train_{rollout_id}_{rank}.pt"))
    train_rollouts(args)
    for rollout_id in range(2):
        saved = torch.load(tmp_path / f"train_{rollout_id}_0.pt", weights_only=False)
        assert saved["rollout_id"] == rollout_id and saved["rank"] == 0
        assert len(saved["rollout_data"]["tokens"]) == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train_0_0.pt", "train_1_0.pt"]


def test_sft_trains_the_same_whether_or_not_advantages_are_computed():
    """slime's switch (--disable-compute-advantages-and-returns) changes nothing for sft_loss, which reads no
    advantages; a custom loss gets the RL preparation (log-probs, advantages) like policy_loss."""
    with_flag = train_rollouts(tiny_args("--calculate-per-token-loss"), rollouts=1)[1]
    sft = tiny_args("--calculate-per-token-loss")
    sft.compute_advantages_and_returns = True
    assert train_rollouts(sft, rollouts=1)[1][0]["loss"] == with_flag[0]["loss"]
    custom = tiny_args("--loss-type", "custom_loss", "--custom-loss-function-path",
                       "examples.custom_loss.entropy_regularized_sft.entropy_regularized_sft_loss")
    custom.compute_advantages_and_returns = True
    metrics = train_rollouts(custom, rollouts=1)[1][0]
    assert "log_probs_time" in metrics and "advantages_time" in metrics

"""Plugins that fail on purpose, loaded by dotted path in failure-handling tests."""

from __future__ import annotations

import os

import torch.distributed as dist

from slime.backends.megatron_utils.loss import sft_loss_function
from slime.rollout.sft_rollout import generate_rollout as sft_generate_rollout, sft_dataset_checks

_calls = {"loss": 0}


def loss_failing_on_rank_1(args, batch, logits, sum_of_sample_mean):
    """The SFT loss, except that trainer rank 1 raises on its third micro-batch (rank 0 then waits in a collective)."""
    _calls["loss"] += 1
    if dist.get_rank() == 1 and _calls["loss"] == 3:
        raise RuntimeError("boom from trainer rank 1")
    return sft_loss_function(args, batch, logits, sum_of_sample_mean)


def loss_failing_at_call(args, batch, logits, sum_of_sample_mean):
    """The SFT loss, except that its $FAIL_LOSS_AT_CALL-th call in this trainer (counted from 1) raises."""
    _calls["loss"] += 1
    if _calls["loss"] == int(os.environ.get("FAIL_LOSS_AT_CALL", "0")):
        raise RuntimeError(f"boom in loss call {_calls['loss']}")
    return sft_loss_function(args, batch, logits, sum_of_sample_mean)


def rollout_failing_at(args, rollout_id, data_source, evaluation=False):
    """The SFT reader, except that it raises at rollout $FAIL_AT_ROLLOUT (simulates a crash mid-run)."""
    if rollout_id == int(os.environ.get("FAIL_AT_ROLLOUT", "-1")):
        raise RuntimeError(f"simulated crash at rollout {rollout_id}")
    return sft_generate_rollout(args, rollout_id, data_source, evaluation)


# The SFT reader's row checks, declared so this wrapper is an SFT rollout as the reader is.
rollout_failing_at.dataset_checks = sft_dataset_checks

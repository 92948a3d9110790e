"""Plugins that record when rollouts and training run, for the test that train_async.py overlaps them.

Both append JSON lines to $TIMING_LOG (one file shared by the rollout manager and the trainer process; lines are
short single writes in append mode, so they do not interleave). Wall-clock `time.time()` is comparable across the
processes of one machine.
"""

from __future__ import annotations

import json
import os
import time

from slime.backends.megatron_utils.loss import sft_loss_function
from slime.rollout.sft_rollout import generate_rollout as sft_generate_rollout, sft_dataset_checks

# How long the loss of each micro-batch holds the trainer: a window wide enough that an overlapping rollout lands
# inside it even on a loaded machine.
TRAIN_HOLD_SECONDS = 1.0


def _record(**event) -> None:
    with open(os.environ["TIMING_LOG"], "a") as f:
        f.write(json.dumps(event) + "\n")


def timed_rollout(args, rollout_id, data_source, evaluation=False):
    """The SFT reader, with the start and end of each training rollout recorded."""
    if not evaluation:
        _record(event="rollout_start", rollout_id=rollout_id, time=time.time())
    result = sft_generate_rollout(args, rollout_id, data_source, evaluation)
    if not evaluation:
        _record(event="rollout_end", rollout_id=rollout_id, time=time.time())
    return result


def timed_loss(args, batch, logits, sum_of_sample_mean):
    """The SFT loss, holding the trainer for TRAIN_HOLD_SECONDS; records when the trainer entered and left it.

    Leaving the loss is still before backward and the optimizer step, so training of that rollout has not ended.
    """
    _record(event="loss_enter", pid=os.getpid(), time=time.time())
    time.sleep(TRAIN_HOLD_SECONDS)
    result = sft_loss_function(args, batch, logits, sum_of_sample_mean)
    _record(event="loss_exit", pid=os.getpid(), time=time.time())
    return result


# The SFT reader's row checks, declared so this wrapper is an SFT rollout as the reader is.
timed_rollout.dataset_checks = sft_dataset_checks

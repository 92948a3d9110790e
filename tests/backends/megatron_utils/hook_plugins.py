"""Trainer hooks loaded by dotted path in tests: each records how it was called."""

from __future__ import annotations

from megatron.core import parallel_state

CALLS: list[tuple] = []


def init_hook(args):
    """Runs after the process group exists and before the model is built: zero initialisation shows it."""
    CALLS.append(("init", parallel_state.model_parallel_is_initialized(), args.lr))
    args.init_method_std = 0.0


def before_train_step(args, rollout_id, step_id, model, optimizer, opt_param_scheduler):
    CALLS.append(("step", rollout_id, step_id, optimizer.param_groups[0]["lr"], opt_param_scheduler.num_steps))


def drop_trained_tokens(args, rollout_id, rollout_data):
    """Zero every loss mask: the step then trains on nothing, which the loss shows."""
    CALLS.append(("postprocess", rollout_id, sorted(rollout_data)))
    for mask in rollout_data["loss_masks"]:
        mask.zero_()

"""Rollout functions that break the return contract, loaded by dotted path inside the rollout manager actor."""

from __future__ import annotations

from examples.custom_rollout.prompt_label_sft import generate_rollout as prompt_label_rollout


def drops_a_sample_from_one_group(args, rollout_id, data_source, evaluation=False):
    """A group that lost one of its --n-samples-per-prompt samples."""
    output = prompt_label_rollout(args, rollout_id, data_source, evaluation)
    output.samples[1].pop()
    return output


def flat_list(args, rollout_id, data_source, evaluation=False):
    """list[Sample] instead of list[list[Sample]]."""
    output = prompt_label_rollout(args, rollout_id, data_source, evaluation)
    return [sample for group in output.samples for sample in group]


def undeclared_sft_wrapper(args, rollout_id, data_source, evaluation=False):
    """The SFT reader behind a wrapper that does not declare its dataset checks: the reader checks as it reads."""
    from slime.rollout.sft_rollout import generate_rollout

    return generate_rollout(args, rollout_id, data_source, evaluation)

"""The rollout-function contract: what a rollout function returns, what it may declare about the rows it reads, and
the checks the rollout manager applies to what it returns."""

from __future__ import annotations

from argparse import Namespace
from dataclasses import dataclass
from typing import Any, Callable

from slime.utils.types import Sample


@dataclass
class RolloutFnTrainOutput:
    samples: list[list[Sample]]
    metrics: dict[str, Any] | None = None


@dataclass
class RolloutFnEvalOutput:
    # {dataset name: {"rewards": [...], "truncated": [...], "samples": [...]}}
    data: dict[str, dict[str, list[Any]]]
    metrics: dict[str, Any] | None = None


@dataclass
class DatasetChecks:
    """What a rollout function requires of dataset rows. The data source applies these while it indexes the data,
    counting every skip, so `len(data_source)` (and the `--num-epoch` arithmetic) counts only rows the function
    will use. The default requires nothing: rows are handed over as slime's data source hands them."""

    # List prompts must be chat conversations with at least one assistant turn (SFT trains assistant turns).
    require_assistant_turn: bool = False
    # Called on each row's Sample; a returned string is the reason to skip the row (counted under that name).
    sample_check: Callable[[Sample], str | None] | None = None


def dataset_checks(fn: Callable[..., Any], args: Namespace) -> DatasetChecks:
    """The checks `fn` declares through its `dataset_checks(args)` attribute (the SFT reader does; see
    docs/rollout_function.md). What makes a run SFT is this declaration, not `--loss-type`."""
    declare = getattr(fn, "dataset_checks", None)
    return declare(args) if declare is not None else DatasetChecks()


def call_rollout_fn(
    fn: Callable[..., Any], *args: Any, evaluation: bool, **kwargs: Any
) -> RolloutFnTrainOutput | RolloutFnEvalOutput:
    """Call a rollout function and wrap slime's legacy bare returns (a list of groups, or a dict of eval results)."""
    output = fn(*args, **kwargs, evaluation=evaluation)
    if evaluation and not isinstance(output, RolloutFnEvalOutput):
        return RolloutFnEvalOutput(data=output)
    if not evaluation and not isinstance(output, RolloutFnTrainOutput):
        return RolloutFnTrainOutput(samples=output)
    return output


class RolloutContractError(ValueError):
    """A rollout function returned something the trainer cannot use; the message names the function."""


def check_train_output(output: RolloutFnTrainOutput, name: str, n_samples_per_prompt: int) -> list[Sample]:
    """Validate a training rollout and return its samples in order.

    The shape is slime's: a list of groups, one per prompt, each holding `n_samples_per_prompt` members that share
    the prompt's `group_index`. A member is a Sample, or (slime's "compact" form) a list of the Samples that one
    rollout produced, which must all carry the same, set `rollout_id` so the loss counts that rollout once.
    """
    def fail(message: str) -> RolloutContractError:
        return RolloutContractError(f"rollout function {name}: {message} (see docs/rollout_function.md)")

    groups = output.samples
    if not isinstance(groups, list):
        raise fail(f"returned {type(groups).__name__} instead of a list of groups (list[list[Sample]])")
    if not groups:
        raise fail("returned no groups")
    samples: list[Sample] = []
    for g, group in enumerate(groups):
        if not isinstance(group, list):
            raise fail(f"group {g} is a {type(group).__name__}, not a list (return list[list[Sample]], one group "
                       "per prompt)")
        if len(group) != n_samples_per_prompt:
            raise fail(f"group {g} holds {len(group)} samples; every group holds --n-samples-per-prompt "
                       f"{n_samples_per_prompt}")
        group_samples: list[Sample] = []
        for m, member in enumerate(group):
            leaves = member if isinstance(member, list) else [member]
            if not leaves or not all(isinstance(s, Sample) for s in leaves):
                raise fail(f"group {g}, member {m} is not a Sample or a non-empty list of Samples")
            if isinstance(member, list) and len(member) > 1:
                ids = [s.rollout_id for s in member]
                if None in ids or len(set(ids)) != 1:
                    raise fail(f"group {g}, member {m}: the samples of one rollout must share a set rollout_id, "
                               f"got {ids}")
            group_samples.extend(leaves)
        indices = {s.group_index for s in group_samples}
        if len(indices) != 1:
            raise fail(f"group {g} mixes group_index values {sorted(indices, key=str)}; the samples of one prompt "
                       "share its group_index")
        for sample in group_samples:
            if sample.reward is None:
                raise fail(f"sample {sample.index} has no reward (set reward=0 when there is none, as the SFT "
                           "reader does)")
        samples.extend(group_samples)
    return samples


def check_eval_output(output: RolloutFnEvalOutput, name: str) -> None:
    for dataset, result in output.data.items():
        lengths = {key: len(result.get(key, [])) for key in ("rewards", "truncated", "samples")}
        if len(set(lengths.values())) != 1:
            raise RolloutContractError(
                f"eval rollout function {name}: dataset {dataset!r} returned lists of different lengths: {lengths}"
            )

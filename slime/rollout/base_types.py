"""What a rollout function returns, and the adapter that accepts slime's legacy bare returns too."""

from __future__ import annotations

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


def call_rollout_fn(
    fn: Callable[..., Any], *args: Any, evaluation: bool, **kwargs: Any
) -> RolloutFnTrainOutput | RolloutFnEvalOutput:
    """Call a rollout function and normalise its result; reject results that break the contract."""
    output = fn(*args, **kwargs, evaluation=evaluation)
    if evaluation:
        if not isinstance(output, RolloutFnEvalOutput):
            output = RolloutFnEvalOutput(data=output)
        for name, result in output.data.items():
            lengths = {key: len(result.get(key, [])) for key in ("rewards", "truncated", "samples")}
            if len(set(lengths.values())) != 1:
                raise ValueError(f"eval rollout for {name!r} returned lists of different lengths: {lengths}")
        return output
    if not isinstance(output, RolloutFnTrainOutput):
        output = RolloutFnTrainOutput(samples=output)
    for group in output.samples:
        for sample in group if isinstance(group, list) else [group]:
            if sample.reward is None:
                raise ValueError(f"rollout function {fn.__module__}.{fn.__name__} returned sample {sample.index} "
                                 "without a reward (set reward=0 when there is none, as the SFT reader does)")
    return output

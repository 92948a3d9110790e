"""Group filters for dynamic sampling (DAPO), used with `--dynamic-sampling-filter-path`.

A filter is `fn(args, samples, **kwargs) -> DynamicFilterOutput` (a bare bool is accepted too) and decides whether a
finished group of `--n-samples-per-prompt` samples is kept for training. A dropped group is counted under
`rollout/dynamic_filter/drop_<reason>` and replaced by over-sampling.
"""

from __future__ import annotations

import statistics
from argparse import Namespace
from dataclasses import dataclass
from typing import Any

from slime.utils.types import Sample

# Rewards closer than this are equal: a group whose rewards all agree carries no GRPO signal.
ZERO_STD_TOLERANCE = 1e-6


@dataclass
class DynamicFilterOutput:
    keep: bool
    reason: str | None = None
    # Keep the group anyway when dropping it would leave the batch short (no extra sampling round for it).
    keep_when_insufficient: bool = False


def _zero_std_output(args: Namespace, samples: list[Sample], keep_when_insufficient: bool) -> DynamicFilterOutput:
    rewards = [float(sample.get_reward_value(args)) for sample in samples]
    spread = statistics.pstdev(rewards) if len(rewards) > 1 else 0.0
    if spread > ZERO_STD_TOLERANCE:
        return DynamicFilterOutput(keep=True)
    return DynamicFilterOutput(keep=False, reason=f"zero_std_{round(rewards[0], 1)}",
                               keep_when_insufficient=keep_when_insufficient)


def check_reward_nonzero_std(args: Namespace, samples: list[Sample], **kwargs: Any) -> DynamicFilterOutput:
    """Keep a group only if its rewards differ (a zero-std group has zero GRPO advantage everywhere)."""
    return _zero_std_output(args, samples, keep_when_insufficient=False)


def check_reward_nonzero_std_with_fallback(args: Namespace, samples: list[Sample],
                                           **kwargs: Any) -> DynamicFilterOutput:
    """As check_reward_nonzero_std, but a zero-std group is kept when the batch would otherwise fall short."""
    return _zero_std_output(args, samples, keep_when_insufficient=True)

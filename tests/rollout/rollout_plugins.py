"""Plugins for the rollout manager tests: a dict reward, an eval function with fixed results, and custom loggers
that record how they were called (to the file named by SLIME_TEST_LOG_CALLS) so a test can check slime's
signatures from outside the Ray actors."""

from __future__ import annotations

import json
import os

from slime.rollout.base_types import RolloutFnEvalOutput
from slime.utils.types import Sample


async def parity_score(args, sample) -> dict:
    """A dict reward (use --reward-key score): 1 when the last generated token id is odd, with its category."""
    odd = sample.response_length > 0 and sample.tokens[-1] % 2 == 1
    return {"score": float(odd), "parity": "odd" if odd else "even"}


def _sample(index: int, group: int, score: float, parity: str, length: int, truncated: bool) -> Sample:
    sample = Sample(index=index, group_index=group, prompt="p", tokens=[1] * (2 + length), response_length=length,
                    reward={"score": score, "parity": parity}, loss_mask=[1] * length)
    sample.status = Sample.Status.TRUNCATED if truncated else Sample.Status.COMPLETED
    return sample


# Dataset "a": two prompts x two samples; prompt 0 has one correct answer of two, prompt 1 none.
FIXED_EVAL = [
    _sample(0, 0, 1.0, "odd", 2, False), _sample(1, 0, 0.0, "even", 4, True),
    _sample(2, 1, 0.0, "even", 6, False), _sample(3, 1, 0.0, "even", 8, False),
]


def fixed_eval(args, rollout_id, data_source, evaluation=False):
    """An eval function that generates nothing: slime's {name: {rewards, truncated, samples}} with dict rewards."""
    assert evaluation
    key = args.eval_reward_key
    return RolloutFnEvalOutput(
        data={"a": {"rewards": [s.reward[key] for s in FIXED_EVAL],
                    "truncated": [s.status == Sample.Status.TRUNCATED for s in FIXED_EVAL],
                    "samples": list(FIXED_EVAL)}},
        metrics={"eval/a/own_metric": 7.0})


def _record(entry: dict) -> None:
    with open(os.environ["SLIME_TEST_LOG_CALLS"], "a") as f:
        f.write(json.dumps(entry) + "\n")


def record_rollout_log(rollout_id, args, samples, rollout_extra_metrics, rollout_time) -> bool:
    _record({"kind": "rollout", "rollout_id": rollout_id, "samples": len(samples),
             "all_samples": all(isinstance(s, Sample) for s in samples),
             "extra_keys": sorted(rollout_extra_metrics or {}), "rollout_time": rollout_time})
    return False


def record_eval_log(rollout_id, args, data, extra_metrics) -> bool:
    _record({"kind": "eval", "rollout_id": rollout_id, "datasets": sorted(data),
             "samples": {name: len(result["samples"]) for name, result in data.items()}})
    return os.environ.get("SLIME_TEST_LOG_TAKES_OVER") == "1"

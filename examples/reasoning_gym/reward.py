"""Reward with reasoning-gym's own verifier: `--custom-rm-path examples.reasoning_gym.reward.reward_func`.

The prompts (built by `tools/prepare_reasoning_gym.py`) ask for the answer between `<answer>` and `</answer>`;
the reward takes the text inside the LAST such pair in the response (reasoning-gym's `extract_answer`, surrounding
whitespace stripped) and scores it with the task's `score_answer(answer, entry)`. A response without the tags
scores 0. Scores are in [0, 1]: for the arithmetic tasks 1.0 is a numerically equal answer ("+07" equals "7"),
and an answer that merely contains the right digits gets partial credit (reasoning-gym's rule); `is_correct`
counts only full marks, which is what the quick start's accuracy reports.

What is scored against comes from the sample's metadata (`--metadata-key metadata`):
`{"reasoning_gym": {"task": <dataset name>, "entry": {"question", "answer", "metadata"}}}`.
"""

from __future__ import annotations

import functools
import json
from argparse import Namespace
from typing import Any, Callable

from slime.utils.types import Sample


@functools.lru_cache(maxsize=None)
def _score_function(task: str) -> Callable[[str | None, dict[str, Any]], float]:
    from reasoning_gym import get_score_answer_fn

    return get_score_answer_fn(task)


def extract_answer(response: str) -> str | None:
    from reasoning_gym.utils import extract_answer as reasoning_gym_extract

    return reasoning_gym_extract(response, tag_name="answer")


def reasoning_gym_entry(metadata: dict[str, Any] | str) -> tuple[str, dict[str, Any]]:
    """(task name, entry) from a row's metadata, as a dict or its JSON string."""
    if isinstance(metadata, str):
        metadata = json.loads(metadata)
    info = metadata.get("reasoning_gym") if isinstance(metadata, dict) else None
    if not isinstance(info, dict) or "task" not in info or "entry" not in info:
        raise ValueError("the sample's metadata has no 'reasoning_gym' {task, entry}: build the data with "
                         "tools/prepare_reasoning_gym.py and pass --metadata-key metadata")
    return info["task"], info["entry"]


def score_response(response: str, metadata: dict[str, Any] | str) -> float:
    """reasoning-gym's score of the answer in `response` for the entry in `metadata`."""
    task, entry = reasoning_gym_entry(metadata)
    return float(_score_function(task)(extract_answer(response), entry))


def is_correct(response: str, metadata: dict[str, Any] | str) -> bool:
    return score_response(response, metadata) == 1.0


async def reward_func(args: Namespace, sample: Sample) -> float:
    return score_response(sample.response, sample.metadata)

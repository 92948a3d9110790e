"""Reward of the recitation task (examples/long_answers/task.py): `--custom-rm-path
examples.long_answers.reward.reward_func` with `--metadata-key metadata`.

The response is compared word by word (split on whitespace; an empty `<think></think>` block some chat templates
open with is ignored) with the expected recitation. Full marks (1.0) for exactly the expected words; otherwise
partial credit: the length of the longest correct prefix (the "Text:" prefix counts as a word) over the longer of
the two word lists. So a wrong start word earns only the prefix's share, and stopping early or running past the full
stop cost in proportion: within a group the samples closest to the right recitation rank highest.
"""

from __future__ import annotations

import json
from argparse import Namespace
from typing import Any

from slime.utils.types import Sample


def expected(metadata: dict[str, Any] | str) -> list[str]:
    if isinstance(metadata, str):
        metadata = json.loads(metadata)
    if not isinstance(metadata, dict) or not isinstance(metadata.get("answer"), str):
        raise ValueError("the sample's metadata has no 'answer': build the data with examples/long_answers/task.py "
                         "and pass --metadata-key metadata")
    return metadata["answer"].split()


def score_response(response: str, metadata: dict[str, Any] | str) -> float:
    target = expected(metadata)
    got = response.rsplit("</think>", 1)[-1].split()
    if got == target:
        return 1.0
    prefix = 0
    for word, want in zip(got, target):
        if word != want:
            break
        prefix += 1
    return prefix / max(len(got), len(target))


async def reward_func(args: Namespace, sample: Sample) -> float:
    return score_response(sample.response, sample.metadata)

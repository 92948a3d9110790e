"""A custom reward with several parts: train on one, evaluate on another (`--reward-key`, `--eval-reward-key`).

  python train.py ... --label-key label \
      --custom-rm-path examples.custom_reward.answer_and_format.reward_func \
      --reward-key score --eval-reward-key correct

Returns a dict per sample:
- `correct`: 1.0 when the text of the last `<answer>...</answer>` equals the label (as numbers or expressions,
  math-verify's equivalence, as in slime's built-in math rewards), else 0.0;
- `formatted`: 1.0 when the response is exactly one `<answer>...</answer>` and then the end of the turn;
- `score`: `correct + FORMAT_BONUS * formatted - TRUNCATION_PENALTY * truncated`, the shaped reward to train on.

slime normalises the training reward within each group (GRPO), so the bonus only ranks samples of one prompt:
among wrong answers, well-formed ones are preferred; among right ones, the well-formed and untruncated.
"""

from __future__ import annotations

import re
from argparse import Namespace

from slime.rollout.rm_hub.math_utils import is_equivalent
from slime.utils.types import Sample

FORMAT_BONUS = 0.1
TRUNCATION_PENALTY = 0.2
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
# The whole response: one answer, then only end-of-turn/special tokens and whitespace.
_WELL_FORMED = re.compile(r"\s*<answer>[^<]*</answer>\s*(<\|[a-z_]+\|>\s*)*", re.DOTALL)


def score_parts(response: str, label: object, truncated: bool) -> dict[str, float]:
    answers = _ANSWER.findall(response)
    correct = float(bool(answers) and is_equivalent(answers[-1], label))
    formatted = float(_WELL_FORMED.fullmatch(response) is not None)
    return {"score": correct + FORMAT_BONUS * formatted - TRUNCATION_PENALTY * float(truncated),
            "correct": correct, "formatted": formatted}


async def reward_func(args: Namespace, sample: Sample) -> dict[str, float]:
    if sample.label is None:
        raise ValueError("this reward compares with the label: give --label-key")
    return score_parts(sample.response, sample.label, sample.status == Sample.Status.TRUNCATED)

"""examples/custom_reward: a dict reward through slime's reward path, its parts chosen by --reward-key for training
(group normalisation) and --eval-reward-key for evaluation."""

from __future__ import annotations

import asyncio

import pytest

from slime.rollout.rm_hub import RewardError, async_rm
from slime.utils.arguments import parse_args
from slime.utils.types import Sample

PATH = "examples.custom_reward.answer_and_format.reward_func"


@pytest.fixture(scope="module")
def args():
    return parse_args(["--rollout-batch-size", "1", "--num-rollout", "1", "--actor-num-gpus-per-node", "1",
                       "--debug-rollout-only", "--rollout-num-gpus", "1", "--custom-rm-path", PATH,
                       "--reward-key", "score", "--eval-reward-key", "correct"])


def reward(args, response, label="12", status=Sample.Status.COMPLETED):
    sample = Sample(index=0, group_index=0, response=response, label=label, status=status)
    sample.reward = asyncio.run(async_rm(args, sample))
    return sample


@pytest.mark.parametrize("response, label, status, parts", [
    ("<answer>12</answer><|im_end|>", "12", Sample.Status.COMPLETED, (1.0, 1.0, 1.1)),
    ("<answer>12.0</answer>", "12", Sample.Status.COMPLETED, (1.0, 1.0, 1.1)),  # equal as numbers
    ("<answer>1/2</answer><|im_end|>", "0.5", Sample.Status.COMPLETED, (1.0, 1.0, 1.1)),
    ("so <answer>12</answer><|im_end|>", "12", Sample.Status.COMPLETED, (1.0, 0.0, 1.0)),  # text before it
    ("<answer>3</answer><answer>12</answer>", "12", Sample.Status.COMPLETED, (1.0, 0.0, 1.0)),  # last one counts
    ("<answer>13</answer><|im_end|>", "12", Sample.Status.COMPLETED, (0.0, 1.0, 0.1)),
    ("12", "12", Sample.Status.COMPLETED, (0.0, 0.0, 0.0)),
    ("<answer>12</answer> and more and", "12", Sample.Status.TRUNCATED, (1.0, 0.0, 0.8)),
])
def test_parts_and_shaped_score(args, response, label, status, parts):
    sample = reward(args, response, label, status)
    correct, formatted, score = parts
    assert sample.reward["correct"] == correct and sample.reward["formatted"] == formatted
    assert sample.reward["score"] == pytest.approx(score)
    assert sample.get_reward_value(args) == pytest.approx(score)  # what training normalises


def test_eval_reward_key_and_missing_label(args):
    assert args.eval_reward_key == "correct"
    with pytest.raises(RewardError, match="give --label-key"):
        reward(args, "<answer>1</answer>", label=None)

"""examples/reasoning_gym/reward.py on known right and wrong answers, through slime's reward entry point
(`async_rm` with --custom-rm-path), for entries made by reasoning-gym itself."""

from __future__ import annotations

import asyncio
import json

import pytest
import reasoning_gym

from slime.rollout.rm_hub import RewardError, async_rm
from slime.utils.arguments import parse_args
from slime.utils.types import Sample

from examples.reasoning_gym.reward import extract_answer, is_correct, score_response

PATH = "examples.reasoning_gym.reward.reward_func"


def entries(task: str, n: int = 5) -> list[dict]:
    return list(reasoning_gym.create_dataset(task, size=n, seed=11))


def metadata(task: str, entry: dict) -> dict:
    return {"reasoning_gym": {"task": task, "entry": entry}}


@pytest.fixture(scope="module")
def args():
    return parse_args(["--rollout-batch-size", "1", "--num-rollout", "1", "--actor-num-gpus-per-node", "1",
                       "--debug-rollout-only", "--rollout-num-gpus", "1", "--custom-rm-path", PATH])


def reward(args, response: str, meta) -> float:
    sample = Sample(index=0, group_index=0, response=response, metadata=meta)
    return asyncio.run(async_rm(args, sample))


@pytest.mark.parametrize("task", ["chain_sum", "basic_arithmetic"])
def test_right_answers_score_one_and_wrong_ones_zero(args, task):
    for entry in entries(task):
        meta = metadata(task, entry)
        answer = entry["answer"]
        wrong = str(int(answer) + 7)
        assert reward(args, f"<answer>{answer}</answer><|im_end|>", meta) == 1.0
        assert reward(args, f"<answer> {answer} </answer>", meta) == 1.0  # whitespace inside the tags
        assert reward(args, f"<answer>{wrong}</answer><|im_end|>", meta) == 0.0
        assert reward(args, f"{answer}<|im_end|>", meta) == 0.0  # right number, not in the asked-for format
        # The last tagged answer counts.
        assert reward(args, f"<answer>{wrong}</answer> no, <answer>{answer}</answer>", meta) == 1.0
        assert reward(args, f"<answer>{answer}</answer> no, <answer>{wrong}</answer>", meta) == 0.0


def test_reasoning_gyms_own_tolerance_and_partial_credit():
    entry = {"question": "q", "answer": "12", "metadata": {}}
    meta = json.dumps(metadata("chain_sum", entry))  # parquet rows carry the metadata as a JSON string
    assert score_response("<answer>+012.0</answer>", meta) == 1.0
    assert score_response("<answer>123</answer>", meta) == pytest.approx(2 / 3)  # contains the oracle
    assert not is_correct("<answer>123</answer>", meta) and is_correct("<answer>12</answer>", meta)
    assert extract_answer("<answer>7</answer") is None


def test_missing_metadata_is_a_clear_error(args):
    with pytest.raises(RewardError, match="no 'reasoning_gym' {task, entry}: build the data with "
                                          "tools/prepare_reasoning_gym.py"):
        reward(args, "<answer>1</answer>", {"row_location": "x.jsonl:1"})

"""Sample: round trips through dicts and keeps its response fields aligned."""

from __future__ import annotations

import pytest

from slime.utils.types import PrefixCacheInfo, Sample


def test_to_dict_from_dict_round_trip_with_extra_attributes():
    sample = Sample(group_index=1, index=7, prompt=[{"role": "user", "content": "hi"}], tokens=[1, 2, 3],
                    response_length=1, loss_mask=[1], reward={"score": 1.0}, status=Sample.Status.TRUNCATED,
                    metadata={"k": "v"}, prefix_cache_info=PrefixCacheInfo(cached_tokens=2, total_prompt_tokens=3))
    sample.custom_field = [4, 5]
    data = sample.to_dict()
    assert data["status"] == "truncated" and data["prefix_cache_info"] == {"cached_tokens": 2, "total_prompt_tokens": 3}
    restored = Sample.from_dict(data)
    assert restored == sample and restored.custom_field == [4, 5]
    assert restored.status is Sample.Status.TRUNCATED


def test_append_response_tokens_keeps_masks_and_logprobs_aligned():
    sample = Sample(tokens=[10, 11], rollout_log_probs=[])
    sample.append_response_tokens([1, 2], log_probs=[-0.1, -0.2], text="ab")
    sample.append_response_tokens([3], trainable=False, text="<tool>")
    sample.append_response_tokens([4], log_probs=[-0.4], finish_reason="length", weight_version="v2")
    assert sample.tokens == [10, 11, 1, 2, 3, 4] and sample.response == "ab<tool>"
    assert sample.loss_mask == [1, 1, 0, 1] and sample.response_length == 4
    assert sample.rollout_log_probs == [-0.1, -0.2, 0.0, -0.4]
    assert sample.status is Sample.Status.TRUNCATED and sample.weight_versions == ["v2"]
    assert sample.effective_response_length == 3
    with pytest.raises(ValueError, match="need log_probs"):
        sample.append_response_tokens([5])


def test_reward_key():
    class Args:
        reward_key = "score"

    assert Sample(reward={"score": 0.5, "acc": 1}).get_reward_value(Args) == 0.5

"""A shard's way from the rollout manager to the trainer: numpy arrays across the object store, tensors in the
trainer, the same values and dtypes as tensorising the lists directly."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from slime.utils.train_data import convert_samples_to_train_data, shard_arrays, tensorize
from slime.utils.types import Sample


def lists_shard(rewards: list) -> dict:
    return {
        "tokens": [[5, 6, 7, 8], [9, 10]],
        "loss_masks": [[0, 1], [1]],
        "rollout_mask_sums": [3, 3],
        "rewards": rewards,
        "raw_reward": [{"score": 1.0}, {"score": 0.0}],
        "rollout_log_probs": [[-0.5, -0.25], [-1.0]],
        "micro_batches": [[[0, 1]]],
    }


def read_only_copy(shard: dict) -> dict:
    """As the trainer receives a shard from Ray's object store: arrays over a buffer it must not write."""
    data = pickle.loads(pickle.dumps(shard, protocol=5))
    for value in data.values():
        for array in value if isinstance(value, list) else [value]:
            if isinstance(array, np.ndarray):
                array.setflags(write=False)
    return data


def test_arrays_then_tensors_equal_tensors_from_the_lists():
    shard = lists_shard([0.5, -0.5])
    arrays = shard_arrays(shard)
    assert isinstance(arrays["tokens"][0], np.ndarray) and arrays["tokens"][0].dtype == np.int64
    assert arrays["raw_reward"] == shard["raw_reward"] and arrays["micro_batches"] == shard["micro_batches"]
    received = read_only_copy(arrays)
    direct, through = tensorize(shard), tensorize(received)
    for key in ("tokens", "loss_masks", "rollout_log_probs"):
        for a, b in zip(direct[key], through[key], strict=True):
            assert a.dtype == b.dtype and torch.equal(a, b)
    for key in ("rollout_mask_sums", "rewards"):
        assert through[key].dtype == torch.float32 and torch.equal(direct[key], through[key])
    assert through["tokens"][0].dtype == torch.long and through["loss_masks"][0].dtype == torch.int32
    through["tokens"][0][0] = 99  # a copy: the trainer may write to it, the object store's buffer is untouched
    assert through["tokens"][0][0] == 99 and received["tokens"][0][0] == 5


def test_rewards_that_are_not_numbers_stay_as_they_are():
    shard = lists_shard([None, None])  # SFT samples carry no reward
    assert tensorize(shard_arrays(shard))["rewards"] == [None, None]


def test_a_rollout_where_only_some_samples_carry_log_probs_is_refused():
    class Args:
        reward_key = None

    samples = [Sample(index=i, tokens=[1, 2, 3], response_length=2, reward=0.0) for i in range(3)]
    samples[0].rollout_log_probs = [-0.1, -0.2]
    with pytest.raises(ValueError, match="2 of 3 samples carry no rollout_log_probs"):
        convert_samples_to_train_data(Args, samples)
    for sample in samples[1:]:
        sample.rollout_log_probs = [-0.3, -0.4]
    arrays = shard_arrays(convert_samples_to_train_data(Args, samples))
    expected = ([-0.1, -0.2], [-0.3, -0.4], [-0.3, -0.4])
    assert [a.tolist() for a in arrays["rollout_log_probs"]] == [pytest.approx(x) for x in expected]

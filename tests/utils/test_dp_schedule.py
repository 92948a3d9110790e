"""Pack, then deal: steps, micro-batches and data-parallel shards."""

from __future__ import annotations

import random

import pytest

from slime.utils.dp_schedule import build_dp_schedule
from slime.utils.train_data import assign_rollout_ids, convert_samples_to_train_data, split_train_data_by_dp
from slime.utils.types import Sample


def check_invariants(schedule, lengths, dp_size, budget=None):
    seen = []
    for step in schedule.steps:
        assert len({len(rank) for rank in step}) == 1  # every rank runs the same number of micro-batches
        for rank in step:
            for batch in rank:
                assert batch
                if budget is not None and len(batch) > 1:
                    assert sum(lengths[i] for i in batch) <= budget
                seen.extend(batch)
    assert len(seen) == len(set(seen))  # each kept sample exactly once
    return seen


@pytest.mark.parametrize("dp_size", [1, 2, 3])
@pytest.mark.parametrize("balance", [False, True])
def test_dynamic_packing_invariants(dp_size, balance):
    rng = random.Random(dp_size)
    lengths = [rng.choice([5, 20, 60, 300]) for _ in range(24)]
    schedule = build_dp_schedule(lengths, list(range(24)), dp_size=dp_size, global_batch_size=12,
                                 max_tokens_per_gpu=100, balance_data=balance)
    seen = check_invariants(schedule, lengths, dp_size, budget=100)
    assert sorted(seen) == list(range(24)) and len(schedule.steps) == 2


def test_oversized_sample_sits_alone_and_trailing_rollouts_are_dropped():
    lengths = [500, 10, 10, 10, 10]
    schedule = build_dp_schedule(lengths, [0, 1, 2, 3, 4], dp_size=1, global_batch_size=4, max_tokens_per_gpu=100)
    assert schedule.steps[0][0][0] == [0] and schedule.dropped_rollouts == 1


def test_static_micro_batches_and_errors():
    schedule = build_dp_schedule([3] * 8, list(range(8)), dp_size=2, global_batch_size=8, micro_batch_size=2)
    assert schedule.steps[0] == [[[0, 1], [4, 5]], [[2, 3], [6, 7]]]
    with pytest.raises(ValueError, match="not a multiple"):
        build_dp_schedule([3] * 6, list(range(6)), dp_size=4, global_batch_size=6, micro_batch_size=1)
    with pytest.raises(ValueError, match="cannot fill one step"):
        build_dp_schedule([3] * 3, list(range(3)), dp_size=1, global_batch_size=4)


def test_balance_data_evens_token_load():
    lengths = [100, 90, 10, 5, 80, 70, 20, 15]
    balanced = build_dp_schedule(lengths, list(range(8)), dp_size=2, global_batch_size=8, micro_batch_size=1,
                                 balance_data=True)
    loads = [sum(lengths[i] for b in rank for i in b) for rank in balanced.steps[0]]
    assert max(loads) - min(loads) <= 20


def test_rollouts_with_several_samples_stay_in_one_step():
    ids = [0, 0, 1, 1, 2, 2, 3, 3]
    schedule = build_dp_schedule([4] * 8, ids, dp_size=1, global_batch_size=2, micro_batch_size=2)
    assert [sorted(i for b in step[0] for i in b) for step in schedule.steps] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert schedule.global_batch_sizes == [2, 2]


def test_rollout_ids_and_mask_sums():
    samples = [Sample(index=i, tokens=[1, 2, 3], response_length=2, loss_mask=[1, 1], reward=0) for i in range(4)]
    samples[1].rollout_id = 0
    samples[3].loss_mask = None
    samples[2].remove_sample = True
    assert assign_rollout_ids(samples) == [1, 0, 2, 3]

    class Args:
        reward_key = None
        global_batch_size = 2
        micro_batch_size = 1
        use_dynamic_batch_size = False
        max_tokens_per_gpu = None
        balance_data = False

    data = convert_samples_to_train_data(Args, samples)
    assert data["loss_masks"] == [[1, 1], [1, 1], [0, 0], [1, 1]] and data["rollout_mask_sums"] == [2, 2, 0, 2]
    shards = split_train_data_by_dp(Args, data, 2)
    assert sorted(shards[0]["partition"] + shards[1]["partition"]) == [0, 1, 2, 3]
    assert shards[0]["micro_batches"] == [[[0]], [[1]]]

"""The data source: epochs that wrap inside a batch, seeded shuffles, groups, and a cursor that resumes exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest

from slime.rollout.data_source import RolloutDataSource, RolloutDataSourceWithBuffer
from slime.utils.arguments import parse_args

from conftest import SFT_FLAGS


def make_args(tmp_path, n_rows=10, *extra):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(
        json.dumps({"messages": [{"role": "user", "content": str(i)}, {"role": "assistant", "content": "a"}]}) + "\n"
        for i in range(n_rows)
    ))
    return parse_args(SFT_FLAGS + ["--prompt-data", str(path), *extra])


def prompt_ids(groups):
    return [int(group[0].prompt[0]["content"]) for group in groups]


def test_epochs_wrap_inside_a_batch(tmp_path):
    source = RolloutDataSource(make_args(tmp_path))
    assert prompt_ids(source.get_samples(4)) == [0, 1, 2, 3]
    assert prompt_ids(source.get_samples(4)) == [4, 5, 6, 7]
    assert prompt_ids(source.get_samples(4)) == [8, 9, 0, 1]
    assert source.epoch_id == 1 and source.sample_offset == 2


def test_shuffle_is_seeded_per_epoch(tmp_path):
    args = make_args(tmp_path, 10, "--rollout-shuffle", "--rollout-seed", "7")
    source = RolloutDataSource(args)
    first_epoch = prompt_ids(source.get_samples(10))
    second_epoch = prompt_ids(source.get_samples(10))
    assert first_epoch == np.random.default_rng(7).permutation(10).tolist()
    assert second_epoch == np.random.default_rng(8).permutation(10).tolist()
    assert sorted(first_epoch) == sorted(second_epoch) == list(range(10)) and first_epoch != second_epoch
    assert prompt_ids(RolloutDataSource(args).get_samples(10)) == first_epoch  # reproducible


def test_wrap_reads_the_tail_with_the_old_epochs_order(tmp_path):
    args = make_args(tmp_path, 10, "--rollout-shuffle")
    source = RolloutDataSource(args)
    got = prompt_ids(source.get_samples(7)) + prompt_ids(source.get_samples(7))
    epoch0 = np.random.default_rng(42).permutation(10).tolist()
    epoch1 = np.random.default_rng(43).permutation(10).tolist()
    assert got == epoch0 + epoch1[:4]


def test_groups_are_independent_copies_with_indices(tmp_path):
    source = RolloutDataSource(make_args(tmp_path, 10, "--n-samples-per-prompt", "3"))
    groups = source.get_samples(2) + source.get_samples(1)
    assert [len(g) for g in groups] == [3, 3, 3]
    assert [s.group_index for g in groups for s in g] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [s.index for g in groups for s in g] == list(range(9))
    groups[0][0].prompt[0]["content"] = "changed"
    assert groups[0][1].prompt[0]["content"] == "0"


def test_save_and_load_continue_the_same_order(tmp_path):
    save_dir = tmp_path / "ckpt"
    args = make_args(tmp_path, 10, "--rollout-shuffle", "--save", str(save_dir))
    uninterrupted = RolloutDataSource(args)
    batches = [prompt_ids(uninterrupted.get_samples(4)) for _ in range(5)]

    first = RolloutDataSource(args)
    for _ in range(3):
        first.get_samples(4)
    first.save(rollout_id=2)
    assert (save_dir / "rollout" / "global_dataset_state_dict_2.pt").exists()

    args.load = str(save_dir)
    resumed = RolloutDataSource(args)
    resumed.load(rollout_id=2)
    assert resumed.epoch_id == 1
    assert [prompt_ids(resumed.get_samples(4)) for _ in range(2)] == batches[3:]
    assert resumed.get_samples(1)[0][0].index == 20


def test_load_without_state_starts_from_the_beginning(tmp_path):
    args = make_args(tmp_path, 10, "--load", str(tmp_path / "nothing"))
    source = RolloutDataSource(args)
    source.load(rollout_id=3)
    assert prompt_ids(source.get_samples(2)) == [0, 1]


def test_buffer_is_drained_first_and_checks_group_size(tmp_path):
    source = RolloutDataSourceWithBuffer(make_args(tmp_path, 10, "--n-samples-per-prompt", "2"))
    groups = source.get_samples(3)
    source.add_samples([groups[2]])
    assert source.get_buffer_length() == 1
    again = source.get_samples(2)
    assert again[0] is groups[2] and prompt_ids(again) == [2, 3]
    with pytest.raises(ValueError, match="a group of 1 samples"):
        source.add_samples([[groups[0][0]]])


def test_without_dataset_blank_samples(tmp_path):
    args = make_args(tmp_path, 10, "--disable-rollout-global-dataset")
    source = RolloutDataSource(args)
    assert len(source) == 0
    groups = source.get_samples(3)
    assert len(groups) == 3 and groups[0][0].prompt == ""

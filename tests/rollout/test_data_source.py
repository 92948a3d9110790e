"""The data source: epochs that wrap inside a batch, seeded shuffles, groups, and a cursor that resumes exactly."""

from __future__ import annotations

import json
import random

import pytest

from slime.rollout.data_source import RolloutDataSource, RolloutDataSourceWithBuffer
from slime.utils.arguments import compute_num_rollout, parse_args

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


def slime_order(seed: int, epoch: int, n: int) -> list[int]:
    """slime's Dataset.shuffle, restated: Python's process-wide `random` seeded with seed + epoch shuffles 0..n-1."""
    saved = random.getstate()
    try:
        random.seed(seed + epoch)
        order = list(range(n))
        random.shuffle(order)
        return order
    finally:
        random.setstate(saved)


def test_slime_order_restatement_is_pinned():
    # Guards the reference itself: CPython's seeded shuffle has been stable since 3.2.
    assert slime_order(42, 0, 10) == [7, 3, 2, 8, 5, 6, 9, 4, 0, 1]


def test_shuffle_is_slimes_order_per_epoch(tmp_path):
    args = make_args(tmp_path, 10, "--rollout-shuffle", "--rollout-seed", "7")
    source = RolloutDataSource(args)
    first_epoch = prompt_ids(source.get_samples(10))
    second_epoch = prompt_ids(source.get_samples(10))
    assert first_epoch == slime_order(7, 0, 10)
    assert second_epoch == slime_order(7, 1, 10)
    assert prompt_ids(RolloutDataSource(args).get_samples(10)) == first_epoch  # reproducible


def test_shuffle_leaves_the_global_random_state_alone(tmp_path):
    random.seed(123)
    expected = random.random()
    random.seed(123)
    source = RolloutDataSource(make_args(tmp_path, 10, "--rollout-shuffle"))
    source.get_samples(15)  # shuffles epochs 0 and 1
    assert random.random() == expected


def test_wrap_reads_the_tail_with_the_old_epochs_order(tmp_path):
    args = make_args(tmp_path, 10, "--rollout-shuffle")
    source = RolloutDataSource(args)
    got = prompt_ids(source.get_samples(7)) + prompt_ids(source.get_samples(7))
    assert got == slime_order(42, 0, 10) + slime_order(42, 1, 10)[:4]


def test_groups_are_independent_copies_with_indices(tmp_path):
    source = RolloutDataSource(make_args(tmp_path, 10, "--n-samples-per-prompt", "3"))
    groups = source.get_samples(2) + source.get_samples(1)
    assert [len(g) for g in groups] == [3, 3, 3]
    assert [s.group_index for g in groups for s in g] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [s.index for g in groups for s in g] == list(range(9))
    groups[0][0].prompt[0]["content"] = "changed"
    groups[0][2].prompt[0]["content"] = "changed too"  # the last of a group is the prompt as read
    assert groups[0][1].prompt[0]["content"] == "0"
    source.get_samples(7)
    assert source.get_samples(1)[0][0].prompt[0]["content"] == "0"  # row 0 again, next epoch: read afresh


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


def test_without_the_global_dataset_the_cursor_is_saved_and_restored(tmp_path):
    save_dir = tmp_path / "ckpt"
    args = make_args(tmp_path, 10, "--disable-rollout-global-dataset", "--n-samples-per-prompt", "2",
                     "--save", str(save_dir))
    first = RolloutDataSource(args)
    first.get_samples(3)
    first.save(rollout_id=0)
    args.load = str(save_dir)
    resumed = RolloutDataSource(args)
    resumed.load(rollout_id=0)
    groups = resumed.get_samples(1)
    # slime restarts these at 0 here; continuing them lets a function seeded by sample.index resume exactly.
    assert [s.index for s in groups[0]] == [6, 7] and groups[0][0].group_index == 3


PLUGIN_FLAGS = ["--rollout-function-path", "examples.custom_rollout.prompt_label_sft.generate_rollout",
                "--input-key", "prompt", "--label-key", "label"]


def write_rows(tmp_path, rows):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_rows_reach_an_undeclared_rollout_function_as_slime_hands_them(tmp_path, sft_args):
    rows = [{"prompt": [{"role": "user", "content": "no assistant turn"}], "label": "a"},
            {"prompt": "a string prompt", "label": "b"}]
    args = sft_args("--prompt-data", write_rows(tmp_path, rows), *PLUGIN_FLAGS)
    assert args.loss_type == "sft_loss"
    source = RolloutDataSource(args)
    assert len(source) == 2 and not source.dataset.stats.skipped
    first, second = [group[0] for group in source.get_samples(2)]
    assert first.prompt == rows[0]["prompt"] and first.label == "a"
    assert second.prompt == "a string prompt" and second.label == "b"


def test_epochs_count_the_prompts_that_survive_the_prompt_length_filter(tmp_path, sft_args):
    rows = [{"prompt": "short question", "label": "x"}] * 6 + [{"prompt": "long " * 100, "label": "x"}] * 4
    args = sft_args("--prompt-data", write_rows(tmp_path, rows), *PLUGIN_FLAGS, "--rollout-max-prompt-len", "20")
    source = RolloutDataSource(args)
    assert len(source) == 6 and source.dataset.stats.skipped == {"prompt_too_long": 4}
    args.num_rollout, args.num_epoch = None, 2
    assert compute_num_rollout(args, len(source)) == 2 and args.num_rollout_per_epoch == 1  # 6 // 4, not 10 // 4

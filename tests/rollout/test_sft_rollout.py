"""The SFT reader through slime's rollout-function contract, on the real Qwen3 tokenizer."""

from __future__ import annotations

import json
import sys

import pytest

from slime.rollout.base_types import (
    RolloutContractError,
    RolloutFnEvalOutput,
    RolloutFnTrainOutput,
    call_rollout_fn,
    check_eval_output,
    check_train_output,
)
from slime.rollout.data_source import RolloutDataSourceWithBuffer
from slime.utils.arguments import compute_num_rollout
from slime.utils.data import DataError
from slime.utils.misc import PluginLoadError, load_function
from slime.utils.types import Sample


def write_conversations(path, lengths):
    """One conversation per entry; the assistant answer has about `n` words."""
    rows = [
        {"messages": [{"role": "user", "content": f"Q{i}"}, {"role": "assistant", "content": " ".join(["w"] * n)}]}
        for i, n in enumerate(lengths)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def rollout(args, rollout_id=0, evaluation=False):
    source = RolloutDataSourceWithBuffer(args)
    fn = load_function(args.rollout_function_path)
    return call_rollout_fn(fn, args, rollout_id, source, evaluation=evaluation), source


def test_train_rollout_fills_tokens_masks_and_rewards(tmp_path, sft_args, qwen3_tokenizer):
    data = write_conversations(tmp_path / "d.jsonl", [3] * 6)
    args = sft_args("--prompt-data", data)
    output, _ = rollout(args)
    assert isinstance(output, RolloutFnTrainOutput)
    assert len(output.samples) == 4 and all(len(group) == 1 for group in output.samples)
    sample = output.samples[0][0]
    messages = sample.prompt
    assert sample.tokens == list(qwen3_tokenizer.apply_chat_template(messages, tokenize=True)["input_ids"])
    assert len(sample.loss_mask) == sample.response_length and sample.loss_mask[0] == 1
    trained = [t for t, m in zip(sample.tokens[-sample.response_length :], sample.loss_mask) if m]
    assert qwen3_tokenizer.decode(trained) == "<think>\n\n</think>\n\nw w w<|im_end|>"
    assert sample.reward == 0 and sample.status == Sample.Status.PENDING and sample.rollout_id is None
    assert output.metrics["sft/trained_tokens"] == sum(sum(g[0].loss_mask) for g in output.samples)


def test_overlong_conversations_are_dropped_at_indexing_and_counted(tmp_path, sft_args):
    data = write_conversations(tmp_path / "d.jsonl", [2, 200, 2, 2, 200, 2, 2, 2])
    args = sft_args("--prompt-data", data, "--rollout-max-context-len", "64")
    output, source = rollout(args)
    assert [g[0].prompt[0]["content"] for g in output.samples] == ["Q0", "Q2", "Q3", "Q5"]
    assert all(len(g[0].tokens) <= 64 for g in output.samples)
    assert len(source) == 6 and source.dataset.stats.skipped == {"overlong_dropped": 2}
    # An epoch is the 6 conversations that are trained: one batch of 4, not 8 // 4 = 2.
    args.num_rollout, args.num_epoch = None, 1
    assert compute_num_rollout(args, len(source)) == 1 and args.num_rollout_per_epoch == 1


def test_undeclared_wrapper_drops_overlong_conversations_as_it_reads(tmp_path, sft_args):
    data = write_conversations(tmp_path / "d.jsonl", [2, 200, 2, 2, 200, 2, 2])
    args = sft_args("--prompt-data", data, "--rollout-max-context-len", "64",
                    "--rollout-function-path", "contract_plugins.undeclared_sft_wrapper")
    output, source = rollout(args)
    assert len(source) == 7
    assert [g[0].prompt[0]["content"] for g in output.samples] == ["Q0", "Q2", "Q3", "Q5"]
    assert output.metrics["sft/skipped_overlong_dropped"] == 2


def test_overlong_conversations_truncated(tmp_path, sft_args):
    data = write_conversations(tmp_path / "d.jsonl", [200, 2, 2, 2])
    args = sft_args("--prompt-data", data, "--rollout-max-context-len", "64", "--sft-overlong-policy", "truncate")
    output, _ = rollout(args)
    first = output.samples[0][0]
    assert len(first.tokens) == 64 and first.status == Sample.Status.TRUNCATED
    assert len(first.loss_mask) == first.response_length
    assert output.metrics["sft/truncated"] == 1


def test_overlong_conversation_error_names_the_row(tmp_path, sft_args):
    data = write_conversations(tmp_path / "d.jsonl", [2, 200, 2, 2])
    args = sft_args("--prompt-data", data, "--rollout-max-context-len", "64", "--sft-overlong-policy", "error")
    with pytest.raises(DataError, match=r"d\.jsonl: line 2: conversation of \d+ tokens exceeds"):
        rollout(args)


def test_when_nothing_fits_the_run_stops_instead_of_looping(tmp_path, sft_args):
    data = write_conversations(tmp_path / "d.jsonl", [200] * 5)
    with pytest.raises(DataError, match=r"no usable rows \(rows read 5, kept 0, skipped 5 \(overlong_dropped: 5\)\)"):
        rollout(sft_args("--prompt-data", data, "--rollout-max-context-len", "16"))
    wrapped = sft_args("--prompt-data", data, "--rollout-max-context-len", "16",
                       "--rollout-function-path", "contract_plugins.undeclared_sft_wrapper")
    with pytest.raises(DataError, match="almost no conversation fits"):
        rollout(wrapped)


def test_an_sft_run_with_a_custom_loss_is_still_sft(tmp_path, sft_args):
    rows = [{"messages": [{"role": "user", "content": "q"}]}]  # no assistant turn: nothing to train
    rows += [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}
             for i in range(4)]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = sft_args("--prompt-data", str(path), "--loss-type", "custom_loss", "--custom-loss-function-path",
                    "examples.custom_loss.entropy_regularized_sft.entropy_regularized_sft_loss")
    output, source = rollout(args)
    assert source.dataset.stats.skipped == {"no_assistant_turn": 1} and len(source) == 4
    assert [g[0].prompt[0]["content"] for g in output.samples] == ["q0", "q1", "q2", "q3"]


def test_conversations_with_nothing_to_train_are_skipped(tmp_path, sft_args):
    rows = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "loss": False}]}]
    rows += [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}
             for i in range(4)]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    output, _ = rollout(sft_args("--prompt-data", str(path)))
    assert output.metrics["sft/skipped_no_trained_tokens"] == 1 and len(output.samples) == 4


def test_sft_needs_one_sample_per_prompt(tmp_path, sft_args):
    data = write_conversations(tmp_path / "d.jsonl", [2] * 4)
    with pytest.raises(ValueError, match="--n-samples-per-prompt 1"):
        rollout(sft_args("--prompt-data", data, "--n-samples-per-prompt", "2"))


def test_string_prompts_are_rejected_with_advice(tmp_path, sft_args):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"messages": "just text"}) + "\n")
    with pytest.raises(DataError, match="needs a message list"):
        rollout(sft_args("--prompt-data", str(path)))


def test_eval_rollout_returns_every_held_out_conversation(tmp_path, sft_args):
    data = write_conversations(tmp_path / "train.jsonl", [2] * 4)
    held_out = write_conversations(tmp_path / "val.jsonl", [2, 3, 4])
    args = sft_args("--prompt-data", data, "--eval-prompt-data", "val", held_out)
    output, _ = rollout(args, evaluation=True)
    assert isinstance(output, RolloutFnEvalOutput)
    result = output.data["val"]
    assert len(result["samples"]) == 3 and result["rewards"] == [0.0] * 3
    assert all(s.loss_mask and len(s.loss_mask) == s.response_length for s in result["samples"])


def test_load_function_errors_name_the_path_and_the_failure(tmp_path, monkeypatch):
    (tmp_path / "broken_plugin.py").write_text("import not_a_real_module\n")
    (tmp_path / "good_plugin.py").write_text("def generate_rollout(args, rollout_id, data_source, evaluation=False):\n"
                                             "    return []\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginLoadError, match=r"'broken_plugin.fn'.*ModuleNotFoundError.*not_a_real_module"):
        load_function("broken_plugin.fn")
    with pytest.raises(PluginLoadError, match=r"has no attribute 'generate_rolout' \(it defines: generate_rollout\)"):
        load_function("good_plugin.generate_rolout")
    with pytest.raises(PluginLoadError, match="not a dotted path"):
        load_function("nodots")
    assert load_function("good_plugin.generate_rollout")(None, 0, None) == []
    sys.modules.pop("good_plugin", None)


def test_call_rollout_fn_wraps_legacy_returns():
    def legacy(args, rollout_id, data_source, evaluation=False):
        return [[Sample(tokens=[1], reward=1.0)]]

    assert isinstance(call_rollout_fn(legacy, None, 0, None, evaluation=False), RolloutFnTrainOutput)
    assert isinstance(call_rollout_fn(lambda *a, evaluation: {}, None, 0, None, evaluation=True), RolloutFnEvalOutput)


def group(group_index, *rewards, rollout_id=None):
    return [Sample(tokens=[1], reward=r, group_index=group_index, index=i, rollout_id=rollout_id)
            for i, r in enumerate(rewards)]


def test_train_output_checks_name_the_function():
    check = lambda groups, n=2: check_train_output(RolloutFnTrainOutput(samples=groups), "my.rollout", n)  # noqa: E731
    assert len(check([group(0, 1.0, 0.0), group(1, 0.5, 0.5)])) == 4
    # Compact form: a member lists the samples of one rollout, sharing its rollout id.
    compact = [[group(0, 1.0, 1.0, rollout_id=7), group(0, 0.0, rollout_id=8)]]
    assert [s.rollout_id for s in check(compact)] == [7, 7, 8]
    for groups, n, message in [
        ([], 2, "returned no groups"),
        (None, 2, r"returned NoneType instead of a list of groups \(list\[list\[Sample\]\]\)"),
        ([group(0, 1.0, 0.0), group(1, 0.5)], 2, "group 1 holds 1 samples; every group holds --n-samples-per-prompt 2"),
        (group(0, 1.0, 0.0), 2, "group 0 is a Sample, not a list"),
        ([[Sample(group_index=0, reward=0), Sample(group_index=1, reward=0)]], 2, "group 0 mixes group_index"),
        ([[group(0, 1.0, 1.0, rollout_id=None)]], 1,
         r"group 0, member 0: the samples of one rollout must share a set rollout_id, got \[None, None\]"),
        ([[group(0, 1.0)[0], "text"]], 2, "group 0, member 1 is not a Sample"),
        ([[Sample(tokens=[1], index=3)]], 1, "sample 3 has no reward"),
    ]:
        with pytest.raises(RolloutContractError, match=rf"^rollout function my\.rollout: {message}"):
            check(groups, n)


def test_eval_output_lists_must_have_equal_lengths():
    output = RolloutFnEvalOutput(data={"x": {"rewards": [1.0], "truncated": [], "samples": [Sample()]}})
    with pytest.raises(RolloutContractError, match="eval rollout function my.eval: dataset 'x' returned lists of "
                                                   "different lengths"):
        check_eval_output(output, "my.eval")

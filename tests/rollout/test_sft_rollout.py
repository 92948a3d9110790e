"""The SFT reader through slime's rollout-function contract, on the real Qwen3 tokenizer."""

from __future__ import annotations

import json
import sys

import pytest

from slime.rollout.base_types import RolloutFnEvalOutput, RolloutFnTrainOutput, call_rollout_fn
from slime.rollout.data_source import RolloutDataSourceWithBuffer
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


def test_overlong_conversations_are_dropped_replaced_and_counted(tmp_path, sft_args):
    data = write_conversations(tmp_path / "d.jsonl", [2, 200, 2, 2, 200, 2, 2])
    args = sft_args("--prompt-data", data, "--rollout-max-context-len", "64")
    output, source = rollout(args)
    assert [g[0].prompt[0]["content"] for g in output.samples] == ["Q0", "Q2", "Q3", "Q5"]
    assert output.metrics["sft/skipped_overlong_dropped"] == 2
    assert all(len(g[0].tokens) <= 64 for g in output.samples)


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


def test_when_nothing_fits_the_reader_stops_instead_of_looping(tmp_path, sft_args):
    data = write_conversations(tmp_path / "d.jsonl", [200] * 5)
    args = sft_args("--prompt-data", data, "--rollout-max-context-len", "16")
    with pytest.raises(DataError, match="almost no conversation fits"):
        rollout(args)


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


def test_call_rollout_fn_wraps_legacy_returns_and_rejects_missing_rewards():
    def legacy(args, rollout_id, data_source, evaluation=False):
        return [[Sample(tokens=[1], reward=1.0)]]

    assert isinstance(call_rollout_fn(legacy, None, 0, None, evaluation=False), RolloutFnTrainOutput)

    def rewardless(args, rollout_id, data_source, evaluation=False):
        return [[Sample(tokens=[1], index=3)]]

    with pytest.raises(ValueError, match="sample 3 without a reward"):
        call_rollout_fn(rewardless, None, 0, None, evaluation=False)

    def bad_eval(args, rollout_id, data_source, evaluation=False):
        return {"x": {"rewards": [1.0], "truncated": [], "samples": [Sample()]}}

    with pytest.raises(ValueError, match="different lengths"):
        call_rollout_fn(bad_eval, None, 0, None, evaluation=True)

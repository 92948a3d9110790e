"""HF weights in and out: Megatron logits equal transformers' logits; HF -> Megatron -> HF is exact."""

from __future__ import annotations

import pytest
import torch
import transformers
from megatron.core.packed_seq_params import PackedSeqParams
from safetensors.torch import load_file

from slime.backends.megatron_utils.hf_weights import load_hf_weights, merge_qkv, save_hf_weights, split_qkv
from slime.backends.megatron_utils.model_provider import build_gpt_model
import fetch_assets as assets  # tools/, put on sys.path by conftest

from megatron_helpers import args_for_hf, save_tiny_hf_model

pytestmark = pytest.mark.usefixtures("megatron_world")


def packed(lengths):
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=max(lengths),
                           max_seqlen_kv=max(lengths))


@torch.no_grad()
def megatron_logits(model, tokens, lengths):
    model.eval()
    return model(input_ids=tokens[None], position_ids=None, attention_mask=None, packed_seq_params=packed(lengths))[0]


@torch.no_grad()
def hf_logits(hf_model, tokens):
    hf_model.eval()
    return hf_model(input_ids=tokens[None]).logits[0]


@pytest.mark.parametrize("model_type, overrides", [
    ("qwen3", {}),
    ("qwen3", {"tie_word_embeddings": True}),
    ("qwen2", {}),
    ("llama", {"rope_theta": 500000.0}),
])
def test_logits_match_transformers(tmp_path, model_type, overrides):
    hf_model = save_tiny_hf_model(tmp_path, model_type, **overrides)
    args = args_for_hf(tmp_path)
    model = build_gpt_model(args)
    load_hf_weights(model, str(tmp_path), args)
    a, b = torch.randint(0, 300, (17,)), torch.randint(0, 300, (9,))
    ours = megatron_logits(model, torch.cat([a, b]), [17, 9])[:, :300]
    # Each sequence of the pack must see only itself: compare to transformers on each alone.
    reference = torch.cat([hf_logits(hf_model, a), hf_logits(hf_model, b)])
    assert (ours - reference).abs().max().item() < 1e-4


def test_round_trip_is_exact(tmp_path):
    save_tiny_hf_model(tmp_path / "in", "qwen2", tie_word_embeddings=False)
    args = args_for_hf(tmp_path / "in")
    model = build_gpt_model(args)
    load_hf_weights(model, str(tmp_path / "in"), args)
    save_hf_weights(model, args, str(tmp_path / "out"), origin_hf_dir=str(tmp_path / "in"))
    original, exported = load_file(tmp_path / "in" / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    assert set(original) == set(exported)
    for name in original:
        assert torch.equal(original[name], exported[name]), name
    assert (tmp_path / "out" / "config.json").read_text() == (tmp_path / "in" / "config.json").read_text()
    assert not (tmp_path / "out.tmp").exists()


def test_qkv_merge_split_inverse():
    class A:
        num_attention_heads, num_query_groups, kv_channels = 6, 2, 4

    q, k, v = torch.randn(24, 5), torch.randn(8, 5), torch.randn(8, 5)
    merged = merge_qkv(q, k, v, A)
    # Group-major layout: group 0's three query heads, then its key, then its value.
    assert torch.equal(merged[:12], q[:12]) and torch.equal(merged[12:16], k[:4]) and torch.equal(merged[16:20], v[:4])
    for x, y in zip(split_qkv(merged, A), (q, k, v)):
        assert torch.equal(x, y)


def test_real_smollm2_weights_match_transformers():
    directory = assets.fetch_smollm2_hf()
    args = args_for_hf(directory)
    model = build_gpt_model(args)
    load_hf_weights(model, directory, args)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    tokens = torch.tensor(tokenizer("The capital of France is Paris. The capital of Italy is")["input_ids"])
    ours = megatron_logits(model, tokens, [len(tokens)])[:, : args.vocab_size]
    theirs = hf_logits(hf_model, tokens)
    assert (ours - theirs).abs().max().item() < 1e-4
    assert tokenizer.decode(ours[-1].argmax()) == tokenizer.decode(theirs[-1].argmax())


def test_shape_mismatch_is_explained(tmp_path):
    save_tiny_hf_model(tmp_path, "qwen3")
    args = args_for_hf(tmp_path)
    args.ffn_hidden_size = 128
    model = build_gpt_model(args)
    with pytest.raises(ValueError, match="do the model flags match"):
        load_hf_weights(model, str(tmp_path), args)

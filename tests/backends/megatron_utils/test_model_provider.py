"""What the model is built from: mixed-precision wrapping (bf16 exercised on this CPU), --attention-backend,
gradient-accumulation fusion, --custom-model-provider-path, and the packed attention's kernel layout."""

from __future__ import annotations

import logging
import math
import sys
import types

import pytest
import torch
from megatron.core.transformer.enums import AttnBackend, AttnMaskType
from megatron.core.transformer.module import Float16Module
from safetensors.torch import load_file

import slime.backends.megatron_utils.attention as attention
import slime.backends.megatron_utils.model as model_module
import slime.backends.megatron_utils.model_provider as provider
from slime.backends.megatron_utils.actor import MegatronTrainRayActor
from slime.backends.megatron_utils.hf_weights import iter_hf_tensors, save_hf_weights, unwrap
from slime.backends.megatron_utils.model import forward_logits, get_batch

from megatron_helpers import random_samples, shards_for, tiny_args

pytestmark = pytest.mark.usefixtures("megatron_world")


@pytest.fixture
def bf16(monkeypatch):
    """Train as a GPU would (bf16); this CPU otherwise trains in fp32."""
    for module in (provider, model_module):
        monkeypatch.setattr(module, "params_dtype", lambda args: torch.bfloat16)


def first_step(args):
    actor = MegatronTrainRayActor()
    actor.init(args)
    return actor, actor.train(0, shards_for(args, random_samples(8))[0])[0]


def test_bf16_wraps_in_float16module_norms_included(bf16, tmp_path):
    args = tiny_args("--calculate-per-token-loss", "--optimizer", "adam", "--lr", "1e-3")
    actor, metrics = first_step(args)
    inner = actor.model.module
    assert isinstance(inner, Float16Module)
    dtypes = {name: p.dtype for name, p in unwrap(actor.model).named_parameters()}
    assert any("layernorm" in name for name in dtypes) and set(dtypes.values()) == {torch.bfloat16}, dtypes
    # The same first-step loss as fp32 training, to bf16 precision.
    fp32_loss = first_step(tiny_args("--calculate-per-token-loss", "--optimizer", "adam", "--lr", "1e-3"))[1]["loss"]
    assert metrics["loss"] == pytest.approx(fp32_loss, rel=2e-2)
    # Logits stay bf16 into the chunked loss; Megatron's default forward would upcast them to fp32.
    from slime.utils.train_data import tensorize

    shard = tensorize(shards_for(args, random_samples(8))[0])
    batch = get_batch(args, shard, [0, 1])
    with torch.no_grad():
        assert forward_logits(actor.model, batch).dtype == torch.bfloat16
        assert actor.model(input_ids=batch["tokens"], position_ids=None, attention_mask=None,
                           packed_seq_params=batch["packed_seq_params"]).dtype == torch.float32
    # Checkpoint and HF names do not see the wrapper's extra `module.` level.
    fp32 = MegatronTrainRayActor()
    fp32.init(tiny_args())
    assert set(unwrap(actor.model).sharded_state_dict()) == set(unwrap(fp32.model).sharded_state_dict())
    save_hf_weights(actor.model, args, str(tmp_path / "hf"), origin_hf_dir=None)
    exported = load_file(tmp_path / "hf" / "model.safetensors")
    ours = dict(iter_hf_tensors(actor.model, args))
    assert set(exported) == set(ours) == {n for n, _ in iter_hf_tensors(fp32.model, fp32.args)}
    assert all(exported[n].dtype == torch.bfloat16 and torch.equal(exported[n], ours[n]) for n in ours)


def test_attention_backend_reaches_megatron_config():
    for name in ("flash", "fused", "unfused", "local", "auto"):
        config = provider.transformer_config_from_args(tiny_args("--attention-backend", name))
        assert config.attention_backend == AttnBackend[name]


def test_attention_backend_local_uses_our_attention_in_every_spec(monkeypatch):
    spec = provider.layer_spec(tiny_args("--attention-backend", "local"))
    assert spec.submodules.self_attention.submodules.core_attention is attention.PackedAttention


def test_gradient_accumulation_fusion_needs_apex(monkeypatch, caplog):
    from megatron.core.tensor_parallel import layers

    args = tiny_args()
    monkeypatch.setattr(layers, "_grad_accum_fusion_available", False)
    provider._log_once.cache_clear()
    with caplog.at_level(logging.INFO):
        assert provider.gradient_accumulation_fusion(args, fused=True) is False
    assert "fused_weight_gradient_mlp_cuda" in caplog.text
    monkeypatch.setattr(layers, "_grad_accum_fusion_available", True)
    assert provider.gradient_accumulation_fusion(args, fused=True) is True
    assert provider.gradient_accumulation_fusion(tiny_args("--no-gradient-accumulation-fusion"), fused=True) is False
    assert provider.gradient_accumulation_fusion(args, fused=False) is False


def test_custom_model_provider(monkeypatch):
    """slime's contract: provider(pre_process, post_process[, vp_stage]) -> GPTModel, used instead of ours."""
    calls = []
    base = tiny_args("--calculate-per-token-loss")  # the model's config must agree with the run's loss mode

    def provide(pre_process, post_process, vp_stage=None):
        calls.append((pre_process, post_process, vp_stage))
        model = provider.build_gpt_model(base, pre_process, post_process)
        torch.nn.init.zeros_(model.output_layer.weight)  # uniform predictions: the loss is log(vocab)
        return model

    plugin = types.ModuleType("custom_provider_plugin")
    plugin.provide = provide
    plugin.not_a_model = lambda pre_process, post_process: "oops"
    monkeypatch.setitem(sys.modules, "custom_provider_plugin", plugin)
    _, metrics = first_step(tiny_args("--calculate-per-token-loss", "--custom-model-provider-path",
                                      "custom_provider_plugin.provide"))
    assert calls == [(True, True, None)]
    assert metrics["loss"] == pytest.approx(math.log(512), abs=1e-5)
    with pytest.raises(TypeError, match="not a torch.nn.Module"):
        provider.build_gpt_model(tiny_args("--custom-model-provider-path", "custom_provider_plugin.not_a_model"))


def test_packed_attention_gives_sdpa_4d_tensors(monkeypatch):
    shapes = []
    real = attention.F.scaled_dot_product_attention

    def recording(q, k, v, **kwargs):
        shapes.append((q.dim(), k.dim(), v.dim()))
        return real(q, k, v, **kwargs)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", recording)
    args = tiny_args()
    model = provider.build_gpt_model(args)
    from slime.utils.train_data import tensorize

    shard = tensorize(shards_for(args, random_samples(8))[0])
    with torch.no_grad():
        forward_logits(model, get_batch(args, shard, [0, 1, 2]))
    assert shapes and set(shapes) == {(4, 4, 4)}
    assert len(shapes) == 2 * 4  # 2 layers x (3 sequences + the padding pseudo-sequence)


def test_packed_boundaries_stay_on_the_host():
    args = tiny_args()
    from slime.utils.train_data import tensorize

    shard = tensorize(shards_for(args, random_samples(8))[0])
    params = get_batch(args, shard, [0, 1, 2])["packed_seq_params"]
    lengths = [len(shard["tokens"][i]) for i in range(3)]
    assert list(params.bounds[:4]) == [0, *torch.tensor(lengths).cumsum(0).tolist()]
    assert params.bounds[-1] % 8 == 0 and params.cu_seqlens_q.tolist() == list(params.bounds)


def test_warns_once_on_a_gpu_without_flash_attn(monkeypatch, caplog):
    monkeypatch.setattr(attention, "has_gpu", lambda: True)
    monkeypatch.setattr(attention, "flash_attn_varlen_func", None)
    monkeypatch.setattr(attention, "_warned_no_varlen_kernel", False)
    with caplog.at_level(logging.WARNING):
        config = provider.transformer_config_from_args(tiny_args())
        for layer in (1, 2):
            attention.PackedAttention(config, layer, attn_mask_type=AttnMaskType.causal, attention_type="self")
    assert caplog.text.count("without flash-attn") == 1


def test_memory_estimate_is_logged_at_start_up_on_gpus(monkeypatch, caplog):
    args = tiny_args()
    with caplog.at_level(logging.INFO, logger="slime.backends.megatron_utils.model"):
        model_module.setup_model_and_optimizer(args)
    assert "estimated memory per GPU" not in caplog.text  # a CPU run has no GPU memory to plan
    monkeypatch.setattr(model_module, "has_gpu", lambda: True)
    with caplog.at_level(logging.INFO, logger="slime.backends.megatron_utils.model"):
        model_module.setup_model_and_optimizer(args)
    assert "estimated memory per GPU" in caplog.text and "optimizer state" in caplog.text

"""A Megatron-core GPTModel from Megatron-style flags (scripts/models/*.sh), on CPU or GPU."""

from __future__ import annotations

import importlib.util
import logging
from argparse import Namespace

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.spec_utils import ModuleSpec

from slime.backends.megatron_utils.attention import PackedAttention
from slime.utils.device import has_gpu, params_dtype

logger = logging.getLogger(__name__)


def transformer_engine_available() -> bool:
    if not has_gpu() or importlib.util.find_spec("transformer_engine") is None:
        return False
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - a broken TE install falls back to local layers
        logger.warning("transformer_engine is installed but does not import (%s): using local layers", exc)
        return False
    return True


def use_transformer_engine(args: Namespace) -> bool:
    return args.transformer_impl == "transformer_engine" and transformer_engine_available()


def transformer_config_from_args(args: Namespace) -> TransformerConfig:
    for flag in ("num_layers", "hidden_size", "num_attention_heads"):
        if getattr(args, flag) is None:
            raise ValueError(f"--{flag.replace('_', '-')} is not set (give model flags, or --hf-checkpoint)")
    dtype = params_dtype(args)
    on_gpu = has_gpu()
    fused = use_transformer_engine(args)  # TE implies a GPU
    return TransformerConfig(
        num_layers=args.num_layers,
        hidden_size=args.hidden_size,
        ffn_hidden_size=args.ffn_hidden_size,
        num_attention_heads=args.num_attention_heads,
        num_query_groups=args.num_query_groups,
        kv_channels=args.kv_channels,
        gated_linear_unit=args.swiglu,
        activation_func=F.silu if args.swiglu else F.gelu,
        normalization=args.normalization,
        layernorm_epsilon=args.norm_epsilon,
        add_bias_linear=args.add_bias_linear,
        add_qkv_bias=args.add_qkv_bias,
        qk_layernorm=args.qk_layernorm,
        attention_dropout=args.attention_dropout,
        hidden_dropout=args.hidden_dropout,
        init_method_std=args.init_method_std,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        tensor_model_parallel_size=args.tensor_model_parallel_size,
        pipeline_model_parallel_size=args.pipeline_model_parallel_size,
        context_parallel_size=args.context_parallel_size,
        sequence_parallel=args.sequence_parallel,
        use_cpu_initialization=args.use_cpu_initialization or not on_gpu,
        recompute_granularity=args.recompute_granularity,
        recompute_method=args.recompute_method,
        recompute_num_layers=args.recompute_num_layers,
        calculate_per_token_loss=args.calculate_per_token_loss,
        attention_softmax_in_fp32=args.attention_softmax_in_fp32,
        deterministic_mode=args.deterministic_mode,
        variable_seq_lengths=True,
        moe_token_dispatcher_type="alltoall",
        # Fused kernels exist only with CUDA (and mostly with TE); the unfused paths compute the same values.
        bias_activation_fusion=fused,
        bias_dropout_fusion=fused,
        masked_softmax_fusion=fused,
        persist_layer_norm=fused,
        apply_rope_fusion=fused,
        gradient_accumulation_fusion=fused and args.gradient_accumulation_fusion,
    )


def layer_spec(args: Namespace) -> ModuleSpec:
    if use_transformer_engine(args):
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

        return get_gpt_layer_with_transformer_engine_spec(qk_layernorm=args.qk_layernorm)
    spec = get_gpt_layer_local_spec(qk_layernorm=args.qk_layernorm, normalization=args.normalization)
    spec.submodules.self_attention.submodules.core_attention = PackedAttention
    return spec


def build_gpt_model(args: Namespace, pre_process: bool | None = None, post_process: bool | None = None) -> GPTModel:
    if args.num_experts:
        raise NotImplementedError("mixture-of-experts models are not supported yet")
    if pre_process is None:
        pre_process = parallel_state.is_pipeline_first_stage()
    if post_process is None:
        post_process = parallel_state.is_pipeline_last_stage()
    config = transformer_config_from_args(args)
    model = GPTModel(
        config=config,
        transformer_layer_spec=layer_spec(args),
        vocab_size=args.padded_vocab_size,
        max_sequence_length=args.max_position_embeddings,
        pre_process=pre_process,
        post_process=post_process,
        parallel_output=True,
        share_embeddings_and_output_weights=not args.untie_embeddings_and_output_weights,
        position_embedding_type=args.position_embedding_type,
        rotary_percent=args.rotary_percent,
        rotary_base=int(args.rotary_base),
    )
    return model.to(torch.device("cuda", torch.cuda.current_device()) if has_gpu() else "cpu")

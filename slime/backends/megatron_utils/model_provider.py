"""A Megatron-core GPTModel from Megatron-style flags (scripts/models/*.sh), on CPU or GPU.

Built as Megatron's `get_model` builds it: on the device, and under bf16/fp16 wrapped in `Float16Module`, which
casts every parameter (norms included) to the training dtype. `--custom-model-provider-path` replaces the GPTModel
construction only; device placement and mixed-precision wrapping still apply.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import logging
from argparse import Namespace

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.tensor_parallel import layers as tensor_parallel_layers
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.enums import AttnBackend
from megatron.core.transformer.module import Float16Module
from megatron.core.transformer.spec_utils import ModuleSpec

from slime.backends.megatron_utils.attention import PackedAttention
from slime.utils.device import has_gpu, params_dtype
from slime.utils.misc import load_function

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=None)
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


def attention_backend(args: Namespace) -> AttnBackend:
    return AttnBackend[args.attention_backend]


def gradient_accumulation_fusion(args: Namespace, fused: bool) -> bool:
    """Megatron's ColumnParallelLinear (the output layer, also under the TE spec) refuses the fusion unless Apex's
    `fused_weight_gradient_mlp_cuda` extension imports; pip's TE does not provide it."""
    if not (fused and args.gradient_accumulation_fusion):
        return False
    if not tensor_parallel_layers._grad_accum_fusion_available:
        _log_once("gradient accumulation fusion off: Apex's fused_weight_gradient_mlp_cuda extension is not installed")
        return False
    return True


@functools.lru_cache(maxsize=None)
def _log_once(message: str) -> None:
    logger.info(message)


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
        gradient_accumulation_fusion=gradient_accumulation_fusion(args, fused),
        attention_backend=attention_backend(args),
    )


def layer_spec(args: Namespace) -> ModuleSpec:
    if use_transformer_engine(args):
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

        spec = get_gpt_layer_with_transformer_engine_spec(qk_layernorm=args.qk_layernorm)
        if attention_backend(args) != AttnBackend.local:
            return spec
    else:
        spec = get_gpt_layer_local_spec(qk_layernorm=args.qk_layernorm, normalization=args.normalization)
    # `--attention-backend local` means Megatron's own (non-TE) attention; ours is that attention for packed input.
    spec.submodules.self_attention.submodules.core_attention = PackedAttention
    return spec


def _custom_model(args: Namespace, pre_process: bool, post_process: bool) -> torch.nn.Module:
    """slime's contract: `provider(pre_process, post_process, vp_stage=None) -> GPTModel`; vp_stage is passed only to
    providers that take it."""
    provider = load_function(args.custom_model_provider_path)
    kwargs = {"pre_process": pre_process, "post_process": post_process}
    if "vp_stage" in inspect.signature(provider).parameters:
        kwargs["vp_stage"] = None  # no virtual pipeline stages here
    model = provider(**kwargs)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"--custom-model-provider-path {args.custom_model_provider_path} returned "
                        f"{type(model).__name__}, not a torch.nn.Module (a Megatron GPTModel)")
    return model


class ValueHead(torch.nn.Module):
    """The critic's output layer: one value per position instead of the vocabulary's logits, in place of the
    GPTModel's output layer and called as it is. Replicated over tensor-parallel ranks (one output unit cannot be
    split); under sequence parallelism the hidden states are gathered first, so every rank holds every value."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.sequence_parallel = config.sequence_parallel
        self.weight = torch.nn.Parameter(torch.empty(1, config.hidden_size, dtype=config.params_dtype))
        config.init_method(self.weight)

    def forward(self, hidden_states: torch.Tensor, weight: torch.Tensor | None = None,
                runtime_gather_output: bool | None = None) -> tuple[torch.Tensor, None]:
        if self.sequence_parallel:
            from megatron.core.tensor_parallel import gather_from_sequence_parallel_region

            hidden_states = gather_from_sequence_parallel_region(hidden_states)
        return F.linear(hidden_states, self.weight.to(hidden_states.dtype)), None


def _select_output_rows(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    """Forward pre-hook of the output layer: when `module.selected_rows` is set (by `forward_logits`), only those
    positions of the [s, b, h] hidden states go through the layer."""
    rows = module.selected_rows
    if rows is None:
        return None
    assert args, "GPTModel passes the hidden states to its output layer positionally"
    return (args[0].index_select(0, rows), *args[1:]), kwargs


def enable_output_row_selection(model: torch.nn.Module) -> None:
    """Let `forward_logits` run the output layer on the positions a loss reads only (the vocabulary-wide matmuls,
    the logits and their gradient are most of a small model's step). Under sequence parallelism each rank holds a
    slice of the sequence when the output layer gathers it, so there the layer keeps computing every position."""
    layer = getattr(model, "output_layer", None)
    config = getattr(model, "config", None)
    if not isinstance(layer, torch.nn.Module) or config is None or config.sequence_parallel \
            or hasattr(layer, "selected_rows"):  # a custom provider may return a model built here, already enabled
        return
    layer.selected_rows = None
    layer.register_forward_pre_hook(_select_output_rows, with_kwargs=True)


def is_critic(args: Namespace) -> bool:
    return getattr(args, "role", "actor") == "critic"


def build_gpt_model(args: Namespace, pre_process: bool | None = None, post_process: bool | None = None
                    ) -> torch.nn.Module:
    """The model on this process's device; under bf16/fp16 inside Megatron's Float16Module (its state-dict and
    sharded-state-dict keys are the GPTModel's own)."""
    if args.num_experts:
        raise NotImplementedError("mixture-of-experts models are not supported yet")
    if pre_process is None:
        pre_process = parallel_state.is_pipeline_first_stage()
    if post_process is None:
        post_process = parallel_state.is_pipeline_last_stage()
    if args.custom_model_provider_path:
        model = _custom_model(args, pre_process, post_process)
    else:
        model = GPTModel(
            config=transformer_config_from_args(args),
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
    if is_critic(args):
        if not args.untie_embeddings_and_output_weights:
            raise AssertionError("the critic's role arguments untie the embeddings (see role_args)")
        model.output_layer = ValueHead(model.config)
    if post_process:
        enable_output_row_selection(model)
    model = model.to(torch.device("cuda", torch.cuda.current_device()) if has_gpu() else "cpu")
    config = getattr(model, "config", None)  # a Megatron module's TransformerConfig
    if config is not None and (config.bf16 or config.fp16):
        model = Float16Module(config, model)
    return model

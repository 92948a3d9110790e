"""Core attention for packed (THD, cu_seqlens) micro-batches without Transformer Engine.

Megatron's local `DotProductAttention` refuses packed input, and slime packs every micro-batch. This replacement
attends within each sequence of the pack and never builds a tokens-by-tokens mask: flash-attn's varlen kernel when
it is installed and the tensors are on a GPU, otherwise PyTorch's scaled-dot-product attention once per sequence
(`is_causal=True`, grouped-query heads natively) on 4-D `[1, heads, seq, dim]` views, the layout its flash and
memory-efficient kernels require (3-D input falls back to the math kernel, which materialises the full score
matrix). On a CPU it is exact attention.

`--attention-backend` picks the kernel family on a GPU as it does for Transformer Engine: flash (flash-attn, or
SDPA's flash kernel), fused (SDPA's memory-efficient / cuDNN kernels), unfused (SDPA's math kernel); auto and local
let PyTorch choose.

The sequence boundaries come with the micro-batch (`PackedSequences`), computed once on the host: no layer reads
`cu_seqlens` back from the GPU.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnBackend
from torch.nn.attention import SDPBackend, sdpa_kernel

from slime.utils.device import has_gpu

try:
    from flash_attn import flash_attn_varlen_func
except ImportError:  # CPU machines, or GPUs without flash-attn
    flash_attn_varlen_func = None

logger = logging.getLogger(__name__)

# SDPA kernels allowed per --attention-backend on a GPU (None: PyTorch chooses).
_SDPA_KERNELS = {
    AttnBackend.flash: [SDPBackend.FLASH_ATTENTION],
    AttnBackend.fused: [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION],
    AttnBackend.unfused: [SDPBackend.MATH],
}
_warned_no_varlen_kernel = False


@dataclass
class PackedSequences(PackedSeqParams):
    """Megatron's THD parameters plus the sequence boundaries as host integers and a device copy of `cu_seqlens`,
    both made once per micro-batch."""

    bounds: tuple[int, ...] = ()
    device_cu_seqlens: torch.Tensor | None = None


def packed_sequences(bounds: list[int], device: torch.device, cu_seqlens_on_device: bool) -> PackedSequences:
    """THD parameters for sequences with these cumulative boundaries. `cu_seqlens_q/kv` live on the device when
    Transformer Engine reads them (its attention and fused RoPE), on the host otherwise, where Megatron's unfused
    RoPE calls `.tolist()` on them once per layer (free on the host, a GPU sync on the device)."""
    host = torch.tensor(bounds, dtype=torch.int32)
    on_device = host.to(device, non_blocking=True)
    cu_seqlens = on_device if cu_seqlens_on_device else host
    longest = max((b - a for a, b in zip(bounds[:-1], bounds[1:])), default=0)
    return PackedSequences(qkv_format="thd", cu_seqlens_q=cu_seqlens, cu_seqlens_kv=cu_seqlens, max_seqlen_q=longest,
                           max_seqlen_kv=longest, bounds=tuple(bounds), device_cu_seqlens=on_device)


def _host_bounds(packed_seq_params: Any) -> list[int]:
    bounds = getattr(packed_seq_params, "bounds", ())
    return list(bounds) if bounds else packed_seq_params.cu_seqlens_q.tolist()


class PackedAttention(DotProductAttention):
    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        global _warned_no_varlen_kernel
        if has_gpu() and flash_attn_varlen_func is None and not _warned_no_varlen_kernel:
            _warned_no_varlen_kernel = True
            logger.warning("packed attention on a GPU without flash-attn (and without Transformer Engine's attention): "
                           "PyTorch SDPA is called once per sequence; install flash-attn or Transformer Engine for "
                           "varlen kernels")

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        attn_mask_type: Any = None,
        attention_bias: torch.Tensor | None = None,
        packed_seq_params: Any = None,
    ) -> torch.Tensor:
        if attention_bias is not None:
            raise NotImplementedError("attention_bias is not supported by PackedAttention")
        dropout = self.config.attention_dropout if self.training else 0.0
        # Dropout draws from the tensor-parallel RNG stream, as Megatron's own attention does.
        rng = tensor_parallel.get_cuda_rng_tracker().fork() if dropout > 0 else contextlib.nullcontext()
        kernels = _SDPA_KERNELS.get(self.config.attention_backend) if query.is_cuda else None
        with rng, (sdpa_kernel(kernels) if kernels else contextlib.nullcontext()):
            if packed_seq_params is not None:
                return self._packed(query, key, value, packed_seq_params, dropout, kernels)
            return self._padded(query, key, value, attention_mask, dropout, kernels)

    def _packed(self, query, key, value, packed_seq_params, dropout: float, kernels) -> torch.Tensor:
        # query: [tokens, heads, head_dim]; key/value: [tokens, groups, head_dim]
        if (flash_attn_varlen_func is not None and query.is_cuda and query.dtype in (torch.float16, torch.bfloat16)
                and self.config.attention_backend in (AttnBackend.flash, AttnBackend.auto, AttnBackend.local)):
            cu_seqlens = getattr(packed_seq_params, "device_cu_seqlens", None)
            if cu_seqlens is None:
                cu_seqlens = packed_seq_params.cu_seqlens_q.to(query.device)
            out = flash_attn_varlen_func(
                query, key, value, cu_seqlens.int(), cu_seqlens.int(),
                int(packed_seq_params.max_seqlen_q), int(packed_seq_params.max_seqlen_kv),
                dropout_p=dropout, softmax_scale=self.softmax_scale, causal=True,
            )
            return out.reshape(out.shape[0], -1)
        out = torch.empty_like(query)
        bounds = _host_bounds(packed_seq_params)
        for start, end in zip(bounds[:-1], bounds[1:]):
            if end == start:
                continue
            # [1, heads, seq, dim] views: the layout SDPA's fused kernels accept.
            q, k, v = (t[start:end].transpose(0, 1).unsqueeze(0) for t in (query, key, value))
            out[start:end] = self._sdpa(q, k, v, None, dropout, kernels)[0].transpose(0, 1)
        return out.reshape(out.shape[0], -1)

    def _padded(self, query, key, value, attention_mask, dropout: float, kernels) -> torch.Tensor:
        # query: [seq, batch, heads, head_dim]; attention_mask: True where attention is NOT allowed.
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        out = self._sdpa(q, k, v, None if attention_mask is None else ~attention_mask, dropout, kernels)
        seq, batch = query.shape[0], query.shape[1]
        return out.permute(2, 0, 1, 3).reshape(seq, batch, -1)

    def _sdpa(self, q, k, v, allowed, dropout: float, kernels) -> torch.Tensor:
        gqa = q.shape[1] != k.shape[1]
        if gqa and kernels is not None and SDPBackend.FLASH_ATTENTION not in kernels and SDPBackend.MATH not in kernels:
            # Only the flash and math kernels take grouped-query heads; the others get the heads repeated.
            k, v = (t.repeat_interleave(q.shape[1] // k.shape[1], dim=1) for t in (k, v))
            gqa = False
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout,
                                              is_causal=allowed is None, scale=self.softmax_scale, enable_gqa=gqa)

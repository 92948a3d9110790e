"""Core attention for packed (THD, cu_seqlens) micro-batches without Transformer Engine.

Megatron's local `DotProductAttention` refuses packed input, and slime packs every micro-batch. This replacement
attends within each sequence of the pack and never builds a tokens-by-tokens mask: flash-attn's varlen kernel when
it is installed and the tensors are on a GPU, otherwise PyTorch's scaled-dot-product attention once per sequence
(`is_causal=True`, grouped-query heads natively), which on a GPU dispatches to its flash or memory-efficient
kernels and on a CPU is exact attention.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.transformer.dot_product_attention import DotProductAttention

try:
    from flash_attn import flash_attn_varlen_func
except ImportError:  # CPU machines, or GPUs without flash-attn
    flash_attn_varlen_func = None


class PackedAttention(DotProductAttention):
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
        with rng:
            if packed_seq_params is not None:
                return self._packed(query, key, value, packed_seq_params, dropout)
            return self._padded(query, key, value, attention_mask, dropout)

    def _packed(self, query, key, value, packed_seq_params, dropout: float) -> torch.Tensor:
        # query: [tokens, heads, head_dim]; key/value: [tokens, groups, head_dim]
        cu_seqlens = packed_seq_params.cu_seqlens_q
        if flash_attn_varlen_func is not None and query.is_cuda and query.dtype in (torch.float16, torch.bfloat16):
            out = flash_attn_varlen_func(
                query, key, value, cu_seqlens.int(), cu_seqlens.int(),
                int(packed_seq_params.max_seqlen_q), int(packed_seq_params.max_seqlen_kv),
                dropout_p=dropout, softmax_scale=self.softmax_scale, causal=True,
            )
            return out.reshape(out.shape[0], -1)
        out = torch.empty_like(query)
        bounds = cu_seqlens.tolist()
        for start, end in zip(bounds[:-1], bounds[1:]):
            if end == start:
                continue
            out[start:end] = F.scaled_dot_product_attention(
                query[start:end].transpose(0, 1),
                key[start:end].transpose(0, 1),
                value[start:end].transpose(0, 1),
                dropout_p=dropout,
                is_causal=True,
                scale=self.softmax_scale,
                enable_gqa=True,
            ).transpose(0, 1)
        return out.reshape(out.shape[0], -1)

    def _padded(self, query, key, value, attention_mask, dropout: float) -> torch.Tensor:
        # query: [seq, batch, heads, head_dim]; attention_mask: True where attention is NOT allowed.
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        allowed = None if attention_mask is None else ~attention_mask
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=dropout, is_causal=allowed is None,
            scale=self.softmax_scale, enable_gqa=True,
        )
        seq, batch = query.shape[0], query.shape[1]
        return out.permute(2, 0, 1, 3).reshape(seq, batch, -1)

"""Model FLOPs from the architecture and the real sequence lengths (for TFLOP/s and MFU)."""

from __future__ import annotations

from argparse import Namespace


def forward_flops(args: Namespace, lengths: list[int], output_positions: int | None = None,
                  output_width: int | None = None) -> float:
    """Forward FLOPs of a dense decoder over sequences of these lengths (causal attention counted as half).
    The output layer runs at `output_positions` positions in all (default: every position) and has `output_width`
    outputs (default: the vocabulary; a critic's value head has one)."""
    h, heads, groups, d = args.hidden_size, args.num_attention_heads, args.num_query_groups, args.kv_channels
    mlp_matrices = 3 if args.swiglu else 2
    width = output_width or getattr(args, "padded_vocab_size", None) or args.vocab_size
    total = 0.0
    for s in lengths:
        qkv = 2 * s * h * (heads * d + 2 * groups * d)
        attention = 2 * heads * s * s * d  # QK^T and PV, each 2*s*s*d per head, halved by the causal mask
        projection = 2 * s * heads * d * h
        mlp = 2 * s * h * args.ffn_hidden_size * mlp_matrices
        total += args.num_layers * (qkv + attention + projection + mlp)
    positions = sum(lengths) if output_positions is None else output_positions
    return total + 2 * positions * h * width


def training_flops(args: Namespace, lengths: list[int], output_positions: int | None = None,
                   output_width: int | None = None) -> float:
    """Model FLOPs of a training step: backward costs twice the forward. Recompute is not counted (MFU counts the
    model's work, not the hardware's)."""
    return 3 * forward_flops(args, lengths, output_positions, output_width)

"""Device memory per GPU of a training run, estimated from its flags (model shape, parallelism, precision, optimizer,
recompute, micro-batch tokens), before anything is allocated.

  python -m slime.utils.memory_estimate <the flags of train.py / train_async.py>

The trainer logs the same table at start-up on GPUs. It is an estimate of what the trainer keeps, not a profile:

- weights in the training dtype; gradients in the DDP buffer (fp32 with --accumulate-allreduce-grads-in-fp32);
  optimizer state: fp32 master weights under bf16/fp16 plus Adam's two moments (SGD: one momentum buffer), divided
  over the data-parallel ranks with the distributed optimizer;
- activations of one micro-batch of --max-tokens-per-gpu tokens (or --micro-batch-size x --seq-length): with full
  recompute, each recompute unit's input plus one unit recomputed at a time; otherwise every layer's saved tensors,
  counted tensor by tensor for a SwiGLU / grouped-query layer with flash attention (no score matrix);
- the loss path: the logits of the micro-batch in the training dtype, their gradient, and the chunked loss's
  transient buffers (`LOG_PROBS_CHUNK_BYTES`);
- a fixed allowance for the CUDA context, NCCL buffers and allocator fragmentation.
With pipeline parallelism the most loaded stage is reported (1F1B keeps up to PP micro-batches in flight on it).
"""

from __future__ import annotations

import sys
from argparse import Namespace
from dataclasses import dataclass

GB = 1024**3
# fp32 bytes of one chunk of logits in the fused log-prob / cross-entropy (slime/backends/megatron_utils/log_probs.py);
# about three buffers of that size live at once while a chunk is processed.
LOG_PROBS_CHUNK_BYTES = 128 * 1024**2
LOG_PROBS_CHUNK_BUFFERS = 3
# CUDA context, NCCL communicators and buffers, allocator fragmentation: what a bare trainer process holds.
RUNTIME_OVERHEAD_BYTES = int(2.5 * GB)


@dataclass
class MemoryEstimate:
    parameters: int  # on the most loaded rank
    weights: float
    gradients: float
    optimizer: float  # with the flags' --use-distributed-optimizer setting
    optimizer_distributed: float
    optimizer_replicated: float
    activations: float
    loss_path: float
    overhead: float
    distributed_optimizer: bool
    data_parallel_size: int
    micro_batch_tokens: int

    def total(self, distributed_optimizer: bool | None = None) -> float:
        use = self.distributed_optimizer if distributed_optimizer is None else distributed_optimizer
        optimizer = self.optimizer_distributed if use else self.optimizer_replicated
        return self.weights + self.gradients + optimizer + self.activations + self.loss_path + self.overhead


def _dtype_bytes(args: Namespace) -> int:
    return 2 if (args.bf16 or args.fp16) else 4


def parameters_per_rank(args: Namespace) -> int:
    """Parameters held by one tensor-parallel rank of the most loaded pipeline stage."""
    h, f, L = args.hidden_size, args.ffn_hidden_size, args.num_layers
    heads, groups, d = args.num_attention_heads, args.num_query_groups, args.kv_channels
    tp, pp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size
    vocab = args.padded_vocab_size
    qkv_bias = args.add_qkv_bias or args.add_bias_linear
    qkv = h * (heads + 2 * groups) * d + ((heads + 2 * groups) * d if qkv_bias else 0)
    proj = heads * d * h + (h if args.add_bias_linear else 0)
    fc1 = h * f * (2 if args.swiglu else 1) + (f * (2 if args.swiglu else 1) if args.add_bias_linear else 0)
    fc2 = f * h + (h if args.add_bias_linear else 0)
    norms = 2 * h + (2 * d if args.qk_layernorm else 0)
    layer = (qkv + proj + fc1 + fc2) // tp + norms
    layers = -(-L // pp) * layer
    embedding = vocab * h // tp
    # The last stage holds the final norm and the output layer (with tied embeddings a copy only when PP > 1).
    output = embedding if (args.untie_embeddings_and_output_weights or pp > 1) else 0
    if pp == 1:
        return layers + embedding + h + output
    return max(layers + embedding, layers + h + output)


def micro_batch_tokens(args: Namespace) -> int:
    if args.use_dynamic_batch_size:
        tokens = args.max_tokens_per_gpu
    else:
        tokens = args.micro_batch_size * args.seq_length
    return -(-tokens // args.context_parallel_size)


def layer_activation_bytes_per_token(args: Namespace) -> float:
    """Bytes one transformer layer saves for backward per token (training dtype), flash attention, no dropout mask
    when dropout is 0. Tensor-parallel pieces are divided by TP; hidden-sized pieces too with sequence parallelism."""
    b = _dtype_bytes(args)
    h, f, d = args.hidden_size, args.ffn_hidden_size, args.kv_channels
    heads, groups, tp = args.num_attention_heads, args.num_query_groups, args.tensor_model_parallel_size
    # layer input, attention-norm output, residual after attention, MLP-norm input and output
    hidden_sized = 5 * h
    # q, k, v (after RoPE) and the attention output (also the projection's input)
    attention = 2 * heads * d + 2 * groups * d
    # fc1 output (gate and up halves) and the activation output (fc2's input)
    mlp = (3 if args.swiglu else 2) * f
    dropout_masks = 2 * h if (args.hidden_dropout or 0) > 0 else 0
    sp = tp if args.sequence_parallel else 1
    return b * ((hidden_sized + dropout_masks) / sp + (attention + mlp) / tp)


def activation_bytes(args: Namespace) -> float:
    tokens = micro_batch_tokens(args)
    b = _dtype_bytes(args)
    layers = -(-args.num_layers // args.pipeline_model_parallel_size)
    per_layer = layer_activation_bytes_per_token(args) * tokens
    if args.recompute_granularity == "full":
        unit = args.recompute_num_layers or 1
        stored = -(-layers // unit) * b * args.hidden_size * tokens / (
            args.tensor_model_parallel_size if args.sequence_parallel else 1)
        working = unit * per_layer * 2  # one unit recomputed: its activations and their gradients
    else:
        stored = layers * per_layer
        working = per_layer  # gradients of the layer being back-propagated
    in_flight = args.pipeline_model_parallel_size  # 1F1B: up to PP micro-batches' stored activations on stage 0
    return stored * in_flight + working


def loss_path_bytes(args: Namespace) -> float:
    """Logits of one micro-batch and their gradient in the training dtype, plus the chunked loss's buffers."""
    tokens = micro_batch_tokens(args)
    vocab_shard = args.padded_vocab_size // args.tensor_model_parallel_size
    return 2 * tokens * vocab_shard * _dtype_bytes(args) + LOG_PROBS_CHUNK_BUFFERS * LOG_PROBS_CHUNK_BYTES


def estimate_memory(args: Namespace) -> MemoryEstimate:
    params = parameters_per_rank(args)
    b = _dtype_bytes(args)
    dp = max(1, args.world_size // (args.tensor_model_parallel_size * args.pipeline_model_parallel_size
                                     * args.context_parallel_size))
    grad_bytes = 4 if (args.accumulate_allreduce_grads_in_fp32 or b == 4) else b
    master = 4 if b < 4 else 0
    moments = 8 if args.optimizer == "adam" else 4
    replicated = params * (master + moments)
    distributed = replicated / dp
    return MemoryEstimate(
        parameters=params,
        weights=params * b,
        gradients=params * grad_bytes,
        optimizer=distributed if args.use_distributed_optimizer else replicated,
        optimizer_distributed=distributed,
        optimizer_replicated=replicated,
        activations=activation_bytes(args),
        loss_path=loss_path_bytes(args),
        overhead=RUNTIME_OVERHEAD_BYTES,
        distributed_optimizer=bool(args.use_distributed_optimizer),
        data_parallel_size=dp,
        micro_batch_tokens=micro_batch_tokens(args),
    )


def format_estimate(estimate: MemoryEstimate, args: Namespace) -> str:
    e = estimate
    rows = [
        ("weights", e.weights, e.weights),
        ("gradients", e.gradients, e.gradients),
        ("optimizer state", e.optimizer_distributed, e.optimizer_replicated),
        ("activations", e.activations, e.activations),
        ("loss path", e.loss_path, e.loss_path),
        ("CUDA/NCCL/allocator", e.overhead, e.overhead),
        ("total", e.total(True), e.total(False)),
    ]
    chosen = "with" if e.distributed_optimizer else "without"
    recompute = args.recompute_granularity or "none"
    lines = [
        f"estimated memory per GPU: {e.parameters / 1e9:.2f}B parameters per rank, DP {e.data_parallel_size}, "
        f"TP {args.tensor_model_parallel_size}, PP {args.pipeline_model_parallel_size}, "
        f"{e.micro_batch_tokens} tokens per micro-batch, recompute {recompute} (this run: {chosen} the distributed "
        "optimizer)",
        f"{'':<22}{'distributed optimizer':>24}{'without':>12}",
    ]
    lines += [f"{name:<22}{a / GB:>20.1f} GiB{b / GB:>8.1f} GiB" for name, a, b in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from slime.utils.arguments import parse_args

    args = parse_args(sys.argv[1:] if argv is None else argv)
    print(format_estimate(estimate_memory(args), args))


if __name__ == "__main__":
    main()

"""Megatron-LM's own flags that slime scripts pass, with slime's defaults where slime resets Megatron's.

pip's megatron-core has no `megatron.training` (and so no Megatron argument parser), so these are declared here.
Names, destinations and defaults follow Megatron-LM so existing scripts run unchanged.
"""

from __future__ import annotations

import argparse


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model", "Transformer architecture (Megatron flags; see scripts/models/*.sh).")
    g.add_argument("--num-layers", type=int, default=None, help="Number of transformer layers.")
    g.add_argument("--hidden-size", type=int, default=None, help="Transformer hidden size.")
    g.add_argument(
        "--ffn-hidden-size", type=int, default=None, help="MLP inner size (default 4*hidden, or 8/3*hidden with SwiGLU)."
    )
    g.add_argument("--num-attention-heads", type=int, default=None, help="Number of query heads.")
    g.add_argument("--group-query-attention", action="store_true", help="Use grouped-query attention.")
    g.add_argument("--num-query-groups", type=int, default=1, help="Number of key/value heads with GQA.")
    g.add_argument("--kv-channels", type=int, default=None, help="Head dimension (default hidden/heads).")
    g.add_argument("--swiglu", action="store_true", help="SwiGLU MLP (gated SiLU).")
    g.add_argument(
        "--use-rotary-position-embeddings", action="store_true", help="Shorthand for --position-embedding-type rope."
    )
    g.add_argument(
        "--position-embedding-type",
        choices=["learned_absolute", "rope", "none"],
        default="learned_absolute",
        help="Position embedding.",
    )
    g.add_argument("--rotary-base", type=float, default=10000, help="RoPE theta.")
    g.add_argument("--rotary-percent", type=float, default=1.0, help="Fraction of head dim that gets RoPE.")
    g.add_argument(
        "--disable-bias-linear",
        action="store_false",
        dest="add_bias_linear",
        help="No biases in linear layers (Qwen3, Llama).",
    )
    g.add_argument("--add-qkv-bias", action="store_true", help="Bias on the QKV projection only (Qwen2/2.5).")
    g.add_argument("--normalization", choices=["LayerNorm", "RMSNorm"], default="LayerNorm", help="Norm layer type.")
    g.add_argument("--norm-epsilon", type=float, default=1e-5, help="Epsilon of the norm layers.")
    g.add_argument("--qk-layernorm", action="store_true", help="Normalise queries and keys per head (Qwen3).")
    g.add_argument("--vocab-size", type=int, default=None, help="Vocabulary size (embedding rows before padding).")
    g.add_argument(
        "--make-vocab-size-divisible-by",
        type=int,
        default=128,
        help="Pad the vocabulary to a multiple of this times the tensor-parallel size.",
    )
    g.add_argument(
        "--untie-embeddings-and-output-weights",
        action="store_true",
        help="Separate input embedding and output layer weights (most models above 1B).",
    )
    g.add_argument("--max-position-embeddings", type=int, default=None, help="Maximum positions (default seq-length).")
    g.add_argument("--seq-length", type=int, default=None, help="Sequence length placeholder for Megatron (4096).")
    g.add_argument("--init-method-std", type=float, default=0.02, help="Std of the random initialisation.")
    g.add_argument("--use-cpu-initialization", action="store_true", help="Initialise weights on CPU.")
    g.add_argument(
        "--transformer-impl",
        choices=["local", "transformer_engine"],
        default="transformer_engine",
        help="Layer implementation; falls back to 'local' when Transformer Engine cannot be imported.",
    )
    g.add_argument("--spec", nargs="*", default=None, help="Module path of a custom Megatron layer spec.")
    g.add_argument("--model-name", type=str, default=None, help="Model family for HF conversion (default from HF).")
    g.add_argument("--num-experts", type=int, default=None, help="Mixture-of-experts expert count (not supported yet).")


def add_parallel_and_training_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("training", "Batching, parallelism, precision and recompute.")
    g.add_argument("--micro-batch-size", type=int, default=1, help="Samples per micro-batch without dynamic batching.")
    g.add_argument(
        "--global-batch-size",
        type=int,
        default=None,
        help="Samples (not prompts) per optimizer step. SFT: set it equal to --rollout-batch-size.",
    )
    g.add_argument(
        "--use-dynamic-batch-size",
        action="store_true",
        help="Pack micro-batches by token budget (--max-tokens-per-gpu) instead of --micro-batch-size.",
    )
    g.add_argument(
        "--max-tokens-per-gpu", type=int, default=None, help="Token budget of one packed micro-batch on one device."
    )
    g.add_argument(
        "--log-probs-max-tokens-per-gpu", type=int, default=None, help="Token budget for log-prob forwards."
    )
    g.add_argument("--balance-data", action="store_true", help="Balance micro-batches across DP ranks by FLOPs.")
    g.add_argument("--balance-by-flops", action="store_true", help="Pack micro-batches by FLOPs (needs dynamic bs).")
    g.add_argument(
        "--calculate-per-token-loss",
        action="store_true",
        help="Average the loss over every trained token of the step (default: mean over samples of per-sample means).",
    )
    g.add_argument("--seed", type=int, default=1234, help="Random seed of model initialisation and dropout.")
    g.add_argument("--tensor-model-parallel-size", type=int, default=1, help="Tensor parallel size.")
    g.add_argument("--sequence-parallel", action="store_true", help="Sequence parallelism (ignored when TP=1).")
    g.add_argument("--pipeline-model-parallel-size", type=int, default=1, help="Pipeline parallel size.")
    g.add_argument("--num-layers-per-virtual-pipeline-stage", type=int, default=None, help="Interleaved PP.")
    g.add_argument("--context-parallel-size", type=int, default=1, help="Context parallel size.")
    g.add_argument("--allgather-cp", action="store_true", help="Context parallelism by all-gathering K/V (slime).")
    g.add_argument("--expert-model-parallel-size", type=int, default=1, help="Expert parallel size.")
    g.add_argument("--expert-tensor-parallel-size", type=int, default=None, help="Expert tensor parallel size.")
    g.add_argument(
        "--use-distributed-optimizer",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Shard optimizer state (and the fp32 master weights) over DP ranks. On by default with Adam, as slime "
        "sets it; Megatron's distributed optimizer supports Adam only, so SGD runs without it.",
    )
    g.add_argument("--overlap-grad-reduce", action="store_true", help="Overlap DP gradient reduce with backward.")
    g.add_argument("--overlap-param-gather", action="store_true", help="Overlap parameter all-gather with forward.")
    g.add_argument(
        "--recompute-granularity", choices=["full", "selective"], default=None, help="Activation recompute."
    )
    g.add_argument("--recompute-method", choices=["uniform", "block"], default=None, help="How layers are recomputed.")
    g.add_argument("--recompute-num-layers", type=int, default=None, help="Layers per recompute unit.")
    g.add_argument("--attention-dropout", type=float, default=0.1, help="Attention dropout (Megatron default 0.1).")
    g.add_argument("--hidden-dropout", type=float, default=0.1, help="Hidden dropout (Megatron default 0.1).")
    g.add_argument("--bf16", action="store_true", help="bf16 training (slime's default on GPU; fp32 on CPU).")
    g.add_argument("--fp16", action="store_true", help="fp16 training.")
    g.add_argument(
        "--accumulate-allreduce-grads-in-fp32", action="store_true", help="Keep gradient buffers in fp32."
    )
    g.add_argument("--attention-softmax-in-fp32", action="store_true", help="Compute attention softmax in fp32.")
    g.add_argument(
        "--attention-backend",
        choices=["flash", "fused", "unfused", "local", "auto"],
        default="auto",
        help="Attention kernel family; the CPU path always uses exact PyTorch attention.",
    )
    g.add_argument("--no-gradient-accumulation-fusion", action="store_false", dest="gradient_accumulation_fusion")
    g.add_argument("--deterministic-mode", action="store_true", help="Deterministic kernels.")
    g.add_argument("--train-iters", type=int, default=None, help="Megatron train iterations (derived by slime).")


def add_optimizer_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("optimizer", "Optimizer and learning-rate schedule (counted in samples).")
    g.add_argument("--optimizer", choices=["adam", "sgd"], default="adam", help="Optimizer.")
    g.add_argument("--lr", type=float, default=1e-6, help="Peak learning rate (slime default 1e-6).")
    g.add_argument("--min-lr", type=float, default=0.0, help="Learning rate at the end of decay.")
    g.add_argument(
        "--lr-decay-style",
        choices=["constant", "linear", "cosine", "inverse-square-root", "WSD"],
        default="linear",
        help="Decay after warm-up.",
    )
    g.add_argument("--lr-decay-iters", type=int, default=None, help="Decay length in steps (default: all steps).")
    g.add_argument("--lr-warmup-fraction", type=float, default=None, help="Warm-up as a fraction of the decay.")
    g.add_argument("--lr-warmup-iters", type=int, default=0, help="Warm-up length in optimizer steps.")
    g.add_argument("--lr-warmup-init", type=float, default=0.0, help="Learning rate at the start of warm-up.")
    g.add_argument("--weight-decay", type=float, default=0.01, help="Decoupled weight decay.")
    g.add_argument("--adam-beta1", type=float, default=0.9, help="Adam beta1.")
    g.add_argument("--adam-beta2", type=float, default=0.999, help="Adam beta2.")
    g.add_argument("--adam-eps", type=float, default=1e-8, help="Adam epsilon.")
    g.add_argument("--clip-grad", type=float, default=1.0, help="Global gradient-norm clip (0 disables).")
    g.add_argument("--reset-optimizer-states", action="store_true", help="Zero optimizer state every rollout.")


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("checkpoint", "Where weights come from and go to.")
    g.add_argument(
        "--hf-checkpoint", type=str, default=None, help="HF model directory: tokenizer, config, SGLang model path."
    )
    g.add_argument(
        "--ref-load",
        type=str,
        default=None,
        help="Reference model checkpoint; also the initial actor weights when --load holds no checkpoint yet.",
    )
    g.add_argument("--ref-ckpt-step", type=int, default=None, help="Iteration of --ref-load to read.")
    g.add_argument("--load", type=str, default=None, help="Resume directory (point it at a previous --save).")
    g.add_argument("--save", type=str, default=None, help="Checkpoint output directory.")
    g.add_argument("--save-interval", type=int, default=None, help="Save every N rollouts (and at the end).")
    g.add_argument(
        "--save-hf", type=str, default=None, help="Also export HF safetensors here; may contain {rollout_id}."
    )
    g.add_argument("--ckpt-step", type=int, default=None, help="Iteration of --load to read (default: latest).")
    g.add_argument(
        "--ckpt-format",
        choices=["torch", "torch_dist", "zarr", "torch_dcp", "fsdp_dtensor"],
        default="torch_dist",
        help="Checkpoint format (only torch_dist is supported).",
    )
    g.add_argument("--no-load-optim", action="store_true", help="Do not restore optimizer state.")
    g.add_argument("--no-load-rng", action="store_true", help="Do not restore RNG state.")
    g.add_argument("--no-save-optim", action="store_true", help="Do not save optimizer state.")
    g.add_argument("--no-save-rng", action="store_true", help="Do not save RNG state.")
    g.add_argument("--finetune", action="store_true", help="Load weights only and start at iteration 0.")
    g.add_argument("--async-save", action="store_true", help="Save in the background.")

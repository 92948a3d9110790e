"""Training throughput of the Megatron trainer: tokens/s, TFLOP/s and MFU for Qwen3-shaped models (random weights).

On CPU the MFU's peak is this machine's fp32 matmul rate, measured in the same run; on GPU it is the device's
dense bf16 peak (or --peak-tflops). Presets run side by side in one process:

  python benchmarks/bench_train.py                              # CPU: ~10M and ~50M parameter Qwen3
  python benchmarks/bench_train.py --presets qwen3-4b --steps 5 # one GPU: a Qwen3-4B-shaped model
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from slime.backends.megatron_utils.actor import MegatronTrainRayActor
from slime.utils.arguments import parse_args
from slime.utils.device import has_gpu, measured_cpu_matmul_tflops
from slime.utils.train_data import convert_samples_to_train_data, split_train_data_by_dp
from slime.utils.types import Sample

# name: (layers, hidden, ffn, heads, kv heads, head dim, vocab, tied embeddings)
PRESETS = {
    "tiny": (2, 64, 128, 4, 2, 16, 1024, False),
    "qwen3-10m": (4, 256, 768, 4, 2, 64, 16384, False),
    "qwen3-50m": (8, 512, 1536, 8, 4, 64, 32000, False),
    "qwen3-4b": (36, 2560, 9728, 32, 8, 128, 151936, True),
}


def preset_args(name: str, seq_len: int, seqs_per_step: int, steps: int):
    layers, hidden, ffn, heads, groups, head_dim, vocab, tied = PRESETS[name]
    flags = [
        "--num-layers", str(layers), "--hidden-size", str(hidden), "--ffn-hidden-size", str(ffn),
        "--num-attention-heads", str(heads), "--group-query-attention", "--num-query-groups", str(groups),
        "--kv-channels", str(head_dim), "--vocab-size", str(vocab), "--swiglu", "--use-rotary-position-embeddings",
        "--disable-bias-linear", "--normalization", "RMSNorm", "--norm-epsilon", "1e-6", "--qk-layernorm",
        "--attention-dropout", "0", "--hidden-dropout", "0", "--rollout-batch-size", str(seqs_per_step),
        "--global-batch-size", str(seqs_per_step), "--num-rollout", str(steps + 1), "--loss-type", "sft_loss",
        "--calculate-per-token-loss", "--disable-compute-advantages-and-returns", "--debug-train-only",
        "--actor-num-gpus-per-node", "1", "--use-dynamic-batch-size", "--max-tokens-per-gpu",
        str(seq_len * seqs_per_step), "--lr", "1e-5",
    ]
    if not tied:
        flags.append("--untie-embeddings-and-output-weights")
    if name == "qwen3-4b":
        flags += ["--recompute-granularity", "full", "--recompute-method", "uniform", "--recompute-num-layers", "1"]
    return parse_args(flags)


def run_preset(name: str, seq_len: int, seqs_per_step: int, steps: int) -> dict:
    args = preset_args(name, seq_len, seqs_per_step, steps)
    actor = MegatronTrainRayActor()
    actor.init(args)
    params = sum(p.numel() for p in actor.model.parameters())
    generator = torch.Generator().manual_seed(0)
    results = []
    for rollout_id in range(steps + 1):  # the first step warms up (allocations, kernel selection)
        samples = [Sample(index=i, tokens=torch.randint(0, args.vocab_size, (seq_len,), generator=generator).tolist(),
                          response_length=seq_len // 2, reward=0) for i in range(seqs_per_step)]
        shard = split_train_data_by_dp(args, convert_samples_to_train_data(args, samples), 1)[0]
        results += actor.train(rollout_id, shard)
    measured = results[1:]
    del actor
    return {
        "parameters_millions": round(params / 1e6, 1),
        "tokens_per_step": seq_len * seqs_per_step,
        "step_time_s": round(statistics.median(m["step_time"] for m in measured), 3),
        "tokens_per_s": round(statistics.median(m["tokens_per_s"] for m in measured), 1),
        "tflops": round(statistics.median(m["tflops"] for m in measured), 4),
        "mfu": round(statistics.median(m["mfu"] for m in measured), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["qwen3-10m", "qwen3-50m"], choices=sorted(PRESETS))
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--seqs-per-step", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results", "train.json"))
    options = parser.parse_args()
    device = torch.cuda.get_device_name() if has_gpu() else f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "device": device,
        "machine": f"{platform.machine()}, Python {platform.python_version()}, torch {torch.__version__}",
        "dtype": "bf16" if has_gpu() else "fp32",
        "peak_tflops_used_for_mfu": None if has_gpu() else round(measured_cpu_matmul_tflops(), 4),
        "results": {},
    }
    for name in options.presets:
        report["results"][name] = run_preset(name, options.seq_len, options.seqs_per_step, options.steps)
        print(name, report["results"][name], flush=True)
    os.makedirs(os.path.dirname(options.output), exist_ok=True)
    with open(options.output, "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

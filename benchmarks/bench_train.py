"""Training throughput of the Megatron trainer against its compute floor, for Qwen3-shaped models (random weights).

For every measured step the same process also times the step's FLOOR: the step's own matrix products (GEMMs and
attention kernels, forward and backward, recorded from one step at the exact shapes and layouts it runs) replayed
alone on random tensors, plus one pass over the logits' bytes at this machine's memory bandwidth (a copy of a
logits-sized buffer, measured alongside). Step and floor alternate, so a busy machine slows both; the ratio
step/floor is reported per step and as the median. The kernels the floor leaves out but the step must run (the
softmax, Adam, the passes over the gradient buffer; `outside_floor`) are timed alone too, giving the least
step/floor the step's work allows. The step is the in-process call of the trainer
(`MegatronTrainRayActor.train`: tensorising the shard, zeroing gradients, forward, backward, optimizer), wall time.
A torch.profiler pass then splits one step into matmuls, attention kernels, fills, copies and the rest.

On CPU the MFU's peak is this machine's fp32 matmul rate, measured in the same run; on GPU the device's dense bf16
peak (or --peak-tflops). Each preset carries its data shape (sequences per step, sequence length); --seq-len and
--seqs-per-step override it:

  python benchmarks/bench_train.py                              # CPU: the issue-12 shape, ~10M and ~50M Qwen3
  python benchmarks/bench_train.py --presets qwen3-4b --steps 5 # one GPU: a Qwen3-4B-shaped model
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from slime.backends.megatron_utils.actor import MegatronTrainRayActor
from slime.utils.arguments import parse_args
from slime.utils.device import device, has_gpu, measured_cpu_matmul_tflops, synchronize
from slime.utils.train_data import convert_samples_to_train_data, split_train_data_by_dp
from slime.utils.types import Sample

# name: (layers, hidden, ffn, heads, kv heads, head dim, vocab, tied embeddings, sequences per step, sequence length)
PRESETS = {
    "tiny": (2, 64, 128, 4, 2, 16, 1024, False, 4, 512),
    # Issue 12's shape: the real Qwen3 vocabulary on a tiny body, 8 short conversations (~280 tokens) per step, so
    # the vocabulary-wide output layer and loss are most of the step.
    "qwen3-h64-v152k": (2, 64, 128, 4, 2, 16, 151936, True, 8, 35),
    "qwen3-10m": (4, 256, 768, 4, 2, 64, 16384, False, 4, 512),
    "qwen3-50m": (8, 512, 1536, 8, 4, 64, 32000, False, 4, 512),
    "qwen3-4b": (36, 2560, 9728, 32, 8, 128, 151936, True, 4, 512),
}
GEMMS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default,
         torch.ops.aten.baddbmm.default, torch.ops.aten.mm.out, torch.ops.aten.addmm.out}


def is_product(func: Any) -> bool:
    """Matrix products: GEMMs, and attention kernels (their QK^T and PV products), forward and backward."""
    name = func.name()
    return func in GEMMS or "scaled_dot_product" in name or "flash_attn" in name


def preset_args(name: str, seq_len: int, seqs_per_step: int, steps: int):
    layers, hidden, ffn, heads, groups, head_dim, vocab, tied, _, _ = PRESETS[name]
    flags = [
        "--num-layers", str(layers), "--hidden-size", str(hidden), "--ffn-hidden-size", str(ffn),
        "--num-attention-heads", str(heads), "--group-query-attention", "--num-query-groups", str(groups),
        "--kv-channels", str(head_dim), "--vocab-size", str(vocab), "--swiglu", "--use-rotary-position-embeddings",
        "--disable-bias-linear", "--normalization", "RMSNorm", "--norm-epsilon", "1e-6", "--qk-layernorm",
        "--attention-dropout", "0", "--hidden-dropout", "0", "--rollout-batch-size", str(seqs_per_step),
        "--global-batch-size", str(seqs_per_step), "--num-rollout", str(steps + 2), "--loss-type", "sft_loss",
        "--calculate-per-token-loss", "--disable-compute-advantages-and-returns", "--debug-train-only",
        "--actor-num-gpus-per-node", "1", "--use-dynamic-batch-size", "--max-tokens-per-gpu",
        str(seq_len * seqs_per_step), "--optimizer", "adam", "--lr", "1e-5",
    ]
    if not tied:
        flags.append("--untie-embeddings-and-output-weights")
    if name == "qwen3-4b":
        flags += ["--recompute-granularity", "full", "--recompute-method", "uniform", "--recompute-num-layers", "1"]
    return parse_args(flags)


class ProductRecorder(TorchDispatchMode):
    """Records every matrix product of the code it wraps (`is_product`): the op and its tensors' shapes, strides and
    dtypes (autograd's backward runs under it too), so that the same products can be replayed alone."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[Any, tuple, dict]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if is_product(func):
            spec = lambda x: (x.shape, x.stride(), x.dtype) if isinstance(x, torch.Tensor) else x  # noqa: E731
            self.calls.append((func, tuple(spec(a) for a in args), {k: spec(v) for k, v in kwargs.items()}))
        return func(*args, **kwargs)


def replayable(calls: list[tuple[Any, tuple, dict]]) -> list[tuple[Any, tuple, dict]]:
    """The recorded products with random tensors of the recorded shapes and layouts, one per distinct layout (the
    layers of a model repeat theirs; memory stays that of one layer's operands). Outputs are allocated by each call,
    as in the step."""
    tensors: dict[tuple, torch.Tensor] = {}

    def make(x):
        if isinstance(x, tuple) and len(x) == 3 and isinstance(x[2], torch.dtype):
            if x not in tensors:
                tensor = torch.empty_strided(x[0], x[1], dtype=x[2], device=device())
                # Values do not change a product's time; integer operands (attention's RNG seeds) are zeros.
                tensors[x] = tensor.normal_() if tensor.is_floating_point() else tensor.zero_()
            return tensors[x]
        return x

    return [(func, tuple(make(a) for a in args), {k: make(v) for k, v in kwargs.items()})
            for func, args, kwargs in calls]


def timed(fn) -> float:
    synchronize()
    started = time.perf_counter()
    fn()
    synchronize()
    return time.perf_counter() - started


def matmul_flops(calls: list[tuple[Any, tuple, dict]]) -> float:
    total = 0.0
    for func, args, _ in calls:
        if func not in GEMMS:
            continue
        first, second = [a for a in args if isinstance(a, torch.Tensor)][-2:]  # after addmm's added term
        batch = first.shape[0] if first.dim() == 3 else 1
        total += 2 * batch * first.shape[-2] * first.shape[-1] * second.shape[-1]
    return total


def outside_floor(args, parameters: int, logits_rows: int, logits_dtype: torch.dtype) -> dict[str, float]:
    """The work a step must do besides its matrix products, each kernel timed alone at the step's sizes (median of
    20, seconds): what the floor leaves out, so floor + these is the least a step could take with nothing else
    (no Python, no layer's small ops). The softmax over the logits (torch's fused kernel, into a gradient-sized
    buffer) and the backward's scale of it; Adam over every parameter (torch's fused kernel, as the trainer runs it);
    the passes over the gradient buffer (zeroing, the per-token loss's scale, the NaN check's norm (the trainer's
    DDP checks), clipping's norm and scale); and with tied embeddings the lookup's dense gradient, zero-filled,
    summed with the output layer's and added into the buffer."""
    vocab, hidden, on = args.padded_vocab_size, args.hidden_size, device()
    logits = torch.randn(logits_rows, vocab, dtype=logits_dtype, device=on)
    probabilities = torch.empty_like(logits, dtype=torch.promote_types(logits_dtype, torch.float32))
    weights = torch.nn.Parameter(torch.randn(parameters, device=on))
    weights.grad = torch.randn_like(weights)
    adam = torch.optim.AdamW([weights], lr=1e-9, weight_decay=args.weight_decay, fused=True)
    grads = weights.grad
    kernels = {
        "softmax": lambda: torch.softmax(logits.to(probabilities.dtype), -1, out=probabilities),
        "softmax_backward_scale": lambda: probabilities.mul_(1.0),
        "adam": adam.step,
        "gradient_zeroing": grads.zero_,
        "nan_check_norm": lambda: grads.norm(),
    }
    if args.calculate_per_token_loss:
        kernels["per_token_scale"] = lambda: grads.mul_(1.0)
    if args.clip_grad > 0:
        kernels["clip_norm"] = lambda: torch.linalg.vector_norm(grads)
        kernels["clip_scale"] = lambda: grads.mul_(1.0)
    if not args.untie_embeddings_and_output_weights:
        table, other = torch.randn(vocab, hidden, device=on), torch.randn(vocab, hidden, device=on)
        kernels["tied_embedding_dense_gradient"] = lambda: torch.zeros(vocab, hidden, device=on)
        kernels["tied_embedding_gradients_summed"] = lambda: table + other
        kernels["tied_embedding_into_buffer"] = lambda: table.add_(other)
    seconds = {}
    for name, kernel in kernels.items():
        kernel()  # first touch of its memory
        seconds[name] = round(statistics.median(timed(kernel) for _ in range(20)), 7)
    return seconds


def profile_step(actor: MegatronTrainRayActor, rollout_id: int, shard: dict) -> dict[str, float]:
    """One step under torch.profiler, its self time split into kinds of work (seconds, profiler overhead
    included)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if has_gpu() else [])
    with profile(activities=activities) as prof:
        actor.train(rollout_id, shard)
    kinds = {"matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"),
             "attention": ("scaled_dot_product", "flash_attn"),
             "fill": ("aten::fill_", "aten::zero_"),
             "copy": ("aten::copy_", "aten::index_select", "aten::index_copy_", "aten::index_add_", "aten::cat")}
    split = {kind: 0.0 for kind in [*kinds, "other"]}
    for event in prof.key_averages():
        seconds = (event.self_device_time_total if has_gpu() else event.self_cpu_time_total) / 1e6
        kind = next((k for k, names in kinds.items() if any(n in event.key for n in names)), "other")
        split[kind] += seconds
    return {kind: round(seconds, 4) for kind, seconds in split.items()}


def run_preset(name: str, seq_len: int | None, seqs_per_step: int | None, steps: int) -> dict:
    seqs_per_step = seqs_per_step or PRESETS[name][8]
    seq_len = seq_len or PRESETS[name][9]
    args = preset_args(name, seq_len, seqs_per_step, steps)
    actor = MegatronTrainRayActor()
    actor.init(args)
    params = sum(p.numel() for p in actor.model.parameters())
    generator = torch.Generator().manual_seed(0)

    def shard():
        samples = [Sample(index=i, tokens=torch.randint(0, args.vocab_size, (seq_len,), generator=generator).tolist(),
                          response_length=seq_len // 2, reward=0) for i in range(seqs_per_step)]
        return split_train_data_by_dp(args, convert_samples_to_train_data(args, samples), 1)[0]

    actor.train(0, shard())  # warm-up (allocations, kernel selection)
    recorder = ProductRecorder()
    with recorder:
        actor.train(1, shard())
    products = replayable(recorder.calls)
    # The logits: the product whose output is vocabulary wide ([rows, hidden] @ [hidden, vocab]).
    logits_rows, logits_dtype = next((a[0][0][0], a[0][2]) for func, a, _ in recorder.calls
                                     if func in GEMMS and a[-1][0][-1] == args.padded_vocab_size)
    source = torch.empty(logits_rows * args.padded_vocab_size, dtype=logits_dtype, device=device()).normal_()
    logits_bytes = source.numel() * source.element_size()
    target = torch.empty_like(source)
    steps_s, floors_s, products_s, passes_s, metrics = [], [], [], [], []
    for rollout_id in range(2, steps + 2):
        data = shard()
        started = time.perf_counter()
        metrics += actor.train(rollout_id, data)
        steps_s.append(time.perf_counter() - started)
        products_s.append(timed(lambda: [func(*a, **k) for func, a, k in products]))
        copy_s = timed(lambda: target.copy_(source))
        passes_s.append(copy_s / 2)  # a copy reads and writes the bytes once each: two passes
        floors_s.append(products_s[-1] + passes_s[-1])
    ratios = [s / f for s, f in zip(steps_s, floors_s)]
    outside = outside_floor(args, params, logits_rows, logits_dtype)
    tokens = seq_len * seqs_per_step
    median = statistics.median
    result = {
        "parameters_millions": round(params / 1e6, 1),
        "tokens_per_step": tokens,
        "padding_fraction": round(median(m["padding_fraction"] for m in metrics), 4),
        "step_s": round(median(steps_s), 4),
        "trainer_step_time_s": round(median(m["step_time"] for m in metrics), 4),
        "floor_s": round(median(floors_s), 4),
        "floor_products_s": round(median(products_s), 4),
        "floor_logits_pass_s": round(median(passes_s), 4),
        "step_over_floor": round(median(ratios), 3),
        "step_over_floor_each": [round(r, 3) for r in ratios],
        "outside_floor_s": outside,
        # The least step / floor this step's work allows: floor plus the kernels it leaves out, over the floor.
        "least_step_over_floor": round((median(floors_s) + sum(outside.values())) / median(floors_s), 3),
        "matmuls_per_step": sum(func in GEMMS for func, _, _ in products),
        "attention_kernels_per_step": sum(func not in GEMMS for func, _, _ in products),
        "matmul_gflop_per_step": round(matmul_flops(products) / 1e9, 3),
        "logits_rows": logits_rows,
        "logits_mb": round(logits_bytes / 1e6, 1),
        "memory_gb_per_s": round(logits_bytes / median(passes_s) / 1e9, 1),
        "tokens_per_s": round(tokens / median(steps_s), 1),
        "tflops": round(median(m["tflops"] for m in metrics), 4),
        "mfu": round(median(m["mfu"] for m in metrics), 4),
        "profile_s": profile_step(actor, steps + 2, shard()),
    }
    del actor
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["qwen3-h64-v152k", "qwen3-10m", "qwen3-50m"],
                        choices=sorted(PRESETS))
    parser.add_argument("--seq-len", type=int, default=None, help="Default: the preset's.")
    parser.add_argument("--seqs-per-step", type=int, default=None, help="Default: the preset's.")
    parser.add_argument("--steps", type=int, default=10, help="Measured steps (after two warm-up steps).")
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results", "train.json"))
    options = parser.parse_args()
    device_name = torch.cuda.get_device_name() if has_gpu() else \
        f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "device": device_name,
        "machine": f"{platform.machine()}, Python {platform.python_version()}, torch {torch.__version__}",
        "dtype": "bf16" if has_gpu() else "fp32",
        "peak_tflops_used_for_mfu": None if has_gpu() else round(measured_cpu_matmul_tflops(), 4),
        "load_average_1min": [os.getloadavg()[0]],  # at the start, then at the end: the machine may be shared
        "results": {},
    }
    for name in options.presets:
        report["results"][name] = run_preset(name, options.seq_len, options.seqs_per_step, options.steps)
        print(name, report["results"][name], flush=True)
    report["load_average_1min"].append(os.getloadavg()[0])
    os.makedirs(os.path.dirname(options.output), exist_ok=True)
    with open(options.output, "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

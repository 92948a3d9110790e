"""The GPU readiness check: what a first GPU must confirm before the seed's 8-GPU run, in one process on one GPU, in
under 10 minutes, as a table (and JSON). Run it through benchmarks/gpu_check.sh.

Rows:
- environment: torch / CUDA device, Transformer Engine, flash-attn, Apex's fused weight-gradient extension;
- a Qwen3-4B-shaped SFT step with full recompute on 9,216 tokens (the seed's micro-batch): tokens/s, MFU, peak
  memory next to slime.utils.memory_estimate's estimate for the same flags (run first, on an empty GPU; with SGD
  when one GPU cannot hold Adam's full state, ~79 GiB, which the seed run divides over 8 GPUs);
- a Qwen3-0.6B-shaped SFT step in bf16 with the Transformer Engine spec and with the local spec: the first-step
  loss within bf16 tolerance of an fp32 reference on the same weights and batch;
- packed attention equal to per-sequence attention (log-probs of a pack vs each sequence alone), for each spec;
- a checkpoint saved in the background (--async-save), loaded into a fresh trainer (weights bit-equal), and the
  resumed step's loss equal to the uninterrupted one;
- the HF export equal to the weights;
- the fused, chunked log-prob / entropy on bf16 logits of Qwen3's vocabulary equal to the plain full-width path
  (values and gradients), with its time and peak memory next to the plain path's;
- RL (benchmarks/gpu_check_rl.py): a GRPO rollout of two optimizer steps with the reference model swapped in and
  the old-log-prob pass, a PPO critic's value head learning fixed rewards, and the weight-sync payloads on CUDA
  (CUDA IPC buckets opened by another process, an NCCL group of one, checksums of device tensors).

`--dry-run` runs the same code on the CPU with tiny shapes in fp32 (Transformer Engine and NCCL rows are skipped):
it checks the script's plumbing, and the tests run it. `--only rl` runs the environment and RL rows alone, and
merges them into an existing JSON in place of their earlier results.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gpu_check_rl import RL_ROWS, RLChecks  # noqa: E402
from slime.backends.megatron_utils.actor import MegatronTrainRayActor  # noqa: E402
from slime.backends.megatron_utils.checkpoint import finalize_async_save  # noqa: E402
from slime.backends.megatron_utils.hf_weights import iter_hf_tensors, save_hf_weights  # noqa: E402
from slime.backends.megatron_utils.log_probs import vocab_parallel_log_probs  # noqa: E402
from slime.backends.megatron_utils.loss import get_log_probs_and_entropy  # noqa: E402
from slime.backends.megatron_utils.model import forward_logits, get_batch  # noqa: E402
from slime.backends.megatron_utils.model_provider import transformer_engine_available  # noqa: E402
from slime.utils.arguments import parse_args  # noqa: E402
from slime.utils.device import device, has_gpu, synchronize  # noqa: E402
from slime.utils.memory_estimate import GB, estimate_memory  # noqa: E402
from slime.utils.train_data import convert_samples_to_train_data, split_train_data_by_dp, tensorize  # noqa: E402
from slime.utils.types import Sample  # noqa: E402

TINY = ["--num-layers", "2", "--hidden-size", "64", "--ffn-hidden-size", "128", "--num-attention-heads", "4",
        "--group-query-attention", "--num-query-groups", "2", "--kv-channels", "16", "--swiglu",
        "--use-rotary-position-embeddings", "--disable-bias-linear", "--normalization", "RMSNorm",
        "--norm-epsilon", "1e-6", "--rotary-base", "1000000", "--vocab-size", "512", "--qk-layernorm"]
BF16_LOSS_RTOL = 2e-2
BF16_LOG_PROB_ATOL = 5e-2


def model_flags(name: str, dry_run: bool) -> list[str]:
    """The architecture flags of scripts/models/<name>.sh (expanded by bash), or a tiny model for --dry-run."""
    if dry_run:
        return list(TINY)
    script = f'source "{REPO}/scripts/models/{name}.sh"; printf "%s\\n" "${{MODEL_ARGS[@]}}"'
    out = subprocess.run(["bash", "-c", script], check=True, capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line]


def run_flags(model: list[str], tokens_per_step: int, steps: int, *extra: str) -> argparse.Namespace:
    return parse_args([
        *model, "--rollout-batch-size", "4", "--global-batch-size", "4", "--num-rollout", str(steps),
        "--loss-type", "sft_loss", "--calculate-per-token-loss", "--disable-compute-advantages-and-returns",
        "--debug-train-only", "--actor-num-gpus-per-node", "1", "--use-dynamic-batch-size",
        "--max-tokens-per-gpu", str(tokens_per_step), "--optimizer", "adam", "--lr", "1e-5",
        "--lr-decay-style", "constant", "--attention-dropout", "0", "--hidden-dropout", "0",
        "--attention-softmax-in-fp32", *extra,
    ])


def shard(args: argparse.Namespace, seq_len: int, seed: int) -> dict:
    """Four random sequences of `seq_len` tokens, the second half of each trained."""
    generator = torch.Generator().manual_seed(seed)
    samples = [Sample(index=i, tokens=torch.randint(0, args.vocab_size, (seq_len,), generator=generator).tolist(),
                      response_length=seq_len // 2, loss_mask=[1] * (seq_len // 2), reward=0) for i in range(4)]
    return split_train_data_by_dp(args, convert_samples_to_train_data(args, samples), 1)[0]


def trainer(args: argparse.Namespace, fp32: bool = False) -> MegatronTrainRayActor:
    if fp32:
        args.bf16 = False  # the reference: fp32 weights and math on the GPU as well
    actor = MegatronTrainRayActor()
    actor.init(args)
    return actor


def release(*actors: MegatronTrainRayActor) -> None:
    for actor in actors:
        del actor.model, actor.optimizer, actor.scheduler
    if has_gpu():
        torch.cuda.empty_cache()


class Check(RLChecks):
    def __init__(self, dry_run: bool, workdir: Path):
        self.dry_run, self.workdir = dry_run, workdir
        self.rows: list[dict[str, Any]] = []
        self.specs = ["local"] + (["transformer_engine"] if transformer_engine_available() else [])
        small = "qwen3-0.6B"
        self.small_model = model_flags(small, dry_run)
        self.small_seq = 64 if dry_run else 1024
        self.attention_backend = "flash" if self._version("flash-attn") and has_gpu() else "auto"

    def row(self, check: str, status: str, detail: str, **numbers: Any) -> None:
        self.rows.append({"check": check, "status": status, "detail": detail, **numbers})

    @staticmethod
    def _version(package: str) -> str | None:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    def guarded(self, name: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - one failed check must not hide the others
            traceback.print_exc()
            self.row(name, "FAIL", " ".join(f"{type(exc).__name__}: {exc}".split())[:300])
        finally:
            # A trainer's model and optimizer reference each other (the config's grad-scale and no-sync hooks):
            # only the cycle collector returns their GPU memory before the next row builds its own.
            gc.collect()
            if has_gpu():
                torch.cuda.empty_cache()

    def environment(self) -> None:
        from megatron.core.tensor_parallel import layers

        device = torch.cuda.get_device_name() if has_gpu() else "CPU (dry run)"
        te = self._version("transformer-engine") or self._version("transformer_engine")
        detail = (f"torch {torch.__version__}, {device}; transformer-engine {te or 'absent'} "
                  f"({'used' if 'transformer_engine' in self.specs else 'not importable'}); flash-attn "
                  f"{self._version('flash-attn') or 'absent'}; megatron-core {self._version('megatron-core')}; "
                  f"Apex fused wgrad {'present' if layers._grad_accum_fusion_available else 'absent'}")
        self.row("environment", "ok", detail)

    def big_step(self) -> None:
        """A Qwen3-4B-shaped step with full recompute on 9,216 tokens; peak memory against the estimate."""
        tokens, seq = (256, 64) if self.dry_run else (9216, 2304)
        model = model_flags("qwen3-4B", self.dry_run)
        flags = ["--recompute-granularity", "full", "--recompute-method", "uniform", "--recompute-num-layers", "1",
                 "--accumulate-allreduce-grads-in-fp32", "--attention-backend", self.attention_backend]
        args = run_flags(model, tokens, 4, *flags)
        note = "Adam"
        if has_gpu() and estimate_memory(args).total() > 0.9 * torch.cuda.get_device_properties(0).total_memory:
            # One GPU holds all of Adam's state (~79 GiB with fp32 gradients); SGD's momentum is a third of it.
            args, note = run_flags(model, tokens, 4, *flags, "--optimizer", "sgd"), "SGD (Adam's state does not fit)"
        if has_gpu():
            torch.cuda.reset_peak_memory_stats()
        actor = trainer(args)
        metrics = [actor.train(r, shard(args, seq, seed=r))[0] for r in range(4)][1:]  # the first one warms up
        median = sorted(metrics, key=lambda m: m["step_time"])[len(metrics) // 2]
        peak = torch.cuda.max_memory_allocated() / GB if has_gpu() else median["peak_rss_gb"]
        estimate = estimate_memory(args).total() / GB
        self.row("qwen3-4B step, full recompute", "ok",
                 f"{tokens} tokens, {note}: {median['step_time']:.2f} s/step, {median['tokens_per_s']:.0f} tokens/s, "
                 f"MFU {100 * median['mfu']:.1f}%; peak memory {peak:.1f} GiB (estimate {estimate:.1f} GiB)",
                 tokens_per_s=median["tokens_per_s"], mfu=median["mfu"], peak_gib=peak, estimate_gib=estimate)
        release(actor)

    def weights_dir(self) -> Path:
        """Random weights as an HF checkpoint, so the fp32 and bf16 trainers start from the same values."""
        directory = self.workdir / "weights"
        if directory.exists():
            return directory
        import transformers

        args = run_flags(self.small_model, 4 * self.small_seq, 2, "--transformer-impl", "local")
        config = transformers.Qwen3Config(
            vocab_size=args.vocab_size, hidden_size=args.hidden_size, intermediate_size=args.ffn_hidden_size,
            num_hidden_layers=args.num_layers, num_attention_heads=args.num_attention_heads,
            num_key_value_heads=args.num_query_groups, head_dim=args.kv_channels, rms_norm_eps=args.norm_epsilon,
            rope_theta=args.rotary_base, max_position_embeddings=args.max_position_embeddings,
            tie_word_embeddings=not args.untie_embeddings_and_output_weights)
        source = self.workdir / "config"
        config.save_pretrained(source)
        actor = trainer(args, fp32=True)
        save_hf_weights(actor.model, args, str(directory), origin_hf_dir=str(source))
        release(actor)
        return directory

    def _small(self, spec: str, fp32: bool = False, *extra: str) -> tuple[argparse.Namespace, MegatronTrainRayActor]:
        args = self.small_flags(spec, *extra)
        return args, trainer(args, fp32=fp32)

    def small_flags(self, spec: str, *extra: str) -> argparse.Namespace:
        """The Qwen3-0.6B-shaped (tiny for --dry-run) model's SFT flags, starting from weights_dir()'s weights."""
        weights = str(self.weights_dir())
        return run_flags(self.small_model, 4 * self.small_seq, 4, "--transformer-impl", spec, "--hf-checkpoint",
                         weights, "--load", weights, "--attention-backend",
                         "auto" if spec == "local" else self.attention_backend, *extra)

    def bf16_against_fp32(self) -> None:
        args, reference = self._small("local", fp32=True)
        want = reference.train(0, shard(args, self.small_seq, seed=0))[0]["loss"]
        release(reference)
        for spec in self.specs:
            self.guarded(f"bf16 step ({spec} spec)", lambda spec=spec: self._bf16_step(spec, want))

    def _bf16_step(self, spec: str, want: float) -> None:
        args, actor = self._small(spec)
        got = actor.train(0, shard(args, self.small_seq, seed=0))[0]["loss"]
        dtype = next(actor.model.parameters()).dtype
        error = abs(got - want) / abs(want)
        status = "ok" if error < BF16_LOSS_RTOL and math.isfinite(got) else "FAIL"
        self.row(f"bf16 step ({spec} spec)", status, f"first loss {got:.4f} vs fp32 {want:.4f} (rel. error "
                 f"{error:.1e}, tolerance {BF16_LOSS_RTOL:g}); weights {dtype}", loss=got, reference_loss=want)
        self.guarded(f"packed = per-sequence ({spec} spec)", lambda: self._packed(spec, args, actor))
        release(actor)

    def _packed(self, spec: str, args: argparse.Namespace, actor: MegatronTrainRayActor) -> None:
        data = tensorize(shard(args, self.small_seq, seed=1))

        @torch.no_grad()
        def log_probs(indices: list[int]) -> list[torch.Tensor]:
            batch = get_batch(args, data, indices)
            return get_log_probs_and_entropy(args, batch, forward_logits(actor.model, batch))[0]

        packed = log_probs([0, 1, 2, 3])
        error = max((packed[i] - log_probs([i])[0]).abs().max().item() for i in range(4))
        tolerance = BF16_LOG_PROB_ATOL if has_gpu() else 1e-5
        self.row(f"packed = per-sequence ({spec} spec)", "ok" if error < tolerance else "FAIL",
                 f"max |log-prob difference| {error:.2e} (tolerance {tolerance:g})", max_error=error)

    def checkpoint(self) -> None:
        spec = self.specs[-1]
        save = str(self.workdir / "ckpt")
        extra = ("--save", save, "--async-save")
        args, straight = self._small(spec, False, *extra)
        for r in range(2):
            straight.train(r, shard(args, self.small_seq, seed=r))
        saved = {name: t.clone() for name, t in iter_hf_tensors(straight.model, args)}
        straight.save_model(1)  # written in the background: rollout 1 of 4 is not the last
        uninterrupted = straight.train(2, shard(args, self.small_seq, seed=2))[0]["loss"]
        finalize_async_save()
        hf = self.workdir / "hf_export"
        save_hf_weights(straight.model, args, str(hf), origin_hf_dir=None)
        self._hf_export(straight, args, hf)
        release(straight)
        resumed_args, resumed = self._small(spec, False, *extra[:2], "--load", save)
        loaded_equal = all(torch.equal(t, saved[name]) for name, t in iter_hf_tensors(resumed.model, resumed_args))
        loss = resumed.train(2, shard(resumed_args, self.small_seq, seed=2))[0]["loss"]
        error = abs(loss - uninterrupted) / abs(uninterrupted)
        ok = loaded_equal and error < 1e-3
        self.row("checkpoint save (async) + load + resume", "ok" if ok else "FAIL",
                 f"{spec} spec; loaded weights {'bit-equal' if loaded_equal else 'DIFFER'}; resumed step loss "
                 f"{loss:.5f} vs uninterrupted {uninterrupted:.5f} (rel. error {error:.1e})")
        release(resumed)

    def _hf_export(self, actor: MegatronTrainRayActor, args: argparse.Namespace, directory: Path) -> None:
        from safetensors.torch import load_file

        exported = load_file(directory / "model.safetensors")
        weights = dict(iter_hf_tensors(actor.model, args))
        same = set(exported) == set(weights) and all(torch.equal(exported[n], weights[n].cpu()) for n in weights)
        self.row("HF export = weights", "ok" if same else "FAIL",
                 f"{len(exported)} tensors, dtype {next(iter(exported.values())).dtype}")

    def fused_log_probs(self) -> None:
        """The chunked log-prob / entropy against the plain log-softmax path on the device, at Qwen3's vocabulary."""
        tokens, vocab = (64, 512) if self.dry_run else (8192, 151936)
        on = device()
        generator = torch.Generator(on).manual_seed(0)  # drawn on the device: 1.2G values are slow on the host
        # A trained model's spread of logits; bf16 on a GPU, as the trainer's are.
        dtype = torch.bfloat16 if has_gpu() else torch.float32
        logits = (torch.randn(tokens, vocab, generator=generator, device=on) * 3).to(dtype)
        targets = torch.randint(0, vocab, (tokens,), generator=generator, device=on)
        quarter = tokens // 4
        rows = [(0, quarter), (quarter + 5, 2 * quarter), (2 * quarter + 1, tokens)]  # gaps: prompt positions
        upstream = torch.randn(2, sum(e - s for s, e in rows), generator=generator, device=on)
        index = torch.cat([torch.arange(s, e) for s, e in rows]).to(on)

        def plain(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            log_softmax = torch.log_softmax(x.float() / 0.7, dim=-1)
            log_probs = log_softmax[index].gather(-1, targets[index].unsqueeze(-1)).squeeze(-1)
            return log_probs, -(log_softmax.exp() * log_softmax).sum(-1)[index]

        def fused(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return vocab_parallel_log_probs(x, rows, targets, 0.7, True)

        def measure(fn: Callable) -> tuple[tuple[torch.Tensor, ...], float, float]:
            x = logits.clone().requires_grad_()
            synchronize()
            if has_gpu():
                torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated() if has_gpu() else 0
            started = time.perf_counter()
            log_probs, entropy = fn(x)
            ((log_probs * upstream[0]).sum() + (entropy * upstream[1]).sum()).backward()
            synchronize()
            seconds = time.perf_counter() - started
            extra = (torch.cuda.max_memory_allocated() - base) / GB if has_gpu() else 0.0
            return (log_probs.detach(), entropy.detach(), x.grad), seconds, extra

        measure(fused)  # warm-up: kernels chosen and loaded before timing
        got, fused_s, fused_gib = measure(fused)
        want, plain_s, plain_gib = measure(plain)
        value_error = max((g - w).abs().max().item() for g, w in zip(got[:2], want[:2]))
        grad_ok = torch.allclose(got[2].float(), want[2].float(), rtol=1e-2, atol=1e-3)
        grad_error = (got[2].float() - want[2].float()).abs().max().item()
        ok = value_error < 1e-3 and grad_ok
        self.row("fused log-prob = plain path", "ok" if ok else "FAIL",
                 f"{tokens} x {vocab} {logits.dtype} logits, T=0.7: max |value difference| {value_error:.1e}, max "
                 f"|gradient difference| {grad_error:.1e}; forward+backward {1000 * fused_s:.0f} ms, "
                 f"+{fused_gib:.2f} GiB (plain path {1000 * plain_s:.0f} ms, +{plain_gib:.2f} GiB)",
                 max_value_error=value_error, max_grad_error=grad_error, fused_ms=1000 * fused_s,
                 plain_ms=1000 * plain_s, fused_extra_gib=fused_gib, plain_extra_gib=plain_gib)

    def run(self, only: str | None = None) -> None:
        self.guarded("environment", self.environment)
        if only == "rl":
            self.rl_rows()
            return
        self.guarded("qwen3-4B step, full recompute", self.big_step)
        if "transformer_engine" not in self.specs:
            self.row("bf16 step (transformer_engine spec)", "skipped",
                     "Transformer Engine is not importable here" + (" (no GPU)" if not has_gpu() else ""))
        self.guarded("bf16 step (fp32 reference)", self.bf16_against_fp32)
        self.guarded("checkpoint save (async) + load + resume", self.checkpoint)
        self.guarded("fused log-prob = plain path", self.fused_log_probs)
        self.rl_rows()


def print_table(rows: list[dict[str, Any]]) -> None:
    width = max(len(r["check"]) for r in rows)
    print(f"\n{'check':<{width}}  status   detail")
    for r in rows:
        print(f"{r['check']:<{width}}  {r['status']:<7}  {r['detail']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="Tiny shapes on the CPU: check the plumbing.")
    parser.add_argument("--output", help="Where the JSON goes (default: benchmarks/results/gpu_check.json; a dry run "
                        "writes none unless asked, so it never replaces measured GPU numbers).")
    parser.add_argument("--only", choices=["rl"], help="Run the environment row and these rows alone (rl: "
                        f"{', '.join(RL_ROWS)}); their results replace the same rows of an existing --output JSON, "
                        "whose other rows are kept.")
    options = parser.parse_args(argv)
    if not options.dry_run and not has_gpu():
        parser.error("no GPU here: use --dry-run to check the script on the CPU")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as workdir:
        check = Check(options.dry_run, Path(workdir))
        check.run(options.only)
    print_table(check.rows)
    seconds = time.monotonic() - started
    print(f"\n{len(check.rows)} checks in {seconds:.0f} s")
    output = options.output or (None if options.dry_run else str(REPO / "benchmarks" / "results" / "gpu_check.json"))
    if output:
        report = {"date": time.strftime("%Y-%m-%d"), "dry_run": options.dry_run, "seconds": seconds,
                  "rows": check.rows}
        if options.only and os.path.exists(output):
            report = merged(output, report)
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        with open(output, "w") as f:
            json.dump(report, f, indent=2)
    return 1 if any(r["status"] == "FAIL" for r in check.rows) else 0


def merged(path: str, report: dict[str, Any]) -> dict[str, Any]:
    """The earlier report at `path` with this partial run's rows in place of (or after) its rows of the same name;
    its other rows, and what it says about the machine and the run, are kept and named as earlier results."""
    with open(path) as f:
        earlier = json.load(f)
    fresh = {row["check"]: row for row in report["rows"]}
    kept = [row["check"] for row in earlier.get("rows", []) if row["check"] not in fresh]
    rows = [fresh.pop(row["check"], row) for row in earlier.get("rows", [])] + list(fresh.values())
    return {**earlier, **report, "rows": rows, "rows_from_earlier_run": kept,
            "earlier_run": {k: earlier[k] for k in ("date", "seconds", "command", "code") if k in earlier}}


if __name__ == "__main__":
    sys.exit(main())

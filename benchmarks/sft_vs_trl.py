"""Our SFT path (train_async.py) and TRL's SFTTrainer side by side, on the same work, in one command.

Same initial weights (one HF checkpoint of a small Qwen3, saved once), the same messages parquet in the same order,
the same Qwen3 tokenizer and chat template, the same loss (assistant tokens only, mean over the trained tokens of
each step), optimizer (Adam, no weight decay, grad-norm clip 1.0), constant learning rate, batch size and number of
steps. Each trainer runs in its own process (peak memory is per process). Reported side by side: loss per step,
tokens/s, wall time, peak memory, and the fraction of computed tokens that are padding.

TRL runs in three configurations, each in its own process:
- `padded`: SFTTrainer's defaults (each batch padded to its longest conversation);
- `padding_free`: `padding_free=True`, the same batches flattened into one sequence without padding (TRL documents
  it for FlashAttention; on CPU transformers' SDPA path separates the sequences by their position ids, and this
  run's losses equal `padded`'s, which shows it);
- `packed`: `packing=True` (best-fit-decreasing packs of up to --max-train-length tokens, padding-free), one pack per
  step (--pack-batch-size), so about as many tokens per step as the others. Its batches hold other conversations,
  so its losses are not comparable step by step; its throughput is.

TRL's `assistant_only_loss` needs `{% generation %}` markers and refuses to patch this Qwen3 template, so TRL gets the
conversations pre-tokenised with `input_ids` + `assistant_masks` (our single-render masks, which equal the
template's tokens); its own label building, collator and loss reduction then do the rest.

  python benchmarks/sft_vs_trl.py                          # CPU: a small Qwen3 (4 layers, hidden 256)
  python benchmarks/sft_vs_trl.py --shape qwen3-4b --steps 8  # one GPU: Qwen3-4B-shaped (benchmarks/gpu_sft.sh)

Needs `pip install -e ".[benchmark]"` (trl).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


# name: (layers, hidden, ffn, heads, kv heads, head dim)
SHAPES = {
    "tiny": (1, 32, 64, 2, 1, 16),
    "small": (4, 256, 768, 4, 2, 64),
    "qwen3-4b": (36, 2560, 9728, 32, 8, 128),
}


def build_inputs(work: str, conversations: int, shape: str, max_train_length: int) -> None:
    """The shared inputs: messages parquet and the same conversations pre-tokenised for TRL (those up to
    `max_train_length` tokens, in order), every conversation's length for the packing study, one HF checkpoint."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    import transformers

    from benchmarks.bench_loss_mask import make_conversations
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
    from fetch_assets import fetch_qwen3_tokenizer
    from slime.utils.mask_utils import MultiTurnLossMaskGenerator

    tokenizer_dir = fetch_qwen3_tokenizer()
    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    generator = MultiTurnLossMaskGenerator(tokenizer, "qwen3")
    kept = []
    with open(f"{work}/tokenized.jsonl", "w") as f, open(f"{work}/lengths.json", "w") as lengths:
        all_lengths = []
        for messages in make_conversations(conversations, seed=1):
            ids, mask = generator.get_loss_mask(messages)
            all_lengths.append(len(ids))
            if len(ids) <= max_train_length:
                kept.append(messages)
                f.write(json.dumps({"input_ids": ids, "assistant_masks": mask}) + "\n")
        json.dump(all_lengths, lengths)
    pq.write_table(pa.table({"messages": kept}), f"{work}/data.parquet")
    torch.manual_seed(0)
    layers, hidden, ffn, heads, kv_heads, head_dim = SHAPES[shape]
    config = transformers.Qwen3Config(
        vocab_size=151936, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
        max_position_embeddings=4096, rms_norm_eps=1e-6, rope_theta=1e6, tie_word_embeddings=True,
    )
    transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(f"{work}/model")
    for name in os.listdir(tokenizer_dir):
        shutil.copy(os.path.join(tokenizer_dir, name), f"{work}/model")


def run_ours(work: str, options: argparse.Namespace) -> dict:
    """train_async.py with one trainer: rollout batch = global batch = one packed micro-batch per step."""
    flags = [
        "--actor-num-gpus-per-node", "1", "--hf-checkpoint", f"{work}/model", "--load", f"{work}/model",
        "--rollout-function-path", "slime.rollout.sft_rollout.generate_rollout", "--prompt-data",
        f"{work}/data.parquet", "--input-key", "messages", "--loss-mask-type", "qwen3",
        "--num-rollout", str(options.steps), "--rollout-batch-size", str(options.batch_size),
        "--global-batch-size", str(options.batch_size), "--loss-type", "sft_loss", "--calculate-per-token-loss",
        "--disable-compute-advantages-and-returns", "--debug-train-only", "--use-dynamic-batch-size",
        "--max-tokens-per-gpu", "1000000", "--optimizer", "adam", "--lr", str(options.lr),
        "--lr-decay-style", "constant", "--weight-decay", "0", "--adam-beta1", "0.9", "--adam-beta2", "0.999",
        "--adam-eps", "1e-8", "--clip-grad", "1.0", "--attention-dropout", "0", "--hidden-dropout", "0",
        "--metrics-file", f"{work}/ours.jsonl",
    ]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": ROOT}
    started = time.monotonic()
    result = subprocess.run([sys.executable, f"{ROOT}/train_async.py", *flags], cwd=work, env=env,
                            capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"train_async.py failed:\n{result.stdout[-2000:]}{result.stderr[-4000:]}")
    steps = [json.loads(line) for line in open(f"{work}/ours.jsonl") if '"train/loss"' in line]
    return {
        "losses": [s["train/loss"] for s in steps],
        # As for TRL: all real tokens of all steps (the first included) over the training time.
        "tokens_per_s": sum(s["train/tokens_per_s"] * s["train/step_time"] for s in steps)
        / sum(s["train/step_time"] for s in steps),
        "train_seconds": sum(s["train/step_time"] for s in steps),
        "wall_seconds": time.monotonic() - started,
        "peak_memory_gb": max(s["train/peak_rss_gb"] for s in steps),
        "padding_fraction": sum(s["train/padding_fraction"] * s["train/step_time"] for s in steps)
        / sum(s["train/step_time"] for s in steps),
    }


TRL_MODES = ("padded", "padding_free", "packed")


def trl_worker(work: str, options: argparse.Namespace) -> dict:
    """Runs inside its own process (see main), in configuration `options.trl_mode`."""
    import datasets
    import torch
    import transformers
    from trl import SFTConfig, SFTTrainer

    started = time.monotonic()
    dataset = datasets.load_dataset("json", data_files=f"{work}/tokenized.jsonl", split="train")
    model = transformers.AutoModelForCausalLM.from_pretrained(f"{work}/model", dtype=torch.float32)
    packed = options.trl_mode == "packed"
    config = SFTConfig(
        output_dir=f"{work}/trl", max_steps=options.steps,
        per_device_train_batch_size=options.pack_batch_size if packed else options.batch_size,
        learning_rate=options.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, adam_beta1=0.9,
        adam_beta2=0.999, adam_epsilon=1e-8, max_grad_norm=1.0, use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available(), report_to=[], logging_steps=1, save_strategy="no",
        train_sampling_strategy="sequential", dataloader_num_workers=0, packing=packed,
        padding_free=options.trl_mode == "padding_free", max_length=options.max_train_length if packed else None,
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset,
                         processing_class=transformers.AutoTokenizer.from_pretrained(f"{work}/model"))
    losses, real_tokens, padded_tokens = [], [0], [0]
    compute_loss = trainer.compute_loss

    def recording_compute_loss(model, inputs, *args, **kwargs):
        # HF rounds logged losses to 4 decimals; record them exactly, with the batch's padding.
        # Padding-free batches carry no attention mask and no padding here (TRL pads them only on Neuron).
        mask = inputs.get("attention_mask")
        real_tokens[0] += int(mask.sum()) if mask is not None else inputs["input_ids"].numel()
        padded_tokens[0] += inputs["input_ids"].numel()
        loss = compute_loss(model, inputs, *args, **kwargs)
        losses.append(float((loss[0] if isinstance(loss, tuple) else loss).detach()))
        return loss

    trainer.compute_loss = recording_compute_loss
    output = trainer.train()
    return {
        "losses": losses,
        "tokens_per_s": real_tokens[0] / output.metrics["train_runtime"],
        "train_seconds": output.metrics["train_runtime"],
        "wall_seconds": time.monotonic() - started,
        "peak_memory_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "padding_fraction": 1 - real_tokens[0] / padded_tokens[0],
    }


def packing_efficiency(work: str, options: argparse.Namespace) -> dict:
    """Padding fraction of micro-batches on the long-tailed length distribution: ours (dynamic batch size, pad to
    a multiple of 128) against TRL's padded batches; TRL's padding-free modes (`padding_free`, and `packing`,
    which turns padding-free on for its BFD strategies) compute no padding, but BFD packing truncates what does not
    fit in --pack-length."""
    import datasets
    from trl.data_utils import pack_dataset

    from slime.utils.dp_schedule import build_dp_schedule

    with open(f"{work}/lengths.json") as f:
        lengths = json.load(f)
    real = sum(lengths)
    schedule = build_dp_schedule(lengths, list(range(len(lengths))), dp_size=1, global_batch_size=len(lengths),
                                 max_tokens_per_gpu=options.max_tokens_per_gpu)
    ours_pad = sum(-sum(lengths[i] for i in mb) % 128 for mb in schedule.steps[0][0])
    batches = [lengths[i : i + options.batch_size] for i in range(0, len(lengths), options.batch_size)]
    trl_padded = sum(max(b) * len(b) for b in batches)
    packed = pack_dataset(datasets.Dataset.from_dict({"input_ids": [[0] * n for n in lengths]}),
                          seq_length=options.pack_length, strategy="bfd")
    return {
        "sequences": len(lengths), "mean_length": round(real / len(lengths), 1), "max_length": max(lengths),
        "ours_dynamic_batch": round(ours_pad / (real + ours_pad), 4),
        "trl_padded": round(1 - real / trl_padded, 4),
        "trl_packed_tokens_dropped_by_truncation": real - sum(len(x) for x in packed["input_ids"]),
    }


def add_mfu(work: str, options: argparse.Namespace, *results: dict) -> None:
    """MFU of each trainer from its tokens/s, the same model FLOPs per token (shape and the trained sequences'
    real lengths) and the same peak (the GPU's dense bf16 peak, or this CPU's measured fp32 matmul rate)."""
    from slime.utils.device import peak_tflops
    from slime.utils.flops import training_flops

    layers, hidden, ffn, heads, kv_heads, head_dim = SHAPES[options.shape]
    shape = argparse.Namespace(num_layers=layers, hidden_size=hidden, ffn_hidden_size=ffn, num_attention_heads=heads,
                               num_query_groups=kv_heads, kv_channels=head_dim, swiglu=True,
                               padded_vocab_size=151936, vocab_size=151936, peak_tflops=None)
    lengths = [len(json.loads(line)["input_ids"]) for line in open(f"{work}/tokenized.jsonl")]
    lengths = lengths[: options.steps * options.batch_size]
    flops_per_token = training_flops(shape, lengths) / sum(lengths)
    peak = peak_tflops(shape)
    for result in results:
        result["tflops"] = result["tokens_per_s"] * flops_per_token / 1e12
        result["mfu"] = result["tflops"] / peak if peak else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="small", help="Model shape (random weights).")
    parser.add_argument("--conversations", type=int, default=2000, help="Data size (also the packing study's).")
    parser.add_argument("--max-train-length", type=int, default=1024, help="Train on conversations up to this long.")
    parser.add_argument("--max-tokens-per-gpu", type=int, default=9216, help="Packing study: our token budget.")
    parser.add_argument("--pack-length", type=int, default=2048, help="Packing study: TRL's packed max_length.")
    parser.add_argument("--pack-batch-size", type=int, default=1, help="TRL packed: packs per step.")
    parser.add_argument("--trl-modes", default=",".join(TRL_MODES), help="TRL configurations to run, comma-separated.")
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results", "sft_vs_trl.json"))
    parser.add_argument("--work-dir", default=None)
    parser.add_argument("--trl-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--trl-mode", choices=TRL_MODES, default="padded", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.trl_worker:
        print("TRL_RESULT " + json.dumps(trl_worker(options.work_dir, options)))
        return
    modes = options.trl_modes.split(",")
    if not modes or not set(modes) <= set(TRL_MODES):
        parser.error(f"--trl-modes: choose from {', '.join(TRL_MODES)}")
    work = options.work_dir or tempfile.mkdtemp(prefix="sft_vs_trl_")
    build_inputs(work, max(options.conversations, 2 * options.steps * options.batch_size), options.shape,
                 options.max_train_length)
    ours = run_ours(work, options)
    passed_on = {k: v for k, v in vars(options).items() if k not in ("trl_worker", "trl_mode", "work_dir", "output")}
    trl = {}
    for mode in modes:
        child = subprocess.run([sys.executable, __file__, "--trl-worker", "--work-dir", work, "--trl-mode", mode,
                                *[f"--{k.replace('_', '-')}={v}" for k, v in passed_on.items()]],
                               capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT})
        match = re.search(r"^TRL_RESULT (.*)$", child.stdout, re.M)
        if not match:
            sys.exit(f"TRL run ({mode}) failed:\n{child.stdout[-2000:]}{child.stderr[-4000:]}")
        trl[mode] = json.loads(match[1])
    import torch
    import trl as trl_package

    add_mfu(work, options, ours, *trl.values())
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)",
        "versions": {"torch": torch.__version__, "trl": trl_package.__version__},
        "config": passed_on,
        "ours": ours,
        "trl": trl,
        # Packed TRL trains other batches (packs), so only the unpacked modes are compared step by step.
        "max_step_loss_abs_diff": {mode: max(abs(a - b) for a, b in zip(ours["losses"], trl[mode]["losses"]))
                                   for mode in trl if mode != "packed"},
        "tokens_per_s_ratio_ours_over_trl": {mode: ours["tokens_per_s"] / r["tokens_per_s"] for mode, r in trl.items()},
        "padding": packing_efficiency(work, options),
    }
    if not options.work_dir:  # ours to remove (a model, its checkpoint, the data)
        shutil.rmtree(work, ignore_errors=True)
    os.makedirs(os.path.dirname(options.output), exist_ok=True)
    with open(options.output, "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

"""The quick start's figures: printed as its summary and written as JSON that the docs cite.

Reads what the run left in --out: the driver's closing `done:` line (train.log), the metrics file (losses per
optimizer step, validation losses), the before/after evaluations and the HF export (parameter count).

  python examples/quickstart/summarize.py --out outputs/quickstart --results benchmarks/results/quickstart.json \
      --script-seconds 194 --installed 0
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import time

import torch
from safetensors import safe_open


def done_line(log: str) -> dict[str, float]:
    """`done: first_loss 10.9, last_loss 0.1045, ...` as a dict of numbers."""
    match = re.search(r"done: (.*)", log)
    if not match:
        raise SystemExit("the training log has no 'done:' line: training did not finish (see train.log)")
    values = {}
    for item in match[1].split(", "):
        key, _, value = item.rpartition(" ")
        try:
            values[key] = float(value)
        except ValueError:
            continue
    return values


def last_json_line(path: str) -> dict:
    with open(path) as f:
        return json.loads(f.read().splitlines()[-1])


def parameter_count(hf_dir: str) -> int:
    total = 0
    for name in os.listdir(hf_dir):
        if name.endswith(".safetensors"):
            with safe_open(os.path.join(hf_dir, name), "pt") as f:
                total += sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys())
    return total


def summary_parser(doc: str) -> argparse.ArgumentParser:
    """The options every quick-start summary takes (the RL quick start's too)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="The quick start's output directory.")
    parser.add_argument("--results", required=True, help="Where to write the figures (JSON).")
    parser.add_argument("--script-seconds", type=float, required=True)
    parser.add_argument("--installed", type=int, choices=[0, 1], required=True,
                        help="1 when this run created or filled the .venv (its time is in --script-seconds).")
    return parser


def run_figures(command: str, args: argparse.Namespace) -> dict:
    """Where and how the figures were measured: the first keys of every quick start's results."""
    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "torch": torch.__version__,
        "command": command,
        "installed_this_run": bool(args.installed),
        "script_seconds": round(args.script_seconds, 1),
    }


def write_figures(path: str, figures: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(figures, f, indent=2)


def main() -> None:
    parser = summary_parser(__doc__)
    parser.add_argument("--rollout-batch-size", type=int, default=32)
    parser.add_argument("--trainers", type=int, default=2)
    args = parser.parse_args()
    out = args.out
    with open(f"{out}/train.log") as f:
        done = done_line(f.read())
    with open(f"{out}/metrics.jsonl") as f:
        records = [json.loads(line) for line in f if line.strip()]
    train_losses = [r["train/loss"] for r in records if "train/loss" in r]
    validation = {int(r.get("eval/step", -1)): value for r in records for key, value in r.items()
                  if key.startswith("eval/") and key.endswith("/loss")}
    before, after = last_json_line(f"{out}/before.txt"), last_json_line(f"{out}/after.txt")
    figures = {
        **run_figures("bash scripts/quickstart-cpu.sh", args),
        "model_parameters": parameter_count(f"{out}/hf"),
        "trainers": args.trainers,
        "rollouts": len(train_losses),
        "conversations_per_rollout": args.rollout_batch_size,
        "training_seconds": done.get("wall_time_s"),
        "tokens_per_s": done.get("tokens_per_s"),
        "first_loss": train_losses[0] if train_losses else None,
        "last_loss": train_losses[-1] if train_losses else None,
        "validation_loss_after_rollout": validation,
        "held_out_prompts": after["total"],
        "held_out_accuracy_before": before["accuracy"],
        "held_out_accuracy_after": after["accuracy"],
    }
    write_figures(args.results, figures)
    print("\n== summary")
    print(f"training: {figures['rollouts']} rollouts of {args.rollout_batch_size} conversations on {args.trainers} "
          f"trainers in {figures['training_seconds']:.0f} s, {figures['tokens_per_s']:.0f} tokens/s; loss "
          f"{figures['first_loss']:.3g} -> {figures['last_loss']:.3g}"
          + (f", validation loss {validation[max(validation)]:.3g}" if validation else ""))
    print(f"held-out accuracy: {before['accuracy']:.0%} before -> {after['accuracy']:.0%} after "
          f"({after['total']} prompts)")
    print(f"whole script: {args.script_seconds:.0f} s{' (install included)' if args.installed else ''}")
    print(f"outputs: checkpoint {out}/ckpt, HF export {out}/hf, log {out}/train.log; figures {args.results}")


if __name__ == "__main__":
    main()

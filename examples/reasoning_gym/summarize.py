"""The RL quick start's figures: printed as its summary and written as JSON that the docs cite.

Reads what scripts/quickstart-rl-cpu.sh left in --out: the two training logs' closing `done:` lines, the metrics
files (SFT losses; GRPO rewards per rollout, generation and training throughput, weight-sync time, the engines'
held-out evaluations) and the held-out evaluations of the SFT and GRPO exports.

  python examples/reasoning_gym/summarize.py --out outputs/quickstart_rl \
      --results benchmarks/results/quickstart_rl.json --script-seconds 540 --installed 0
"""

from __future__ import annotations

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from examples.quickstart.summarize import (  # noqa: E402
    done_line, last_json_line, parameter_count, run_figures, summary_parser, write_figures)


def read_metrics(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def weighted_rate(rows: list[dict], rate: str, seconds: str) -> float | None:
    """Tokens/s over several steps: total tokens over total time (not a mean of rates)."""
    time_total = sum(r[seconds] for r in rows)
    return sum(r[rate] * r[seconds] for r in rows) / time_total if time_total else None


def main() -> None:
    args = summary_parser(__doc__).parse_args()
    out = args.out
    with open(f"{out}/sft.log") as f:
        sft_done = done_line(f.read())
    with open(f"{out}/grpo.log") as f:
        grpo_done = done_line(f.read())
    sft_losses = [r["train/loss"] for r in read_metrics(f"{out}/sft_metrics.jsonl") if "train/loss" in r]
    grpo = read_metrics(f"{out}/grpo_metrics.jsonl")
    rollouts = [r for r in grpo if "rollout/raw_reward" in r]
    steps = [r for r in grpo if "train/step_time" in r]
    syncs = [r["perf/update_weights_time"] for r in grpo if "perf/update_weights_time" in r]
    # The script names its eval dataset held_out; the engines evaluate it greedily before and after GRPO.
    engine_eval = {int(r["eval/step"]): r["eval/held_out"] for r in grpo if "eval/held_out" in r}
    after_sft, after_grpo = last_json_line(f"{out}/after_sft.txt"), last_json_line(f"{out}/after_grpo.txt")
    figures = {
        **run_figures("bash scripts/quickstart-rl-cpu.sh", args),
        "model_parameters": parameter_count(f"{out}/sft_hf"),
        "sft": {
            "rollouts": len(sft_losses),
            "seconds": sft_done.get("wall_time_s"),
            "tokens_per_s": sft_done.get("tokens_per_s"),
            "first_loss": sft_losses[0] if sft_losses else None,
            "last_loss": sft_losses[-1] if sft_losses else None,
        },
        "grpo": {
            "rollouts": len(rollouts),
            "seconds": grpo_done.get("wall_time_s"),
            "reward_per_rollout": [round(r["rollout/raw_reward"], 4) for r in rollouts],
            "generation_tokens_per_s": weighted_rate(rollouts, "perf/generation_tokens_per_s", "perf/generation_time"),
            "generation_seconds": sum(r["perf/generation_time"] for r in rollouts),
            "train_tokens_per_s": weighted_rate(steps, "train/tokens_per_s", "train/step_time"),
            "train_seconds": sum(r["train/step_time"] for r in steps),
            "weight_sync_seconds": sum(syncs),
            "engine_eval_held_out_by_rollout": engine_eval,
        },
        "held_out_prompts": after_grpo["total"],
        "held_out_accuracy_after_sft": after_sft["accuracy"],
        "held_out_accuracy_after_grpo": after_grpo["accuracy"],
    }
    write_figures(args.results, figures)
    sft, rl = figures["sft"], figures["grpo"]
    curve = rl["reward_per_rollout"]
    print("\n== summary")
    print(f"SFT warm-up: {sft['rollouts']} rollouts in {sft['seconds']:.0f} s, {sft['tokens_per_s']:.0f} tokens/s; "
          f"loss {sft['first_loss']:.3g} -> {sft['last_loss']:.3g}")
    print(f"GRPO: {rl['rollouts']} rollouts in {rl['seconds']:.0f} s; generation {rl['generation_tokens_per_s']:.0f} "
          f"tokens/s ({rl['generation_seconds']:.0f} s), training {rl['train_tokens_per_s']:.0f} tokens/s "
          f"({rl['train_seconds']:.0f} s), weight sync {rl['weight_sync_seconds']:.1f} s")
    print("reward per rollout: " + " ".join(f"{r:.2f}" for r in curve))
    window = max(1, len(curve) // 8)
    print(f"mean reward of the first {window} rollouts {sum(curve[:window]) / window:.2f}, "
          f"of the last {window} {sum(curve[-window:]) / window:.2f}")
    print(f"held-out accuracy (greedy, {figures['held_out_prompts']} prompts never trained on): "
          f"{after_sft['accuracy']:.0%} after SFT -> {after_grpo['accuracy']:.0%} after GRPO")
    print(f"whole script: {args.script_seconds:.0f} s{' (install included)' if args.installed else ''}")
    print(f"outputs: SFT export {out}/sft_hf, GRPO export {out}/grpo_hf, logs {out}/sft.log {out}/grpo.log, "
          f"metrics {out}/*_metrics.jsonl, rollouts {out}/rollouts/; figures {args.results}")


if __name__ == "__main__":
    main()

"""Where the time of one RL step goes on CPU, and how the weight sync scales with model size per transport.

Every configuration is a real GRPO run through train.py (Ray, Megatron trainers, CPU engines behind the router) on
the quick start's word-reversal task, with the F1 reward against the reversed list; the numbers come from the run's
--metrics-file (medians over the rollouts after the first):

  generate        perf/generation_time: the rollout function's generation, rewards included (they run as each
                  sample finishes)
  reward          the reward function's own time, summed over the rollout's samples (timed by `timed_f1` below)
  ref log-probs   train/ref_log_probs_time (--use-kl-loss with --ref-load: the reference swapped in, one forward)
  old log-probs   train/log_probs_time (only with more than one optimizer step per rollout; skipped otherwise)
  advantages      train/advantages_time
  train           train/step_time summed over the rollout's optimizer steps (forward, backward, optimizer)
  sync            perf/update_weights_time (and its bytes/s) after the rollout's training
  rollout         perf/rollout_time: the rollout manager's whole generate call (generation, train-data conversion)
  wall            seconds between the driver's "rollout N/M" log lines of this rollout and the one before: one whole
                  iteration (the previous rollout's save and sync, then this rollout's generation and training)

Phase runs: the quick-start model (Qwen3, hidden 128, 2 layers, SmolLM2 tokenizer), 2 trainers and 2 engines, with
one and with two optimizer steps per rollout. Sync runs: the distributed (gloo broadcast), tensor (--colocate,
shared memory) and disk transports for the quick-start model and a larger one.

  python benchmarks/bench_rl_step.py [--rollouts 5] [--tiny] [--output benchmarks/results/rl_step.json]

--tiny runs one small configuration (both log-prob passes, 1 trainer, 1 engine) so CI can keep the harness alive.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks.bench_async import run, step_intervals  # noqa: E402

REWARD_TIMES_ENV = "BENCH_RL_REWARD_TIMES"
PHASES = ("generate", "reward", "ref_log_probs", "old_log_probs", "advantages", "train", "sync", "rollout", "wall")
MODELS = {"tiny": (32, 1), "quickstart": (128, 2), "large": (512, 4)}  # hidden size, layers


async def timed_f1(args, sample) -> float:
    """--rm-type f1 (token F1 against the label), timed: each call appends its seconds to $BENCH_RL_REWARD_TIMES."""
    from slime.rollout.rm_hub.text_rewards import f1_score

    started = time.perf_counter()
    reward = f1_score(sample.response, sample.label)[0]
    seconds = time.perf_counter() - started
    with open(os.environ[REWARD_TIMES_ENV], "a") as f:
        f.write(f"{seconds}\n")
    return reward


def prepare(work: str, models: list[str]) -> dict[str, str]:
    """The task's held-out prompts as RL prompts (chat messages + the reversed list as label), and the models."""
    py = sys.executable
    run([py, f"{ROOT}/examples/quickstart/make_task.py", "--output-dir", f"{work}/data", "--train", "1",
         "--validation", "1", "--held-out", "64"])
    with open(f"{work}/data/held_out.json") as f, open(f"{work}/data/prompts.jsonl", "w") as out:
        for row in json.load(f):
            out.write(json.dumps({"messages": row["messages"], "answer": row["answer"]}) + "\n")
    paths = {}
    for name in models:
        hidden, layers = MODELS[name]
        paths[name] = f"{work}/model_{name}"
        run([py, f"{ROOT}/examples/quickstart/make_model.py", "--output-dir", paths[name], "--hidden-size",
             str(hidden), "--layers", str(layers)])
    return paths


def grpo_flags(work: str, model: str, rollouts: int, trainers: int, engines: int, steps: int) -> list[str]:
    prompts, samples = 8, 4
    return [
        "--actor-num-gpus-per-node", str(trainers), "--rollout-num-gpus", str(engines),
        "--hf-checkpoint", model, "--ref-load", model, "--use-kl-loss", "--kl-loss-type", "low_var_kl",
        "--kl-loss-coef", "0.01", "--prompt-data", f"{work}/data/prompts.jsonl", "--input-key", "messages",
        "--label-key", "answer", "--apply-chat-template", "--rollout-shuffle", "--num-rollout", str(rollouts),
        "--rollout-batch-size", str(prompts), "--n-samples-per-prompt", str(samples),
        "--global-batch-size", str(prompts * samples // steps), "--rollout-max-response-len", "16",
        "--rollout-temperature", "1.0", "--custom-rm-path", "benchmarks.bench_rl_step.timed_f1",
        "--loss-type", "policy_loss", "--advantage-estimator", "grpo", "--optimizer", "adam", "--lr", "1e-4",
        "--lr-decay-style", "constant", "--attention-dropout", "0", "--hidden-dropout", "0",
        "--use-dynamic-batch-size", "--max-tokens-per-gpu", "4096", "--data-pad-size-multiplier", "8",
    ]


def per_rollout(rows: list[dict[str, Any]]) -> dict[int, dict[str, float]]:
    """The phases of each rollout from the metrics file's rows (train rows: one per optimizer step)."""
    phases: dict[int, dict[str, float]] = defaultdict(dict)
    for row in rows:
        if "train/step" in row:
            rollout = phases[int(row["train/rollout_id"])]
            # The forward-only passes and advantages are per rollout, repeated on each of its step rows.
            for key, name in (("train/ref_log_probs_time", "ref_log_probs"), ("train/log_probs_time", "old_log_probs"),
                              ("train/advantages_time", "advantages")):
                if key in row:
                    rollout[name] = row[key]
            rollout["train"] = rollout.get("train", 0.0) + row["train/step_time"]
            rollout["steps"] = rollout.get("steps", 0) + 1
        elif "rollout/step" in row:
            rollout = phases[int(row["rollout/step"])]
            for key, name in (("perf/generation_time", "generate"), ("perf/rollout_time", "rollout"),
                              ("perf/update_weights_time", "sync"), ("perf/update_weights_bytes", "sync_bytes"),
                              ("perf/update_weights_bytes_per_s", "sync_bytes_per_s")):
                if key in row:
                    rollout[name] = row[key]
    return phases


def measure(label: str, work: str, flags: list[str], rollouts: int, samples_per_rollout: int) -> dict[str, Any]:
    metrics, rewards = f"{work}/{label}_metrics.jsonl", f"{work}/{label}_reward_seconds.txt"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1",
           REWARD_TIMES_ENV: rewards}
    started = time.monotonic()
    output = run([sys.executable, f"{ROOT}/train.py", *flags, "--metrics-file", metrics], cwd=work, env=env)
    with open(metrics) as f:
        phases = per_rollout([json.loads(line) for line in f])
    with open(rewards) as f:
        reward_seconds = [float(line) for line in f]
    # Samples are scored in rollout order, each rollout's samples once (no dynamic filter, no over-sampling).
    for rollout_id in range(rollouts):
        chunk = reward_seconds[rollout_id * samples_per_rollout:(rollout_id + 1) * samples_per_rollout]
        phases[rollout_id]["reward"] = sum(chunk)
    # Interval i ends with rollout i + 1's log line: the whole iteration of rollout i + 1.
    for rollout_id, seconds in enumerate(step_intervals(output), start=1):
        phases[rollout_id]["wall"] = seconds
    kept = [phases[r] for r in range(1, rollouts)]
    result = {name: round(statistics.median(p.get(name, 0.0) for p in kept), 4) for name in PHASES}
    result.update(steps_per_rollout=kept[0]["steps"], sync_megabytes=round(kept[0]["sync_bytes"] / 1e6, 2),
                  sync_megabytes_per_s=round(statistics.median(p["sync_bytes_per_s"] for p in kept) / 1e6, 1),
                  run_seconds=round(time.monotonic() - started, 1),
                  per_rollout=[{k: round(v, 4) for k, v in sorted(phases[r].items())} for r in range(rollouts)])
    print(label, json.dumps({k: v for k, v in result.items() if k != "per_rollout"}), flush=True)
    return result


def table(results: dict[str, dict[str, Any]]) -> str:
    width = max(len("configuration"), *map(len, results)) + 2
    head = f"{'configuration':<{width}}" + "".join(f"{name:>14}" for name in PHASES) + f"{'sync MB/s':>11}"
    lines = [head, "-" * len(head)]
    for label, r in results.items():
        lines.append(f"{label:<{width}}" + "".join(f"{r[name]:>14.4f}" for name in PHASES)
                     + f"{r['sync_megabytes_per_s']:>11.1f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rollouts", type=int, default=5, help="Per run; the first is left out of the medians.")
    parser.add_argument("--tiny", action="store_true", help="One small run (CI): both log-prob passes, 1+1 actors.")
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results", "rl_step.json"))
    options = parser.parse_args()
    if options.rollouts < 2:
        parser.error("--rollouts must be at least 2 (the first rollout is left out of the medians)")
    work = tempfile.mkdtemp(prefix="bench_rl_step_")
    models = prepare(work, ["tiny"] if options.tiny else ["quickstart", "large"])
    samples = 8 * 4
    if options.tiny:
        configs = {"tiny 1+1, 2 steps": (models["tiny"], 1, 1, 2, [])}
    else:
        disk = ["--update-weight-transport", "disk", "--update-weight-disk-dir", f"{work}/weights"]
        configs = {}
        for name in ("quickstart", "large"):
            configs[f"{name} 2+2, 1 step"] = (models[name], 2, 2, 1, [])  # sync: distributed
            configs[f"{name} 2+2, 1 step, disk"] = (models[name], 2, 2, 1, disk)
            configs[f"{name} 2+2, 1 step, colocate"] = (models[name], 2, 2, 1, ["--colocate"])  # sync: tensor
        configs["quickstart 2+2, 2 steps"] = (models["quickstart"], 2, 2, 2, [])
    results = {}
    for label, (model, trainers, engines, steps, extra) in configs.items():
        flags = [*grpo_flags(work, model, options.rollouts, trainers, engines, steps), *extra]
        results[label] = measure(label.replace(" ", "_").replace(",", ""), work, flags, options.rollouts, samples)
    report = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared)",
        "rollouts_per_run": options.rollouts, "median_over": "rollouts after the first",
        "models": {name: {"hidden_size": MODELS[name][0], "layers": MODELS[name][1]} for name in models},
        "samples_per_rollout": samples, "max_response_tokens": 16, "seconds": results,
    }
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(os.path.dirname(options.output), exist_ok=True)
    with open(options.output, "w") as f:
        json.dump(report, f, indent=2)
    print(table(results))


if __name__ == "__main__":
    main()

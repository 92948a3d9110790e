"""train_async.py against train.py with a slow rollout: async should approach max(train, rollout) per step, sync
their sum. Everything runs here, one run after the other, on the same tiny SFT job (CPU, 1 trainer):

1. train only: train.py with the delay set to 0; seconds per rollout minus the (measured) duration of the
   remaining SFT read = the training's cost per rollout, driver overhead included;
2. train.py with the delay: its seconds per rollout, and the rollout's own duration (timed by the rollout
   function itself while nothing else runs) = the rollout's cost;
3. train_async.py with the delay.

The expected values come from the costs measured in 1 and 2, not from the configured delay.

  python benchmarks/bench_async.py [--rollout-seconds 1.5] [--rollouts 12]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WARM_UP = 2  # rollouts left out of the medians (first steps: allocations, caches)


def run(command: list[str], **kwargs) -> str:
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if result.returncode:
        sys.exit(f"{command[:3]} failed:\n{result.stdout[-2000:]}{result.stderr[-3000:]}")
    return result.stdout + result.stderr


def step_intervals(output: str) -> list[float]:
    """Seconds between consecutive per-rollout log lines."""
    stamps = [datetime.strptime(m, "%Y-%m-%d %H:%M:%S,%f") for m in
              re.findall(r"^(\S+ \S+) INFO slime.ray.driver: rollout \d+/", output, re.M)]
    return [(b - a).total_seconds() for a, b in zip(stamps, stamps[1:])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rollout-seconds", type=float, default=1.5)
    parser.add_argument("--rollouts", type=int, default=12, help=f"Per run, {WARM_UP} of them warm-up.")
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results", "async.json"))
    options = parser.parse_args()
    work = tempfile.mkdtemp(prefix="bench_async_")
    py = sys.executable
    run([py, f"{ROOT}/examples/quickstart/make_task.py", "--output-dir", f"{work}/data", "--validation", "8"])
    run([py, f"{ROOT}/examples/quickstart/make_model.py", "--output-dir", f"{work}/model"])
    run([py, f"{ROOT}/tools/prepare_openhermes.py", "--input", f"{work}/data/train.json",
         "--output", f"{work}/data/train.parquet"])
    flags = [
        "--actor-num-gpus-per-node", "1", "--hf-checkpoint", f"{work}/model", "--load", f"{work}/model",
        "--rollout-function-path", "benchmarks.slow_rollout.generate_rollout", "--prompt-data",
        f"{work}/data/train.parquet", "--input-key", "messages", "--num-rollout", str(options.rollouts),
        "--rollout-batch-size", "32", "--global-batch-size", "32", "--loss-type", "sft_loss",
        "--calculate-per-token-loss", "--disable-compute-advantages-and-returns", "--debug-train-only",
        "--use-dynamic-batch-size", "--max-tokens-per-gpu", "4096", "--data-pad-size-multiplier", "8",
    ]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": ROOT}
    report = {"date": time.strftime("%Y-%m-%d"), "rollout_seconds": options.rollout_seconds,
              "rollouts": options.rollouts, "warm_up_rollouts": WARM_UP, "runs": {}}
    runs = (("train_only", "train.py", 0.0), ("train.py", "train.py", options.rollout_seconds),
            ("train_async.py", "train_async.py", options.rollout_seconds))
    for label, driver, delay in runs:
        times, metrics = f"{work}/{label}_rollout_seconds.txt", f"{work}/{label}_metrics.jsonl"
        started = time.monotonic()
        output = run([py, f"{ROOT}/{driver}", *flags, "--metrics-file", metrics], cwd=work,
                     env={**env, "SLOW_ROLLOUT_SECONDS": str(delay), "SLOW_ROLLOUT_TIMES": times})
        with open(times) as f:
            durations = [float(line) for line in f]
        with open(metrics) as f:
            step_times = [r["train/step_time"] for r in map(json.loads, f) if "train/step_time" in r]
        # Interval i ends with rollout i + 1's log line; skip the warm-up rollouts in both series.
        report["runs"][label] = {
            "median_seconds_per_rollout": round(statistics.median(step_intervals(output)[WARM_UP:]), 3),
            "median_rollout_function_seconds": round(statistics.median(durations[WARM_UP + 1 :]), 3),
            # The trainer's own optimizer-step time in this run: shows how much a busy machine slowed training.
            "median_trainer_step_seconds": round(statistics.median(step_times[WARM_UP:]), 3),
            "wall_seconds": round(time.monotonic() - started, 1),
        }
        print(label, report["runs"][label], flush=True)
    runs = report["runs"]
    train = runs["train_only"]["median_seconds_per_rollout"] - runs["train_only"]["median_rollout_function_seconds"]
    rollout = runs["train.py"]["median_rollout_function_seconds"]
    sync, asynchronous = (runs[d]["median_seconds_per_rollout"] for d in ("train.py", "train_async.py"))
    report.update({
        "measured_train_seconds_per_rollout": round(train, 3),
        "measured_rollout_seconds": rollout,
        "expected_sync_seconds_per_rollout": round(train + rollout, 3),
        "expected_async_seconds_per_rollout": round(max(train, rollout), 3),
        "sync_over_expected": round(sync / (train + rollout), 3),
        "async_over_expected": round(asynchronous / max(train, rollout), 3),
        "async_over_sync": round(asynchronous / sync, 3),
    })
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(os.path.dirname(options.output), exist_ok=True)
    with open(options.output, "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

"""train_async.py against train.py with a rollout of known cost: async should approach max(train, rollout) per
step, sync their sum. Both drivers run here, one after the other, on the same tiny SFT job (CPU, 1 trainer).

  python benchmarks/bench_async.py [--rollout-seconds 1.5] [--rollouts 12]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(command: list[str], **kwargs) -> str:
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if result.returncode:
        sys.exit(f"{command[:3]} failed:\n{result.stdout[-2000:]}{result.stderr[-3000:]}")
    return result.stdout + result.stderr


def step_intervals(output: str) -> list[float]:
    """Seconds between consecutive per-rollout log lines."""
    stamps = [datetime.strptime(m, "%Y-%m-%d %H:%M:%S,%f") for m in
              re.findall(r"^(\S+ \S+) INFO slime.ray.driver: rollout \d+/", output, re.M)]
    intervals = [(b - a).total_seconds() for a, b in zip(stamps, stamps[1:])]
    return intervals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rollout-seconds", type=float, default=1.5)
    parser.add_argument("--rollouts", type=int, default=12)
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
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": ROOT,
           "SLOW_ROLLOUT_SECONDS": str(options.rollout_seconds)}
    report = {"date": time.strftime("%Y-%m-%d"), "rollout_seconds": options.rollout_seconds,
              "rollouts": options.rollouts, "drivers": {}}
    for driver in ("train.py", "train_async.py"):
        started = time.monotonic()
        output = run([py, f"{ROOT}/{driver}", *flags], cwd=work, env=env)
        intervals = step_intervals(output)
        steady = intervals[2:] or intervals  # skip warm-up steps
        report["drivers"][driver] = {
            "median_seconds_per_rollout": round(statistics.median(steady), 3),
            "wall_seconds": round(time.monotonic() - started, 1),
        }
        print(driver, report["drivers"][driver], flush=True)
    sync = report["drivers"]["train.py"]["median_seconds_per_rollout"]
    asynchronous = report["drivers"]["train_async.py"]["median_seconds_per_rollout"]
    report["train_seconds_per_rollout_estimate"] = round(sync - options.rollout_seconds, 3)
    report["async_over_sync"] = round(asynchronous / sync, 3)
    os.makedirs(os.path.dirname(options.output), exist_ok=True)
    with open(options.output, "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

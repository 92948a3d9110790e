"""What the driver costs: the same SFT step in process and through train_async.py, and the time from the command to
the first step, phase by phase.

(a) Per step: the trainer called directly (MegatronTrainRayActor in a process of its own, fed the rollout manager's
    own shards, built outside the timing) against train_async.py on the same data, flags and shapes. Median seconds
    per step after the warm-up steps in each, and their ratio (target: within 1.05x). Through the driver a step is
    the interval between consecutive per-rollout log lines of the driver: all a user waits for per step. Both runs
    also report the trainer's own step time (forward, backward, optimizer), so the driver's overhead is also given
    net of how fast the trainer happened to run in each: (driver step - its trainer step) - (in-process step - its
    trainer step), and as a fraction of the in-process step.
(b) Start-up of train_async.py: from the command to the first step, split as the run's own start-up report splits
    it (imports, arguments, Ray, rollout manager, trainers, first rollout, first step; `StartupClock` in
    slime/ray/driver.py), when the trainers reached their own milestones (process started, trainer imported, process
    group, model and optimizer, weights loaded, built),
    and the trainer's start-up in process (imports, process group, model and optimizer, checkpoint, first step).

The runs alternate (in process, driver) --repeats times, so that both see the same load on a shared machine.
Default shape: a 2-layer hidden-64 Qwen3 with Qwen3's real tokenizer and vocabulary (tied embeddings), the quick
start's task, 8 conversations (~280 tokens) per step, Adam, fp32 on CPU.

  python benchmarks/bench_driver.py [--steps 20] [--repeats 3]
  python benchmarks/bench_driver.py --driver-root /tmp/before   # train_async.py of another checkout (before/after)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from slime.utils.misc import process_start_time  # noqa: E402 - light (no torch): the clock starts at the process

STEP_LINE = re.compile(r"^(\S+ \S+) INFO slime\.ray\.driver: rollout \d+/", re.M)


def run(command: list, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, **kwargs)
    if result.returncode:
        sys.exit(f"{command[:3]} failed:\n{result.stdout[-2000:]}{result.stderr[-4000:]}")
    return result


def run_flags(work: str, options: argparse.Namespace) -> list[str]:
    return [
        "--actor-num-gpus-per-node", "1", "--hf-checkpoint", f"{work}/model", "--load", f"{work}/model",
        "--rollout-function-path", "slime.rollout.sft_rollout.generate_rollout",
        "--prompt-data", f"{work}/data/train.parquet", "--input-key", "messages", "--num-rollout", str(options.steps),
        "--rollout-batch-size", str(options.batch), "--global-batch-size", str(options.batch),
        "--loss-type", "sft_loss", "--calculate-per-token-loss", "--disable-compute-advantages-and-returns",
        "--debug-train-only", "--use-dynamic-batch-size", "--max-tokens-per-gpu", "100000", "--optimizer", "adam",
        "--lr", "1e-4", "--lr-decay-style", "constant", "--attention-dropout", "0", "--hidden-dropout", "0",
    ]


def phases_from(milestones: list[tuple[str, float]], started: float) -> dict[str, float]:
    """Consecutive milestones (name, time) as seconds per phase, counted from `started`."""
    phases, last = {}, started
    for name, at in milestones:
        phases[name], last = round(at - last, 3), at
    return phases


def in_process(work: str, options: argparse.Namespace) -> dict:
    """The child process of part (a): the trainer's start-up and steps, with no Ray anywhere."""
    started = process_start_time()
    from slime.backends.megatron_utils import actor as backend
    from slime.ray.rollout import RolloutManager
    from slime.utils.arguments import parse_args, validate_run

    imported = time.time()
    args = parse_args(run_flags(work, options))
    validate_run(args)
    trainer = backend.MegatronTrainRayActor()
    start = trainer.init(args)  # records when it reached each of its steps (trainer.startup)
    reached: dict[str, float] = {}
    manager = RolloutManager(args)
    manager.load(start - 1)
    seconds, step_times = [], []
    for rollout_id in range(start, args.num_rollout):
        shards, _ = manager.train_shards(rollout_id)
        if rollout_id == start:
            reached["data"] = time.time()
        begun = time.perf_counter()
        step_times += [m["step_time"] for m in trainer.train(rollout_id, shards[0])]
        seconds.append(time.perf_counter() - begun)
        if rollout_id == start:
            reached["first step"] = time.time()
    milestones = [("imports", imported), ("process group", trainer.startup["process_group"]),
                  ("model and optimizer", trainer.startup["model_and_optimizer"]),
                  ("checkpoint", trainer.startup["weights_loaded"]), ("data", reached["data"]),
                  ("first step", reached["first step"])]
    return {
        "step_seconds": seconds,
        "trainer_step_times": step_times,
        "startup_phases_s": phases_from(milestones, started),
        "startup_total_s": round(reached["first step"] - started, 3),
    }


def through_driver(root: str, work: str, options: argparse.Namespace, index: int) -> dict:
    """train_async.py (of `root`) on the same work: per-step intervals of its log, and its start-up report."""
    metrics_file = f"{work}/driver_{index}.jsonl"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": root, "PYTHONUNBUFFERED": "1"}
    launched = time.time()
    output = run([sys.executable, f"{root}/train_async.py", *run_flags(work, options), "--metrics-file",
                  metrics_file], cwd=work, env=env).stderr  # the log
    wall = time.time() - launched
    stamps = [datetime.strptime(m, "%Y-%m-%d %H:%M:%S,%f").timestamp() for m in STEP_LINE.findall(output)]
    records = [json.loads(line) for line in open(metrics_file)]
    startup = next((r for r in records if "startup/total_s" in r), None)
    return {
        # Interval k ends with step k + 1's log line.
        "step_seconds": [b - a for a, b in zip(stamps, stamps[1:])],
        "trainer_step_times": [r["train/step_time"] for r in records if "train/step_time" in r],
        "first_step_at_s": round(stamps[0] - launched, 3),
        "startup": None if startup is None else {k: round(v, 3) for k, v in startup.items() if k.startswith("startup/")},
        "wall_s": round(wall, 1),
    }


def prepare(work: str, options: argparse.Namespace) -> None:
    py = sys.executable
    run([py, f"{ROOT}/examples/quickstart/make_task.py", "--output-dir", f"{work}/data"])
    run([py, f"{ROOT}/tools/prepare_openhermes.py", "--input", f"{work}/data/train.json",
         "--output", f"{work}/data/train.parquet"])
    run([py, f"{ROOT}/examples/quickstart/make_model.py", "--output-dir", f"{work}/model", "--tokenizer",
         options.tokenizer, "--hidden-size", str(options.hidden), "--layers", str(options.layers)])


def startup_table(driver: dict) -> dict:
    """Part (b) of one driver run: the phases of its start-up report (None for a checkout without one)."""
    report = driver["startup"]
    table = {"command_to_first_step_s": driver["first_step_at_s"]}
    if report is not None:
        table["reported_total_s"] = report["startup/total_s"]
        table["phases_s"] = {k[len("startup/"):-2]: v for k, v in report.items()
                             if k.endswith("_s") and not k.endswith("_at_s") and k != "startup/total_s"}
        table["trainer_milestones_at_s"] = {k[len("startup/trainer_"):-5]: v for k, v in report.items()
                                            if k.endswith("_at_s")}
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warm-up", type=int, default=3, help="Steps left out of the medians (at least 1).")
    parser.add_argument("--repeats", type=int, default=1, help="Pairs of runs (in process, driver), alternating.")
    parser.add_argument("--batch", type=int, default=8, help="Conversations per step.")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--tokenizer", choices=["qwen3", "smollm2"], default="qwen3",
                        help="The model's tokenizer and vocabulary (Qwen3: 151k tokens; SmolLM2: 49k, for a quick run).")
    parser.add_argument("--driver-root", default=ROOT, help="The checkout whose train_async.py runs part (a)'s "
                        "driver side and part (b); the in-process side always runs this one's trainer.")
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results", "driver.json"))
    parser.add_argument("--in-process", metavar="WORK", help=argparse.SUPPRESS)  # the child process of part (a)
    options = parser.parse_args()
    if options.in_process:
        print(json.dumps(in_process(options.in_process, options)))
        return
    if not 1 <= options.warm_up < options.steps - 1:
        parser.error("--warm-up must be at least 1 and leave at least 2 steps")
    work = tempfile.mkdtemp(prefix="bench_driver_")
    prepare(work, options)
    child = [sys.executable, os.path.abspath(__file__), "--in-process", work, "--steps", options.steps,
             "--batch", options.batch]
    runs = []
    for index in range(options.repeats):
        inside = json.loads(run(child, cwd=work).stdout)
        driver = through_driver(os.path.abspath(options.driver_root), work, options, index)
        # Step k in process is interval k - 1 through the driver: the same steps go into both medians.
        pair = {
            "in_process_s": statistics.median(inside["step_seconds"][options.warm_up:]),
            "through_driver_s": statistics.median(driver["step_seconds"][options.warm_up - 1:]),
            "in_process_trainer_step_time_s": statistics.median(inside["trainer_step_times"][options.warm_up:]),
            "driver_trainer_step_time_s": statistics.median(driver["trainer_step_times"][options.warm_up:]),
        }
        # What the driver path adds, apart from how fast the trainer's own step ran in each run (on a shared
        # machine the two runs see different loads): the time around the trainer's step, through the driver and in
        # process.
        pair["driver_overhead_s"] = ((pair["through_driver_s"] - pair["driver_trainer_step_time_s"])
                                     - (pair["in_process_s"] - pair["in_process_trainer_step_time_s"]))
        pair = {k: round(v, 4) for k, v in pair.items()}
        pair["ratio"] = round(pair["through_driver_s"] / pair["in_process_s"], 3)
        pair["overhead_fraction"] = round(pair["driver_overhead_s"] / pair["in_process_s"], 3)
        runs.append({"step": pair, "startup": startup_table(driver),
                     "in_process_startup": {"phases_s": inside["startup_phases_s"],
                                            "total_s": inside["startup_total_s"]},
                     "driver_wall_s": driver["wall_s"]})
        print(f"run {index}: {json.dumps(runs[-1])}", flush=True)
    middle = sorted(runs, key=lambda r: r["step"]["ratio"])[len(runs) // 2]
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "driver_root": os.path.abspath(options.driver_root),
        "shape": {"layers": options.layers, "hidden": options.hidden, "tokenizer": options.tokenizer,
                  "conversations_per_step": options.batch, "dtype": "fp32"},
        "steps": options.steps, "warm_up_steps": options.warm_up, "repeats": options.repeats,
        # The run with the median ratio, and every run.
        "step": middle["step"],
        "startup": middle["startup"],
        "in_process_startup": middle["in_process_startup"],
        "runs": runs,
    }
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(os.path.dirname(os.path.abspath(options.output)), exist_ok=True)
    with open(options.output, "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps({k: report[k] for k in ("step", "startup", "in_process_startup")}, indent=2))


if __name__ == "__main__":
    main()

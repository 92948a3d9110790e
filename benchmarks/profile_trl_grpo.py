"""Where TRL's GRPO training step spends its time: the TRL side of benchmarks/grpo_vs_trl.py (same config, same
data, same model), with torch.profiler around one training step after the warm-up, run once with TRL's default
gradient checkpointing and once without. Prints the top operators and writes them as JSON.

  python benchmarks/grpo_vs_trl.py --init-model outputs/quickstart_rl/sft_hf --work-dir outputs/grpo_quick  # once
  python benchmarks/profile_trl_grpo.py --work-dir outputs/grpo_quick [--output benchmarks/results/trl_grpo_profile.json]
  python benchmarks/profile_trl_grpo.py --work-dir outputs/grpo_long --workload long --modes on --steps 3 \
      --output benchmarks/results/trl_grpo_profile_long.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))


def profile_one(work: str, options: argparse.Namespace, checkpointing: bool) -> dict:
    """In this process: TRL's trainer as grpo_vs_trl builds it, one step profiled."""
    import torch
    import trl

    import grpo_vs_trl

    real_config = trl.GRPOConfig

    def config(*args, **kwargs):
        return real_config(*args, **{**kwargs, "gradient_checkpointing": checkpointing})

    trl.GRPOConfig = config
    calls, report = [0], {}
    real_step = trl.GRPOTrainer.training_step

    def training_step(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] != options.profiled_step:
            return real_step(self, *args, **kwargs)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
            began = time.perf_counter()
            out = real_step(self, *args, **kwargs)
            report["step_seconds"] = time.perf_counter() - began
        table = profiler.key_averages()
        report["top_self_cpu"] = [
            {"op": e.key, "self_s": round(e.self_cpu_time_total / 1e6, 4), "calls": e.count}
            for e in sorted(table, key=lambda e: -e.self_cpu_time_total)[:20]]
        # TRL's log-prob kernel, its own calls included (forward, and the backward that recomputes each tile).
        report["chunked_logprob_inclusive_s"] = {e.key: round(e.cpu_time_total / 1e6, 4) for e in table
                                                 if "ChunkedLogProb" in e.key}
        print(table.table(sort_by="self_cpu_time_total", row_limit=20), flush=True)
        return out

    trl.GRPOTrainer.training_step = training_step
    # The settings of the results files' runs (docs/benchmarks.md): 8 prompts x 8, temperature 1, clip 0.2.
    sys.argv = ["grpo_vs_trl.py", "--trl-worker", "--work-dir", work, "--trl-generation=generate",
                f"--workload={options.workload}", f"--steps={options.steps}", "--prompts=8", "--group-size=8",
                f"--max-new-tokens={options.max_new_tokens}", "--temperature=1.0", "--clip=0.2",
                f"--lr={options.lr}", "--seed=0"]
    result = grpo_vs_trl.trl_worker(work, grpo_vs_trl.parse_options())
    report["train_seconds_per_step"] = [round(s, 3) for s in result["train_seconds_per_step"]]
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", required=True, help="A work directory of grpo_vs_trl.py (data/, model/).")
    parser.add_argument("--workload", choices=["quick", "long"], default="quick")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="Default: 12 (quick), 256 (long).")
    parser.add_argument("--lr", type=float, default=None, help="Default: 3e-4 (quick), 1e-4 (long).")
    parser.add_argument("--modes", default="on,off", help="Gradient checkpointing on, off, or both (one process each).")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--profiled-step", type=int, default=3)
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results", "trl_grpo_profile.json"))
    parser.add_argument("--one", choices=["on", "off"], help=argparse.SUPPRESS)
    options = parser.parse_args()
    long = options.workload == "long"
    options.max_new_tokens = options.max_new_tokens or (256 if long else 12)
    options.lr = options.lr or (1e-4 if long else 3e-4)
    if options.one:
        report = profile_one(os.path.abspath(options.work_dir), options, options.one == "on")
        print("PROFILE " + json.dumps(report))
        return
    reports = {}
    for mode in options.modes.split(","):  # each in a fresh process: TRL and torch state do not carry over
        out = subprocess.run([sys.executable, __file__, "--work-dir", options.work_dir, "--steps", str(options.steps),
                              "--profiled-step", str(options.profiled_step), "--workload", options.workload,
                              "--max-new-tokens", str(options.max_new_tokens), "--lr", str(options.lr), "--one", mode],
                             capture_output=True, text=True)
        line = [x for x in out.stdout.splitlines() if x.startswith("PROFILE ")]
        if out.returncode or not line:
            sys.exit(f"profiling failed:\n{out.stdout[-3000:]}{out.stderr[-3000:]}")
        print(out.stdout[out.stdout.find("---"):].split("PROFILE ")[0])
        reports[f"gradient_checkpointing_{mode}"] = json.loads(line[0][len("PROFILE "):])
    with open(options.output, "w") as f:
        json.dump({"date": time.strftime("%Y-%m-%d"), "workload": options.workload,
                   "load_average_at_end": os.getloadavg(), **reports}, f, indent=1)
    for mode, report in reports.items():
        print(mode, "profiled step", round(report["step_seconds"], 3), "s; train s/step", report["train_seconds_per_step"])


if __name__ == "__main__":
    main()

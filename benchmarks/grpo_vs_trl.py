"""GRPO side by side: `train.py` with its engines against TRL's GRPOTrainer, on the same work, each in its own process.

Same initial weights (one HF checkpoint), the same prompts in the same order (no shuffling: step k trains prompts
[k*B, (k+1)*B) of the workload's RL split), the same group size, completions per step (one optimizer step per
rollout), max new tokens, temperature 1 (no top-p/top-k), clip range, no KL (TRL beta 0; ours --kl-coef 0 without
--use-kl-loss), Adam with the same constant learning rate, betas, eps, no weight decay and grad-norm clip 1.0, the
same number of steps, and the same reward function. Loss aggregation: each completion's token mean, averaged over
the step (TRL `loss_type="grpo"`, ours without --calculate-per-token-loss); advantages: group-normalised rewards
(both divide by the group's unbiased std; TRL adds 1e-4, ours 1e-6).

Two workloads (benchmarks/grpo_workloads.py):
- `--workload quick` (default): the RL quick start's task (`tools/prepare_reasoning_gym.py`, reasoning-gym's
  `score_answer`, `examples/reasoning_gym/reward.py`), at most 12 new tokens;
- `--workload long`: recite a memorised text from a given word to the end of its sentence (`examples/long_answers/`),
  answers of 5 to 204 tokens, at most 256 new tokens: generation-heavy, with completion lengths that vary widely
  within a step. The initial model is first fine-tuned on the task (an in-script warm-up, `--warm-up-steps`) so that
  it knows the text and ends its turns; both sides start from that checkpoint.

Reported per side: whole-process wall time, per step the generation and training time, generated tokens/s, mean
reward per step, the prompts each step trained on, the generated-length distribution and the padding a padded batch
of those lengths carries, held-out greedy accuracy of the final weights (the same evaluation on both exports, and on
the initial checkpoint), and the FLOPs floor: the model FLOPs of each step's generation (KV-cached) and training at
the measured rate of a matmul of the output layer's shape, with each side's times as multiples of it.

  python benchmarks/grpo_vs_trl.py --init-model outputs/quickstart_rl/sft_hf   # after the RL quick start's SFT
  python benchmarks/grpo_vs_trl.py --workload long                             # warm-up, then both sides
  python benchmarks/grpo_vs_trl.py --tiny [--workload long]                    # CI size: 2 steps, a tiny model
  bash benchmarks/gpu_grpo.sh                                                  # one GPU (see that script)

If train.py stops with an error (a refused flag, a crash), the report records the slime side as `"ran": false`
with train.py's error line; nothing is made up for it. Defaults: 1 trainer and 1 engine process for ours, one
process for TRL (torch's default threads). Needs `pip install -e ".[benchmark]"` (trl) and reasoning-gym; TRL's
vLLM generation (`--trl-generation vllm`) needs vllm and a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from grpo_workloads import (  # noqa: E402
    SHAPES, WORKLOADS, Workload, build_data, floor_report, flops_shape, length_summary, make_model, matmul_tflops,
    padded_batch_shares, question, score_function, task_description, warm_up)

WARM_UP_BATCH = 16


def build_inputs(work: str, options: argparse.Namespace, workload: Workload) -> dict[str, Any] | None:
    """The prompts and the initial HF checkpoint (`work/model`), shared by both sides; returns the warm-up's figures
    when one ran. The RL questions are cut to whole steps (`bench.jsonl`): both sides then walk them in file order,
    epoch after epoch, the same way."""
    build_data(workload, f"{work}/data", options.seed, options.tiny)
    with open(f"{work}/data/train.jsonl") as f:
        rows = f.readlines()
    with open(f"{work}/data/bench.jsonl", "w") as f:
        f.writelines(rows[: len(rows) // options.prompts * options.prompts])
    if options.init_model:
        shutil.copytree(options.init_model, f"{work}/model")
        return None
    if not options.warm_up_steps:
        make_model(f"{work}/model", options.shape)
        return None
    make_model(f"{work}/init_model", options.shape)
    return warm_up(f"{work}/init_model", f"{work}/data/sft.jsonl", f"{work}/model", options.warm_up_steps,
                   WARM_UP_BATCH, options.warm_up_lr, options.seed)


def slime_flags(work: str, options: argparse.Namespace, workload: Workload) -> list[str]:
    """train.py's flags for the same run: one rollout of B prompts x n samples = one optimizer step."""
    samples = options.prompts * options.group_size
    # One device for both: the engine gives its memory back while the trainer trains (slime's colocated mode).
    colocate = ["--colocate", "--sglang-mem-fraction-static", "0.7"] if options.colocate else []
    return [
        "--actor-num-nodes", "1", "--actor-num-gpus-per-node", str(options.slime_trainers),
        "--rollout-num-gpus", str(options.slime_engines), "--rollout-num-gpus-per-engine", "1", *colocate,
        "--hf-checkpoint", f"{work}/model", "--ref-load", f"{work}/model", "--load", f"{work}/slime_ckpt",
        "--prompt-data", f"{work}/data/bench.jsonl", "--input-key", "messages", "--label-key", "label",
        "--metadata-key", "metadata", "--apply-chat-template",
        "--custom-rm-path", workload.reward_path,
        "--num-rollout", str(options.steps), "--rollout-batch-size", str(options.prompts),
        "--n-samples-per-prompt", str(options.group_size), "--global-batch-size", str(samples),
        "--rollout-max-response-len", str(options.max_new_tokens), "--rollout-temperature", str(options.temperature),
        "--advantage-estimator", "grpo", "--loss-type", "policy_loss", "--eps-clip", str(options.clip),
        "--kl-coef", "0",
        "--optimizer", "adam", "--lr", str(options.lr), "--lr-decay-style", "constant", "--weight-decay", "0",
        "--adam-beta1", "0.9", "--adam-beta2", "0.999", "--adam-eps", "1e-8", "--clip-grad", "1.0",
        "--attention-dropout", "0", "--hidden-dropout", "0",
        "--use-dynamic-batch-size", "--max-tokens-per-gpu", "8192",
        "--sglang-server-concurrency", str(samples),
        "--save", f"{work}/slime_ckpt", "--save-interval", str(options.steps), "--save-hf", f"{work}/slime_hf",
        "--save-debug-rollout-data", f"{work}/slime_rollouts/{{rollout_id}}.pt",
        "--metrics-file", f"{work}/slime_metrics.jsonl",
    ]


def run_slime(work: str, options: argparse.Namespace, workload: Workload) -> dict[str, Any]:
    """train.py in its own process (its output in `work/slime.log`); its metrics file (rollout/*, perf/*,
    train/step_time) and saved rollouts give the per-step figures, the prompts each step trained on and every
    sample's prompt and completion length."""
    import torch

    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    started = time.monotonic()
    with open(f"{work}/slime.log", "w") as out:
        result = subprocess.run([sys.executable, f"{ROOT}/train.py", *slime_flags(work, options, workload)],
                                cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
    wall = time.monotonic() - started
    if result.returncode:
        with open(f"{work}/slime.log") as f:
            output = f.read()
        errors = [line for line in output.splitlines() if "error:" in line]
        return {"ran": False, "reason": errors[-1].strip() if errors else output[-2000:], "process_seconds": wall}
    records = [json.loads(line) for line in open(f"{work}/slime_metrics.jsonl")]
    rollouts = [r for r in records if "rollout/raw_reward" in r]
    steps = [r for r in records if "train/step_time" in r]
    syncs = [r["perf/update_weights_time"] for r in records if "perf/update_weights_time" in r]
    prompts, prompt_lengths, completion_lengths = [], [], []
    for step in range(options.steps):
        samples = torch.load(f"{work}/slime_rollouts/{step}.pt", weights_only=False)["samples"]
        prompts.append([question(s["metadata"]) for s in samples[::options.group_size]])
        prompt_lengths.append([len(s["tokens"]) - s["response_length"] for s in samples])
        completion_lengths.append([s["response_length"] for s in samples])
    generation = [r["perf/generation_time"] for r in rollouts]
    train = [r["train/step_time"] for r in steps]
    return {
        "ran": True,
        "process_seconds": wall,
        "steps": len(steps),
        "mean_reward_per_step": [r["rollout/raw_reward"] for r in rollouts],
        "generation_seconds_per_step": generation,
        "train_seconds_per_step": train,
        "weight_sync_seconds_per_step": syncs,
        # The rollout (generation, reward, grouping), training and the weight sync: what one step costs.
        "step_seconds_per_step": [r["perf/rollout_time"] + t + s for r, t, s in zip(rollouts, train, syncs)],
        "generation_tokens_per_s": sum(r["perf/generation_tokens_per_s"] * t for r, t in zip(rollouts, generation))
        / max(sum(generation), 1e-9),
        "prompts_per_step": prompts,
        "prompt_lengths_per_step": prompt_lengths,
        "completion_lengths_per_step": completion_lengths,
        "hf_dir": f"{work}/slime_hf",
    }


def trl_worker(work: str, options: argparse.Namespace) -> dict[str, Any]:
    """Runs inside its own process (see main)."""
    import datasets
    import torch
    import transformers
    from trl import GRPOConfig, GRPOTrainer

    from examples.reasoning_gym.evaluate import read_rows

    started = time.monotonic()
    score = score_function(WORKLOADS[options.workload])
    rows = read_rows(f"{work}/data/bench.jsonl")
    dataset = datasets.Dataset.from_list([{"prompt": r["messages"], "metadata": json.dumps(r["metadata"])}
                                          for r in rows])

    def reward(prompts, completions, metadata, **kwargs):
        return [score(c[-1]["content"] if isinstance(c, list) else c, m) for c, m in zip(completions, metadata)]

    samples = options.prompts * options.group_size
    cuda = torch.cuda.is_available()
    vllm = {}
    if options.trl_generation == "vllm":
        # vLLM in the trainer's process on the same GPU. No importance-sampling correction: ours applies none
        # either (no --use-tis), and it would add an old-log-prob forward pass to TRL's step.
        vllm = {"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.3,
                "vllm_importance_sampling_correction": False}
    config = GRPOConfig(
        output_dir=f"{work}/trl", max_steps=options.steps, per_device_train_batch_size=samples,
        gradient_accumulation_steps=1, steps_per_generation=1, num_generations=options.group_size,
        max_completion_length=options.max_new_tokens, temperature=options.temperature, top_p=1.0, top_k=0,
        beta=0.0, epsilon=options.clip, num_iterations=1, loss_type="grpo", scale_rewards="group",
        learning_rate=options.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, adam_beta1=0.9,
        adam_beta2=0.999, adam_epsilon=1e-8, max_grad_norm=1.0, use_cpu=not cuda, bf16=cuda,
        report_to=[], logging_steps=1, save_strategy="no", shuffle_dataset=False, seed=options.seed,
        dataloader_num_workers=0, disable_dropout=True, **vllm,
    )
    model = transformers.AutoModelForCausalLM.from_pretrained(f"{work}/model", dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(f"{work}/model")
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=dataset,
                          processing_class=tokenizer)
    generation, scoring, prompts, step_times, prompt_lengths, completion_lengths = [], [], [], [], [], []

    generate = trainer._generate

    def timed_generate(*args, **kwargs):
        begin = time.perf_counter()
        out = generate(*args, **kwargs)
        generation.append(time.perf_counter() - begin)
        prompt_lengths.append([len(ids) for ids in out[0]])
        completion_lengths.append([len(ids) for ids in out[1]])
        return out

    generate_and_score = trainer._generate_and_score_completions

    def recorded_generate_and_score(inputs):
        # The RepeatSampler hands each prompt `group_size` times in a row.
        prompts.append([question(x["metadata"]) for x in inputs[::options.group_size]])
        begin = time.perf_counter()
        out = generate_and_score(inputs)
        scoring.append(time.perf_counter() - begin)
        return out

    trainer._generate = timed_generate
    trainer._generate_and_score_completions = recorded_generate_and_score

    class StepTimer(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            step_times.append(time.perf_counter() - self.begin)

    trainer.add_callback(StepTimer())
    trainer.train()
    trainer.save_model(f"{work}/trl_hf")
    logs = [entry for entry in trainer.state.log_history if "reward" in entry]
    return {
        "ran": True,
        "generation": options.trl_generation,
        # From the dataset load on (imports excluded); process_seconds, added by main, is the whole process.
        "wall_seconds_after_imports": time.monotonic() - started,
        "steps": trainer.state.global_step,
        "mean_reward_per_step": [entry["reward"] for entry in logs],
        "generation_seconds_per_step": generation,
        # Everything of a step that is not generation: TRL's own old-log-prob and reward work, forward, backward, Adam.
        "train_seconds_per_step": [step - g for step, g in zip(step_times, generation)],
        "scoring_seconds_per_step": [s - g for s, g in zip(scoring, generation)],
        "step_seconds_per_step": step_times,
        "generation_tokens_per_s": sum(map(sum, completion_lengths)) / max(sum(generation), 1e-9),
        "prompts_per_step": prompts,
        "prompt_lengths_per_step": prompt_lengths,
        "completion_lengths_per_step": completion_lengths,
        "hf_dir": f"{work}/trl_hf",
    }


def start_trl(work: str, options: argparse.Namespace, mode: str) -> tuple[subprocess.Popen, str, float]:
    """The TRL worker in its own process, its output to a log file in `work` (a pipe nobody reads while the other
    side runs could fill and stall it)."""
    passed_on = {k: v for k, v in vars(options).items() if k not in PARENT_ONLY}
    env = {**os.environ, "PYTHONPATH": ROOT}
    log = f"{work}/trl_{mode}.log"
    started = time.time()
    with open(log, "w") as out:
        child = subprocess.Popen(
            [sys.executable, __file__, "--trl-worker", "--work-dir", work, f"--trl-generation={mode}",
             *[f"--{k.replace('_', '-')}={v}" for k, v in passed_on.items() if v is not None]],
            stdout=out, stderr=subprocess.STDOUT, text=True, env=env)
    return child, log, started


def trl_result(child: subprocess.Popen, log: str, started: float) -> dict[str, Any]:
    """The worker's figures, with the whole process's wall time: from its start to the moment it printed them (it
    may have been waited for long after, in --tiny)."""
    child.wait()
    with open(log) as f:
        output = f.read()
    match = re.search(r"^TRL_RESULT (.*)$", output, re.M)
    if not match:
        sys.exit(f"TRL run failed (log: {log}):\n{output[-6000:]}")
    result = json.loads(match[1])
    return {**result, "process_seconds": result.pop("finished_at") - started}


def held_out_accuracy(work: str, hf_dir: str, options: argparse.Namespace) -> dict[str, Any]:
    """Greedy answers to the held-out prompts (never trained on), scored by the workload's reward."""
    from examples.reasoning_gym.evaluate import greedy_answers, read_rows

    rows = read_rows(f"{work}/data/held_out.jsonl")
    score = score_function(WORKLOADS[options.workload])
    scores = [score(answer, row["metadata"])
              for answer, row in zip(greedy_answers(hf_dir, rows, options.max_new_tokens), rows)]
    return {"accuracy": sum(s == 1.0 for s in scores) / len(rows), "mean_score": sum(scores) / len(rows),
            "total": len(rows)}


# Options of the parent alone, not handed to the TRL worker.
PARENT_ONLY = ("trl_worker", "work_dir", "output", "tiny", "trl_generation", "init_model", "shape", "warm_up_steps",
               "warm_up_lr", "colocate", "slime_trainers", "slime_engines")


def parse_options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="quick")
    parser.add_argument("--tiny", action="store_true",
                        help="CI size: 2 steps of 2 prompts x 4, a 1-layer model, 2 warm-up steps; the two sides run "
                             "at the same time (their timings mean nothing at this size).")
    parser.add_argument("--init-model", default=None,
                        help="HF checkpoint to start from (default: a new model of --shape, warmed up for the long "
                             "workload).")
    parser.add_argument("--shape", choices=sorted(SHAPES), default=None, help="Default: small (tiny with --tiny).")
    parser.add_argument("--warm-up-steps", type=int, default=None,
                        help="Fine-tuning steps of the new model on the task's SFT split (default: the workload's; "
                             "none with --init-model).")
    parser.add_argument("--warm-up-lr", type=float, default=3e-3)
    parser.add_argument("--steps", type=int, default=None, help="Default: the workload's.")
    parser.add_argument("--prompts", type=int, default=8, help="Prompts per step (B).")
    parser.add_argument("--group-size", type=int, default=8, help="Completions per prompt (n).")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="Default: the workload's.")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--clip", type=float, default=0.2)
    parser.add_argument("--lr", type=float, default=None, help="Default: the workload's.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--slime-trainers", type=int, default=1)
    parser.add_argument("--slime-engines", type=int, default=1)
    parser.add_argument("--colocate", action="store_true",
                        help="Ours: trainer and engine on the same device (train.py --colocate), as one GPU needs.")
    parser.add_argument("--trl-generation", nargs="+", choices=["generate", "vllm"], default=["generate"],
                        help="TRL's generation back-ends to run, each in its own process: its default "
                             "model.generate, and vLLM (colocated; needs vllm and a GPU).")
    parser.add_argument("--output", default=None,
                        help="Default: benchmarks/results/grpo_vs_trl[_long][_tiny].json")
    parser.add_argument("--work-dir", default=None)
    parser.add_argument("--trl-worker", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    workload = WORKLOADS[options.workload]
    if options.trl_worker:  # the parent passes everything the worker needs
        options.trl_generation = options.trl_generation[0]
        return options
    if options.tiny:
        options.steps, options.prompts, options.group_size, options.max_new_tokens = 2, 2, 4, 8
        options.shape = options.shape or "tiny"
        if workload.warm_up_steps and options.warm_up_steps is None:
            options.warm_up_steps = 2
    options.shape = options.shape or "small"
    options.steps = options.steps or workload.steps
    options.max_new_tokens = options.max_new_tokens or workload.max_new_tokens
    options.lr = options.lr or workload.lr
    if options.init_model:  # an existing checkpoint is used as it is
        if options.warm_up_steps:
            parser.error("--warm-up-steps warms up a new model: drop it with --init-model")
        options.warm_up_steps = 0
    elif options.warm_up_steps is None:
        options.warm_up_steps = workload.warm_up_steps
    if "vllm" in options.trl_generation:
        import importlib.util

        import torch

        if importlib.util.find_spec("vllm") is None or not torch.cuda.is_available():
            parser.error("--trl-generation vllm needs the vllm package and a GPU")
    return options


def main() -> None:
    options = parse_options()
    workload = WORKLOADS[options.workload]
    if options.trl_worker:
        print("TRL_RESULT " + json.dumps({**trl_worker(options.work_dir, options), "finished_at": time.time()}))
        return
    suffix = ("_long" if options.workload == "long" else "") + ("_tiny" if options.tiny else "")
    output = options.output or os.path.join(ROOT, "benchmarks", "results", f"grpo_vs_trl{suffix}.json")
    # Absolute: train.py runs in the work directory, and every path it is given points into it.
    work = os.path.abspath(options.work_dir) if options.work_dir else tempfile.mkdtemp(prefix="grpo_vs_trl_")
    warm = build_inputs(work, options, workload)
    shape = flops_shape(f"{work}/model")
    # The output layer's matmul over a step's worth of completion tokens: the representative (and largest) one.
    matmul_shape = (min(options.prompts * options.group_size * options.max_new_tokens, 4096), shape.hidden_size,
                    shape.vocab_size)
    # The machine is shared: each side gets the matmul rate measured just before and just after it, and the load.
    rates = [matmul_tflops(*matmul_shape)]
    sides: dict[str, dict[str, Any]] = {}
    pending: dict[str, tuple[subprocess.Popen, str, float]] = {}

    def machine(load_at_start: float) -> dict[str, Any]:
        rates.append(matmul_tflops(*matmul_shape))
        return {"load_average_1min": [load_at_start, os.getloadavg()[0]], "matmul_tflops": rates[-2:]}

    for mode in options.trl_generation:
        name = "trl" if mode == "generate" else f"trl_{mode}"
        load = os.getloadavg()[0]
        pending[name] = start_trl(work, options, mode)
        if not options.tiny:  # one process at a time, so that none slows another down
            sides[name] = {**trl_result(*pending.pop(name)), "machine": machine(load)}
    load = os.getloadavg()[0]
    ours = run_slime(work, options, workload)
    for name, running in pending.items():
        sides[name] = trl_result(*running)
    sides["ours"] = {**ours, "machine": machine(load)}
    rows = [json.loads(line) for line in open(f"{work}/data/bench.jsonl")]
    per_epoch = len(rows) // options.prompts
    expected = [[question(r["metadata"]) for r in rows[(k % per_epoch) * options.prompts:][: options.prompts]]
                for k in range(options.steps)]
    initial = held_out_accuracy(work, f"{work}/model", options)
    for side in sides.values():
        if side["ran"]:
            side["held_out"] = held_out_accuracy(work, side.pop("hf_dir"), options)
            completions = [n for step in side["completion_lengths_per_step"] for n in step]
            side["completion_length"] = length_summary(completions, options.max_new_tokens)
            side["padding_share_if_padded"] = padded_batch_shares(side["prompt_lengths_per_step"],
                                                                  side["completion_lengths_per_step"])
            # The floor at the best rate seen around the side's run: the least that the load took from it.
            side["floor"] = floor_report(shape, side, max(side.get("machine", {}).get("matmul_tflops", rates)))
    import torch
    import trl as trl_package

    trl_sides = [side for name, side in sides.items() if name.startswith("trl")]
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)",
        "load_average_at_end": os.getloadavg(),
        "versions": {"torch": torch.__version__, "trl": trl_package.__version__},
        "workload": options.workload,
        "task": task_description(workload),
        "config": {k: v for k, v in vars(options).items() if k not in ("trl_worker", "work_dir", "output")},
        "warm_up": warm,
        "held_out_initial": initial,
        "matmul": {"shape": matmul_shape, "tflops_measured": rates,
                   "dtype": "bf16" if torch.cuda.is_available() else "fp32"},
        **sides,
        "trl_prompts_in_file_order": all(side["prompts_per_step"] == expected for side in trl_sides),
        # None when the slime side did not run.
        "same_steps_and_prompts": (all(side["steps"] == ours["steps"]
                                       and side["prompts_per_step"] == ours["prompts_per_step"] for side in trl_sides)
                                   if ours["ran"] else None),
    }
    if not options.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
        json.dump(report, f, indent=2)
    print(summary(report))
    if not ours["ran"]:
        print(f"slime side did not run: {ours['reason']}", file=sys.stderr)


def summary(report: dict[str, Any]) -> str:
    """The table the docs show, as text."""
    import statistics

    names = [name for name in report if name.startswith("trl") or name == "ours"]
    names = [name for name in names if isinstance(report[name], dict) and report[name].get("ran")]

    def median(name: str, key: str) -> str:
        values = report[name].get(key) or [0.0]
        return f"{statistics.median(values):.3g}"

    lines = [f"workload {report['workload']}, {report['device']}, matmul TFLOP/s measured "
             f"{', '.join(f'{r:.3g}' for r in report['matmul']['tflops_measured'])}; held-out accuracy before: "
             f"{report['held_out_initial']['accuracy']:.1%}",
             "side | process s | generation s/step | training s/step | gen tokens/s | mean reward | held-out acc | "
             "completion mean/p90/max | step / floor"]
    for name in names:
        side = report[name]
        lengths = side["completion_length"]
        lines.append(
            f"{name} | {side['process_seconds']:.1f} | {median(name, 'generation_seconds_per_step')} | "
            f"{median(name, 'train_seconds_per_step')} | {side['generation_tokens_per_s']:.0f} | "
            f"{statistics.mean(side['mean_reward_per_step']):.3f} | {side['held_out']['accuracy']:.1%} | "
            f"{lengths['mean']:.0f}/{lengths['p90']}/{lengths['max']} | "
            f"{side['floor'].get('median_over_floor', {}).get('step', float('nan')):.1f}x")
    lines.append(f"same steps and prompts: {report['same_steps_and_prompts']}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

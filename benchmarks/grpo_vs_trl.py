"""GRPO side by side: `train.py` with CPU engines against TRL's GRPOTrainer, on the same work, each in its own process.

Same initial weights (one HF checkpoint), the same prompts in the same order (the quick start's reasoning-gym task,
`tools/prepare_reasoning_gym.py`, no shuffling: step k trains prompts [k*B, (k+1)*B)), the same group size,
completions per step (one optimizer step per rollout), max new tokens, temperature 1 (no top-p/top-k), clip range,
no KL (TRL beta 0; ours --kl-coef 0 without --use-kl-loss), Adam with the same constant learning rate, betas, eps,
no weight decay and grad-norm clip 1.0, the same number of steps, and the same reward (reasoning-gym's
`score_answer`, `examples/reasoning_gym/reward.py`). Loss aggregation: each completion's token mean, averaged over
the step (TRL `loss_type="grpo"`, ours without --calculate-per-token-loss); advantages: group-normalised rewards
(both divide by the group's unbiased std; TRL adds 1e-4, ours 1e-6).

Reported per side: whole-process wall time, per step the generation and training time, generated tokens/s, mean
reward per step, the prompts each step trained on, and held-out greedy accuracy of the final weights (the same
evaluation, `examples/reasoning_gym/evaluate.py`, on both exports).

  python benchmarks/grpo_vs_trl.py --init-model outputs/quickstart_rl/sft_hf   # after the RL quick start's SFT
  python benchmarks/grpo_vs_trl.py --tiny                                      # CI: 2 steps, a tiny random model

If train.py stops with an error (a refused flag, a crash), the report records the slime side as `"ran": false`
with train.py's error line; nothing is made up for it. Defaults: 1 trainer and 1 engine process for ours, one
process for TRL (torch's default threads). Needs `pip install -e ".[benchmark]"` (trl) and reasoning-gym.
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
sys.path.insert(0, os.path.join(ROOT, "tools"))

# The quick start's task and splits (keep in step with scripts/quickstart-rl-cpu.sh): with the same seed the
# held-out and RL questions are the quick start's, so --init-model can be its SFT export.
TASK = "basic_arithmetic"
TASK_CONFIG = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1, "operators": ["+"],
               "allow_parentheses": False, "allow_negation": False}
SPLITS = {"held_out": 30, "sft": 45, "train": 46}
SYSTEM_PROMPT = "Answer between <answer> and </answer> tags."


def build_inputs(work: str, options: argparse.Namespace) -> None:
    """The prompts and the initial HF checkpoint, shared by both sides. The RL questions are cut to whole steps
    (`bench.jsonl`): both sides then walk them in file order, epoch after epoch, the same way."""
    from prepare_reasoning_gym import build

    build(TASK, TASK_CONFIG, SPLITS, options.seed, f"{work}/data", "jsonl", SYSTEM_PROMPT)
    with open(f"{work}/data/train.jsonl") as f:
        rows = f.readlines()
    with open(f"{work}/data/bench.jsonl", "w") as f:
        f.writelines(rows[: len(rows) // options.prompts * options.prompts])
    if options.init_model:
        shutil.copytree(options.init_model, f"{work}/model")
        return
    size = ["--hidden-size", "32", "--layers", "1"] if options.tiny else []
    subprocess.run([sys.executable, f"{ROOT}/examples/quickstart/make_model.py", "--output-dir", f"{work}/model",
                    *size], check=True, capture_output=True, text=True)


def slime_flags(work: str, options: argparse.Namespace) -> list[str]:
    """train.py's flags for the same run: one rollout of B prompts x n samples = one optimizer step."""
    samples = options.prompts * options.group_size
    return [
        "--actor-num-nodes", "1", "--actor-num-gpus-per-node", str(options.slime_trainers),
        "--rollout-num-gpus", str(options.slime_engines), "--rollout-num-gpus-per-engine", "1",
        "--hf-checkpoint", f"{work}/model", "--ref-load", f"{work}/model", "--load", f"{work}/slime_ckpt",
        "--prompt-data", f"{work}/data/bench.jsonl", "--input-key", "messages", "--label-key", "label",
        "--metadata-key", "metadata", "--apply-chat-template",
        "--custom-rm-path", "examples.reasoning_gym.reward.reward_func",
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


def run_slime(work: str, options: argparse.Namespace) -> dict[str, Any]:
    """train.py in its own process; its metrics file (rollout/*, perf/*, train/step_time) and saved rollouts give the
    per-step figures and the prompts each step trained on."""
    import torch

    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    started = time.monotonic()
    result = subprocess.run([sys.executable, f"{ROOT}/train.py", *slime_flags(work, options)], cwd=work, env=env,
                            capture_output=True, text=True)
    wall = time.monotonic() - started
    if result.returncode:
        output = result.stdout + result.stderr
        errors = [line for line in output.splitlines() if "error:" in line]
        return {"ran": False, "reason": errors[-1].strip() if errors else output[-2000:], "process_seconds": wall}
    records = [json.loads(line) for line in open(f"{work}/slime_metrics.jsonl")]
    rollouts = [r for r in records if "rollout/raw_reward" in r]
    steps = [r for r in records if "train/step_time" in r]
    prompts = []
    for step in range(options.steps):
        samples = torch.load(f"{work}/slime_rollouts/{step}.pt", weights_only=False)["samples"]
        prompts.append(_questions([s["metadata"] for s in samples[::options.group_size]]))
    generation = [r["perf/generation_time"] for r in rollouts]
    return {
        "ran": True,
        "process_seconds": wall,
        "steps": len(steps),
        "mean_reward_per_step": [r["rollout/raw_reward"] for r in rollouts],
        "generation_seconds_per_step": generation,
        "train_seconds_per_step": [r["train/step_time"] for r in steps],
        "weight_sync_seconds_per_step": [r["perf/update_weights_time"] for r in records
                                         if "perf/update_weights_time" in r],
        "generation_tokens_per_s": sum(r["perf/generation_tokens_per_s"] * t for r, t in zip(rollouts, generation))
        / max(sum(generation), 1e-9),
        "prompts_per_step": prompts,
        "hf_dir": f"{work}/slime_hf",
    }


def _questions(metadata: list[Any]) -> list[str]:
    out = []
    for item in metadata:
        item = json.loads(item) if isinstance(item, str) else item
        out.append(item["reasoning_gym"]["entry"]["question"])
    return out


def trl_worker(work: str, options: argparse.Namespace) -> dict[str, Any]:
    """Runs inside its own process (see main)."""
    import datasets
    import torch
    import transformers
    from trl import GRPOConfig, GRPOTrainer

    from examples.reasoning_gym.evaluate import read_rows
    from examples.reasoning_gym.reward import score_response

    started = time.monotonic()
    rows = read_rows(f"{work}/data/bench.jsonl")
    dataset = datasets.Dataset.from_list([{"prompt": r["messages"], "metadata": json.dumps(r["metadata"])}
                                          for r in rows])

    def reasoning_gym_reward(prompts, completions, metadata, **kwargs):
        return [score_response(c[-1]["content"] if isinstance(c, list) else c, m)
                for c, m in zip(completions, metadata)]

    samples = options.prompts * options.group_size
    config = GRPOConfig(
        output_dir=f"{work}/trl", max_steps=options.steps, per_device_train_batch_size=samples,
        gradient_accumulation_steps=1, steps_per_generation=1, num_generations=options.group_size,
        max_completion_length=options.max_new_tokens, temperature=options.temperature, top_p=1.0, top_k=0,
        beta=0.0, epsilon=options.clip, num_iterations=1, loss_type="grpo", scale_rewards="group",
        learning_rate=options.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, adam_beta1=0.9,
        adam_beta2=0.999, adam_epsilon=1e-8, max_grad_norm=1.0, use_cpu=not torch.cuda.is_available(),
        report_to=[], logging_steps=1, save_strategy="no", shuffle_dataset=False, seed=options.seed,
        dataloader_num_workers=0, disable_dropout=True,
    )
    model = transformers.AutoModelForCausalLM.from_pretrained(f"{work}/model", dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(f"{work}/model")
    trainer = GRPOTrainer(model=model, reward_funcs=reasoning_gym_reward, args=config, train_dataset=dataset,
                          processing_class=tokenizer)
    generation, scoring, prompts, step_times = [], [], [], []

    generate = trainer._generate

    def timed_generate(*args, **kwargs):
        begin = time.perf_counter()
        out = generate(*args, **kwargs)
        generation.append(time.perf_counter() - begin)
        return out

    generate_and_score = trainer._generate_and_score_completions

    def recorded_generate_and_score(inputs):
        # The RepeatSampler hands each prompt `group_size` times in a row.
        prompts.append(_questions([x["metadata"] for x in inputs[::options.group_size]]))
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
    tokens = [entry["completions/mean_length"] * samples for entry in logs]
    return {
        "ran": True,
        # From the dataset load on (imports excluded); process_seconds, added by main, is the whole process.
        "wall_seconds_after_imports": time.monotonic() - started,
        "steps": trainer.state.global_step,
        "mean_reward_per_step": [entry["reward"] for entry in logs],
        "generation_seconds_per_step": generation,
        # Everything of a step that is not generation: TRL's own old-log-prob and reward work, forward, backward, Adam.
        "train_seconds_per_step": [step - g for step, g in zip(step_times, generation)],
        "scoring_seconds_per_step": [s - g for s, g in zip(scoring, generation)],
        "generation_tokens_per_s": sum(tokens) / max(sum(generation), 1e-9),
        "prompts_per_step": prompts,
        "hf_dir": f"{work}/trl_hf",
    }


def held_out_accuracy(work: str, hf_dir: str, max_new_tokens: int) -> dict[str, Any]:
    from examples.reasoning_gym.evaluate import evaluate, read_rows

    figures, _ = evaluate(hf_dir, read_rows(f"{work}/data/held_out.jsonl"), max_new_tokens)
    return {k: figures[k] for k in ("accuracy", "mean_score", "total")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="CI size: 2 steps of 2 prompts x 4, a 1-layer model.")
    parser.add_argument("--init-model", default=None, help="HF checkpoint to start from (default: random init).")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--prompts", type=int, default=8, help="Prompts per step (B).")
    parser.add_argument("--group-size", type=int, default=8, help="Completions per prompt (n).")
    parser.add_argument("--max-new-tokens", type=int, default=12)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--clip", type=float, default=0.2)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--slime-trainers", type=int, default=1)
    parser.add_argument("--slime-engines", type=int, default=1)
    parser.add_argument("--output", default=None, help="Default: benchmarks/results/grpo_vs_trl[_tiny].json")
    parser.add_argument("--work-dir", default=None)
    parser.add_argument("--trl-worker", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.tiny:
        options.steps, options.prompts, options.group_size, options.max_new_tokens = 2, 2, 4, 8
    if options.trl_worker:
        print("TRL_RESULT " + json.dumps(trl_worker(options.work_dir, options)))
        return
    output = options.output or os.path.join(ROOT, "benchmarks", "results",
                                            "grpo_vs_trl_tiny.json" if options.tiny else "grpo_vs_trl.json")
    work = options.work_dir or tempfile.mkdtemp(prefix="grpo_vs_trl_")
    build_inputs(work, options)
    passed_on = {k: v for k, v in vars(options).items() if k not in ("trl_worker", "work_dir", "output", "tiny")}
    started = time.monotonic()
    child = subprocess.run([sys.executable, __file__, "--trl-worker", "--work-dir", work,
                            *[f"--{k.replace('_', '-')}={v}" for k, v in passed_on.items() if v is not None]],
                           capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT})
    match = re.search(r"^TRL_RESULT (.*)$", child.stdout, re.M)
    if not match:
        sys.exit(f"TRL run failed:\n{child.stdout[-2000:]}{child.stderr[-4000:]}")
    trl = {**json.loads(match[1]), "process_seconds": time.monotonic() - started}
    ours = run_slime(work, options)
    rows = [json.loads(line) for line in open(f"{work}/data/bench.jsonl")]
    per_epoch = len(rows) // options.prompts
    expected = [_questions([r["metadata"] for r in rows[(k % per_epoch) * options.prompts:][: options.prompts]])
                for k in range(options.steps)]
    for side in (trl, ours):
        if side["ran"]:
            side["held_out"] = held_out_accuracy(work, side.pop("hf_dir"), options.max_new_tokens)
    import torch
    import trl as trl_package

    report = {
        "date": time.strftime("%Y-%m-%d"),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)",
        "versions": {"torch": torch.__version__, "trl": trl_package.__version__},
        "task": {"name": TASK, "config": TASK_CONFIG, "system_prompt": SYSTEM_PROMPT},
        "config": passed_on,
        "trl": trl,
        "ours": ours,
        "trl_prompts_in_file_order": trl["prompts_per_step"] == expected,
        # None when the slime side did not run.
        "same_steps_and_prompts": (trl["steps"] == ours["steps"] and trl["prompts_per_step"] == ours["prompts_per_step"]
                                   if ours["ran"] else None),
    }
    if not options.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))
    if not ours["ran"]:
        print(f"slime side did not run: {ours['reason']}", file=sys.stderr)


if __name__ == "__main__":
    main()

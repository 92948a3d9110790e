"""The two workloads of benchmarks/grpo_vs_trl.py, the warm-up that the generation-heavy one needs, and the figures
that explain the comparison (generated-length distribution, padding of a padded batch, FLOPs floor per step).

- `quick`: the RL quick start's task (reasoning-gym one-digit additions, `tools/prepare_reasoning_gym.py`), at most
  12 new tokens: generation is short and every completion about as long as the others.
- `long`: recite a memorised text from a given word to the end of its sentence (`examples/long_answers/task.py`),
  answers of 5 to 204 tokens (median about 50), at most 256 new tokens: generation dominates, and the completions
  of one step differ in length by up to 40x, so how a side batches and pads decides its speed. A randomly
  initialised model knows no text and never ends its turn, so the workload first fine-tunes the initial model on
  the task's SFT split (`warm_up`, below) and both sides start from that checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (ROOT, os.path.join(ROOT, "tools")):
    if path not in sys.path:
        sys.path.insert(0, path)


@dataclass(frozen=True)
class Workload:
    name: str
    reward_path: str  # --custom-rm-path for train.py; TRL calls the same module's score_response
    max_new_tokens: int
    steps: int
    lr: float
    warm_up_steps: int  # 0: no warm-up (the quick start's own SFT export is passed as --init-model instead)


WORKLOADS = {
    "quick": Workload("quick", "examples.reasoning_gym.reward.reward_func", max_new_tokens=12, steps=40, lr=3e-4,
                      warm_up_steps=0),
    "long": Workload("long", "examples.long_answers.reward.reward_func", max_new_tokens=256, steps=8, lr=1e-4,
                     warm_up_steps=200),
}

# The quick start's task and splits (keep in step with scripts/quickstart-rl-cpu.sh): with the same seed the
# held-out and RL questions are the quick start's, so --init-model can be its SFT export.
QUICK_TASK = "basic_arithmetic"
QUICK_CONFIG = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1, "operators": ["+"],
                "allow_parentheses": False, "allow_negation": False}
QUICK_SPLITS = {"held_out": 30, "sft": 45, "train": 46}
QUICK_SYSTEM_PROMPT = "Answer between <answer> and </answer> tags."
LONG_SPLITS = {"held_out": 50, "train": 160}  # the warm-up gets the other 582 start words, RL 160 of them
LONG_SPLITS_TINY = {"held_out": 8, "train": 8, "sft": 16}

# name: (layers, hidden, ffn, heads, kv heads, head dim, tokenizer). "small" and "tiny" are
# examples/quickstart/make_model.py's shapes (its default, and the --hidden-size 32 --layers 1 the tiny runs use).
SHAPES = {
    "tiny": (1, 32, 128, 4, 2, 8, "smollm2"),
    "small": (2, 128, 512, 4, 2, 32, "smollm2"),
    "qwen3-0.6b": (28, 1024, 3072, 16, 8, 128, "qwen3"),
}


def build_data(workload: Workload, data_dir: str, seed: int, tiny: bool) -> None:
    """train.jsonl, held_out.jsonl (and sft.jsonl for the warm-up) in `data_dir`."""
    if workload.name == "quick":
        from prepare_reasoning_gym import build

        build(QUICK_TASK, QUICK_CONFIG, QUICK_SPLITS, seed, data_dir, "jsonl", QUICK_SYSTEM_PROMPT)
    else:
        from examples.long_answers.task import build as build_long

        build_long(data_dir, LONG_SPLITS_TINY if tiny else LONG_SPLITS, seed)


def task_description(workload: Workload) -> dict[str, Any]:
    if workload.name == "quick":
        return {"name": QUICK_TASK, "config": QUICK_CONFIG, "system_prompt": QUICK_SYSTEM_PROMPT}
    from examples.long_answers import task

    return {"name": "recitation (examples/long_answers/task.py)", "system_prompt": task.SYSTEM_PROMPT,
            "sentence_lengths": task.SENTENCE_LENGTHS}


def score_function(workload: Workload) -> Callable[[str, Any], float]:
    if workload.name == "quick":
        from examples.reasoning_gym.reward import score_response
    else:
        from examples.long_answers.reward import score_response
    return score_response


def question(metadata: Any) -> str:
    """The question a row asks, from its metadata (a dict or its JSON string) in either workload."""
    item = json.loads(metadata) if isinstance(metadata, str) else metadata
    return item["question"] if "question" in item else item["reasoning_gym"]["entry"]["question"]


def make_model(output_dir: str, shape: str) -> None:
    """A randomly initialised Qwen3 of `shape` with a real tokenizer and chat template."""
    if SHAPES[shape][-1] == "smollm2":
        layers, hidden = SHAPES[shape][:2]
        subprocess.run([sys.executable, f"{ROOT}/examples/quickstart/make_model.py", "--output-dir", output_dir,
                        "--hidden-size", str(hidden), "--layers", str(layers)],
                       check=True, capture_output=True, text=True)
        return
    import torch
    import transformers
    from fetch_assets import FETCHERS

    layers, hidden, ffn, heads, kv_heads, head_dim, tokenizer_name = SHAPES[shape]
    tokenizer_dir = FETCHERS[f"{tokenizer_name}-tokenizer"]()
    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = transformers.Qwen3Config(
        vocab_size=151936, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim, max_position_embeddings=4096,
        rms_norm_eps=1e-6, rope_theta=1e6, tie_word_embeddings=True,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"), pad_token_id=None,
    )
    transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(output_dir)
    for name in os.listdir(tokenizer_dir):
        shutil.copy(os.path.join(tokenizer_dir, name), output_dir)


def warm_up(model_dir: str, sft_path: str, output_dir: str, steps: int, batch_size: int, lr: float,
            seed: int) -> dict[str, Any]:
    """Fine-tune `model_dir` on the SFT conversations (loss on the assistant's answer and its end-of-turn token,
    Adam, cosine decay to lr/10) and save the result to `output_dir`. Each prompt is rendered exactly as both
    sides render it for generation (the chat template with the generation prompt), so the model learns to end its
    turn where the answer ends. Batches are drawn from length-sorted windows to keep padding low. On a GPU it
    trains there under bf16 autocast and saves in bf16."""
    import torch
    import transformers

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).train()
    eos = model.config.eos_token_id
    examples = []
    with open(sft_path) as f:
        for line in f:
            messages = json.loads(line)["messages"]
            prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
            prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            answer_ids = tokenizer(messages[-1]["content"], add_special_tokens=False)["input_ids"] + [eos]
            examples.append((prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids))
    rng = random.Random(seed)
    batches: list[list[int]] = []
    while len(batches) < steps:
        order = list(range(len(examples)))
        rng.shuffle(order)
        window = 8 * batch_size
        for start in range(0, len(order) - batch_size + 1, window):
            chunk = sorted(order[start:start + window], key=lambda i: len(examples[i][0]))
            batches += [chunk[i:i + batch_size] for i in range(0, len(chunk) - batch_size + 1, batch_size)]
    batches = batches[:steps]
    rng.shuffle(batches)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / max(steps, 1))))
    losses, tokens, started = [], 0, time.monotonic()
    for batch in batches:
        width = max(len(examples[i][0]) for i in batch)
        ids = torch.full((len(batch), width), eos, dtype=torch.long)
        labels = torch.full_like(ids, -100)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(batch):
            seq, target = examples[i]
            ids[row, :len(seq)], labels[row, :len(seq)], mask[row, :len(seq)] = (
                torch.tensor(seq), torch.tensor(target), 1)
        # The output layer only where a label is (the answer tokens): with a 49k-152k vocabulary it is most of
        # the model's work, and padding and prompt positions need none of it.
        targets = labels[:, 1:].to(device)
        trained = targets != -100
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            hidden = model.model(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
            logits = model.lm_head(hidden[:, :-1][trained]).float()
        loss = torch.nn.functional.cross_entropy(logits, targets[trained])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        tokens += int(mask.sum())
        if len(losses) % 50 == 0:
            print(f"warm-up step {len(losses)}/{len(batches)}: loss {statistics.mean(losses[-50:]):.3f}, "
                  f"{time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    if device == "cuda":
        # Saved in bf16, every side's default on a GPU: SGLang and vLLM serve a checkpoint in its saved dtype.
        model.to(torch.bfloat16)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    seconds = time.monotonic() - started
    return {"steps": len(batches), "batch_size": batch_size, "lr": lr, "seconds": seconds,
            "tokens_per_s": tokens / max(seconds, 1e-9), "first_loss": losses[0] if losses else None,
            "last_loss": statistics.mean(losses[-10:]) if losses else None}


def length_summary(lengths: list[int], limit: int) -> dict[str, Any]:
    """The distribution of generated lengths (tokens, end-of-turn included): how much they vary decides what
    padding costs."""
    if not lengths:
        return {"count": 0}
    ordered = sorted(lengths)

    def quantile(q: float) -> int:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"count": len(ordered), "mean": statistics.mean(ordered), "p10": quantile(0.1), "p50": quantile(0.5),
            "p90": quantile(0.9), "max": ordered[-1], "share_at_limit": sum(n >= limit for n in ordered) / len(ordered)}


def padded_batch_shares(prompt_lengths: list[list[int]], completion_lengths: list[list[int]]) -> dict[str, float]:
    """The padding a padded batch carries, per step, from the real lengths (all steps together): `generation` =
    decode positions computed for rows that already ended (one `generate` call decodes every row until the longest
    ends), `training` = padded positions of the prompt + completion batch (prompts padded to the longest prompt,
    completions to the longest completion)."""
    decoded = real_decoded = trained = real_trained = 0
    for prompts, completions in zip(prompt_lengths, completion_lengths):
        decoded += len(completions) * max(completions)
        real_decoded += sum(completions)
        trained += len(prompts) * (max(prompts) + max(completions))
        real_trained += sum(prompts) + sum(completions)
    return {"generation": 1 - real_decoded / max(decoded, 1), "training": 1 - real_trained / max(trained, 1)}


def flops_shape(hf_dir: str) -> argparse.Namespace:
    """The architecture fields slime/utils/flops.py reads, from an HF checkpoint's config."""
    from slime.utils.model_dirs import load_hf_config

    config = load_hf_config(hf_dir)
    return argparse.Namespace(
        num_layers=config["num_hidden_layers"], hidden_size=config["hidden_size"],
        ffn_hidden_size=config["intermediate_size"], num_attention_heads=config["num_attention_heads"],
        num_query_groups=config["num_key_value_heads"], kv_channels=config["head_dim"],
        swiglu=config.get("hidden_act", "silu") == "silu", vocab_size=config["vocab_size"])


def step_flops(shape: argparse.Namespace, prompts: list[int], completions: list[int]) -> dict[str, float]:
    """The model FLOPs one step cannot do without, from its samples' real lengths.

    Generation, with a KV cache: one forward over the prompt (prefill) and one per generated token but the last
    (never fed back); the output layer only where a token is sampled, i.e. at the prompt's last position and at each
    decoded one. A full forward over those tokens with causal attention counts the same attention work, so it is
    `forward_flops` over p + c - 1 tokens with the output layer at c of them.
    Training: forward and backward (3x a forward) over prompt + completion, with the output layer only at the c
    positions whose log-probs the loss uses. No reference or old-log-prob pass: without KL neither side needs the
    reference, and with one optimizer step per generation the old log-probs are the current ones (TRL does not
    compute them; ours skips that pass)."""
    from slime.utils.flops import forward_flops

    generation = training = 0.0
    for p, c in zip(prompts, completions):
        c = max(c, 1)
        generation += forward_flops(shape, [p + c - 1], output_positions=c)
        training += 3 * forward_flops(shape, [p + c], output_positions=c)
    return {"generation": generation, "training": training}


def matmul_tflops(rows: int, inner: int, columns: int, repeats: int = 5) -> float:
    """The rate of one matmul of this shape on this process's threads (best of `repeats`): fp32 on CPU, bf16 on a
    GPU, as the two sides compute. The output layer's shape is the representative one: with these vocabularies it
    is most of the FLOPs. (slime.utils.device.measured_cpu_matmul_tflops times square matrices only.)"""
    import torch

    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    a = torch.randn(rows, inner, device=device, dtype=dtype)
    b = torch.randn(inner, columns, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 1):  # the first is a warm-up
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        a @ b
        if cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return 2 * rows * inner * columns / best / 1e12


def floor_report(shape: argparse.Namespace, side: dict[str, Any], tflops: float) -> dict[str, Any]:
    """Per step: the FLOPs floor of the side's own samples in seconds at `tflops`, and the side's measured
    generation, training and whole-step times as multiples of their floors (medians over the steps)."""
    rows = []
    for prompts, completions, generation, training, step in zip(
            side["prompt_lengths_per_step"], side["completion_lengths_per_step"],
            side["generation_seconds_per_step"], side["train_seconds_per_step"], side["step_seconds_per_step"]):
        floor = {k: v / (tflops * 1e12) for k, v in step_flops(shape, prompts, completions).items()}
        rows.append((floor["generation"], floor["training"], generation / floor["generation"],
                     training / floor["training"], step / (floor["generation"] + floor["training"])))
    if not rows:
        return {}
    columns = list(zip(*rows))
    return {
        "generation_floor_seconds_per_step": list(columns[0]),
        "training_floor_seconds_per_step": list(columns[1]),
        "step_seconds_over_floor_per_step": list(columns[4]),
        "median_over_floor": {"generation": statistics.median(columns[2]), "training": statistics.median(columns[3]),
                              "step": statistics.median(columns[4])},
    }

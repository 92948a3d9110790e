"""Held-out accuracy of an HF checkpoint on reasoning-gym prompts: greedy answers, scored by reasoning-gym.

  python examples/reasoning_gym/evaluate.py --model outputs/quickstart_rl/sft_hf \
      --prompts outputs/quickstart_rl/data/held_out.jsonl

--prompts is a split written by tools/prepare_reasoning_gym.py (jsonl or parquet). Each prompt is rendered with the
checkpoint's chat template and answered greedily with transformers in batches (no engine, so it also checks that the
HF export is what the run trained); `accuracy` counts answers with full marks from `score_answer`, `mean_score`
averages the scores (reasoning-gym gives partial credit). Prints a few answers and one JSON line with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import torch
import transformers

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from examples.reasoning_gym.reward import score_response  # noqa: E402


def read_rows(path: str) -> list[dict[str, Any]]:
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


@torch.no_grad()
def greedy_answers(model_dir: str, rows: list[dict[str, Any]], max_new_tokens: int, batch_size: int = 64) -> list[str]:
    """Greedy completions of the rows' `messages` rendered with the chat template, in left-padded batches (one
    prompt at a time is ~30x slower on a CPU; the answers are the same as unbatched, padding being masked)."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    texts = [tokenizer.apply_chat_template(row["messages"], tokenize=False, add_generation_prompt=True) for row in rows]
    answers = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=model.config.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        answers += tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    return [answer.strip() for answer in answers]


def evaluate(model_dir: str, rows: list[dict[str, Any]], max_new_tokens: int) -> tuple[dict[str, Any], list[str]]:
    answers = greedy_answers(model_dir, rows, max_new_tokens=max_new_tokens)
    scores = [score_response(answer, row["metadata"]) for answer, row in zip(answers, rows)]
    correct = sum(score == 1.0 for score in scores)
    figures = {"model": model_dir, "accuracy": correct / len(rows), "mean_score": sum(scores) / len(rows),
               "correct": correct, "total": len(rows)}
    return figures, answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="HF checkpoint directory (weights, config, tokenizer).")
    parser.add_argument("--prompts", required=True, help="A split from tools/prepare_reasoning_gym.py.")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--show", type=int, default=5, help="Answers to print.")
    args = parser.parse_args()
    rows = read_rows(args.prompts)
    if not rows:
        sys.exit(f"error: {args.prompts} has no prompts")
    figures, answers = evaluate(args.model, rows, args.max_new_tokens)
    for row, answer in list(zip(rows, answers))[: args.show]:
        print(f"  {row['messages'][-1]['content']!r} -> {answer!r} (expected {row['label']!r})")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

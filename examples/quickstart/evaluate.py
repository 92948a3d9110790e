"""Greedy answers of an HF checkpoint on held-out prompts, and their exact-match accuracy.

  python examples/quickstart/evaluate.py --model outputs/quickstart/hf --prompts outputs/quickstart/data/held_out.json
"""

from __future__ import annotations

import argparse
import json

import torch
import transformers


@torch.no_grad()
def greedy_answers(model_dir: str, prompts: list[dict], max_new_tokens: int = 16) -> list[str]:
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    answers = []
    for item in prompts:
        ids = tokenizer.apply_chat_template(item["messages"], add_generation_prompt=True, return_tensors="pt")
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=end_of_turn,
                             pad_token_id=tokenizer.pad_token_id)
        answers.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip())
    return answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--prompts", required=True)
    parser.add_argument("--show", type=int, default=5)
    args = parser.parse_args()
    with open(args.prompts) as f:
        prompts = json.load(f)
    answers = greedy_answers(args.model, prompts)
    correct = sum(a == p["answer"] for a, p in zip(answers, prompts))
    for prompt, answer in list(zip(prompts, answers))[: args.show]:
        print(f"  {prompt['messages'][-1]['content']!r} -> {answer!r} (expected {prompt['answer']!r})")
    print(json.dumps({"model": args.model, "accuracy": correct / len(prompts), "correct": correct,
                      "total": len(prompts)}))


if __name__ == "__main__":
    main()

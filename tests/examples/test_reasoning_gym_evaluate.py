"""examples/reasoning_gym/evaluate.py: left-padded batches give the same greedy answers as transformers' `generate`
on one prompt at a time."""

from __future__ import annotations

import transformers

from engine_helpers import hf_greedy, load_model

from examples.reasoning_gym.evaluate import greedy_answers


def rows(n: int) -> list[dict]:
    out = []
    for i in range(n):
        # Different lengths, so batches are padded.
        question = f"Calculate {i} + {i * 7 % 10}." + " Quickly." * (i % 3)
        out.append({"messages": [{"role": "system", "content": "Answer between <answer> and </answer> tags."},
                                 {"role": "user", "content": question}],
                    "label": str(i + i * 7 % 10),
                    "metadata": {"reasoning_gym": {"task": "basic_arithmetic", "entry": {
                        "question": question, "answer": str(i + i * 7 % 10), "metadata": {}}}}})
    return out


def test_batched_greedy_equals_one_at_a_time(model_dir_a):
    prompts = rows(7)
    batched = greedy_answers(model_dir_a, prompts, max_new_tokens=10, batch_size=3)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir_a)
    model = load_model(model_dir_a)
    for row, answer in zip(prompts, batched):
        ids = tokenizer.apply_chat_template(row["messages"], tokenize=False, add_generation_prompt=True)
        alone = hf_greedy(model, tokenizer.encode(ids, add_special_tokens=False), 10)
        assert answer == tokenizer.decode(alone, skip_special_tokens=True).strip()


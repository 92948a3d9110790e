"""A verifiable task whose correct answers vary widely in length: recite a memorised text from a given word to the
end of that word's sentence.

  python examples/long_answers/task.py --output-dir data/recite --train 160 --held-out 50

The text is fixed: the 632 words of `words.txt` (common words that SmolLM2's and Qwen3's tokenizers both encode as
one token after a space, taken in token-id order and shuffled once), cut into sentences of SENTENCE_LENGTHS words,
each ending with a full stop. A prompt names one word ("Start at: W"); the answer is "Text: W ... <last word of W's
sentence>." So an answer is k + 3 tokens for k words (1 to 200), k + 4 with the end of the turn: a step's
completions range from a handful of tokens to about 200, the workload where padding and batching decide. The text
is never shown in the prompt: the model learns it in the warm-up (the `sft` split), like a poem known by heart.

What a model must learn is local: copy the start word from the prompt, continue with each word's successor in the
text, and end the turn after a full stop. A few minutes of fine-tuning (`sft.jsonl`: every start word but the
held-out ones) teach a small model the text and the full stops, short of mastery; the RL prompts (`train.jsonl`) are
a seeded sample of those warm-up starts, so GRPO refines recitations the model half knows. The held-out prompts
start at words no prompt ever started at (their successors are seen inside longer recitations): answering them
needs the copy of the start word, which a 6.8M-parameter model does not learn in minutes (it recites a start it
memorised instead), so held-out accuracy measures generalisation, not the speed comparison this task is for.
Rows have the columns of tools/prepare_reasoning_gym.py: `train.jsonl` and `held_out.jsonl` (`messages` = system +
user, `label` = the answer, `metadata` = {question, answer}) and `sft.jsonl` (`messages` with the assistant's
answer). The reward is examples/long_answers/reward.py.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from typing import Any

SYSTEM_PROMPT = "Recite the text from the given word to the end of its sentence."
SENTENCE_LENGTHS = (48, 4, 200, 16, 96, 8, 128, 12, 64, 24, 32)
ANSWER_PREFIX = "Text:"  # so that the start word is written after a space, the same token as in the text


def words() -> list[str]:
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "words.txt")) as f:
        return f.read().split()


def sentences() -> list[list[str]]:
    text, out, start = words(), [], 0
    assert len(text) == sum(SENTENCE_LENGTHS), "words.txt and SENTENCE_LENGTHS disagree"
    for length in SENTENCE_LENGTHS:
        out.append(text[start:start + length])
        start += length
    return out


def answer(sentence: list[str], start: int) -> str:
    """The recitation from the sentence's word `start` to its end."""
    return " ".join([ANSWER_PREFIX, *sentence[start:]]) + "."


def rl_row(sentence: list[str], start: int) -> dict[str, Any]:
    question = f"Start at: {sentence[start]}"
    text = answer(sentence, start)
    return {"messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}],
            "label": text, "metadata": {"question": question, "answer": text}}


def sft_row(sentence: list[str], start: int) -> dict[str, Any]:
    row = rl_row(sentence, start)
    return {"messages": [*row["messages"], {"role": "assistant", "content": row["label"]}]}


def build(output_dir: str, sizes: dict[str, int], seed: int) -> dict[str, str]:
    """Write the splits `held_out` (sizes["held_out"] start words, used nowhere else), `sft` (every other start word,
    or the first sizes["sft"] of them) and `train` (sizes["train"] of the `sft` starts), in a seeded order; returns
    their paths."""
    starts = [(sentence, index) for sentence in sentences() for index in range(len(sentence))]
    random.Random(seed).shuffle(starts)
    held_out, rest = starts[:sizes["held_out"]], starts[sizes["held_out"]:][:sizes.get("sft")]
    if sizes["train"] > len(rest):
        raise ValueError(f"the text has {len(starts)} start words: {sizes['held_out']} held out leave {len(rest)} "
                         f"for the warm-up, fewer than the {sizes['train']} RL prompts drawn from them")
    train = random.Random(seed + 1).sample(rest, sizes["train"])
    os.makedirs(output_dir, exist_ok=True)
    files = {}
    for split, chunk in {"held_out": held_out, "sft": rest, "train": train}.items():
        make = sft_row if split == "sft" else rl_row
        files[split] = os.path.join(output_dir, f"{split}.jsonl")
        with open(files[split], "w") as f:
            for sentence, index in chunk:
                f.write(json.dumps(make(sentence, index)) + "\n")
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--train", type=int, default=160, help="RL prompts (drawn from the warm-up's starts).")
    parser.add_argument("--held-out", type=int, default=50, help="Evaluation prompts, never trained on.")
    parser.add_argument("--sft", type=int, default=None, help="Warm-up conversations (default: all other starts).")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    try:
        files = build(args.output_dir, {"held_out": args.held_out, "sft": args.sft, "train": args.train}, args.seed)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    for split, path in files.items():
        print(f"{split}: {path}")


if __name__ == "__main__":
    main()

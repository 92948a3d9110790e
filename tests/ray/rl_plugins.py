"""Plugins for the RL rollout tests: a reward that varies within a group (the parity of the last generated token)."""

from __future__ import annotations


async def last_token_parity(args, sample) -> float:
    return float(sample.tokens[-1] % 2) if sample.response_length else 0.0


# A reward a tiny random model can learn in a few GRPO steps (see peaked_tiny_qwen3 in tests/ray/test_rl_training.py):
# the share of response tokens among the even half of the boosted tokens, about one half at the start.
BOOSTED = range(1000, 1064)


async def boosted_even_fraction(args, sample) -> float:
    response = sample.tokens[len(sample.tokens) - sample.response_length:]
    return sum(1 for t in response if t in BOOSTED and t % 2 == 0) / max(len(response), 1)

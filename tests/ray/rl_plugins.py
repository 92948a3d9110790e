"""Plugins for the RL rollout tests: a reward that varies within a group (the parity of the last generated token)."""

from __future__ import annotations


async def last_token_parity(args, sample) -> float:
    return float(sample.tokens[-1] % 2) if sample.response_length else 0.0

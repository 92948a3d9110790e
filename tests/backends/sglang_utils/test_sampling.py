"""The CPU engine's sampler in process: filtered distributions match SGLang's definition exactly, whichever
internal path (partial top-k or full sort) serves a row, and seeded rows do not depend on their batch."""

from __future__ import annotations

import pytest
import torch

from slime.backends.sglang_utils.cpu_engine.sampling import RowState, parse_sampling_params, sample_next_tokens


class _Tokenizer:  # stop strings are not used here; parse_sampling_params only encodes them
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(text.encode())


def expected_distribution(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float,
                          min_p: float) -> torch.Tensor:
    """SGLang's filters written out plainly on the sorted distribution."""
    probs = torch.softmax(logits / temperature, dim=-1)
    sorted_probs, order = probs.sort(descending=True)
    keep = torch.ones_like(sorted_probs, dtype=torch.bool)
    if top_k is not None:
        keep[top_k:] = False
    keep &= (sorted_probs.cumsum(0) - sorted_probs) <= top_p
    keep &= sorted_probs >= sorted_probs[0] * min_p
    out = torch.zeros_like(probs)
    out[order[keep]] = sorted_probs[keep] / sorted_probs[keep].sum()
    return out


def draw(logits: torch.Tensor, sampling: dict, n: int, seed: int = 0) -> torch.Tensor:
    params = parse_sampling_params(sampling, _Tokenizer(), logits.shape[-1])
    rows = [RowState(params, [], None, frozenset()) for _ in range(n)]
    tokens, _, _ = sample_next_tokens(logits.expand(n, -1).contiguous(), rows, [False] * n, [0] * n,
                                      torch.Generator().manual_seed(seed))
    return torch.bincount(torch.tensor(tokens), minlength=logits.shape[-1]).float() / n


@pytest.mark.parametrize("sampling", [
    {"temperature": 0.7, "top_p": 0.8},                 # nucleus inside the first candidate block
    {"temperature": 1.0, "top_k": 5},
    {"temperature": 1.3, "min_p": 0.2},
    {"temperature": 1.0, "top_p": 0.9, "top_k": 40, "min_p": 0.01},
    {"temperature": 5.0, "top_p": 0.995},              # flat distribution: falls back to a full sort
])
def test_filtered_sampling_matches_the_definition(sampling):
    logits = torch.randn(300, generator=torch.Generator().manual_seed(1)) * 2
    want = expected_distribution(logits, sampling["temperature"], sampling.get("top_k"), sampling.get("top_p", 1.0),
                                 sampling.get("min_p", 0.0))
    got = draw(logits, sampling, 12000)
    assert (got[want == 0] == 0).all(), "a filtered-out token was sampled"
    assert (got - want).abs().max() < 0.02


def test_plain_sampling_matches_softmax_and_seeds_ignore_the_batch():
    logits = torch.randn(50, generator=torch.Generator().manual_seed(2))
    got = draw(logits, {"temperature": 0.5}, 12000)
    assert (got - torch.softmax(logits / 0.5, dim=-1)).abs().max() < 0.02

    seeded = parse_sampling_params({"temperature": 1.0, "sampling_seed": 42}, _Tokenizer(), 50)
    other = parse_sampling_params({"temperature": 1.0}, _Tokenizer(), 50)

    def sequence(batch_with_others: bool) -> list[int]:
        row = RowState(seeded, [], torch.Generator().manual_seed(42), frozenset())
        picks = []
        for step in range(20):
            step_logits = torch.randn(50, generator=torch.Generator().manual_seed(100 + step))
            rows = [RowState(other, [], None, frozenset()), row] if batch_with_others else [row]
            batch = step_logits.expand(len(rows), -1).contiguous()
            tokens, _, _ = sample_next_tokens(batch, rows, [False] * len(rows), [0] * len(rows),
                                              torch.Generator().manual_seed(step))
            picks.append(tokens[-1])
        return picks

    assert sequence(False) == sequence(True)

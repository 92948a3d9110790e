"""SGLang's sampling parameters and sampler semantics, re-implemented for the CPU engine.

What a request may ask for and how it is validated follow SGLang's `SamplingParams` (0.5.x): same defaults, same
error texts, greedy below a temperature of 1e-6 (then temperature 1 and top-k 1). The sampler follows SGLang's
`Sampler`: penalties, `min_new_tokens` and `logit_bias` adjust the logits first; the distribution is
softmax(logits / T) over the whole vocabulary; the token is drawn after top-k, top-p and min-p filtering of that
distribution; and the log-prob reported for it is log_softmax(logits / T) *before* the filtering, the quantity
slime's trainer recomputes (`log_softmax(logits / rollout_temperature)`) and compares against. Greedy rows report
log_softmax(logits), i.e. temperature 1, as SGLang does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

GREEDY_TEMPERATURE = 1e-6
DEFAULT_MAX_NEW_TOKENS = 128

# Keys SGLang accepts that change nothing here, because the CPU engine returns whole replies or streams every
# `stream_interval` tokens itself (`stream_interval` is read by the streaming path).
_ACCEPTED_KEYS = {
    "max_new_tokens", "min_new_tokens", "temperature", "top_p", "top_k", "min_p", "stop", "stop_token_ids",
    "ignore_eos", "skip_special_tokens", "spaces_between_special_tokens", "no_stop_trim", "sampling_seed",
    "repetition_penalty", "frequency_penalty", "presence_penalty", "logit_bias", "n", "custom_params",
    "stream_interval", "json_schema", "regex", "ebnf", "structural_tag", "stop_regex",
}
_UNSUPPORTED = ("json_schema", "regex", "ebnf", "structural_tag", "stop_regex")


@dataclass
class SamplingParams:
    """One request's sampling parameters after SGLang's defaulting; `top_k` is None for the whole vocabulary."""

    max_new_tokens: int | None = DEFAULT_MAX_NEW_TOKENS
    min_new_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    min_p: float = 0.0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: set[int] = field(default_factory=set)
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    no_stop_trim: bool = False
    sampling_seed: int | None = None
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: dict[int, float] | None = None
    stream_interval: int = 1
    stop_token_window: int = 0  # tokens of output to decode when looking for a stop string

    @property
    def greedy(self) -> bool:
        return self.top_k == 1

    @property
    def has_penalties(self) -> bool:
        return (self.repetition_penalty != 1.0 or self.frequency_penalty != 0.0 or self.presence_penalty != 0.0
                or self.min_new_tokens > 0 or bool(self.logit_bias))

    @property
    def filters(self) -> bool:
        return (self.top_k is not None and self.top_k > 1) or self.top_p < 1.0 or self.min_p > 0.0


def _value(raw: dict[str, Any], key: str, default: Any, kind: type) -> Any:
    """SGLang treats an explicit null like an omitted key for its non-optional parameters."""
    value = raw.get(key)
    if value is None:
        return default
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is bool and isinstance(value, bool):
        return value
    raise ValueError(f"sampling_params.{key} must be {kind.__name__}, got {value!r}.")


def parse_sampling_params(raw: dict[str, Any] | None, tokenizer: Any, vocab_size: int) -> SamplingParams:
    """Validate one `sampling_params` object as SGLang does; raises ValueError with SGLang's message."""
    raw = dict(raw or {})
    unknown = sorted(set(raw) - _ACCEPTED_KEYS)
    if unknown:
        raise ValueError(f"unknown sampling parameter(s): {', '.join(unknown)}.")
    for key in _UNSUPPORTED:
        if raw.get(key) is not None:
            raise ValueError(f"not supported yet by the CPU engine: sampling_params.{key} (constrained decoding).")
    if _value(raw, "n", 1, int) != 1:
        raise ValueError("not supported yet by the CPU engine: sampling_params.n > 1 (send n requests).")
    custom = raw.get("custom_params") or {}
    if not isinstance(custom, dict):
        raise ValueError(f"sampling_params.custom_params must be an object, got {custom!r}.")
    if custom.get("return_top_p_token_ids"):
        raise ValueError("not supported yet by the CPU engine: custom_params.return_top_p_token_ids (top-p replay).")

    params = SamplingParams(
        min_new_tokens=_value(raw, "min_new_tokens", 0, int),
        temperature=_value(raw, "temperature", 1.0, float),
        top_p=_value(raw, "top_p", 1.0, float),
        min_p=_value(raw, "min_p", 0.0, float),
        ignore_eos=_value(raw, "ignore_eos", False, bool),
        skip_special_tokens=_value(raw, "skip_special_tokens", True, bool),
        spaces_between_special_tokens=_value(raw, "spaces_between_special_tokens", True, bool),
        no_stop_trim=_value(raw, "no_stop_trim", False, bool),
        repetition_penalty=_value(raw, "repetition_penalty", 1.0, float),
        frequency_penalty=_value(raw, "frequency_penalty", 0.0, float),
        presence_penalty=_value(raw, "presence_penalty", 0.0, float),
        stream_interval=max(1, _value(raw, "stream_interval", 1, int)),
    )
    # max_new_tokens: omitted -> 128; explicit null -> bounded by the context only (resolved by the caller).
    params.max_new_tokens = (_value(raw, "max_new_tokens", None, int) if "max_new_tokens" in raw
                             else DEFAULT_MAX_NEW_TOKENS)
    top_k = _value(raw, "top_k", -1, int)
    seed = raw.get("sampling_seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise ValueError(f"sampling_params.sampling_seed must be an integer, got {seed!r}.")
    params.sampling_seed = seed

    if not math.isfinite(params.temperature) or params.temperature < 0.0:
        raise ValueError(f"temperature must be a non-negative finite number, got {params.temperature}.")
    if not 0.0 < params.top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {params.top_p}.")
    if not 0.0 <= params.min_p <= 1.0:
        raise ValueError(f"min_p must be in [0, 1], got {params.min_p}.")
    if top_k < 1 and top_k != -1:
        raise ValueError(f"top_k must be -1 (disable) or at least 1, got {top_k}.")
    for name in ("frequency_penalty", "presence_penalty"):
        if not -2.0 <= getattr(params, name) <= 2.0:
            raise ValueError(f"{name} must be in [-2, 2], got {getattr(params, name)}.")
    if not 0.0 < params.repetition_penalty <= 2.0:
        raise ValueError(f"repetition_penalty must be in (0, 2] (1.0 = no penalty), got {params.repetition_penalty}.")
    if params.min_new_tokens < 0:
        raise ValueError(f"min_new_tokens must be in [0, max_new_tokens], got {params.min_new_tokens}.")
    if params.max_new_tokens is not None:
        if params.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be at least 0, got {params.max_new_tokens}.")
        if params.min_new_tokens > params.max_new_tokens:
            raise ValueError(f"min_new_tokens must be in [0, max_new_tokens({params.max_new_tokens})], "
                             f"got {params.min_new_tokens}.")

    params.top_k = None if top_k == -1 or top_k >= vocab_size else top_k
    if params.temperature < GREEDY_TEMPERATURE:
        params.temperature, params.top_k = 1.0, 1

    bias = raw.get("logit_bias")
    if bias:
        if not isinstance(bias, dict):
            raise ValueError(f"sampling_params.logit_bias must be an object, got {bias!r}.")
        params.logit_bias = {}
        for key, value in bias.items():
            if not 0 <= int(key) < vocab_size:
                raise ValueError(f"logit_bias must has keys in [0, {vocab_size - 1}], got {key}.")
            params.logit_bias[int(key)] = float(value)

    stop = raw.get("stop")
    params.stop = [stop] if isinstance(stop, str) else list(stop or [])
    if not all(isinstance(s, str) and s for s in params.stop):
        raise ValueError(f"sampling_params.stop must be a non-empty string or a list of them, got {stop!r}.")
    if params.stop:
        # SGLang decodes the last (longest stop string in tokens + 1) output tokens when matching; one more token
        # here covers a stop string that the model spells with more pieces than the tokenizer's own encoding.
        params.stop_token_window = max(len(tokenizer.encode(s, add_special_tokens=False)) for s in params.stop) + 2
    ids = raw.get("stop_token_ids") or []
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool)
                                            for i in ids if i is not None):
        raise ValueError(f"sampling_params.stop_token_ids must be a list of integers, got {ids!r}.")
    params.stop_token_ids = {int(i) for i in ids if i is not None}
    return params


@dataclass
class RowState:
    """What the sampler needs to know about one batch row at this step."""

    params: SamplingParams
    output_ids: list[int]
    generator: torch.Generator | None
    stop_ids: frozenset[int]  # EOS ids plus the request's stop_token_ids (for min_new_tokens)


def _apply_penalties(logits: torch.Tensor, rows: list[RowState]) -> None:
    """Penalties see the generated tokens only (SGLang's penalizers accumulate output tokens), in place."""
    for i, row in enumerate(rows):
        params = row.params
        if not params.has_penalties:
            continue
        if row.output_ids and (params.repetition_penalty != 1.0 or params.frequency_penalty or params.presence_penalty):
            ids, counts = torch.tensor(row.output_ids).unique(return_counts=True)
            seen = logits[i, ids]
            if params.repetition_penalty != 1.0:
                seen = torch.where(seen > 0, seen / params.repetition_penalty, seen * params.repetition_penalty)
            seen = seen - params.frequency_penalty * counts.to(seen.dtype) - params.presence_penalty
            logits[i, ids] = seen
        if len(row.output_ids) < params.min_new_tokens and row.stop_ids:
            logits[i, list(row.stop_ids)] = float("-inf")
        if params.logit_bias:
            for token, bias in params.logit_bias.items():
                logits[i, token] += bias


# Candidate widths tried, in order, before sorting the whole vocabulary: a partial top-k is far cheaper than a full
# sort on CPU, and it is exact whenever the filters provably drop every token beyond it (see _enough).
_CANDIDATE_WIDTHS = (64, 1024)


def _enough(sorted_probs: torch.Tensor, rows: list[RowState], vocab: int) -> list[bool]:
    """Per row: True when every token ranked below the `width` best is dropped by the row's filters anyway."""
    width = sorted_probs.shape[-1]
    if width >= vocab:
        return [True] * len(rows)
    top_k = torch.tensor([row.params.top_k or vocab for row in rows])
    top_p = torch.tensor([row.params.top_p for row in rows], dtype=sorted_probs.dtype)
    min_p = torch.tensor([row.params.min_p for row in rows], dtype=sorted_probs.dtype)
    enough = top_k <= width
    enough |= (top_p < 1.0) & (sorted_probs.sum(dim=-1) > top_p)  # the next token's preceding mass exceeds top_p
    enough |= (min_p > 0.0) & (sorted_probs[:, -1] < sorted_probs[:, 0] * min_p)
    return enough.tolist()


def _draw(weights: torch.Tensor, rows: list[RowState], shared_generator: torch.Generator) -> torch.Tensor:
    """One index per row, with probability proportional to `weights` (inverse CDF: exact, and much cheaper on CPU
    than torch.multinomial over a large vocabulary). Seeded rows draw from their own generator."""
    cdf = weights.cumsum(dim=-1)
    total = cdf[:, -1:]
    uniform = torch.empty(len(rows), 1, dtype=weights.dtype)
    shared = [i for i, row in enumerate(rows) if row.generator is None]
    if shared:
        uniform[shared] = torch.rand(len(shared), 1, generator=shared_generator, dtype=weights.dtype)
    for i, row in enumerate(rows):
        if row.generator is not None:
            uniform[i] = torch.rand(1, generator=row.generator, dtype=weights.dtype)
    # Strictly below the total, so the first index whose CDF exceeds it always has a positive weight.
    target = torch.minimum(uniform * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, target, right=True)[:, 0]


def _filter(sorted_probs: torch.Tensor, rows: list[RowState]) -> torch.Tensor:
    """SGLang's filters on probabilities sorted high to low: top-k, then top-p (a token stays while the mass
    before it is <= top_p), then min-p relative to the most likely token."""
    width = sorted_probs.shape[-1]
    top_k = torch.tensor([min(row.params.top_k or width, width) for row in rows])
    top_p = torch.tensor([row.params.top_p for row in rows], dtype=sorted_probs.dtype)
    min_p = torch.tensor([row.params.min_p for row in rows], dtype=sorted_probs.dtype)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    drop = torch.arange(width)[None, :] >= top_k[:, None]
    drop |= mass_before > top_p[:, None]
    drop |= sorted_probs < (sorted_probs[:, :1] * min_p[:, None])
    return sorted_probs.masked_fill(drop, 0.0)


def _sample_filtered(probs: torch.Tensor, rows: list[RowState], shared_generator: torch.Generator) -> torch.Tensor:
    picks = torch.empty(len(rows), dtype=torch.long)
    vocab = probs.shape[-1]
    pending = list(range(len(rows)))
    for width in (*[w for w in _CANDIDATE_WIDTHS if w < vocab], vocab):
        values, ids = probs[pending].topk(width, dim=-1) if width < vocab else probs[pending].sort(-1, descending=True)
        done = [j for j, ok in enumerate(_enough(values, [rows[i] for i in pending], vocab)) if ok]
        if done:
            chosen = _draw(_filter(values[done], [rows[pending[j]] for j in done]),
                           [rows[pending[j]] for j in done], shared_generator)
            picks[[pending[j] for j in done]] = ids[done].gather(1, chosen[:, None])[:, 0]
        finished = set(done)
        pending = [i for j, i in enumerate(pending) if j not in finished]
        if not pending:
            break
    return picks


# Rows handled together: a block of [rows, vocab] that stays in cache across the sampler's passes over it, which on
# a CPU matters more than the number of passes (a whole batch of logits is tens of MB).
_BLOCK_ROWS = 32


def sample_next_tokens(
    logits: torch.Tensor, rows: list[RowState], want_logprobs: list[bool], top_logprobs: list[int],
    shared_generator: torch.Generator,
) -> tuple[list[int], list[float | None], list[list[tuple[float, int]] | None]]:
    """Pick one token per row of `logits` [rows, vocab] (fp32) as each row's parameters ask.

    Returns the token ids, the log-prob of each chosen token under log_softmax(logits / T) (None where not asked)
    and, per row, the `top_logprobs` best (logprob, id) pairs of that distribution (None where not asked).
    """
    logits = logits.float()
    if any(row.params.has_penalties for row in rows):
        logits = logits.clone()
        _apply_penalties(logits, rows)
    if all(row.params.greedy for row in rows) and not any(want_logprobs) and not any(top_logprobs):
        return logits.argmax(dim=-1).tolist(), [None] * len(rows), [None] * len(rows)  # one pass, no blocks
    tokens: list[int] = []
    chosen_logprobs: list[float | None] = []
    tops: list[list[tuple[float, int]] | None] = []
    for start in range(0, len(rows), _BLOCK_ROWS):
        end = start + _BLOCK_ROWS
        block = _sample_block(logits[start:end], rows[start:end], want_logprobs[start:end], top_logprobs[start:end],
                              shared_generator)
        tokens += block[0]
        chosen_logprobs += block[1]
        tops += block[2]
    return tokens, chosen_logprobs, tops


def _sample_block(
    logits: torch.Tensor, rows: list[RowState], want_logprobs: list[bool], top_logprobs: list[int],
    shared_generator: torch.Generator,
) -> tuple[list[int], list[float | None], list[list[tuple[float, int]] | None]]:
    num_rows = len(rows)
    temperature = [row.params.temperature for row in rows]
    scaled = logits if all(t == 1.0 for t in temperature) else logits / torch.tensor(temperature)[:, None]
    sampled_rows = [i for i, row in enumerate(rows) if not row.params.greedy]
    greedy_rows = [i for i, row in enumerate(rows) if row.params.greedy]
    chosen = torch.empty(num_rows, dtype=torch.long)
    if greedy_rows:  # a positive temperature does not move the argmax
        chosen[greedy_rows] = (scaled if not sampled_rows else scaled[greedy_rows]).argmax(dim=-1)
    lse = None
    if sampled_rows or any(want_logprobs) or any(top_logprobs):
        # The log-partition function as max + log(sum(exp(x - max))): one exp and one sum over the block, and the
        # exp is reused as the sampling weights; no log_softmax tensor is written.
        peak = scaled.amax(dim=-1, keepdim=True)
        weights = (scaled - peak).exp_()
        mass = weights.sum(dim=-1, keepdim=True)
        lse = peak + mass.log()
        if sampled_rows:
            if len(sampled_rows) == num_rows:
                probs = weights.div_(mass)
            else:
                probs = weights[sampled_rows].div_(mass[sampled_rows])
            sampled = [rows[i] for i in sampled_rows]
            filtering = [j for j, row in enumerate(sampled) if row.params.filters]
            plain = [j for j, row in enumerate(sampled) if not row.params.filters]
            picks = torch.empty(len(sampled_rows), dtype=torch.long)
            if plain:
                picks[plain] = _draw(probs[plain] if filtering else probs, [sampled[j] for j in plain],
                                     shared_generator)
            if filtering:
                picks[filtering] = _sample_filtered(probs[filtering], [sampled[j] for j in filtering],
                                                    shared_generator)
            chosen[sampled_rows] = picks

    tokens = chosen.tolist()
    chosen_logprobs: list[float | None] = [None] * num_rows
    if any(want_logprobs):
        assert lse is not None
        values = (scaled.gather(1, chosen[:, None]) - lse)[:, 0].tolist()
        chosen_logprobs = [v if want else None for v, want in zip(values, want_logprobs)]
    tops: list[list[tuple[float, int]] | None] = [None] * num_rows
    if any(top_logprobs):
        assert lse is not None
        best_values, best_ids = scaled.topk(max(top_logprobs), dim=-1)
        best_values = best_values - lse
        for i, k in enumerate(top_logprobs):
            if k:
                tops[i] = list(zip(best_values[i, :k].tolist(), best_ids[i, :k].tolist()))
    return tokens, chosen_logprobs, tops

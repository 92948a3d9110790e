"""One generation request inside the CPU engine, and the SGLang `/generate` reply built from it.

The reply has SGLang's shape (`text`, `output_ids`, `meta_info` with the keys in SGLang's order, logprob entries
as `[logprob, token_id, null]` triples, finish reasons as SGLang's objects), so the rollout code cannot tell the
CPU engine from SGLang by its JSON.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from slime.backends.sglang_utils.cpu_engine.sampling import RowState, SamplingParams

ABORTED = {"type": "abort", "message": "Aborted", "status_code": None, "err_type": None}
ABORTED_WAITING = {"type": "abort", "message": "Abort in waiting queue"}


@dataclass
class Request:
    rid: str
    input_ids: list[int]
    params: SamplingParams
    max_new_tokens: int  # the request's budget after resolving null against the context length
    return_logprob: bool = False
    logprob_start_len: int = -1
    top_logprobs_num: int = 0
    return_text_in_logprobs: bool = False
    stream: bool = False
    internal: bool = False  # health probes: not counted as served traffic
    # Called on the model thread: with final=False for a streaming progress update, final=True once finished.
    notify: Callable[["Request", bool], None] | None = None

    output_ids: list[int] = field(default_factory=list)
    output_logprobs: list[float] = field(default_factory=list)
    output_top_logprobs: list[list[tuple[float, int]]] = field(default_factory=list)
    input_logprobs: list[float | None] = field(default_factory=list)
    finish_reason: dict[str, Any] | None = None
    generator: torch.Generator | None = None
    num_retractions: int = 0
    received_time: float = field(default_factory=time.time)
    forward_entry_time: float | None = None
    prefill_finished_time: float | None = None
    finished_time: float | None = None
    abort_requested: threading.Event = field(default_factory=threading.Event)
    row: RowState | None = None  # the sampler's view of this request, built on its first step

    def __post_init__(self) -> None:
        if self.params.sampling_seed is not None:
            self.generator = torch.Generator().manual_seed(self.params.sampling_seed)

    @property
    def reserved_tokens(self) -> int:
        return len(self.input_ids) + self.max_new_tokens

    def context_ids(self) -> list[int]:
        """Every token the model must have seen before sampling the next one (prompt + output so far)."""
        return self.input_ids + self.output_ids

    def finish(self, reason: dict[str, Any]) -> None:
        self.finish_reason = reason
        self.finished_time = time.time()


def check_finished(req: Request, token: int, eos_ids: frozenset[int], tokenizer: Any) -> dict[str, Any] | None:
    """SGLang's order: the length limit first (an EOS as the last allowed token is `length`), then EOS and
    stop_token_ids (both off with ignore_eos), then stop strings on the decoded tail of the output."""
    params = req.params
    if len(req.output_ids) >= req.max_new_tokens:
        return {"type": "length", "length": req.max_new_tokens}
    if not params.ignore_eos and (token in params.stop_token_ids or token in eos_ids):
        return {"type": "stop", "matched": token}
    if params.stop:
        tail = tokenizer.decode(req.output_ids[-params.stop_token_window:])
        for stop in params.stop:
            if stop in tail:
                return {"type": "stop", "matched": stop}
    return None


def _decode(tokenizer: Any, ids: list[int], params: SamplingParams) -> str:
    kwargs = {"skip_special_tokens": params.skip_special_tokens}
    if not params.spaces_between_special_tokens:
        kwargs["spaces_between_special_tokens"] = False  # honoured by slow tokenizers; fast ones never add spaces
    return tokenizer.decode(ids, **kwargs)


def output_text(req: Request, tokenizer: Any) -> str:
    """Decoded completion; without no_stop_trim the matched stop token or stop string is cut out of the text only."""
    reason = req.finish_reason or {}
    trim = reason.get("type") == "stop" and not req.params.no_stop_trim
    ids = req.output_ids
    if trim and isinstance(reason.get("matched"), int):
        ids = ids[:-1]
    text = _decode(tokenizer, ids, req.params)
    if trim and isinstance(reason.get("matched"), str):
        cut = text.find(reason["matched"])
        text = text[:cut] if cut != -1 else text
    return text


def _triples(values: list[float | None], ids: list[int], texts: list[str] | None) -> list[list[Any]]:
    return [[v, t, texts[i] if texts else None] for i, (v, t) in enumerate(zip(values, ids))]


def build_reply(req: Request, tokenizer: Any, weight_version: str, enable_metrics: bool) -> dict[str, Any]:
    """The JSON object SGLang returns for one finished (or, while streaming, unfinished) request."""
    now = time.time()
    reason = req.finish_reason
    if reason is not None and reason.get("message") == ABORTED_WAITING["message"]:
        meta: dict[str, Any] = {"id": req.rid, "finish_reason": reason, "weight_version": weight_version}
        if req.return_logprob:
            meta.update(input_token_logprobs=[], output_token_logprobs=[], output_token_logprobs_length=0)
        meta.update(completion_tokens=0, e2e_latency=now - req.received_time)
        return {"text": "", "output_ids": [], "meta_info": meta}

    meta = {"id": req.rid, "finish_reason": reason, "prompt_tokens": len(req.input_ids),
            "weight_version": weight_version, "num_retractions": req.num_retractions}
    if enable_metrics:
        meta["forward_entry_time"] = req.forward_entry_time
        meta["prefill_finished_time"] = req.prefill_finished_time
        meta["queue_time"] = (req.forward_entry_time - req.received_time) if req.forward_entry_time else None
    if req.return_logprob:
        n = len(req.output_logprobs)  # streaming snapshots may run one token ahead of the logprobs list
        out_texts = [tokenizer.decode([t]) for t in req.output_ids[:n]] if req.return_text_in_logprobs else None
        start = max(req.logprob_start_len, 0)
        in_ids = req.input_ids[start:] if req.logprob_start_len >= 0 else []
        in_texts = [tokenizer.decode([t]) for t in in_ids] if req.return_text_in_logprobs else None
        meta["input_token_logprobs"] = _triples(req.input_logprobs, in_ids, in_texts)
        meta["output_token_logprobs"] = _triples(req.output_logprobs, req.output_ids[:n], out_texts)
        meta["output_token_logprobs_length"] = n
        if req.top_logprobs_num > 0:
            meta["input_top_logprobs"] = []
            meta["output_top_logprobs"] = [[[v, t, None] for v, t in top] for top in req.output_top_logprobs]
    meta["reasoning_tokens"] = 0
    meta["completion_tokens"] = len(req.output_ids)
    meta["cached_tokens"] = 0  # no prefix cache: every prompt token is computed
    if reason is not None:
        meta["e2e_latency"] = (req.finished_time or now) - req.received_time
        if enable_metrics:
            meta["request_received_ts"] = req.received_time
            meta["request_finished_ts"] = req.finished_time
            if len(req.output_ids) > 1 and req.prefill_finished_time and req.finished_time:
                decode_time = max(req.finished_time - req.prefill_finished_time, 1e-9)
                meta["decode_throughput"] = (len(req.output_ids) - 1) / decode_time
            meta["response_sent_to_client_ts"] = now
    return {"text": output_text(req, tokenizer), "output_ids": list(req.output_ids), "meta_info": meta}

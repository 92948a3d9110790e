"""The model thread of the CPU engine: continuous batching over one left-padded KV batch.

One thread owns the model. Each turn it (1) runs queued control work (weight loads, memory release, pauses),
(2) applies aborts, (3) admits waiting requests with one batched prefill (bounded by --max-running-requests,
--max-prefill-tokens and the KV token budget), which also samples their first token, and (4) runs one decode step
for every running request. Requests therefore join and leave between decode steps, as in SGLang's scheduler, and
never wait for a whole batch to finish. The HTTP side only talks to this thread through `submit`, `abort`,
`run_control` and the pause modes; replies go back through each request's `notify` callback.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import queue
import threading
import time
from typing import Any, Callable

import torch

from slime.backends.sglang_utils.cpu_engine.kv_batch import PaddedBatch
from slime.backends.sglang_utils.cpu_engine.request import ABORTED, ABORTED_WAITING, Request, check_finished
from slime.backends.sglang_utils.cpu_engine.sampling import RowState, sample_next_tokens

logger = logging.getLogger(__name__)


class Scheduler:
    def __init__(self, model: Any, tokenizer: Any, *, eos_ids: frozenset[int], pad_token_id: int, seed: int,
                 max_running_requests: int, max_prefill_tokens: int, max_total_tokens: int) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.max_running_requests = max_running_requests
        self.max_prefill_tokens = max_prefill_tokens
        self.max_total_tokens = max_total_tokens
        self.generator = torch.Generator().manual_seed(seed)
        self.batch = PaddedBatch(model, pad_token_id)
        self.running: list[Request] = []
        self.waiting: collections.deque[Request] = collections.deque()
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._wakeup = threading.Event()
        self._lock = threading.Lock()
        self._live: dict[str, Request] = {}  # every submitted, unfinished request (waiting or running)
        self._frozen = False  # pause_generation in_place/retract: keep requests, run no step
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="cpu-engine-model", daemon=True)
        self.error: BaseException | None = None
        # Counters for /server_info and /v1/loads: they show how requests were batched.
        self.stats: dict[str, int] = dict.fromkeys(
            ("requests_finished", "prefill_batches", "prefill_tokens", "decode_steps", "generated_tokens",
             "max_batch_size"), 0)
        self.batch_size_histogram: collections.Counter[int] = collections.Counter()
        self._recent_tokens: collections.deque[tuple[float, int]] = collections.deque(maxlen=64)

    # ---- called from the HTTP side -------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._wakeup.set()
        self._thread.join(timeout=10)

    def submit(self, requests: list[Request]) -> None:
        if self.error is not None:
            raise RuntimeError(f"the engine failed: {self.error}")
        with self._lock:
            duplicate = [r.rid for r in requests if r.rid in self._live]
            if duplicate or len({r.rid for r in requests}) != len(requests):
                raise ValueError(f"Duplicate request ID(s): {duplicate or [r.rid for r in requests]}.")
            for req in requests:
                self._live[req.rid] = req
        for req in requests:
            self._inbox.put(("add", req))
        self._wakeup.set()

    def abort(self, rid: str = "", abort_all: bool = False) -> None:
        """Mark matching requests (rid prefix, as SGLang matches) to finish as aborted at the next step."""
        if not abort_all and not rid:
            return
        with self._lock:
            for key, req in self._live.items():
                if abort_all or key.startswith(rid):
                    req.abort_requested.set()
        self._wakeup.set()

    def run_control(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        """Run `fn` on the model thread between two steps (nothing else touches the model meanwhile)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        if self.error is not None:
            future.set_exception(RuntimeError(f"the engine failed: {self.error}"))
            return future
        self._inbox.put(("control", (fn, future)))
        self._wakeup.set()
        return future

    def freeze(self, retract: bool) -> concurrent.futures.Future:
        def apply() -> None:
            self._frozen = True
            if retract:  # KV dropped; the requests are prefilled again (prompt + output so far) on continue
                for req in reversed(self.running):
                    req.num_retractions += 1
                    self.waiting.appendleft(req)
                self.running = []
                self.batch.keep([])
        return self.run_control(apply)

    def unfreeze(self) -> concurrent.futures.Future:
        return self.run_control(lambda: setattr(self, "_frozen", False))

    def counts(self) -> tuple[int, int]:
        """(running, waiting); requests handed over but not yet picked up count as waiting."""
        with self._lock:
            live = len(self._live)
        running = len(self.running)
        return running, max(live - running, 0)

    def is_idle(self) -> bool:
        return self.counts() == (0, 0)

    def gen_throughput(self) -> float:
        recent = list(self._recent_tokens)
        if len(recent) < 2 or recent[-1][0] - recent[0][0] <= 0:
            return 0.0
        return sum(n for _, n in recent[1:]) / (recent[-1][0] - recent[0][0])

    def reserved_tokens(self) -> int:
        return sum(r.reserved_tokens for r in self.running)

    # ---- the model thread ------------------------------------------------------------------------------------
    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        try:
            while not self._stopping:
                has_work = bool(self.running or self.waiting) and not self._frozen
                if not has_work and self._inbox.empty():
                    self._wakeup.wait(timeout=0.5)
                self._wakeup.clear()
                self._drain_inbox()
                self._apply_aborts()
                if self._frozen:
                    continue
                self._admit()
                if self.running:
                    self._decode_step()
        except BaseException as exc:  # noqa: BLE001 - the HTTP side reports it on every later call
            logger.exception("the CPU engine's model thread died")
            self.error = exc
            self._fail_everything()

    def _fail_everything(self) -> None:
        """After a fatal model error: answer every request and control call instead of leaving them hanging."""
        assert self.error is not None
        reason = {"type": "abort", "message": f"engine error: {self.error}", "status_code": 500, "err_type": None}
        pending = list(self.running) + list(self.waiting)
        self.running, self.waiting = [], collections.deque()
        while True:
            try:
                kind, item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if kind == "add":
                pending.append(item)
            else:
                item[1].set_exception(RuntimeError(f"the engine failed: {self.error}"))
        for req in pending:
            req.finish(dict(reason))
            self._retire(req)

    def _drain_inbox(self) -> None:
        while True:
            try:
                kind, item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "add":
                self.waiting.append(item)
            else:
                fn, future = item
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn())
                    except BaseException as exc:  # noqa: BLE001 - handed to the HTTP caller as its error
                        future.set_exception(exc)

    def _retire(self, req: Request) -> None:
        with self._lock:
            self._live.pop(req.rid, None)
        if not req.internal:
            self.stats["requests_finished"] += 1
        if req.notify is not None:
            req.notify(req, True)

    def _apply_aborts(self) -> None:
        if any(r.abort_requested.is_set() for r in self.waiting):
            kept = collections.deque()
            for req in self.waiting:
                if req.abort_requested.is_set():
                    # A retracted request has output already: it is answered like a running one.
                    req.finish(dict(ABORTED if req.output_ids else ABORTED_WAITING))
                    self._retire(req)
                else:
                    kept.append(req)
            self.waiting = kept
        if any(r.abort_requested.is_set() for r in self.running):
            self._drop_rows(lambda r: r.abort_requested.is_set(), dict(ABORTED))

    def _drop_rows(self, leaving: Callable[[Request], bool], reason: dict[str, Any] | None) -> None:
        # Decided once per row: an abort flag may be set by the HTTP side while this runs.
        gone = [leaving(req) for req in self.running]
        for req, left in zip(self.running, gone):
            if left:
                if reason is not None:
                    req.finish(dict(reason))
                self._retire(req)
        rows = [i for i, left in enumerate(gone) if not left]
        self.running = [self.running[i] for i in rows]
        self.batch.keep(rows)

    def _admit(self) -> None:
        if not self.waiting or len(self.running) >= self.max_running_requests:
            return
        budget = self.max_total_tokens - self.reserved_tokens()
        chosen: list[Request] = []
        longest = 0
        while self.waiting and len(self.running) + len(chosen) < self.max_running_requests:
            req = self.waiting[0]
            length = len(req.context_ids())
            padded = max(longest, length) * (len(chosen) + 1)
            if chosen and (padded > self.max_prefill_tokens or req.reserved_tokens > budget):
                break
            if not chosen and req.reserved_tokens > budget and self.running:
                break  # wait for running requests to free KV room
            chosen.append(self.waiting.popleft())
            budget -= req.reserved_tokens
            longest = max(longest, length)
        if chosen:
            self._prefill(chosen)

    def _prefill(self, requests: list[Request]) -> None:
        now = time.time()
        for req in requests:
            req.forward_entry_time = req.forward_entry_time or now
        first_time = [not req.output_ids and req.prefill_finished_time is None for req in requests]
        want_prompt = [first and req.return_logprob and req.logprob_start_len >= 0
                       for first, req in zip(first_time, requests)]
        part, logits = self.batch.prefill([r.context_ids() for r in requests], full_logits=any(want_prompt))
        self.stats["prefill_batches"] += 1
        self.stats["prefill_tokens"] += sum(len(r.context_ids()) for r in requests)
        if any(want_prompt):
            width = logits.shape[1]
            for row, (req, want) in enumerate(zip(requests, want_prompt)):
                if want:
                    self._prompt_logprobs(req, logits[row, width - len(req.input_ids):])
            logits = logits[:, -1]
        done = time.time()
        for req in requests:
            req.prefill_finished_time = req.prefill_finished_time or done

        # max_new_tokens == 0 (e.g. prompt scoring): the prefill is the whole request.
        rows = [i for i, r in enumerate(requests) if r.max_new_tokens > 0]
        for i, req in enumerate(requests):
            if req.max_new_tokens == 0:
                req.finish({"type": "length", "length": 0})
                self._retire(req)
        if not rows:
            return
        requests = [requests[i] for i in rows]
        tokens = self._sample(logits[rows], requests)
        keep = [i for i, req in enumerate(requests) if req.finish_reason is None]
        for req in requests:
            if req.finish_reason is not None:
                self._retire(req)
        if keep:
            part.set_pending(tokens)
            part.keep(keep)
            self.running.extend(requests[i] for i in keep)
            self.batch.extend(part)

    def _prompt_logprobs(self, req: Request, logits: torch.Tensor) -> None:
        """SGLang's input logprobs: log_softmax of the raw logits (no temperature), one entry per prompt token from
        logprob_start_len on; the very first prompt token has none."""
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        ids = torch.tensor(req.input_ids[1:], dtype=torch.long)
        values = [None] + logprobs[:-1].gather(1, ids[:, None])[:, 0].tolist()
        req.input_logprobs = values[req.logprob_start_len:]

    def _sample(self, logits: torch.Tensor, requests: list[Request]) -> list[int]:
        """Sample one token per request, record it, and finish those that hit a stop condition."""
        rows = []
        for req in requests:
            if req.row is None:
                req.row = RowState(req.params, req.output_ids, req.generator,
                                   self.eos_ids | frozenset(req.params.stop_token_ids))
            rows.append(req.row)
        tokens, logprobs, tops = sample_next_tokens(
            logits, rows, [r.return_logprob for r in requests], [r.top_logprobs_num for r in requests],
            self.generator)
        for req, token, logprob, top in zip(requests, tokens, logprobs, tops):
            req.output_ids.append(token)
            if req.return_logprob:
                req.output_logprobs.append(logprob)
                if top is not None:
                    req.output_top_logprobs.append(top)
            reason = check_finished(req, token, self.eos_ids, self.tokenizer)
            if reason is not None:
                req.finish(reason)
            elif req.stream and req.notify is not None and len(req.output_ids) % req.params.stream_interval == 0:
                req.notify(req, False)
        self._recent_tokens.append((time.time(), len(tokens)))
        self.stats["generated_tokens"] += len(tokens)
        return tokens

    def _decode_step(self) -> None:
        size = len(self.running)
        self.batch_size_histogram[size] += 1
        self.stats["decode_steps"] += 1
        self.stats["max_batch_size"] = max(self.stats["max_batch_size"], size)
        logits = self.batch.decode()
        tokens = self._sample(logits, self.running)
        self.batch.set_pending(tokens)
        if any(r.finish_reason is not None for r in self.running):
            self._drop_rows(lambda r: r.finish_reason is not None, None)

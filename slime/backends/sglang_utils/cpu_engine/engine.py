"""The state behind the CPU engine's HTTP endpoints: model, tokenizer, scheduler, weight version and pause state.

The HTTP side is asyncio; the model runs on the scheduler's thread. This class holds SGLang's front-end rules:
* `/pause_generation` (mode "abort") aborts everything and returns once no `/generate` call is in flight; later
  `/generate` calls are held open until `/continue_generation`;
* a weight update waits for in-flight `/generate` calls to finish (a writer lock) unless generation is paused, and
  runs on the model thread between two steps, so no forward ever sees half-loaded weights.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from typing import Any, Awaitable, Callable

import torch

from slime.backends.sglang_utils.cpu_engine.kv_batch import check_supported
from slime.backends.sglang_utils.cpu_engine.request import Request, build_reply
from slime.backends.sglang_utils.cpu_engine.sampling import parse_sampling_params
from slime.backends.sglang_utils.cpu_engine.scheduler import Scheduler
from slime.backends.sglang_utils.cpu_engine.server_args import ServerArgs

logger = logging.getLogger(__name__)

HEALTH_CHECK_TIMEOUT_S = float(os.environ.get("SGLANG_HEALTH_CHECK_TIMEOUT", "20"))


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """EOS ids as SGLang gathers them: the model config's, the generation config's, and the tokenizer's."""
    ids: set[int] = set()
    for source in (model.config, getattr(model, "generation_config", None), tokenizer):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return frozenset(ids)


def _kv_token_budget(args: ServerArgs, model: Any) -> int:
    """KV tokens that fit in --mem-fraction-static of host memory after the weights (or --max-total-tokens)."""
    if args.max_total_tokens is not None:
        return args.max_total_tokens
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    per_token = 2 * cfg.num_hidden_layers * kv_heads * head_dim * 4  # K and V, fp32
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return max(int((args.mem_fraction_static * host - weights) // per_token), 0)


class Engine:
    def __init__(self, args: ServerArgs) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.args = args
        self.tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_path, trust_remote_code=args.trust_remote_code)
        self.model = AutoModelForCausalLM.from_pretrained(
            args.model_path, dtype=torch.float32, trust_remote_code=args.trust_remote_code).eval()
        check_supported(self.model)
        self.model_path = args.model_path
        self.vocab_size = int(self.model.get_output_embeddings().weight.shape[0])
        self.context_len = args.context_length or int(getattr(self.model.config, "max_position_embeddings", 4096))
        self.max_total_tokens = _kv_token_budget(args, self.model)
        pad = self.tokenizer.pad_token_id
        self.scheduler = Scheduler(
            self.model, self.tokenizer, eos_ids=_eos_ids(self.model, self.tokenizer),
            pad_token_id=pad if pad is not None else 0, seed=args.random_seed,
            max_running_requests=args.max_running_requests, max_prefill_tokens=args.max_prefill_tokens,
            max_total_tokens=self.max_total_tokens)
        self.weight_version = args.weight_version
        self.released: set[str] = set()  # memory tags given back by /release_memory_occupation
        self.released_shapes: dict[int, torch.Size] = {}
        self.groups: dict[str, Any] = {}  # weight-update process groups by name
        self.ready = False
        self.shutting_down = False
        self.paused = False
        self._resume: asyncio.Event | None = None
        self._state: asyncio.Condition | None = None
        self.inflight = 0
        self._writers = 0

    # ---- lifecycle -------------------------------------------------------------------------------------------
    async def startup(self) -> None:
        self._resume = asyncio.Event()
        self._resume.set()
        self._state = asyncio.Condition()
        self.scheduler.start()
        if not self.args.skip_server_warmup:
            await self.run_internal([0], "WARMUP")
        self.ready = True

    async def shutdown(self) -> None:
        self.shutting_down = True
        self.scheduler.abort(abort_all=True)
        await asyncio.to_thread(self.scheduler.stop)

    @property
    def healthy(self) -> bool:
        return self.ready and not self.shutting_down and self.scheduler.error is None

    # ---- requests --------------------------------------------------------------------------------------------
    def make_request(self, item: dict[str, Any]) -> Request:
        """One request from one normalised /generate item; raises ValueError with SGLang-like messages."""
        if item.get("input_ids") is not None:
            ids = item["input_ids"]
            if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
                raise ValueError("input_ids must be a list of integers (or a list of such lists).")
        elif item.get("text") is not None:
            if not isinstance(item["text"], str):
                raise ValueError("text must be a string (or a list of strings).")
            ids = self.tokenizer.encode(item["text"])
        else:
            raise ValueError("Either text or input_ids should be provided.")
        if not ids:
            raise ValueError("The input is empty: input_ids (or the tokenized text) has no tokens.")
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise ValueError(f"The input_ids {bad[:5]} contain values outside the vocabulary [0, {self.vocab_size}).")
        if len(ids) >= self.context_len:
            raise ValueError(f"The input ({len(ids)} tokens) is longer than the model's context length "
                             f"({self.context_len} tokens).")
        params = parse_sampling_params(item.get("sampling_params"), self.tokenizer, self.vocab_size)
        max_new = params.max_new_tokens if params.max_new_tokens is not None else self.context_len - len(ids)
        if len(ids) + max_new > self.context_len:
            raise ValueError(
                f"Requested token count exceeds the model's maximum context length of {self.context_len} tokens. "
                f"You requested a total of {len(ids) + max_new} tokens: {len(ids)} tokens from the input messages "
                f"and {max_new} tokens for the completion. Please reduce the number of tokens in the input "
                "messages or the completion to fit within the limit.")
        if len(ids) + max_new > self.max_total_tokens:
            raise ValueError(f"The request needs {len(ids) + max_new} KV tokens but the engine holds at most "
                             f"{self.max_total_tokens} (--max-total-tokens / --mem-fraction-static).")
        start = item.get("logprob_start_len")
        start = -1 if start is None else int(start)
        if start >= len(ids):
            raise ValueError(f"logprob_start_len ({start}) must be smaller than the input length ({len(ids)}).")
        return Request(
            rid=item["rid"], input_ids=list(ids), params=params, max_new_tokens=max_new,
            return_logprob=bool(item.get("return_logprob")), logprob_start_len=start,
            top_logprobs_num=int(item.get("top_logprobs_num") or 0),
            return_text_in_logprobs=bool(item.get("return_text_in_logprobs")), stream=bool(item.get("stream")))

    def reply(self, req: Request) -> dict[str, Any]:
        return build_reply(req, self.tokenizer, self.weight_version, self.args.enable_metrics)

    async def enter(self) -> None:
        """Admission of one /generate call: held while paused or while a weight update is waiting or running."""
        assert self._resume is not None and self._state is not None
        while True:
            await self._resume.wait()
            async with self._state:
                if self._writers == 0 and not self.paused:
                    self.inflight += 1
                    return
                await self._state.wait()

    async def leave(self) -> None:
        assert self._state is not None
        async with self._state:
            self.inflight -= 1
            self._state.notify_all()

    async def generate(self, requests: list[Request],
                       on_progress: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
                       disconnected: Callable[[], Awaitable[bool]] | None = None) -> list[dict[str, Any]]:
        """Run requests to the end (or abort) and return their replies in order. `on_progress` receives streaming
        snapshots; `disconnected` is polled so a client that went away has its requests aborted."""
        if "weights" in self.released:
            raise ValueError("the weights are released (release_memory_occupation); resume them first")
        loop = asyncio.get_running_loop()
        updates: asyncio.Queue = asyncio.Queue()

        def notify(req: Request, final: bool) -> None:  # runs on the model thread
            item = (req, None) if final else (req, self.reply(req))
            loop.call_soon_threadsafe(updates.put_nowait, item)

        for req in requests:
            req.notify = notify
        await self.enter()
        try:
            self.scheduler.submit(requests)
        except BaseException:
            await self.leave()
            raise
        try:
            remaining = len(requests)
            while remaining:
                try:
                    req, snapshot = await asyncio.wait_for(updates.get(), timeout=1.0)
                except asyncio.TimeoutError:
                    if disconnected is not None and await disconnected():
                        for req in requests:
                            self.scheduler.abort(req.rid)
                    continue
                if snapshot is None:
                    remaining -= 1
                    if on_progress is not None:
                        await on_progress(self.reply(req))
                elif on_progress is not None:
                    await on_progress(snapshot)
        except BaseException:
            for req in requests:  # a cancelled call (client gone) must not leave work behind
                self.scheduler.abort(req.rid)
            raise
        finally:
            await self.leave()
        return [self.reply(req) for req in requests]

    async def run_internal(self, input_ids: list[int], prefix: str) -> dict[str, Any]:
        req = Request(rid=f"{prefix}_{uuid.uuid4().hex}", input_ids=input_ids,
                      params=parse_sampling_params({"temperature": 0, "max_new_tokens": 1}, self.tokenizer,
                                                   self.vocab_size),
                      max_new_tokens=1, internal=True)
        return (await self.generate([req]))[0]

    async def health_generate(self) -> bool:
        """SGLang's probe: one internal 1-token request; healthy once any output appeared since the check began."""
        if not self.healthy:
            return False
        tokens_before = self.scheduler.stats["generated_tokens"]
        probe = asyncio.create_task(self.run_internal([0], "HEALTH_CHECK"))
        deadline = time.monotonic() + HEALTH_CHECK_TIMEOUT_S
        try:
            while time.monotonic() < deadline and self.healthy:
                if probe.done() or self.scheduler.stats["generated_tokens"] > tokens_before:
                    return probe.exception() is None if probe.done() else True
                await asyncio.sleep(0.05)
            return False
        finally:
            if not probe.done():
                probe.cancel()

    # ---- pause / continue --------------------------------------------------------------------------------------
    async def pause(self, mode: str) -> None:
        assert self._resume is not None
        if mode not in ("abort", "in_place", "retract"):
            raise ValueError(f"mode must be 'abort', 'in_place' or 'retract', got {mode!r}")
        self.paused = True
        self._resume.clear()
        if mode == "abort":
            while self.inflight:
                self.scheduler.abort(abort_all=True)
                await asyncio.sleep(0.02)
        else:
            await asyncio.wrap_future(self.scheduler.freeze(retract=mode == "retract"))

    async def resume(self) -> None:
        assert self._resume is not None and self._state is not None
        await asyncio.wrap_future(self.scheduler.unfreeze())
        self.paused = False
        self._resume.set()
        async with self._state:
            self._state.notify_all()

    # ---- weight updates ----------------------------------------------------------------------------------------
    async def update_weights(self, load: Callable[[], Any], weight_version: str | None, abort_all: bool) -> Any:
        """Run `load` on the model thread once no /generate is in flight (at once when paused); new /generate calls
        wait meanwhile. Bumps the weight version on success."""
        assert self._state is not None
        if abort_all:
            self.scheduler.abort(abort_all=True)
        async with self._state:
            self._writers += 1
            try:
                if not self.paused:
                    await self._state.wait_for(lambda: self.inflight == 0)
            except BaseException:
                self._writers -= 1
                self._state.notify_all()
                raise
        try:
            result = await asyncio.wrap_future(self.scheduler.run_control(load))
            if weight_version is not None:
                self.weight_version = str(weight_version)
            return result
        finally:
            async with self._state:
                self._writers -= 1
                self._state.notify_all()

    def release_memory(self, tags: list[str] | None) -> None:
        """On CPU only the weights occupy memory between requests: they are dropped (shapes kept) until resumed."""
        tags = tags or ["weights", "kv_cache", "cuda_graph"]
        if "weights" in tags and "weights" not in self.released:
            for tensor in {id(t): t for t in self.model.state_dict(keep_vars=True).values()}.values():
                self.released_shapes[id(tensor)] = tensor.shape
                tensor.data = torch.empty(0, dtype=tensor.dtype)
        self.released.update(tags)

    def resume_memory(self, tags: list[str] | None) -> None:
        tags = tags or ["weights", "kv_cache", "cuda_graph"]
        if "weights" in tags and "weights" in self.released:
            # Like SGLang without a CPU backup, resumed weights hold no values until the next weight update.
            for tensor in {id(t): t for t in self.model.state_dict(keep_vars=True).values()}.values():
                tensor.data = torch.zeros(self.released_shapes.pop(id(tensor)), dtype=tensor.dtype)
        self.released.difference_update(tags)

    # ---- info ----------------------------------------------------------------------------------------------------
    def model_info(self) -> dict[str, Any]:
        cfg = self.model.config
        return {"model_path": self.model_path, "tokenizer_path": self.args.tokenizer_path, "is_generation": True,
                "preferred_sampling_params": None, "weight_version": self.weight_version,
                "has_image_understanding": False, "has_audio_understanding": False,
                "model_type": cfg.model_type, "architectures": list(cfg.architectures or [type(self.model).__name__])}

    def engine_state(self) -> dict[str, Any]:
        """Debug counters (SGLang's `internal_states` slot): how requests were batched."""
        sched = self.scheduler
        running, waiting = sched.counts()
        histogram = dict(sched.batch_size_histogram)  # one C-level copy: the model thread keeps adding sizes
        return {"num_running_reqs": running, "num_waiting_reqs": waiting, **dict(sched.stats),
                "batch_size_histogram": {str(k): v for k, v in sorted(histogram.items())},
                "paused": self.paused, "released_memory": sorted(self.released)}

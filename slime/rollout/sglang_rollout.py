"""The default RL rollout: generate through the router in front of the inference engines, score, filter.

`generate_rollout(args, rollout_id, data_source, evaluation=False)` is what `--rollout-function-path` names by
default. Per rollout it keeps submitting prompt groups of `--n-samples-per-prompt` (in rounds of
`--over-sampling-batch-size`) until `--rollout-batch-size` groups have passed `--dynamic-sampling-filter-path`,
then aborts what is still in flight: with `--partial-rollout` the unfinished groups go back to the data source's
buffer and continue later, otherwise they are dropped. The engines are real SGLang on GPUs and the CPU engine
(`slime.backends.sglang_utils`) without; both sit behind `sglang-router` at `--sglang-router-ip:port`.

Plugins reach `generate`, `generate_and_rm`, `generate_and_rm_group` and `GenerateState` by these names, as in slime.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import logging
import threading
import time
from argparse import Namespace
from typing import Any, Awaitable, Callable

from slime.rollout.base_types import RolloutFnEvalOutput, RolloutFnTrainOutput
from slime.rollout.filter_hub.dynamic_sampling_filters import DynamicFilterOutput
from slime.rollout.rm_hub import async_rm, batched_async_rm
from slime.utils.data import Dataset
from slime.utils.http_utils import get, post, router_url
from slime.utils.misc import load_function, load_tokenizer
from slime.utils.types import Sample

logger = logging.getLogger(__name__)
# Aborting is best-effort per engine: one that does not answer within a few tries has died with its requests.
ABORT_RETRIES = 3


class GenerateState:
    """Per-process state shared by every request of the rollout function (slime keeps it a singleton too)."""

    _instance: GenerateState | None = None

    def __init__(self, args: Namespace):
        self.args = args
        self.tokenizer = load_tokenizer(args.hf_checkpoint)
        num_engines = (len(args.rollout_external_engine_addrs) if args.rollout_external
                       else max(1, (args.rollout_num_gpus or 1) // args.rollout_num_gpus_per_engine))
        self.semaphore = asyncio.Semaphore(args.sglang_server_concurrency * num_engines)
        self.sampling_params = sampling_params_from_args(args)
        self.reset()

    @classmethod
    def get(cls, args: Namespace) -> GenerateState:
        if cls._instance is None or cls._instance.args is not args:
            cls._instance = cls(args)
        return cls._instance

    def reset(self) -> None:
        self.aborted = False
        self.remaining_batch_size = 0
        self.pendings: set[asyncio.Task] = set()


def sampling_params_from_args(args: Namespace, evaluation: bool = False) -> dict[str, Any]:
    def pick(eval_value: Any, train_value: Any) -> Any:
        return eval_value if evaluation and eval_value is not None else train_value

    return {
        "temperature": pick(getattr(args, "eval_temperature", None), args.rollout_temperature),
        "top_p": pick(getattr(args, "eval_top_p", None), args.rollout_top_p),
        "top_k": pick(getattr(args, "eval_top_k", None), args.rollout_top_k),
        "max_new_tokens": pick(getattr(args, "eval_max_response_len", None), args.rollout_max_response_len),
        "stop": args.rollout_stop,
        "stop_token_ids": args.rollout_stop_token_ids,
        "skip_special_tokens": args.rollout_skip_special_tokens,
        "no_stop_trim": True,
        "spaces_between_special_tokens": False,
    }


def _prompt_ids(state: GenerateState, sample: Sample) -> list[int]:
    if sample.tokens:  # a partial rollout continues from where it stopped
        return list(sample.tokens)
    if not isinstance(sample.prompt, str):
        raise ValueError(f"sample {sample.index}: the prompt is a message list; render it with --apply-chat-template")
    return state.tokenizer.encode(sample.prompt, add_special_tokens=False)


async def generate(args: Namespace, sample: Sample, sampling_params: dict[str, Any],
                   evaluation: bool = False) -> Sample:
    """One request to the router; the response tokens, their log-probs and the finish reason grow the sample.
    The context limit is `--eval-max-context-len` for evaluation, `--rollout-max-context-len` otherwise."""
    state = GenerateState.get(args)
    prompt_ids = _prompt_ids(state, sample)
    if not sample.tokens:
        sample.tokens = list(prompt_ids)
    params = dict(sampling_params)
    if params.get("max_new_tokens") is not None:
        params["max_new_tokens"] -= sample.response_length
        if params["max_new_tokens"] <= 0:
            sample.status = Sample.Status.TRUNCATED
            return sample
    context_limit = args.eval_max_context_len if evaluation else args.rollout_max_context_len
    if context_limit is not None:
        room = context_limit - len(prompt_ids)
        if room <= 0:
            sample.status = Sample.Status.TRUNCATED
            return sample
        params["max_new_tokens"] = min(params.get("max_new_tokens") or room, room)
    payload = {"input_ids": prompt_ids, "sampling_params": params, "return_logprob": True}
    headers = {"X-SMG-Routing-Key": sample.session_id} if sample.session_id else None
    output = await post(router_url(args, "/generate"), payload, headers=headers)
    meta = output["meta_info"]
    triples = meta.get("output_token_logprobs") or []
    tokens = [int(t[1]) for t in triples]
    log_probs = [float(t[0]) for t in triples]
    if sample.rollout_log_probs is None and sample.response_length == 0:
        sample.rollout_log_probs = []
    sample.append_response_tokens(
        tokens, log_probs=log_probs, text=output.get("text", ""),
        finish_reason=meta["finish_reason"]["type"], weight_version=meta.get("weight_version"),
    )
    return sample


async def _call_generate(args: Namespace, sample: Sample, sampling_params: dict[str, Any],
                         evaluation: bool) -> Sample | list[Sample]:
    path = sample.generate_function_path or args.custom_generate_function_path
    if path is None:
        return await generate(args, sample, sampling_params, evaluation=evaluation)
    fn = load_function(path)
    if "evaluation" in inspect.signature(fn).parameters:
        return await fn(args, sample, sampling_params, evaluation=evaluation)
    return await fn(args, sample, sampling_params)


async def generate_and_rm(args: Namespace, sample: Sample, sampling_params: dict[str, Any],
                          evaluation: bool = False) -> Sample | list[Sample]:
    """Generate and score one sample; aborted samples get no reward. A sample that comes back from the buffer
    already finished (partial rollout) is returned as it is, with the reward it got then."""
    state = GenerateState.get(args)
    if args.partial_rollout and args.mask_offpolicy_in_partial_rollout and sample.response_length > 0:
        # Tokens generated under an older policy stay in the context but are not trained.
        sample.loss_mask = [0] * sample.response_length
    if sample.status in (Sample.Status.COMPLETED, Sample.Status.TRUNCATED):
        if sample.reward is None and not args.group_rm:
            raise RuntimeError(f"sample {sample.index} came back finished ({sample.status.value}) without a reward")
        return sample
    async with state.semaphore:
        if state.aborted:
            sample.status = Sample.Status.ABORTED
            return sample
        sample = await _call_generate(args, sample, sampling_params, evaluation)
    for hook_path in args.rollout_sample_hook_path or []:
        load_function(hook_path)(args, sample)
    samples = sample if isinstance(sample, list) else [sample]
    if any(s.status == Sample.Status.ABORTED for s in samples) or args.group_rm:
        return sample
    if isinstance(sample, list):
        for s, reward in zip(samples, await batched_async_rm(args, samples)):
            s.reward = reward
    elif sample.reward is None:
        sample.reward = await async_rm(args, sample)
    return sample


async def generate_and_rm_group(args: Namespace, group: list[Sample], sampling_params: dict[str, Any],
                                evaluation: bool = False) -> list[Sample]:
    """A prompt's samples concurrently (each with its own seed when `--sglang-enable-deterministic-inference`);
    with `--group-rm` they are scored together."""
    state = GenerateState.get(args)
    if state.aborted:
        return group
    tasks = []
    for i, sample in enumerate(group):
        params = dict(sampling_params)
        if args.sglang_enable_deterministic_inference:
            params["sampling_seed"] = args.rollout_seed + i
        tasks.append(generate_and_rm(args, sample, params, evaluation=evaluation))
    group = list(await asyncio.gather(*tasks))
    if args.group_rm and not any(s.status == Sample.Status.ABORTED for s in group):
        for sample, reward in zip(group, await batched_async_rm(args, group)):
            sample.reward = reward
    return group


def _filter(args: Namespace, group: list[Sample]) -> DynamicFilterOutput:
    if args.dynamic_sampling_filter_path is None:
        return DynamicFilterOutput(keep=True)
    result = load_function(args.dynamic_sampling_filter_path)(args, group)
    return result if isinstance(result, DynamicFilterOutput) else DynamicFilterOutput(keep=bool(result))


async def abort(args: Namespace, rollout_id: int) -> list[list[Sample]]:
    """Stop every request still in flight on every engine and collect the groups that come back."""
    state = GenerateState.get(args)
    state.aborted = True
    workers = await get(router_url(args, "/workers"))
    urls = [w["url"] if isinstance(w, dict) else w for w in workers.get("workers", workers.get("urls", []))]
    for url, result in zip(urls, await asyncio.gather(
            *(post(f"{url}/abort_request", {"abort_all": True}, retries=ABORT_RETRIES) for url in urls),
            return_exceptions=True)):
        if isinstance(result, Exception):
            # An engine that cannot be reached has nothing in flight any more: its requests failed with it (and
            # their retries go through the router to the engines that were just told to abort).
            logger.warning("abort: %s did not answer (%s)", url, result)
    returned = []
    for task in asyncio.as_completed(state.pendings):
        group = await task
        if args.partial_rollout:
            for sample in group:
                if sample.response_length and "start_rollout_id" not in sample.metadata:
                    sample.metadata["start_rollout_id"] = rollout_id
            returned.append(group)
    state.pendings = set()
    return returned


async def generate_rollout_async(args: Namespace, rollout_id: int,
                                 get_samples: Callable[[int], list[list[Sample]]]) -> tuple[list, dict, list]:
    state = GenerateState.get(args)
    state.reset()
    target = args.rollout_batch_size
    sampling_params = state.sampling_params
    kept: list[list[Sample]] = []
    drops: dict[str, int] = {}
    started = time.perf_counter()
    submitted = 0
    while len(kept) < target:
        while state.remaining_batch_size < target:
            for group in get_samples(args.over_sampling_batch_size):
                state.pendings.add(asyncio.create_task(generate_and_rm_group(args, group, sampling_params)))
                submitted += 1
            state.remaining_batch_size += args.over_sampling_batch_size
        done, state.pendings = await asyncio.wait(state.pendings, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            group = task.result()
            if len(group) != args.n_samples_per_prompt:
                raise RuntimeError(f"a group came back with {len(group)} samples, not {args.n_samples_per_prompt}")
            verdict = _filter(args, group)
            short = state.remaining_batch_size <= target
            if not verdict.keep and not (verdict.keep_when_insufficient and short):
                state.remaining_batch_size -= 1
                reason = verdict.reason or "filtered"
                drops[reason] = drops.get(reason, 0) + 1
                continue
            if len(kept) < target:
                kept.append(group)
    generation_time = time.perf_counter() - started
    recycled = await abort(args, rollout_id)
    kept.sort(key=lambda group: group[0].index)
    samples = [s for group in kept for s in group]
    response_lengths = [s.response_length for s in samples]
    rewards = [float(s.get_reward_value(args)) for s in samples]
    metrics = {
        "rollout/raw_reward": sum(rewards) / len(rewards),
        "rollout/response_len/mean": sum(response_lengths) / len(samples),
        "rollout/response_len/max": max(response_lengths),
        "rollout/truncated": sum(s.status == Sample.Status.TRUNCATED for s in samples) / len(samples),
        "rollout/groups_submitted": submitted,
        "perf/generation_time": generation_time,
        "perf/generation_tokens_per_s": sum(response_lengths) / max(generation_time, 1e-9),
        **{f"rollout/dynamic_filter/drop_{reason}": count for reason, count in drops.items()},
    }
    return kept, metrics, recycled


def _apply_sample_processors(args: Namespace, groups: list[list[Sample]], data_source: Any) -> None:
    if args.rollout_sample_filter_path:
        load_function(args.rollout_sample_filter_path)(args, groups)
    if args.rollout_all_samples_process_path:
        load_function(args.rollout_all_samples_process_path)(args, groups, data_source)


_EVAL_DATASETS: dict[str, Dataset] = {}
# --eval-config keys that override, for one dataset, the sampling parameter named next to them (slime's runtime
# overrides; `n_samples_per_eval_prompt` overrides the flag of that name).
_EVAL_SAMPLING_OVERRIDES = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
                            "max_response_len": "max_new_tokens", "stop": "stop", "stop_token_ids": "stop_token_ids"}


async def eval_rollout(args: Namespace, rollout_id: int) -> dict[str, dict[str, list[Any]]]:
    """Every eval dataset at once, `--n-samples-per-eval-prompt` samples per prompt, with the eval sampling
    flags (`--eval-temperature`, ...) and an `--eval-config` entry's own values over them."""
    if args.group_rm:
        raise ValueError("--group-rm does not apply to evaluation (slime refuses it too); give a per-sample "
                         "reward for eval with --eval-function-path or drop --group-rm")
    GenerateState.get(args).reset()
    results = await asyncio.gather(*(_eval_dataset(args, entry) for entry in args.eval_datasets))
    return {entry["name"]: result for entry, result in zip(args.eval_datasets, results)}


async def _eval_dataset(args: Namespace, entry: dict[str, Any]) -> dict[str, list[Any]]:
    from slime.rollout.data_source import build_dataset

    name = entry["name"]
    if name not in _EVAL_DATASETS:
        _EVAL_DATASETS[name] = build_dataset(args, entry["path"])
    dataset = _EVAL_DATASETS[name]
    sampling_params = sampling_params_from_args(args, evaluation=True)
    sampling_params.update({param: entry[key] for key, param in _EVAL_SAMPLING_OVERRIDES.items()
                            if entry.get(key) is not None})
    n_samples = int(entry.get("n_samples_per_eval_prompt") or args.n_samples_per_eval_prompt)
    tasks = []
    for i, prompt in enumerate(dataset.samples(range(len(dataset)))):
        for j in range(n_samples):
            sample = copy.deepcopy(prompt)
            sample.index, sample.group_index = i * n_samples + j, i
            params = dict(sampling_params)
            if args.sglang_enable_deterministic_inference:
                params["sampling_seed"] = args.rollout_seed + j
            tasks.append(generate_and_rm(args, sample, params, evaluation=True))
    done = list(await asyncio.gather(*tasks))
    return {
        "rewards": [_eval_reward(args, s) for s in done],
        "truncated": [s.status == Sample.Status.TRUNCATED for s in done],
        "samples": done,
    }


def _eval_reward(args: Namespace, sample: Sample) -> Any:
    key = args.eval_reward_key
    if not key:
        return sample.reward
    if not isinstance(sample.reward, dict) or key not in sample.reward:
        raise ValueError(f"--eval-reward-key {key}: the reward of eval sample {sample.index} is {sample.reward!r}, "
                         "not a dict with that key")
    return sample.reward[key]


class _LoopThread:
    """One event loop on a background thread for the life of the process: the rollout manager calls
    `generate_rollout` synchronously, while engines, aiohttp sessions and the semaphore live on this loop."""

    _loop: asyncio.AbstractEventLoop | None = None
    _lock = threading.Lock()

    @classmethod
    def run(cls, coroutine: Awaitable[Any]) -> Any:
        with cls._lock:
            if cls._loop is None:
                cls._loop = asyncio.new_event_loop()
                threading.Thread(target=cls._loop.run_forever, name="rollout-loop", daemon=True).start()
        return asyncio.run_coroutine_threadsafe(coroutine, cls._loop).result()


def generate_rollout(args: Namespace, rollout_id: int, data_source: Any,
                     evaluation: bool = False) -> RolloutFnTrainOutput | RolloutFnEvalOutput:
    if evaluation:
        # The rollout manager turns the results into eval/<name> metrics, for this and any other eval function.
        return RolloutFnEvalOutput(data=_LoopThread.run(eval_rollout(args, rollout_id)))
    groups, metrics, recycled = _LoopThread.run(generate_rollout_async(args, rollout_id, data_source.get_samples))
    if recycled:
        data_source.add_samples(recycled)
    _apply_sample_processors(args, groups, data_source)
    return RolloutFnTrainOutput(samples=groups, metrics=metrics)

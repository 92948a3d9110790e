"""Rewards: `async_rm(args, sample)` for one sample and `batched_async_rm(args, samples)` for a group.

Which reward: the sample's own `custom_rm_path`, else `--custom-rm-path` (`async fn(args, sample) -> reward`, or
`async fn(args, samples) -> rewards` with `--group-rm`), else the built-in named by `sample.metadata["rm_type"]` or
`--rm-type`. A `boxed_` prefix (e.g. `boxed_f1`) first reduces the response to its last `\\boxed{}` answer.
Built-ins: remote_rm (`--rm-url`), deepscaler, dapo, math, f1, gpqa, random.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
from argparse import Namespace
from typing import Any

from slime.rollout.rm_hub.math_utils import dapo_reward, deepscaler_reward, extract_boxed_answer, grade_boxed_math
from slime.rollout.rm_hub.text_rewards import f1_score, gpqa_reward
from slime.utils.misc import load_function
from slime.utils.types import Sample

logger = logging.getLogger(__name__)

BUILTIN_RM_TYPES = ("remote_rm", "deepscaler", "dapo", "math", "f1", "gpqa", "random")
REMOTE_RM_RETRIES = 10


class RewardError(RuntimeError):
    """A reward function failed; the message names the sample and the function."""


def validate_rm_type(rm_type: str | None) -> None:
    """For start-up checks of `--rm-type`: an unknown name is a user error, found before any generation."""
    if rm_type is None:
        return
    base = rm_type[len("boxed_"):] if rm_type.startswith("boxed_") else rm_type
    if base not in BUILTIN_RM_TYPES:
        raise ValueError(f"--rm-type {rm_type!r} is not a built-in reward (known: {', '.join(BUILTIN_RM_TYPES)}, "
                         "each optionally prefixed with boxed_); use --custom-rm-path for your own")


async def remote_rm(args: Namespace, sample: Sample) -> Any:
    """POST {prompt, response, label} to --rm-url; transient failures are retried with exponential backoff."""
    import aiohttp

    if not args.rm_url:
        raise ValueError("--rm-type remote_rm needs --rm-url")
    payload = {"prompt": sample.prompt, "response": sample.response, "label": sample.label}
    delay = 0.5
    for attempt in range(1, REMOTE_RM_RETRIES + 1):
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
                async with session.post(args.rm_url, json=payload) as response:
                    response.raise_for_status()
                    return await response.json()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            if attempt == REMOTE_RM_RETRIES:
                raise RewardError(f"--rm-url {args.rm_url}: no answer after {attempt} tries ({exc})") from exc
            logger.warning("--rm-url %s failed (%s); retry %d/%d in %.1f s", args.rm_url, exc, attempt,
                           REMOTE_RM_RETRIES, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)


async def _builtin_reward(args: Namespace, sample: Sample) -> Any:
    metadata = sample.metadata if isinstance(sample.metadata, dict) else {}
    rm_type = (metadata.get("rm_type") or args.rm_type or "").strip()
    if not rm_type:
        raise ValueError("no reward is configured: give --rm-type, --custom-rm-path, or metadata['rm_type']")
    response = sample.response
    if rm_type.startswith("boxed_"):
        response = extract_boxed_answer(response) or ""
        rm_type = rm_type[len("boxed_"):]
    if rm_type == "remote_rm":
        return await remote_rm(args, sample)
    if rm_type == "deepscaler":
        return deepscaler_reward(response, sample.label)
    if rm_type == "dapo":
        return dapo_reward(response, sample.label)
    if rm_type == "math":
        return grade_boxed_math(response, sample.label)
    if rm_type == "f1":
        return f1_score(response, sample.label)[0]
    if rm_type == "gpqa":
        return gpqa_reward(response, sample.label, metadata)
    if rm_type == "random":
        return random.randint(0, 1)
    validate_rm_type(rm_type)  # raises with the list of known names
    raise AssertionError(rm_type)


def _describe(sample: Sample) -> str:
    return f"sample {sample.index} (group {sample.group_index})"


async def _call(fn: Any, *call_args: Any, **kwargs: Any) -> Any:
    result = fn(*call_args, **kwargs)
    return await result if inspect.isawaitable(result) else result


async def async_rm(args: Namespace, sample: Sample, **kwargs: Any) -> Any:
    """The reward of one sample."""
    path = sample.custom_rm_path or args.custom_rm_path
    try:
        if path:
            return await _call(load_function(path), args, sample, **kwargs)
        return await _builtin_reward(args, sample)
    except RewardError:
        raise
    except Exception as exc:
        what = path or f"--rm-type {sample.metadata.get('rm_type') or args.rm_type}"
        raise RewardError(f"reward {what} failed on {_describe(sample)}: {type(exc).__name__}: {exc}") from exc


async def batched_async_rm(args: Namespace, samples: list[Sample], **kwargs: Any) -> list[Any]:
    """The rewards of a group: one call of --custom-rm-path with the whole list (--group-rm), else one per sample."""
    if args.custom_rm_path:
        rewards = await _call(load_function(args.custom_rm_path), args, samples, **kwargs)
        if len(rewards) != len(samples):
            raise RewardError(f"--custom-rm-path {args.custom_rm_path} returned {len(rewards)} rewards for "
                              f"{len(samples)} samples (group {samples[0].group_index if samples else None})")
        return list(rewards)
    return list(await asyncio.gather(*(async_rm(args, sample, **kwargs) for sample in samples)))

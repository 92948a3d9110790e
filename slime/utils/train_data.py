"""From rollout samples to per-data-parallel-rank training data (what the rollout manager sends each trainer).

torch is imported where tensors are made, not at the top: the driver imports this module (through the rollout
manager's) but never makes a tensor, and importing torch would add a second or more to every run's start-up.
"""

from __future__ import annotations

import logging
import numbers
import os
from argparse import Namespace
from typing import Any, Callable

from slime.utils.dp_schedule import build_dp_schedule, first_fit_pack
from slime.utils.misc import load_function
from slime.utils.types import Sample

logger = logging.getLogger(__name__)

# Keys with one entry per sample, sliced per rank; the rest are shared by the whole batch.
PER_SAMPLE_KEYS = (
    "tokens", "response_lengths", "loss_masks", "rewards", "raw_reward", "truncated", "sample_indices",
    "rollout_ids", "rollout_mask_sums", "rollout_log_probs", "total_lengths",
)


def assign_rollout_ids(samples: list[Sample]) -> list[int]:
    """Samples without a rollout id get the smallest unused integers, in order (SFT: 0..N-1)."""
    used = {s.rollout_id for s in samples if s.rollout_id is not None}
    ids, candidate = [], 0
    for sample in samples:
        if sample.rollout_id is not None:
            ids.append(sample.rollout_id)
            continue
        while candidate in used:
            candidate += 1
        ids.append(candidate)
        used.add(candidate)
    return ids


# What --custom-convert-samples-to-train-data-path must return at least (slime's contract).
REQUIRED_TRAIN_KEYS = ("tokens", "response_lengths", "rewards", "raw_reward", "truncated", "sample_indices",
                       "loss_masks")
# Estimators whose rewards are centred (and for GRPO-like ones scaled) within each prompt's group.
GROUP_NORMALISED_ESTIMATORS = ("grpo", "gspo", "cispo", "reinforce_plus_plus_baseline")
GROUP_STD_ESTIMATORS = ("grpo", "gspo", "cispo")


def post_process_rewards(args: Namespace, samples: list[Sample]) -> tuple[list[Any], list[float]]:
    """(raw rewards, rewards to train on): slime's group normalisation, or --custom-reward-post-process-path."""
    from slime.utils.ppo_utils import normalize_group_rewards  # imports torch (see the module's note)

    if getattr(args, "custom_reward_post_process_path", None):
        return load_function(args.custom_reward_post_process_path)(args, samples)
    raw = [s.get_reward_value(args) for s in samples]
    if args.advantage_estimator not in GROUP_NORMALISED_ESTIMATORS or not args.rewards_normalization:
        return raw, raw
    whole_groups = len(samples) == args.n_samples_per_prompt * args.rollout_batch_size
    group_size = args.n_samples_per_prompt if whole_groups else len(samples)
    std = args.advantage_estimator in GROUP_STD_ESTIMATORS and args.grpo_std_normalization
    return raw, normalize_group_rewards([float(r) for r in raw], group_size, std)


def save_debug_rollout_data(path: str, rollout_id: int, samples: list[Sample]) -> None:
    """`{"rollout_id", "samples": [sample.to_dict()]}`, written atomically (--save-debug-rollout-data)."""
    import torch

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save({"rollout_id": rollout_id, "samples": [s.to_dict() for s in samples]}, path + ".tmp")
    os.replace(path + ".tmp", path)


def load_debug_rollout_data(path: str, subsample: float | None = None) -> list[Sample]:
    """The samples saved by --save-debug-rollout-data; `subsample` keeps that fraction, half from each end."""
    import torch

    if not os.path.exists(path):
        raise FileNotFoundError(f"--load-debug-rollout-data: {path} does not exist")
    samples = [Sample.from_dict(d) for d in torch.load(path, weights_only=False)["samples"]]
    if subsample is not None:
        if not 0 < subsample <= 1:
            raise ValueError(f"--load-debug-rollout-data-subsample must be in (0, 1], got {subsample}")
        keep = max(1, int(len(samples) * subsample))
        samples = samples[: keep // 2] + samples[len(samples) - (keep - keep // 2):]
    logger.info("loaded %d saved samples from %s", len(samples), path)
    return samples


def convert_samples_to_train_data(args: Namespace, samples: list[Sample], rewards: list[float] | None = None,
                                  raw_rewards: list[Any] | None = None) -> dict:
    """Token lists, response-aligned loss masks, rewards and per-rollout mask sums (the per-rollout denominators).
    `rewards`/`raw_rewards` come from `post_process_rewards`; without them both are the samples' reward values."""
    loss_masks = []
    for sample in samples:
        mask = [1] * sample.response_length if sample.loss_mask is None else list(sample.loss_mask)
        if len(mask) != sample.response_length:
            raise ValueError(f"sample {sample.index}: loss_mask has {len(mask)} entries for a response of "
                             f"{sample.response_length} tokens")
        if sample.remove_sample:
            mask = [0] * len(mask)
        loss_masks.append(mask)
    raw = list(raw_rewards) if raw_rewards is not None else [s.get_reward_value(args) for s in samples]
    rollout_ids = assign_rollout_ids(samples)
    mask_totals: dict[int, int] = {}
    for rollout_id, mask in zip(rollout_ids, loss_masks):
        mask_totals[rollout_id] = mask_totals.get(rollout_id, 0) + sum(mask)
    data = {
        "tokens": [list(s.tokens) for s in samples],
        "response_lengths": [s.response_length for s in samples],
        "loss_masks": loss_masks,
        "rewards": list(rewards) if rewards is not None else raw,
        "raw_reward": raw,
        "truncated": [int(s.status == Sample.Status.TRUNCATED) for s in samples],
        "sample_indices": [s.index for s in samples],
        "rollout_ids": rollout_ids,
        "rollout_mask_sums": [mask_totals[r] for r in rollout_ids],
    }
    carried = [s.rollout_log_probs is not None for s in samples]
    if any(carried):
        if not all(carried):  # numpy would turn the missing ones into NaN rather than fail
            raise ValueError(f"{carried.count(False)} of {len(samples)} samples carry no rollout_log_probs while the "
                             "others do: a rollout function gives them for every sample or for none")
        data["rollout_log_probs"] = [s.rollout_log_probs for s in samples]
    return data


def take_samples(data: dict, indices: list[int]) -> dict[str, Any]:
    """The per-sample keys of `data`, restricted to `indices` (in that order)."""
    return {key: [data[key][i] for i in indices] for key in PER_SAMPLE_KEYS if key in data}


def split_train_data_by_dp(args: Namespace, data: dict, dp_size: int) -> list[dict[str, Any]]:
    """One dict per DP rank: its samples (in micro-batch order), its micro-batches per step, and shared keys."""
    data = dict(data)
    data["total_lengths"] = [len(t) for t in data["tokens"]]
    schedule = build_dp_schedule(
        data["total_lengths"],
        data["rollout_ids"],
        dp_size=dp_size,
        global_batch_size=args.global_batch_size,
        micro_batch_size=args.micro_batch_size,
        max_tokens_per_gpu=args.max_tokens_per_gpu if args.use_dynamic_batch_size else None,
        balance_data=args.balance_data,
    )
    if schedule.dropped_rollouts:
        logger.warning("%d rollouts do not fill a step of --global-batch-size %d and are not trained",
                       schedule.dropped_rollouts, args.global_batch_size)
    shards = []
    for rank in range(dp_size):
        partition: list[int] = []
        micro_batches: list[list[list[int]]] = []  # per step, per micro-batch: local indices
        for step in schedule.steps:
            step_batches = []
            for batch in step[rank]:
                step_batches.append(list(range(len(partition), len(partition) + len(batch))))
                partition.extend(batch)
            micro_batches.append(step_batches)
        shard = take_samples(data, partition)
        shard.update(
            partition=partition,
            micro_batches=micro_batches,
            global_batch_sizes=schedule.global_batch_sizes,
            raw_reward_all=data["raw_reward"],
        )
        shards.append(shard)
    return shards


def _convert_arrays(shard: dict[str, Any], convert: Callable[[Any, str], Any]) -> dict[str, Any]:
    """The shard with its token, mask and log-prob sequences, mask sums and numeric rewards passed through
    `convert(values, dtype name)`; raw rewards (possibly dicts) and the schedule stay as they are."""
    out = dict(shard)
    out["tokens"] = [convert(t, "int64") for t in shard["tokens"]]
    out["loss_masks"] = [convert(m, "int32") for m in shard["loss_masks"]]
    out["rollout_mask_sums"] = convert(shard["rollout_mask_sums"], "float32")
    rewards = shard.get("rewards")
    if rewards is not None and len(rewards) and all(isinstance(r, numbers.Real) for r in rewards):
        out["rewards"] = convert(rewards, "float32")  # the advantages' input (SFT samples carry no reward)
    if "rollout_log_probs" in shard:
        out["rollout_log_probs"] = [convert(x, "float32") for x in shard["rollout_log_probs"]]
    return out


def shard_arrays(shard: dict[str, Any]) -> dict[str, Any]:
    """The shard as it crosses Ray's object store: its sequences as numpy arrays, which Ray serialises as raw
    buffers (a tenth of the cost of torch tensors, whose pickling is per-storage) and reads without a copy."""
    import numpy as np

    return _convert_arrays(shard, lambda values, dtype: np.asarray(values, dtype=dtype))


def tensorize(shard: dict[str, Any]) -> dict[str, Any]:
    """The shard's arrays (or lists) as CPU tensors, for the trainer; a shard already in tensors is kept. Arrays
    are copied: one read from the object store is read-only memory."""
    import torch

    if shard["tokens"] and isinstance(shard["tokens"][0], torch.Tensor):
        return shard
    return _convert_arrays(shard, lambda values, dtype: torch.tensor(values, dtype=getattr(torch, dtype)))


def split_eval_data_by_dp(args: Namespace, data: dict, dp_size: int) -> list[dict[str, Any]]:
    """Held-out data for a forward-only pass: every sample used once (no step rounding), dealt round-robin,
    micro-batched like training."""
    if len(data["tokens"]) < dp_size:
        raise ValueError(f"an eval set of {len(data['tokens'])} samples cannot cover {dp_size} data-parallel ranks")
    data = dict(data)
    data["total_lengths"] = [len(t) for t in data["tokens"]]
    shards = []
    for rank in range(dp_size):
        mine = list(range(rank, len(data["tokens"]), dp_size))
        local = list(range(len(mine)))
        if args.use_dynamic_batch_size:
            lengths = [data["total_lengths"][i] for i in mine]
            batches = first_fit_pack(lengths, local, args.max_tokens_per_gpu)
        else:
            batches = [local[i : i + args.micro_batch_size] for i in range(0, len(local), args.micro_batch_size)]
        shard = take_samples(data, mine)
        shard.update(partition=mine, micro_batches=[batches], global_batch_sizes=[len(data["tokens"])])
        shards.append(shard)
    return shards

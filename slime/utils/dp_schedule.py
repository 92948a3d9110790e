"""How one rollout's samples become optimizer steps, micro-batches and data-parallel shards ("pack, then deal").

1. Samples are grouped by rollout id; each optimizer step takes the next `global_batch_size` rollouts. Rollouts
   that cannot fill a whole step are dropped (and counted), as in slime.
2. A step's samples are packed into micro-batches: by token budget (`--use-dynamic-batch-size`,
   `--max-tokens-per-gpu`; first fit, a sample longer than the budget sits alone) or in consecutive chunks of
   `--micro-batch-size`.
3. The micro-batch count is made a multiple of the DP size (the largest multi-sample micro-batch is split, or if
   none can be, the two smallest are merged), so every rank runs the same number of micro-batches.
4. Micro-batches are dealt to ranks round-robin, or with `--balance-data` so that ranks get similar token counts.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass


@dataclass
class DpSchedule:
    # steps[s][r] is the list of micro-batches of rank r in step s; a micro-batch lists global sample indices.
    steps: list[list[list[list[int]]]]
    global_batch_sizes: list[int]  # rollouts per step (the per-sample loss denominator)
    dropped_rollouts: int


def first_fit_pack(lengths: list[int], indices: list[int], budget: int) -> list[list[int]]:
    bins: list[list[int]] = []
    room: list[int] = []
    for index in indices:
        for b, free in enumerate(room):
            if lengths[index] <= free:
                bins[b].append(index)
                room[b] -= lengths[index]
                break
        else:
            bins.append([index])
            room.append(budget - lengths[index])
    return bins


def _split_in_two(bin_: list[int], lengths: list[int]) -> tuple[list[int], list[int]]:
    """Two halves of similar token count (longest-first greedy)."""
    halves: tuple[list[int], list[int]] = ([], [])
    totals = [0, 0]
    for index in sorted(bin_, key=lambda i: -lengths[i]):
        side = 0 if totals[0] <= totals[1] else 1
        halves[side].append(index)
        totals[side] += lengths[index]
    return sorted(halves[0]), sorted(halves[1])


def align_to_multiple(bins: list[list[int]], lengths: list[int], multiple: int) -> list[list[int]]:
    bins = [list(b) for b in bins]
    while len(bins) % multiple:
        splittable = [i for i, b in enumerate(bins) if len(b) > 1]
        if splittable:
            largest = max(splittable, key=lambda i: sum(lengths[j] for j in bins[i]))
            first, second = _split_in_two(bins.pop(largest), lengths)
            bins[largest:largest] = [first, second]
        else:
            order = sorted(range(len(bins)), key=lambda i: sum(lengths[j] for j in bins[i]))
            a, b = sorted(order[:2])
            bins[a] = sorted(bins[a] + bins[b])
            del bins[b]
    return bins


def deal_to_ranks(bins: list[list[int]], lengths: list[int], dp_size: int, balance: bool) -> list[list[list[int]]]:
    if not balance:
        return [bins[r::dp_size] for r in range(dp_size)]
    per_rank = len(bins) // dp_size
    ranks: list[list[list[int]]] = [[] for _ in range(dp_size)]
    heap = [(0, r) for r in range(dp_size)]
    for b in sorted(bins, key=lambda b: -sum(lengths[i] for i in b)):
        skipped = []
        load, rank = heapq.heappop(heap)
        while len(ranks[rank]) == per_rank:
            skipped.append((load, rank))
            load, rank = heapq.heappop(heap)
        ranks[rank].append(b)
        heapq.heappush(heap, (load + sum(lengths[i] for i in b), rank))
        for item in skipped:
            heapq.heappush(heap, item)
    # Keep each rank's micro-batches in sample order, so logs and dumps read naturally.
    return [sorted(r, key=lambda b: b[0]) for r in ranks]


def build_dp_schedule(
    total_lengths: list[int],
    rollout_ids: list[int],
    *,
    dp_size: int,
    global_batch_size: int,
    micro_batch_size: int = 1,
    max_tokens_per_gpu: int | None = None,
    balance_data: bool = False,
) -> DpSchedule:
    rollouts: dict[int, list[int]] = {}
    for index, rollout_id in enumerate(rollout_ids):
        rollouts.setdefault(rollout_id, []).append(index)
    groups = list(rollouts.values())
    num_steps = len(groups) // global_batch_size
    if num_steps == 0:
        raise ValueError(f"a rollout of {len(groups)} rollouts cannot fill one step of --global-batch-size "
                         f"{global_batch_size}")
    steps = []
    for s in range(num_steps):
        samples = [i for group in groups[s * global_batch_size : (s + 1) * global_batch_size] for i in group]
        if len(samples) < dp_size:
            raise ValueError(f"step {s} has {len(samples)} samples for {dp_size} data-parallel ranks")
        if max_tokens_per_gpu is not None:
            bins = first_fit_pack(total_lengths, samples, max_tokens_per_gpu)
            bins = align_to_multiple(bins, total_lengths, dp_size)
        else:
            if len(samples) % (dp_size * micro_batch_size):
                raise ValueError(f"step {s} has {len(samples)} samples, not a multiple of DP size x micro-batch size "
                                 f"= {dp_size} x {micro_batch_size}; use --use-dynamic-batch-size or change sizes")
            bins = [samples[i : i + micro_batch_size] for i in range(0, len(samples), micro_batch_size)]
        steps.append(deal_to_ranks(bins, total_lengths, dp_size, balance_data))
    return DpSchedule(
        steps=steps,
        global_batch_sizes=[global_batch_size] * num_steps,
        dropped_rollouts=len(groups) - num_steps * global_batch_size,
    )

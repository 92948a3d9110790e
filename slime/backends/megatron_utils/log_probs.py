"""Log-probabilities and entropies over a (tensor-parallel) vocabulary, chunked so memory stays bounded.

The plain path (`log_softmax` + gather, `softmax * log_softmax` for the entropy) materialises several
tokens-by-vocabulary fp32 tensors and keeps them for the backward pass: 5.6 GB each for a 9,216-token micro-batch at
Qwen3's 151,936 vocabulary. `vocab_parallel_log_probs` computes the same values with a custom autograd function:

- forward: for each chunk of positions, upcast that chunk of logits to fp32, divide by the temperature, and keep only
  three numbers per position (log-sum-exp, target logit, and for the entropy the expected logit). Nothing of
  vocabulary width outlives the chunk.
- backward: recompute the softmax of each chunk from the saved logits and the saved log-sum-exp and write that
  chunk's gradient straight into the logits' gradient (no one-hot, no second full-width softmax).

Only the positions asked for (the response positions) are computed: prompt and padding positions cost nothing and
get a zero gradient, as they do in the plain path. With tensor parallelism each rank holds a slice of the vocabulary;
the row maximum and the three sums are all-reduced over the tensor-parallel group per chunk, and the backward needs
no communication (each rank's slice of the gradient depends only on the reduced sums), as in Megatron's
vocab-parallel cross-entropy.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from slime.utils.memory_estimate import LOG_PROBS_CHUNK_BYTES


def chunk_rows(vocab_shard: int, requested: int | None = None) -> int:
    """Positions per chunk: `requested` (slime's --log-probs-chunk-size) when positive, else as many as fit in
    LOG_PROBS_CHUNK_BYTES of fp32; a chunk needs about three such buffers at once (the upcast logits, their
    exponentials and a product), so the transient memory is bounded whatever the micro-batch size."""
    if requested is not None and requested > 0:
        return requested
    return max(1, LOG_PROBS_CHUNK_BYTES // (4 * max(vocab_shard, 1)))


def _plan_chunks(rows: torch.Tensor, size: int) -> list[tuple[int, int, int | None]]:
    """(first, last + 1, start row) for each chunk of `rows` (ascending, on the host); the start row is set when the
    chunk's positions are consecutive, so the chunk is a slice of the logits rather than a gather."""
    plan = []
    for first in range(0, rows.numel(), size):
        last = min(first + size, rows.numel())
        lo, hi = int(rows[first]), int(rows[last - 1])
        plan.append((first, last, lo if hi - lo == last - first - 1 else None))
    return plan


def _chunk_logits(logits: torch.Tensor, rows: torch.Tensor, chunk: tuple[int, int, int | None], temperature: float,
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """The chunk's logits divided by the temperature, in fp32 (or wider), in a buffer the caller may overwrite
    (`out` when given): the logits themselves are never modified."""
    first, last, start = chunk
    wide = torch.promote_types(logits.dtype, torch.float32)
    if start is None:
        part, owned = logits.index_select(0, rows[first:last]), logits.dtype == wide
    else:
        part, owned = logits[start : start + last - first], False
    if out is not None:
        return torch.div(part, temperature, out=out) if temperature != 1.0 else out.copy_(part)
    if not owned:
        return part.to(wide, copy=True).div_(temperature) if temperature != 1.0 else part.to(wide, copy=True)
    return part.div_(temperature) if temperature != 1.0 else part


class _VocabParallelLogProbs(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, rows_host: torch.Tensor, rows: torch.Tensor, targets: torch.Tensor,
                gaps: list[tuple[int, int]], vocab_start: int, temperature: float, with_entropy: bool, size: int,
                group: Any) -> tuple[torch.Tensor, ...]:
        vocab_shard = logits.shape[-1]
        local = targets - vocab_start
        in_shard = (local >= 0) & (local < vocab_shard)
        local = torch.where(in_shard, local, torch.zeros_like(local))
        n = rows.numel()
        dtype = torch.promote_types(logits.dtype, torch.float32)
        log_sum_exp = torch.empty(n, dtype=dtype, device=logits.device)
        target_logit = torch.empty(n, dtype=dtype, device=logits.device)
        expected = torch.empty(n, dtype=dtype, device=logits.device) if with_entropy else None
        plan = _plan_chunks(rows_host, size)
        for chunk in plan:
            first, last, _ = chunk
            x = _chunk_logits(logits, rows, chunk, temperature)
            row_max = x.max(dim=-1).values
            if group is not None:
                dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=group)
            picked = x.gather(-1, local[first:last].unsqueeze(-1)).squeeze(-1) * in_shard[first:last]
            x.sub_(row_max.unsqueeze(-1))
            if with_entropy:
                exp = x.exp()
                sums = torch.stack([exp.sum(dim=-1), picked, exp.mul_(x).sum(dim=-1)])  # third: sum e^(x-m) (x-m)
            else:
                sums = torch.stack([x.exp_().sum(dim=-1), picked])
            if group is not None:
                dist.all_reduce(sums, group=group)
            log_sum_exp[first:last] = row_max + sums[0].log()
            target_logit[first:last] = sums[1]
            if with_entropy:
                expected[first:last] = row_max + sums[2] / sums[0]
        ctx.save_for_backward(logits, rows, local, in_shard, log_sum_exp, *((expected,) if with_entropy else ()))
        ctx.plan, ctx.gaps, ctx.temperature, ctx.with_entropy = plan, gaps, temperature, with_entropy
        log_probs = target_logit - log_sum_exp
        return (log_probs, log_sum_exp - expected) if with_entropy else (log_probs,)

    @staticmethod
    def backward(ctx: Any, grad_log_probs: torch.Tensor, grad_entropy: torch.Tensor | None = None) -> tuple:
        logits, rows, local, in_shard, log_sum_exp, *rest = ctx.saved_tensors
        grad = torch.empty_like(logits)
        for start, end in ctx.gaps:  # prompts and padding get no gradient, as in the plain path
            grad[start:end].zero_()
        for chunk in ctx.plan:
            first, last, start = chunk
            # Computed in place in the gradient's own rows when they can hold fp32 and are contiguous.
            direct = start is not None and grad.dtype == torch.promote_types(grad.dtype, torch.float32)
            x = _chunk_logits(logits, rows, chunk, ctx.temperature,
                              out=grad[start : start + last - first] if direct else None)
            lse = log_sum_exp[first:last].unsqueeze(-1)
            g_lp = grad_log_probs[first:last].unsqueeze(-1)
            # d log p(t) / dx = onehot(t) - p;  d entropy / dx = -p * (x - E_p[x])
            if ctx.with_entropy:
                p = (x - lse).exp_()
                g = x.sub_(rest[0][first:last].unsqueeze(-1)).mul_(grad_entropy[first:last].unsqueeze(-1))
                g = g.add_(g_lp).mul_(p).neg_()
            else:
                g = x.sub_(lse).exp_().mul_(g_lp).neg_()
            g.scatter_add_(-1, local[first:last].unsqueeze(-1), (g_lp.squeeze(-1) * in_shard[first:last]).unsqueeze(-1))
            if ctx.temperature != 1.0:
                g.div_(ctx.temperature)
            if direct:
                continue
            if start is not None:
                grad[start : start + last - first] = g
            else:
                grad.index_copy_(0, rows[first:last], g.to(grad.dtype))
        return grad, None, None, None, None, None, None, None, None, None


def vocab_parallel_log_probs(
    logits: torch.Tensor, rows: list[tuple[int, int]], targets: torch.Tensor, temperature: float = 1.0,
    with_entropy: bool = False, chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(target) (and the entropy) at the positions of `rows`, for logits sharded over the tensor-parallel
    vocabulary. Differentiable with respect to `logits`.

    logits: [tokens, vocab / TP] in any float dtype (computed in fp32); rows: [start, end) position ranges, ascending
    and disjoint; targets: [tokens], the target token of every position (global vocabulary ids).
    Returns fp32 tensors with one value per selected position, in the order of `rows`.
    """
    rows = [(s, e) for s, e in rows if e > s]
    rows_host = torch.cat([torch.arange(s, e) for s, e in rows]) if rows else torch.zeros(0, dtype=torch.long)
    if rows_host.numel() == 0:
        empty = logits.new_zeros(0, dtype=torch.promote_types(logits.dtype, torch.float32))
        return empty, (empty if with_entropy else None)
    rows_device = rows_host.to(logits.device, non_blocking=True)
    tp = parallel_state.get_tensor_model_parallel_world_size()
    group = parallel_state.get_tensor_model_parallel_group() if tp > 1 else None
    vocab_start = parallel_state.get_tensor_model_parallel_rank() * logits.shape[-1]
    size = chunk_rows(logits.shape[-1], chunk_size)
    ends = [0] + [e for _, e in rows]
    gaps = [(a, b) for a, b in zip(ends, [s for s, _ in rows] + [logits.shape[0]]) if b > a]
    outputs = _VocabParallelLogProbs.apply(logits, rows_host, rows_device, targets[rows_device], gaps, vocab_start,
                                           temperature, with_entropy, size, group)
    return outputs[0], (outputs[1] if with_entropy else None)

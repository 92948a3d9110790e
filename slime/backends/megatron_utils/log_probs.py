"""Log-probabilities and entropies over a (tensor-parallel) vocabulary, chunked so memory stays bounded.

The plain path (`log_softmax` + gather, `softmax * log_softmax` for the entropy) materialises several
tokens-by-vocabulary fp32 tensors and keeps them for the backward pass: 5.6 GB each for a 9,216-token micro-batch at
Qwen3's 151,936 vocabulary. `vocab_parallel_log_probs` computes the same values with a custom autograd function:

- forward: for each chunk of positions, upcast that chunk of logits to fp32, divide by the temperature, and keep only
  three numbers per position (log-sum-exp, target logit, and for the entropy the expected logit). Nothing of
  vocabulary width outlives the chunk, with one exception below.
- backward: recompute the softmax of each chunk from the saved logits and the saved log-sum-exp and write that
  chunk's gradient straight into the logits' gradient (no one-hot, no second full-width softmax).
- exception, log-probs of fp32 logits with a backward to come (SFT on CPU, or an fp32 GPU run): the logits'
  gradient buffer, which the backward needs anyway, is allocated in the forward and each contiguous chunk's
  exp(x - max) is computed in its rows and left there (without tensor parallelism, the softmax itself, by torch's
  fused kernel); the backward then only scales the rows by -grad / sum(exp) (-grad for the softmax) and adds the
  target's term: one exponential per logit instead of two, one pass instead of three,
  and the logits need not be kept for the backward. Peak memory is unchanged (logits plus gradient, as in the
  backward). bf16 logits (an fp32 buffer would double their memory) and the entropy keep the recompute.

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


def _chunk_logits(logits: torch.Tensor, rows: torch.Tensor, chunk: tuple[int, int, int | None],
                  temperature: float) -> tuple[torch.Tensor, bool]:
    """The chunk's logits divided by the temperature, in fp32 (or wider), and whether that tensor is a buffer of its
    own the caller may overwrite. Wide logits at temperature 1 come back as a view of the logits themselves (read
    only): copying them first would cost a pass over the chunk's memory for nothing."""
    first, last, start = chunk
    wide = torch.promote_types(logits.dtype, torch.float32)
    if start is None:
        part, owned = logits.index_select(0, rows[first:last]), True
    else:
        part, owned = logits[start : start + last - first], False
    if part.dtype != wide:
        part, owned = part.to(wide), True
    if temperature != 1.0:
        return (part.div_(temperature) if owned else part.div(temperature)), True
    return part, owned


# Below this probability of the target, its log is taken from an exact log-sum-exp instead of the softmax's value
# (which loses precision in fp32's subnormal range, under ~1e-38).
_SOFTMAX_LOG_FLOOR = 1e-30


def _softmax_in_place(x: torch.Tensor, targets: torch.Tensor, out: torch.Tensor, log_sum_exp: torch.Tensor,
                      target_logit: torch.Tensor) -> None:
    """The kept softmax of a whole-vocabulary chunk in one fused kernel: `out` gets softmax(x) (the backward then only
    scales it), `target_logit` the target's logit and `log_sum_exp` its log-sum-exp, taken as x_t - log p_t, exact
    to float rounding while p_t is a normal float. torch's softmax kernel makes about two passes over each row while
    it is in cache (max, then exponentials and their sum, then the scale), where a max, a shift, an exponential and
    a sum over the chunk made four passes through memory (here 8 ms against 17 ms for 136 x 151,936 fp32 logits)."""
    torch.softmax(x, -1, out=out)
    picked = x.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    target_p = out.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    log_sum_exp.copy_(picked - target_p.log())
    tiny = (target_p < _SOFTMAX_LOG_FLOOR).nonzero().squeeze(-1)
    if tiny.numel():  # rare: a target the model all but rules out
        log_sum_exp[tiny] = torch.logsumexp(x.index_select(0, tiny), dim=-1)
    target_logit.copy_(picked)


class _VocabParallelLogProbs(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, rows_host: torch.Tensor, rows: torch.Tensor, targets: torch.Tensor,
                gaps: list[tuple[int, int]], vocab_start: int, temperature: float, with_entropy: bool, size: int,
                group: Any, will_backward: bool) -> tuple[torch.Tensor, ...]:
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
        # Kept softmax (log-probs of wide logits, a backward to come): the gradient's buffer is allocated now and
        # each contiguous chunk's exp(x - max) is left in its rows (normalised, without tensor parallelism), so the
        # backward only scales them.
        grad = torch.empty_like(logits) if will_backward and not with_entropy and logits.dtype == dtype else None
        exp_sum = torch.empty(n, dtype=dtype, device=logits.device) if grad is not None else None
        for chunk in plan:
            first, last, start = chunk
            x, owned = _chunk_logits(logits, rows, chunk, temperature)
            if grad is not None and start is not None and group is None:
                _softmax_in_place(x, local[first:last], grad[start : start + last - first],
                                  log_sum_exp[first:last], target_logit[first:last])
                exp_sum[first:last] = 1.0  # the kept rows hold the normalised softmax
                continue
            row_max = x.amax(dim=-1)
            if group is not None:
                dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=group)
            picked = x.gather(-1, local[first:last].unsqueeze(-1)).squeeze(-1) * in_shard[first:last]
            if grad is not None and start is not None:
                shifted = torch.sub(x, row_max.unsqueeze(-1), out=grad[start : start + last - first])
            else:
                shifted = x.sub_(row_max.unsqueeze(-1)) if owned else x - row_max.unsqueeze(-1)
            if with_entropy:
                exp = shifted.exp()
                sums = torch.stack([exp.sum(dim=-1), picked, exp.mul_(shifted).sum(dim=-1)])  # third: sum e^s s
            else:
                sums = torch.stack([shifted.exp_().sum(dim=-1), picked])
            if group is not None:
                dist.all_reduce(sums, group=group)
            log_sum_exp[first:last] = row_max + sums[0].log()
            target_logit[first:last] = sums[1]
            if with_entropy:
                expected[first:last] = row_max + sums[2] / sums[0]
            if exp_sum is not None:
                exp_sum[first:last] = sums[0]
        # The logits are read again only by chunks whose softmax was not kept.
        recomputes = grad is None or any(start is None for _, _, start in plan)
        ctx.save_for_backward(logits if recomputes else None, rows, local, in_shard, log_sum_exp,
                              *((expected,) if with_entropy else ()))
        ctx.plan, ctx.gaps, ctx.temperature, ctx.with_entropy = plan, gaps, temperature, with_entropy
        ctx.grad, ctx.exp_sum, ctx.kept = grad, exp_sum, grad is not None
        log_probs = target_logit - log_sum_exp
        return (log_probs, log_sum_exp - expected) if with_entropy else (log_probs,)

    @staticmethod
    def backward(ctx: Any, grad_log_probs: torch.Tensor, grad_entropy: torch.Tensor | None = None) -> tuple:
        logits, rows, local, in_shard, log_sum_exp, *rest = ctx.saved_tensors
        if ctx.kept and ctx.grad is None:
            raise RuntimeError("the fused log-prob's backward ran twice: its buffer became the first gradient")
        grad = ctx.grad if ctx.kept else torch.empty_like(logits)
        ctx.grad = None
        for start, end in ctx.gaps:  # prompts and padding get no gradient, as in the plain path
            grad[start:end].zero_()
        for chunk in ctx.plan:
            first, last, start = chunk
            g_lp = grad_log_probs[first:last].unsqueeze(-1)
            # d log p(t) / dx = onehot(t) - p;  d entropy / dx = -p * (x - E_p[x]); x = logits / temperature
            if ctx.kept and start is not None:  # p = exp(x - max) / sum, the exponentials already in place
                g = grad[start : start + last - first]
                g.mul_(g_lp.div(ctx.exp_sum[first:last].unsqueeze(-1) * -ctx.temperature))
                g.scatter_add_(-1, local[first:last].unsqueeze(-1),
                               (g_lp.squeeze(-1) * in_shard[first:last] / ctx.temperature).unsqueeze(-1))
                continue
            x, owned = _chunk_logits(logits, rows, chunk, ctx.temperature)
            lse = log_sum_exp[first:last].unsqueeze(-1)
            # Written straight into the gradient's rows when they are contiguous and can hold fp32; otherwise
            # into the chunk's own buffer when it has one (x is not read again without the entropy).
            direct = start is not None and grad.dtype == torch.promote_types(grad.dtype, torch.float32)
            out = grad[start : start + last - first] if direct else (x if owned and not ctx.with_entropy else None)
            p = torch.sub(x, lse, out=out).exp_() if out is not None else (x - lse).exp_()
            if ctx.with_entropy:
                weight = x.sub_(rest[0][first:last].unsqueeze(-1)) if owned else x - rest[0][first:last].unsqueeze(-1)
                g = p.mul_(weight.mul_(grad_entropy[first:last].unsqueeze(-1)).add_(g_lp)).neg_()
            else:
                g = p.mul_(g_lp.neg())
            g.scatter_add_(-1, local[first:last].unsqueeze(-1), (g_lp.squeeze(-1) * in_shard[first:last]).unsqueeze(-1))
            if ctx.temperature != 1.0:
                g.div_(ctx.temperature)
            if direct:
                continue
            if start is not None:
                grad[start : start + last - first] = g
            else:
                grad.index_copy_(0, rows[first:last], g.to(grad.dtype))
        return grad, None, None, None, None, None, None, None, None, None, None


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
                                           temperature, with_entropy, size, group,
                                           torch.is_grad_enabled() and logits.requires_grad)
    return outputs[0], (outputs[1] if with_entropy else None)

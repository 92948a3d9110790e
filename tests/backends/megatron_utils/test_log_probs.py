"""The fused, chunked log-prob / entropy equals the plain full-vocabulary path (values and gradients), at TP=1
in-process and TP=2 in two gloo processes, and never materialises a tokens-by-vocabulary fp32 tensor."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from slime.utils.misc import free_port
from slime.backends.megatron_utils.log_probs import chunk_rows, vocab_parallel_log_probs

from megatron_helpers import plain_log_probs

pytestmark = pytest.mark.usefixtures("megatron_world")
ROWS = [(0, 7), (9, 10), (14, 30)]  # non-contiguous response spans, one of a single position


def case(dtype, tokens=32, vocab=50, seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = (torch.randn(tokens, vocab, generator=generator, dtype=torch.float64) * 3).to(dtype)
    targets = torch.randint(0, vocab, (tokens,), generator=generator)
    n = sum(e - s for s, e in ROWS)
    upstream = torch.randn(2, n, generator=generator, dtype=torch.float64)
    return logits, targets, upstream


def fused_and_plain(logits, targets, upstream, rows=ROWS, temperature=1.0, chunk=None, with_entropy=True):
    fused_in = logits.clone().requires_grad_()
    log_probs, entropy = vocab_parallel_log_probs(fused_in, rows, targets, temperature, with_entropy, chunk)
    loss = (log_probs * upstream[0].to(log_probs)).sum()
    if with_entropy:
        loss = loss + (entropy * upstream[1].to(entropy)).sum()
    loss.backward()
    plain_in = logits.clone().requires_grad_()
    ref_log_probs, ref_entropy = plain_log_probs(plain_in, rows, targets, temperature)
    ref_loss = (ref_log_probs * upstream[0].to(ref_log_probs)).sum()
    if with_entropy:
        ref_loss = ref_loss + (ref_entropy * upstream[1].to(ref_entropy)).sum()
    ref_loss.backward()
    return (log_probs, entropy, fused_in.grad), (ref_log_probs, ref_entropy, plain_in.grad)


@pytest.mark.parametrize("temperature", [1.0, 0.6])
@pytest.mark.parametrize("chunk", [None, 1, 4])
@pytest.mark.parametrize("with_entropy", [True, False], ids=["entropy", "log_probs_only"])
def test_equals_plain_path_in_fp64_and_fp32(temperature, chunk, with_entropy):
    # Log-probs only, the wide logits' softmax is kept from the forward in the gradient's buffer (contiguous
    # chunks) and recomputed for the others; with the entropy every chunk is recomputed.
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 2e-6)):
        logits, targets, upstream = case(dtype)
        (lp, ent, grad), (ref_lp, ref_ent, ref_grad) = fused_and_plain(logits, targets, upstream,
                                                                      temperature=temperature, chunk=chunk,
                                                                      with_entropy=with_entropy)
        assert lp.dtype == torch.promote_types(dtype, torch.float32) and (lp - ref_lp).abs().max() < tol
        if with_entropy:
            assert ent.dtype == lp.dtype and (ent - ref_ent).abs().max() < tol
        assert (grad - ref_grad).abs().max() < tol
        outside = torch.ones(logits.shape[0], dtype=torch.bool)
        for s, e in ROWS:
            outside[s:e] = False
        assert grad[outside].abs().sum() == 0  # prompts and padding get no gradient


def test_log_probs_only_and_every_position():
    logits, targets, upstream = case(torch.float32)
    every = [(0, logits.shape[0])]
    upstream = torch.randn(2, logits.shape[0], dtype=torch.float64)
    for rows in (ROWS, every):
        n = sum(e - s for s, e in rows)
        (lp, ent, grad), (ref_lp, _, ref_grad) = fused_and_plain(logits, targets, upstream[:, :n], rows=rows,
                                                                 chunk=3, with_entropy=False)
        assert ent is None
        assert (lp - ref_lp).abs().max() < 2e-6 and (grad - ref_grad).abs().max() < 2e-6


@pytest.mark.parametrize("gap", [20.0, 80.0, 120.0, 300.0])
def test_targets_far_in_the_tail_keep_exact_log_probs(gap):
    """The kept softmax of fp32 logits takes log p from the softmax's value; a target whose probability underflows
    fp32 (log p below about -87; -300 here) still gets x_t - logsumexp(x) and its gradient, as the plain path does."""
    logits, targets, _ = case(torch.float32)
    rows = [(2, 30)]  # contiguous: the chunks' softmax is kept
    upstream = torch.randn(2, 28, dtype=torch.float64)
    for row in range(2, 30, 2):  # every other target sits `gap` below its row's largest logit
        logits[row, targets[row]] = logits[row].max() - gap
    for chunk in (None, 5):
        (lp, _, grad), (ref_lp, _, ref_grad) = fused_and_plain(logits, targets, upstream, rows=rows, chunk=chunk,
                                                              with_entropy=False)
        assert lp.min() < -gap + 1 and torch.isfinite(lp).all()
        assert (lp - ref_lp).abs().max() < 5e-6 * gap and (grad - ref_grad).abs().max() < 2e-6


def test_bf16_logits_are_computed_in_fp32():
    logits, targets, upstream = case(torch.bfloat16)
    (lp, ent, grad), (ref_lp, ref_ent, ref_grad) = fused_and_plain(logits, targets, upstream, chunk=5)
    assert lp.dtype == torch.float32 and grad.dtype == torch.bfloat16
    assert (lp - ref_lp).abs().max() < 2e-6 and (ent - ref_ent).abs().max() < 2e-6
    # The plain path's gradient is fp32 then rounded to bf16; ours is rounded once from the same fp32 values.
    assert torch.allclose(grad.float(), ref_grad.float(), rtol=1e-2, atol=1e-3)


def test_a_kept_softmax_is_not_backpropagated_twice():
    logits, targets, _ = case(torch.float32)
    logits.requires_grad_()
    log_probs, _ = vocab_parallel_log_probs(logits, [(0, 12)], targets)
    log_probs.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        log_probs.sum().backward()


def test_empty_selection():
    logits = torch.randn(5, 7, requires_grad=True)
    log_probs, entropy = vocab_parallel_log_probs(logits, [], torch.zeros(5, dtype=torch.long), with_entropy=True)
    assert log_probs.numel() == 0 and entropy.numel() == 0


class LargestFloatOutput(TorchDispatchMode):
    """The largest fp32 tensor any operation produces (what a tokens-by-vocabulary fp32 buffer would show up as)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.dtype == torch.float32:
                self.largest = max(self.largest, t.numel())
        return out


def test_memory_is_bounded_by_the_chunk():
    tokens, vocab, chunk = 64, 300, 4
    logits = torch.randn(tokens, vocab).bfloat16().requires_grad_()
    targets = torch.randint(0, vocab, (tokens,))
    rows = [(0, tokens)]
    with LargestFloatOutput() as fused:
        log_probs, entropy = vocab_parallel_log_probs(logits, rows, targets, 0.8, True, chunk)
        (log_probs.sum() + entropy.sum()).backward()
    assert fused.largest <= chunk * vocab
    with LargestFloatOutput() as plain:
        ref_log_probs, ref_entropy = plain_log_probs(logits, rows, targets, 0.8)
        (ref_log_probs.sum() + ref_entropy.sum()).backward()
    assert plain.largest >= tokens * vocab  # what the chunking avoids


def test_chunk_size_follows_the_memory_budget():
    rows = chunk_rows(151936)
    assert 100 <= rows <= 1000  # Qwen3's vocabulary: a few hundred positions per chunk
    assert chunk_rows(151936 // 8) == 8 * rows or abs(chunk_rows(151936 // 8) - 8 * rows) <= 8
    assert chunk_rows(151936, requested=17) == 17


@pytest.mark.slow
def test_tensor_parallel_equals_full_vocabulary(tmp_path):
    worker = Path(__file__).with_name("log_probs_worker.py")
    out, port = tmp_path / "result.pt", free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    processes = [subprocess.Popen([sys.executable, str(worker), "--rank", str(rank), "--world-size", "2", "--port",
                                   str(port), "--out", str(out)], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for rank in range(2)]
    logs = [p.communicate(timeout=300)[0] for p in processes]
    for p, log in zip(processes, logs):
        assert p.returncode == 0, log[-3000:]
    results = torch.load(out)
    assert len(results) == 3
    for name, errors in results.items():
        tol = 1e-12 if name.startswith("torch.float64") else 2e-6
        assert errors["log_probs"] < tol and errors["entropy"] < tol, (name, errors)
        assert errors["grad"] < tol and errors["grad_scale"] > 1e-3, (name, errors)

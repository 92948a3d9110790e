"""Bridges over Megatron-core's CUDA-only spots, applied only on a machine without a GPU.

Each bridge is one small replacement, and each is tested (tests/backends/megatron_utils/test_cpu_bridges.py):

1. RNG: Megatron's model-parallel RNG tracker reads and writes CUDA generator states. On CPU it uses the CPU
   generator, so dropout still gets distinct, reproducible streams per tensor-parallel rank.
2. `torch.cuda.current_device()` (rotary embeddings, gradient buffers) answers "cpu".
3. The default causal mask (used only for unpacked input without a mask) is built on the CPU.
4. Optimizer and schedule code (gradient scaler, grad-norm clipping, token counters, distributed-optimizer
   type checks) writes `device="cuda"` literally; `cuda_literals_on_cpu()` maps that to the CPU for the span of
   those calls only, rather than for the whole process.
5. Grad-norm clipping scales the gradients with Apex/TE's CUDA `multi_tensor_scale`; Megatron's pure-torch stand-in
   writes `src * scale` into a temporary and copies it back. Clipping scales the gradients in place (the source
   lists are the destination lists), which here is one pass over them with no temporary.
6. Memory: on a GPU, PyTorch's caching allocator hands a step's logits, gradients and temporaries the memory the
   previous step freed. On the CPU, glibc serves every allocation over 32 MB with a fresh mmap and unmaps it when
   freed, so each step touches new pages: a small model with Qwen3's vocabulary page-faults ~1.6 GB per step (0.5-2
   ms per MB on a loaded 2-core VM). Large allocations come from the heap instead, and freed memory stays in the
   process for the next step (glibc's M_MMAP_MAX and M_TRIM_THRESHOLD): the trainer's resident memory stays at its
   peak, as a GPU trainer's reserved memory does.
7. Data-parallel size 1 with the distributed optimizer: the gradients' reduce-scatter and the parameters' all-gather
   run over a one-rank group with the output a view of the input (the rank's shard is the whole buffer), and the
   fp32 main parameters, views of the model's own, are copied onto themselves after each step. Gloo still copies
   each buffer and waits; here a collective over one rank whose output is its input, and a copy of a tensor onto its
   own memory, return at once (0.166 -> 0.134 s per step on a 9.8M-parameter model, issue 12's shape). Results are
   bit-identical (tested).
"""

from __future__ import annotations

import contextlib
import ctypes
from typing import Any, Callable, Iterator

import torch
from torch.overrides import TorchFunctionMode

from slime.utils.device import has_gpu

_APPLIED = False
_CUDA_TENSOR_TYPES = {
    "torch.FloatTensor": "torch.cuda.FloatTensor",
    "torch.BFloat16Tensor": "torch.cuda.BFloat16Tensor",
    "torch.HalfTensor": "torch.cuda.HalfTensor",
}


def _cpu_causal_mask(sq: int, skv: int | None = None) -> torch.Tensor:
    skv = sq if skv is None else skv
    return torch.triu(torch.ones(sq, skv, dtype=torch.bool), diagonal=1)


def _multi_tensor_scale(chunk_size: int, noop_flag: torch.Tensor, tensor_lists: list[list[torch.Tensor]],
                        scale: float) -> None:
    """amp_C.multi_tensor_scale's contract (destinations = sources * scale), in place when they are the same."""
    for source, destination in zip(*tensor_lists):
        if destination is source:
            destination.mul_(scale)
        else:
            destination.copy_(source * scale)


def _same_memory(a: torch.Tensor, b: Any) -> bool:
    """Whether `b` is a tensor reading exactly `a`'s elements (not merely overlapping them)."""
    return (isinstance(b, torch.Tensor) and a.device == b.device and a.data_ptr() == b.data_ptr()
            and a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride()
            and a.is_conj() == b.is_conj() and a.is_neg() == b.is_neg())


def _skipping_one_rank_in_place(collective: Callable) -> Callable:
    """A reduce-scatter / all-gather (output, input, ...) that returns at once over one rank when the output is the
    input: summing, averaging or gathering one rank's data leaves it as it is."""

    def call(output: torch.Tensor, input: torch.Tensor, *args: Any, group: Any = None, async_op: bool = False,
             **kwargs: Any) -> Any:
        if _same_memory(output, input) and torch.distributed.get_world_size(group) == 1:
            return None
        return call.__wrapped__(output, input, *args, group=group, async_op=async_op, **kwargs)

    call.__wrapped__ = collective
    return call


def _keep_freed_memory() -> None:
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's C library
    except (OSError, AttributeError):
        return  # no mallopt (not glibc): allocation stays the C library's default
    m_trim_threshold, m_mmap_max = -1, -4
    mallopt(m_mmap_max, 0)
    mallopt(m_trim_threshold, 2**31 - 1)


def apply_cpu_bridges() -> bool:
    """Install the bridges when there is no GPU (idempotent). Returns whether they are installed."""
    global _APPLIED
    if has_gpu():
        return False
    if _APPLIED:
        return True
    import megatron.core.distributed.param_and_grad_buffer as grad_buffer
    import megatron.core.fusions.fused_softmax as fused_softmax
    import megatron.core.optimizer.clip_grads as clip_grads
    import megatron.core.tensor_parallel.random as megatron_random
    import megatron.core.transformer.utils as transformer_utils

    torch.cuda.manual_seed = torch.manual_seed
    torch.cuda.get_rng_state = lambda device="cuda": torch.get_rng_state()
    megatron_random._get_cuda_rng_state = lambda device=None, clone=False, graph_safe=False: torch.get_rng_state()
    megatron_random._set_cuda_rng_state = lambda state, device=-1, graph_safe=False: torch.set_rng_state(state)
    torch.cuda.current_device = lambda: "cpu"
    torch.cuda.empty_cache = lambda: None
    torch.cuda.synchronize = lambda device=None: None
    transformer_utils.get_default_causal_mask = _cpu_causal_mask
    fused_softmax.get_default_causal_mask = _cpu_causal_mask
    clip_grads.multi_tensor_scale_impl = _multi_tensor_scale
    grad_buffer.dist_reduce_scatter_func = _skipping_one_rank_in_place(grad_buffer.dist_reduce_scatter_func)
    grad_buffer.dist_all_gather_func = _skipping_one_rank_in_place(grad_buffer.dist_all_gather_func)
    _keep_freed_memory()
    _APPLIED = True
    return True


class CudaLiteralsToCpu(TorchFunctionMode):
    """Maps `device="cuda"` (or an integer device) to the CPU, `.cuda()` to a no-op, and reports CPU tensors'
    `.type()` as the CUDA type Megatron's distributed optimizer checks for."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = dict(kwargs or {})
        target = kwargs.get("device")
        if target is not None and (str(target).startswith("cuda") or isinstance(target, int)):
            kwargs["device"] = "cpu"
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.copy_ and len(args) == 2 and _same_memory(args[0], args[1]):
            return args[0]  # the distributed optimizer's fp32 main parameters are views of the model's
        result = func(*args, **kwargs)
        if func is torch.Tensor.type and len(args) == 1 and not kwargs and isinstance(result, str):
            return _CUDA_TENSOR_TYPES.get(result, result)
        return result


@contextlib.contextmanager
def cuda_literals_on_cpu() -> Iterator[None]:
    """Wrap Megatron optimizer/schedule calls; a no-op on GPU."""
    if has_gpu():
        yield
        return
    with CudaLiteralsToCpu():
        yield

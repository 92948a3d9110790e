"""Every CPU/GPU difference of the trainer, in one place.

The same modules run on both: this file says which device, dtype and collective backend to use. Megatron-core
itself assumes CUDA in a few spots; `slime.backends.megatron_utils.cpu_bridges` covers those when no GPU is present.
"""

from __future__ import annotations

import logging
from argparse import Namespace

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


def has_gpu() -> bool:
    return torch.cuda.is_available()


def device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if has_gpu() else torch.device("cpu")


def dist_backend(args: Namespace | None = None) -> str:
    """gloo on CPU; on GPU the --distributed-backend flag (nccl by default)."""
    if not has_gpu():
        return "gloo"
    return getattr(args, "distributed_backend", "nccl") if args is not None else "nccl"


def params_dtype(args: Namespace) -> torch.dtype:
    """bf16 (or fp16) on GPU as slime trains; fp32 on CPU, where bf16 matmuls are 20-50x slower."""
    if not has_gpu():
        return torch.float32
    if args.fp16:
        return torch.float16
    return torch.bfloat16 if args.bf16 else torch.float32


def reduce_on_device(values: torch.Tensor, group: dist.ProcessGroup | None,
                     op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> torch.Tensor:
    """All-reduce metric or count values over `group` and return them on the host.

    Every metric and count reduction of the trainer goes through here. The tensor is placed on this process's device
    first: a group created on a GPU machine uses NCCL, which serves only CUDA tensors ("No backend type associated
    with device type cpu"), while gloo on CPU takes CPU tensors. One device-to-host copy brings the result back.
    """
    values = values.to(device())
    if group is not None and dist.get_world_size(group) > 1:
        dist.all_reduce(values, op=op, group=group)
    return values.cpu()


def synchronize() -> None:
    if has_gpu():
        torch.cuda.synchronize()


def empty_device_cache() -> None:
    """Hand the caching allocator's free blocks back to the device (what makes freed memory usable by the engines)."""
    if has_gpu():
        torch.cuda.empty_cache()


# Peak dense bf16 TFLOP/s per device, for MFU. A flag (--peak-tflops) overrides; on CPU we measure fp32 matmuls.
KNOWN_PEAK_TFLOPS = {
    "H200": 989.0,
    "H100": 989.0,
    "H800": 989.0,
    "H20": 148.0,
    "A100": 312.0,
    "A800": 312.0,
    "L40S": 362.0,
    "B200": 2250.0,
}


def peak_tflops(args: Namespace) -> float | None:
    if getattr(args, "peak_tflops", None):
        return args.peak_tflops
    if not has_gpu():
        return measured_cpu_matmul_tflops()
    name = torch.cuda.get_device_name()
    for key, value in KNOWN_PEAK_TFLOPS.items():
        if key in name:
            return value
    logger.warning("unknown device %s: give --peak-tflops to report MFU", name)
    return None


_CPU_PEAK: float | None = None


def measured_cpu_matmul_tflops(size: int = 1024, repeats: int = 5) -> float:
    """This CPU's fp32 matmul rate on this process's threads: the honest 'peak' for CPU MFU."""
    global _CPU_PEAK
    if _CPU_PEAK is None:
        import time

        a, b = torch.randn(size, size), torch.randn(size, size)
        a @ b
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - started)
        _CPU_PEAK = 2 * size**3 / best / 1e12
    return _CPU_PEAK

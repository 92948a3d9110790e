"""Each CPU bridge over Megatron-core's CUDA-only spots does what it claims (this machine has no GPU)."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from slime.backends.megatron_utils.cpu_bridges import CudaLiteralsToCpu, apply_cpu_bridges, cuda_literals_on_cpu

pytestmark = pytest.mark.usefixtures("megatron_world")


class RecordedOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_bridges_are_installed_only_without_gpu():
    assert not torch.cuda.is_available()
    assert apply_cpu_bridges() is True


def test_rng_tracker_gives_distinct_reproducible_streams():
    from megatron.core import tensor_parallel

    tensor_parallel.model_parallel_cuda_manual_seed(123)
    tracker = tensor_parallel.get_cuda_rng_tracker()
    outside_before = torch.get_rng_state()
    with tracker.fork():
        first = torch.rand(4)
    with tracker.fork():
        second = torch.rand(4)
    assert not torch.equal(first, second)  # the tracked stream advances
    assert torch.equal(torch.get_rng_state(), outside_before)  # and leaves the default stream alone
    tensor_parallel.model_parallel_cuda_manual_seed(123)
    with tensor_parallel.get_cuda_rng_tracker().fork():
        assert torch.equal(torch.rand(4), first)  # reproducible from the seed
    tensor_parallel.model_parallel_cuda_manual_seed(124)
    with tensor_parallel.get_cuda_rng_tracker().fork():
        assert not torch.equal(torch.rand(4), first)  # another TP rank (seed offset) gets another stream


def test_current_device_and_causal_mask():
    from megatron.core.transformer import utils

    assert torch.ones(2).to(device=torch.cuda.current_device()).device.type == "cpu"
    mask = utils.get_default_causal_mask(3)
    assert mask.device.type == "cpu" and mask.tolist() == [[False, True, True], [False, False, True],
                                                           [False, False, False]]


def test_cuda_literals_map_to_cpu_only_inside_the_block():
    with cuda_literals_on_cpu():
        tensor = torch.zeros(2, device="cuda")
        assert tensor.device.type == "cpu"
        assert tensor.cuda() is tensor
        assert torch.tensor([1.0], device=0).device.type == "cpu"
        assert torch.ones(1).type() == "torch.cuda.FloatTensor"
    assert torch.ones(1).type() == "torch.FloatTensor"
    with pytest.raises((AssertionError, RuntimeError)):
        torch.zeros(1, device="cuda")
    assert isinstance(CudaLiteralsToCpu(), torch.overrides.TorchFunctionMode)


def test_gradient_clipping_scales_in_place_as_megatron_clips():
    from megatron.core.optimizer.clip_grads import clip_grad_by_total_norm_fp32

    apply_cpu_bridges()
    params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2, 2))]
    params[0].grad, params[1].grad = torch.full((3,), 2.0), torch.full((2, 2), -1.0)
    storage = [p.grad.data_ptr() for p in params]
    with cuda_literals_on_cpu(), RecordedOps() as recorded:
        clip_grad_by_total_norm_fp32(params, max_norm=1.0, total_norm=4.0)
    assert torch.allclose(params[0].grad, torch.full((3,), 0.5)) and torch.allclose(params[1].grad,
                                                                                   torch.full((2, 2), -0.25))
    assert [p.grad.data_ptr() for p in params] == storage
    # One in-place pass per gradient: no temporary product copied back (Megatron's stand-in does mul + copy_).
    assert "aten.copy_.default" not in recorded.ops and "aten.mul_.Tensor" in recorded.ops
    with cuda_literals_on_cpu():
        clip_grad_by_total_norm_fp32(params, max_norm=1.0, total_norm=0.5)  # under the bound: unchanged
    assert torch.allclose(params[0].grad, torch.full((3,), 0.5))


def test_freed_host_memory_stays_in_the_process_and_is_reused():
    """Large buffers come from the heap and a freed one is handed to the next of its size, instead of a fresh mmap per
    buffer that page-faults on every page. Asserted on the addresses, which the bridge decides; how many page faults
    the reuse then saves is the kernel's to decide (a VM may reclaim the idle pages) and is measured by the benchmark."""
    import ctypes

    apply_cpu_bridges()
    libc = ctypes.CDLL(None)
    libc.sbrk.restype, libc.sbrk.argtypes = ctypes.c_void_p, [ctypes.c_long]
    size = 64 * 1024**2 // 4  # 64 MB of fp32: over glibc's largest mmap threshold

    buffer = torch.empty(size)
    address = buffer.data_ptr()
    assert address < libc.sbrk(0)  # in the heap, below the program break (an mmap'd buffer lies far above it)
    del buffer
    assert libc.sbrk(0) >= address + size * 4  # freed, it stays in the process: the heap was not trimmed
    assert torch.empty(size).data_ptr() == address  # and the next buffer of its size gets it


def test_one_rank_collectives_and_self_copies_return_at_once_and_training_is_unchanged(monkeypatch):
    import megatron.core.distributed.param_and_grad_buffer as grad_buffer

    from slime.backends.megatron_utils import cpu_bridges
    from slime.backends.megatron_utils.actor import MegatronTrainRayActor

    from megatron_helpers import random_samples, shards_for, tiny_args

    args = tiny_args("--optimizer", "adam", "--lr", "1e-2", "--use-distributed-optimizer")
    batches = [random_samples(8, seed=seed) for seed in range(2)]
    collectives = []
    for name in ("dist_reduce_scatter_func", "dist_all_gather_func"):
        wrapper = getattr(grad_buffer, name)
        real = wrapper.__wrapped__
        monkeypatch.setattr(wrapper, "__wrapped__",
                            lambda *a, _real=real, _name=name, **k: collectives.append(_name) or _real(*a, **k))

    def train() -> tuple[list, dict, int]:
        torch.manual_seed(0)
        trainer = MegatronTrainRayActor()
        trainer.init(args)
        recorded = RecordedOps()
        with recorded:
            losses = [m["loss"] for i, b in enumerate(batches) for m in trainer.train(i, shards_for(args, b)[0])]
        weights = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
        return losses, weights, recorded.ops.count("aten.copy_.default")

    bridged_losses, bridged_weights, bridged_copies = train()
    assert collectives == []  # data-parallel size 1: the shard is the buffer, nothing to exchange
    monkeypatch.setattr(cpu_bridges, "_same_memory", lambda a, b: False)  # the unbridged path
    plain_losses, plain_weights, plain_copies = train()
    assert sorted(set(collectives)) == ["dist_all_gather_func", "dist_reduce_scatter_func"]
    assert bridged_copies < plain_copies  # the main parameters were not copied onto themselves
    assert bridged_losses == plain_losses
    assert all(torch.equal(bridged_weights[name], plain_weights[name]) for name in plain_weights)

"""Each CPU bridge over Megatron-core's CUDA-only spots does what it claims (this machine has no GPU)."""

from __future__ import annotations

import pytest
import torch

from slime.backends.megatron_utils.cpu_bridges import CudaLiteralsToCpu, apply_cpu_bridges, cuda_literals_on_cpu

pytestmark = pytest.mark.usefixtures("megatron_world")


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

"""--offload-train: the trainer gives its device memory back while the engines generate.

slime preloads torch_memory_saver into the trainer processes to pause every CUDA allocation. Here the same effect
comes from the storages themselves: each device storage of the parameters, the optimizer (fp32 main parameters and
its states) and the gradient buffers is resized to zero bytes, which frees it, and resized back on waking. Every
tensor object (a parameter, its `main_grad` view into the DDP buffer, an Adam state) keeps its identity, so the
model, the optimizer and the DDP hooks need no rebuilding. Parameters and optimizer state are copied to host memory
first (pinned on GPUs); gradients are not kept (every step zeroes them anyway).

The mechanism works on any device; the trainer uses it only on GPUs, where the engines need the memory.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import torch

from slime.utils.device import empty_device_cache

logger = logging.getLogger(__name__)


@dataclass
class _Held:
    storage: torch.UntypedStorage
    nbytes: int
    host: torch.Tensor | None  # None: freed without a copy (gradients)


def _byte_view(storage: torch.UntypedStorage) -> torch.Tensor:
    return torch.empty(0, dtype=torch.uint8, device=storage.device).set_(storage)


def _inner_optimizers(optimizer: Any) -> list[Any]:
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


def _optimizer_tensors(optimizer: Any) -> Iterator[torch.Tensor]:
    """The torch optimizers' parameters (fp32 main copies under bf16, else the model's own) and their states."""
    for megatron_optimizer in _inner_optimizers(optimizer):
        torch_optimizer = getattr(megatron_optimizer, "optimizer", None)
        if torch_optimizer is None:
            continue
        for group in torch_optimizer.param_groups:
            yield from group["params"]
        for state in torch_optimizer.state.values():
            yield from (value for value in state.values() if isinstance(value, torch.Tensor))


def _grad_buffers(model: torch.nn.Module) -> Iterator[torch.Tensor]:
    for buffer in list(getattr(model, "buffers", [])) + list(getattr(model, "expert_parallel_buffers", [])):
        if buffer.grad_data is not None:
            yield buffer.grad_data


class TrainerMemory:
    """Sleep and wake of one trainer's model, optimizer and gradient buffers on `device_type`."""

    def __init__(self, model: torch.nn.Module, optimizer: Any, device_type: str):
        self.model, self.optimizer, self.device_type = model, optimizer, device_type
        self.params: list[_Held] = []
        self.rest: list[_Held] = []

    @property
    def asleep(self) -> bool:
        return bool(self.params or self.rest)

    def _collect(self, tensors: Iterable[torch.Tensor], seen: set[int], keep: bool) -> list[_Held]:
        held = []
        for tensor in tensors:
            storage = tensor.untyped_storage()
            if tensor.device.type != self.device_type or storage.nbytes() == 0 or storage.data_ptr() in seen:
                continue
            seen.add(storage.data_ptr())
            held.append(_Held(storage, storage.nbytes(), None))
        if keep:
            pin = self.device_type == "cuda"
            for item in held:
                item.host = torch.empty(item.nbytes, dtype=torch.uint8, pin_memory=pin)
                item.host.copy_(_byte_view(item.storage), non_blocking=pin)
        return held

    @staticmethod
    def _free(held: list[_Held]) -> None:
        if held and held[0].storage.device.type == "cuda":
            torch.cuda.synchronize()  # the copies to pinned host memory are asynchronous
        for item in held:
            item.storage.resize_(0)

    @staticmethod
    def _restore(held: list[_Held]) -> None:
        for item in held:
            item.storage.resize_(item.nbytes)
            if item.host is None:
                _byte_view(item.storage).zero_()
            else:
                _byte_view(item.storage).copy_(item.host, non_blocking=True)

    def sleep(self) -> int:
        """Free the device memory of parameters, gradients and optimizer; returns the bytes freed."""
        if self.asleep:
            return 0
        seen: set[int] = set()
        # Order matters for the shared storages: parameters first (under a distributed optimizer they are views of
        # the DDP parameter buffer; without one the optimizer's fp32 parameters are the model's), then gradients.
        self.params = self._collect(self.model.parameters(), seen, keep=True)
        self.rest = self._collect(_grad_buffers(self.model), seen, keep=False)
        self.rest += self._collect(_optimizer_tensors(self.optimizer), seen, keep=True)
        self._free(self.params + self.rest)
        empty_device_cache()
        return sum(item.nbytes for item in self.params + self.rest)

    def wake_up(self) -> None:
        self._restore(self.params + self.rest)
        self.params, self.rest = [], []

    @contextlib.contextmanager
    def awake(self, parameters_only: bool = False) -> Iterator[None]:
        """On the device inside the block, for work that reads the trainer without changing it (a weight sync needs
        the parameters only; a save or a validation loss everything); asleep again after, if it was asleep. The
        host copies still hold then, so going back to sleep only frees: nothing is copied again."""
        held = self.params if parameters_only else self.params + self.rest
        if not held:
            yield
            return
        self._restore(held)
        try:
            yield
        finally:
            self._free(held)
            empty_device_cache()

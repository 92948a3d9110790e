"""The wire formats of weight updates between a trainer and the CPU engine, shared by both sides.

Two transports, as in SGLang:

* Distributed (`/init_weights_update_group` + `/update_weights_from_distributed`): the trainer (rank 0) and every
  engine form a standalone process group that is not the default WORLD, so the trainer keeps its own Megatron world.
  It is built the way `torch.distributed.init_process_group` builds one internally: a rendezvous on
  `tcp://master_address:master_port` (rank 0 hosts the TCPStore), a key space prefixed with the group name, and
  `_new_process_group_helper`. On CPU the backend is gloo. The trainer then broadcasts one tensor per name from
  rank 0, in the order of the names it sent over HTTP (`broadcast_bucket`).

* Tensor (`/update_weights_from_tensor`, colocated): one base64 string per TP rank. Each is a
  `multiprocessing.reduction.ForkingPickler` pickle of `{"flattened_tensor": uint8[N], "metadata":
  [FlattenedTensorMetadata, ...]}` (load_format "flattened_bucket") or of a list of `(name, tensor)` pairs
  (load_format null), SGLang's formats. A pickled CPU tensor is a handle to shared memory, not its bytes: an
  unrelated process can open it only under torch's "file_system" sharing strategy (the default "file_descriptor"
  one fails with AuthenticationError), so `serialize_bucket` switches this process to it, and the producer must keep
  the returned tensor alive until the engine has replied. The engine unpickles with an allow-list of torch's
  rebuild functions. A bucket of CUDA tensors pickles as CUDA IPC handles, for real SGLang on the same node.

`tensor_checksum` is what `--check-weight-update-equal` compares: the trainer's HF tensors against the checksums the
CPU engine reports for its own (`/weights_checker` with action "checksum").
"""

from __future__ import annotations

import base64
import hashlib
import io
import pickle
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterable

import torch
import torch.distributed as dist

DEFAULT_GROUP_TIMEOUT = timedelta(minutes=30)


@dataclass
class FlattenedTensorMetadata:
    """Where one named tensor lives inside a flattened uint8 bucket (byte offsets, end exclusive)."""

    name: str
    shape: torch.Size
    dtype: torch.dtype
    start_idx: int
    end_idx: int
    numel: int


def flatten_bucket(
    named_tensors: Iterable[tuple[str, torch.Tensor]],
) -> tuple[torch.Tensor, list[FlattenedTensorMetadata]]:
    """All tensors' bytes in one uint8 tensor (dtypes may differ), plus where each one is. Each tensor starts at a
    multiple of its element size (padding bytes between), so every one can be viewed back in its own dtype."""
    chunks, metadata, offset = [], [], 0
    for name, tensor in named_tensors:
        raw = tensor.detach().contiguous().view(-1).view(torch.uint8)
        pad = -offset % tensor.element_size()
        if pad:
            chunks.append(torch.zeros(pad, dtype=torch.uint8, device=raw.device))
            offset += pad
        metadata.append(FlattenedTensorMetadata(name, tensor.shape, tensor.dtype, offset, offset + raw.numel(),
                                                tensor.numel()))
        chunks.append(raw)
        offset += raw.numel()
    flat = torch.cat(chunks) if chunks else torch.empty(0, dtype=torch.uint8)
    return flat, metadata


def unflatten_bucket(flat: torch.Tensor, metadata: list[FlattenedTensorMetadata]) -> list[tuple[str, torch.Tensor]]:
    return [(m.name, flat[m.start_idx:m.end_idx].view(m.dtype).view(m.shape)) for m in metadata]


def serialize_bucket(named_tensors: list[tuple[str, torch.Tensor]], load_format: str | None = "flattened_bucket"
                     ) -> tuple[str, Any]:
    """One `serialized_named_tensors` entry for `/update_weights_from_tensor`, and the object to keep alive until
    the engine has replied (its shared memory disappears with it)."""
    from multiprocessing.reduction import ForkingPickler

    import torch.multiprocessing as mp

    mp.set_sharing_strategy("file_system")
    if load_format == "flattened_bucket":
        flat, metadata = flatten_bucket(named_tensors)
        payload: Any = {"flattened_tensor": flat, "metadata": _for_sglang(metadata) if flat.is_cuda else metadata}
    elif load_format is None:
        payload = [(name, tensor.detach().contiguous()) for name, tensor in named_tensors]
    else:
        raise ValueError(f"unknown load_format {load_format!r}: use 'flattened_bucket' or None")
    buffer = io.BytesIO()
    ForkingPickler(buffer).dump(payload)
    return base64.b64encode(buffer.getvalue()).decode("ascii"), payload


def _for_sglang(metadata: list[FlattenedTensorMetadata]) -> list[Any]:
    """A CUDA bucket goes to real SGLang, as slime sends it: with SGLang's own metadata class (which its unpickler
    knows) and with torch's CUDA reductions patched by SGLang to name the device by UUID, so an engine process that
    numbers the GPUs differently still opens the memory on the right one. Without SGLang installed here the bucket
    is sent as it is."""
    try:
        from sglang.srt.weight_sync.tensor_bucket import FlattenedTensorMetadata as SGLangMetadata
    except ImportError:
        return metadata
    try:
        from sglang.srt.utils.patch_torch import monkey_patch_torch_reductions
    except ImportError:  # older SGLang releases
        from sglang.srt.patch_torch import monkey_patch_torch_reductions
    monkey_patch_torch_reductions()
    return [SGLangMetadata(name=m.name, shape=m.shape, dtype=m.dtype, start_idx=m.start_idx, end_idx=m.end_idx,
                           numel=m.numel) for m in metadata]


class _AllowListUnpickler(pickle.Unpickler):
    """Only what a pickled bucket of CPU tensors needs; anything else in a payload is refused."""

    _ALLOWED = {
        ("torch.multiprocessing.reductions", "rebuild_tensor"),
        ("torch.multiprocessing.reductions", "rebuild_parameter"),
        ("torch.multiprocessing.reductions", "rebuild_typed_storage"),
        ("torch.multiprocessing.reductions", "rebuild_storage_filename"),
        ("torch.multiprocessing.reductions", "rebuild_storage_empty"),
        ("torch.storage", "UntypedStorage"),
        ("torch", "Tensor"),
        ("torch.nn.parameter", "Parameter"),
        ("torch", "Size"),
        ("builtins", "slice"),
        ("collections", "OrderedDict"),
    }
    # SGLang's own metadata class, as a GPU-side trainer would pickle it, maps onto ours.
    _METADATA = {("slime.backends.sglang_utils.weight_sync", "FlattenedTensorMetadata"),
                 ("sglang.srt.weight_sync.tensor_bucket", "FlattenedTensorMetadata")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._METADATA:
            return FlattenedTensorMetadata
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} in a weight payload")


def deserialize_bucket(serialized: str, load_format: str | None) -> list[tuple[str, torch.Tensor]]:
    """The named tensors of one `serialized_named_tensors` entry (see the module docstring for the format)."""
    try:
        payload = _AllowListUnpickler(io.BytesIO(base64.b64decode(serialized))).load()
    except (RuntimeError, OSError) as exc:
        raise ValueError(f"cannot open the tensors of the payload ({exc}); the producer must use "
                         "torch.multiprocessing.set_sharing_strategy('file_system') and keep them alive") from exc
    if load_format == "flattened_bucket":
        return unflatten_bucket(payload["flattened_tensor"], payload["metadata"])
    if load_format in (None, "direct"):
        return [(name, tensor) for name, tensor in payload]
    raise ValueError(f"unsupported load_format {load_format!r} for update_weights_from_tensor "
                     "(the CPU engine accepts 'flattened_bucket' and null)")


def init_custom_process_group(*, backend: str, init_method: str, world_size: int, rank: int, group_name: str,
                              timeout: timedelta = DEFAULT_GROUP_TIMEOUT) -> dist.ProcessGroup:
    """A standalone process group (not WORLD) over a TCP rendezvous; rank 0 hosts the store.

    Both sides of a weight update call this with the same init_method, world_size and group_name.
    """
    from torch.distributed.distributed_c10d import _new_process_group_helper, _world, rendezvous

    store, rank, world_size = next(rendezvous(init_method, rank, world_size, timeout=timeout))
    store.set_timeout(timeout)
    store = dist.PrefixStore(group_name, store)
    group, _ = _new_process_group_helper(world_size, rank, [], backend, store, group_name=group_name, timeout=timeout)
    # An identity rank map lets `dist.broadcast(..., group=group, src=0)` translate ranks in this group.
    _world.pg_group_ranks[group] = {i: i for i in range(world_size)}
    return group


def broadcast_bucket(tensors: list[torch.Tensor], group: dist.ProcessGroup, src: int = 0,
                     poll: Callable[[], None] | None = None) -> None:
    """Post one broadcast per tensor in list order, then wait for all (the order both sides agree on).

    With `poll`, the wait is a loop that calls it until every broadcast has completed: the sender uses it to raise
    as soon as a receiver reports that it will never take part (its HTTP reply failed), instead of blocking in a
    collective until the group's timeout."""
    works = [dist.broadcast(tensor, src=src, group=group, async_op=True) for tensor in tensors]
    if poll is not None:
        while not all(work.is_completed() for work in works):
            poll()
            time.sleep(0.005)
    for work in works:
        work.wait()


def tensor_checksum(tensor: torch.Tensor) -> str:
    """dtype, shape and SHA-256 of the bytes: equal exactly when two tensors hold the same values in the same dtype.
    Both sides of `--check-weight-update-equal` use it (the trainer on its HF tensors, the CPU engine on its own)."""
    data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
    return f"{str(tensor.dtype).removeprefix('torch.')}{list(tensor.shape)}:{hashlib.sha256(data).hexdigest()}"

"""Loading HF-named weights into the CPU engine's transformers model: from a checkpoint directory, or from tensors
received over a process group or shared memory. Every name and shape is checked before any value is copied, so a
bad update leaves the served weights as they were."""

from __future__ import annotations

import glob
import json
import os
from typing import Any, Iterable

import torch


def load_named_tensors(model: Any, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
    """Copy each HF-named tensor into the parameter or buffer of that name (dtype converted); returns the count."""
    # state_dict(keep_vars) maps every HF name, including both names of tied weights, to the live tensor.
    targets = model.state_dict(keep_vars=True)
    pairs = list(named_tensors)
    for name, tensor in pairs:
        if name not in targets:
            raise ValueError(f"unknown parameter name {name!r} for {type(model).__name__}")
        if tuple(targets[name].shape) != tuple(tensor.shape):
            raise ValueError(f"shape mismatch for {name!r}: the model has {tuple(targets[name].shape)}, "
                             f"the update sends {tuple(tensor.shape)}")
    with torch.no_grad():
        for name, tensor in pairs:
            targets[name].copy_(tensor)
    return len(pairs)


def read_checkpoint(model_path: str, load_format: str | None = None) -> list[tuple[str, torch.Tensor]]:
    """Every tensor of an HF checkpoint directory (safetensors, sharded or not; else PyTorch .bin files)."""
    if not os.path.isdir(model_path):
        raise ValueError(f"model_path {model_path!r} is not a directory")
    if load_format not in (None, "auto", "safetensors", "pt"):
        raise ValueError(f"not supported yet by the CPU engine: load_format {load_format!r} "
                         "(use auto, safetensors or pt)")
    files = sorted(glob.glob(os.path.join(model_path, "*.safetensors")))
    if files and load_format in (None, "auto", "safetensors"):
        from safetensors.torch import load_file

        index = os.path.join(model_path, "model.safetensors.index.json")
        if os.path.exists(index):  # a sharded checkpoint names its shards; stray files are not read
            with open(index) as f:
                files = sorted({os.path.join(model_path, v) for v in json.load(f)["weight_map"].values()})
        return [item for path in files for item in load_file(path).items()]
    bins = sorted(glob.glob(os.path.join(model_path, "*.bin")))
    if bins and load_format in (None, "auto", "pt"):
        return [item for path in bins for item in torch.load(path, map_location="cpu", weights_only=True).items()]
    raise ValueError(f"no {'safetensors' if load_format == 'safetensors' else 'weight'} files in {model_path!r}")

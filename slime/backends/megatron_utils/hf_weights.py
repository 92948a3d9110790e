"""HF checkpoints in and out of the Megatron model, for the `qwen3`, `qwen2` and `llama` model types.

Names are mapped per tensor (Megatron's fused QKV is `[q heads of group | k | v]` per query group; the SwiGLU fc1
is `[gate; up]`); tensor-parallel shards are cut on load and gathered on export using each parameter's own
`partition_dim`, with the fc1 halves sharded separately as Megatron's GLU layout requires. The vocabulary is padded
to `padded_vocab_size` on load and trimmed on export.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from argparse import Namespace
from typing import Iterator

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from safetensors import safe_open
from safetensors.torch import save_file

from slime.utils.model_dirs import SUPPORTED_MODEL_TYPES

HF_ASSET_FILES = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
    "special_tokens_map.json", "chat_template.jinja", "added_tokens.json",
)
_LAYER_RE = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")
# Per-layer parameters copied as they are (Megatron suffix -> HF suffix under model.layers.N.); the local and the
# Transformer Engine specs name the norms differently.
ONE_TO_ONE_LAYER_NAMES = {
    "input_layernorm.weight": "input_layernorm.weight",
    "self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
    "pre_mlp_layernorm.weight": "post_attention_layernorm.weight",
    "mlp.linear_fc1.layer_norm_weight": "post_attention_layernorm.weight",
    "self_attention.linear_proj.weight": "self_attn.o_proj.weight",
    "self_attention.q_layernorm.weight": "self_attn.q_norm.weight",
    "self_attention.k_layernorm.weight": "self_attn.k_norm.weight",
    "mlp.linear_fc2.weight": "mlp.down_proj.weight",
}


class SafetensorReader:
    """Lazy access to the tensors of an HF directory (single file or sharded with an index)."""

    def __init__(self, directory: str):
        index = os.path.join(directory, "model.safetensors.index.json")
        if os.path.exists(index):
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
        else:
            files = sorted(n for n in os.listdir(directory) if n.endswith(".safetensors"))
            if not files:
                raise FileNotFoundError(f"{directory} has no .safetensors weights")
            weight_map = {}
            for name in files:
                with safe_open(os.path.join(directory, name), "pt") as f:
                    weight_map.update({key: name for key in f.keys()})
        self.directory, self.weight_map = directory, weight_map

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def get(self, name: str) -> torch.Tensor:
        if name not in self.weight_map:
            raise KeyError(f"{self.directory} has no tensor {name!r}")
        with safe_open(os.path.join(self.directory, self.weight_map[name]), "pt") as f:
            return f.get_tensor(name)


def _qkv_shapes(args: Namespace) -> tuple[int, int, int]:
    return args.num_attention_heads, args.num_query_groups, args.kv_channels


def merge_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, args: Namespace) -> torch.Tensor:
    heads, groups, dim = _qkv_shapes(args)
    tail = q.shape[1:]
    q = q.reshape(groups, heads // groups * dim, *tail)
    k = k.reshape(groups, dim, *tail)
    v = v.reshape(groups, dim, *tail)
    return torch.cat([q, k, v], dim=1).reshape(-1, *tail)


def split_qkv(qkv: torch.Tensor, args: Namespace) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    heads, groups, dim = _qkv_shapes(args)
    tail = qkv.shape[1:]
    per_group = qkv.reshape(groups, heads // groups + 2, dim, *tail)
    q, k, v = per_group.split([heads // groups, 1, 1], dim=1)
    return q.reshape(-1, *tail), k.reshape(-1, *tail), v.reshape(-1, *tail)


def _pad_vocab(tensor: torch.Tensor, args: Namespace) -> torch.Tensor:
    extra = args.padded_vocab_size - tensor.shape[0]
    if extra < 0:
        raise ValueError(f"HF vocabulary {tensor.shape[0]} is larger than padded_vocab_size {args.padded_vocab_size}")
    return torch.cat([tensor, tensor.new_zeros(extra, *tensor.shape[1:])]) if extra else tensor


def hf_tensor_for(name: str, reader: SafetensorReader, args: Namespace) -> torch.Tensor:
    """The full (unsharded) value of Megatron parameter `name`, built from HF tensors."""
    if name == "embedding.word_embeddings.weight":
        return _pad_vocab(reader.get("model.embed_tokens.weight"), args)
    if name == "output_layer.weight":
        source = "lm_head.weight" if "lm_head.weight" in reader else "model.embed_tokens.weight"
        return _pad_vocab(reader.get(source), args)
    if name == "decoder.final_layernorm.weight":
        return reader.get("model.norm.weight")
    match = _LAYER_RE.match(name)
    if not match:
        raise KeyError(f"no HF source for Megatron parameter {name}")
    prefix, rest = f"model.layers.{match[1]}.", match[2]
    attn, mlp = prefix + "self_attn.", prefix + "mlp."
    if rest.startswith("self_attention.linear_qkv.") and rest.split(".")[-1] in ("weight", "bias"):
        kind = rest.split(".")[-1]
        return merge_qkv(*(reader.get(f"{attn}{p}_proj.{kind}") for p in "qkv"), args)
    if rest == "mlp.linear_fc1.weight":
        return torch.cat([reader.get(mlp + "gate_proj.weight"), reader.get(mlp + "up_proj.weight")])
    if rest not in ONE_TO_ONE_LAYER_NAMES:
        raise KeyError(f"no HF source for Megatron parameter {name}")
    return reader.get(prefix + ONE_TO_ONE_LAYER_NAMES[rest])


def megatron_to_hf(name: str, tensor: torch.Tensor, args: Namespace) -> list[tuple[str, torch.Tensor]]:
    """HF (name, tensor) pairs for one full Megatron parameter (the inverse of `hf_tensor_for`)."""
    if name == "embedding.word_embeddings.weight":
        return [("model.embed_tokens.weight", tensor[: args.vocab_size])]
    if name == "output_layer.weight":
        return [("lm_head.weight", tensor[: args.vocab_size])]
    if name == "decoder.final_layernorm.weight":
        return [("model.norm.weight", tensor)]
    match = _LAYER_RE.match(name)
    if not match:
        raise KeyError(f"no HF name for Megatron parameter {name}")
    prefix, rest = f"model.layers.{match[1]}.", match[2]
    attn, mlp = prefix + "self_attn.", prefix + "mlp."
    if rest.startswith("self_attention.linear_qkv.") and rest.split(".")[-1] in ("weight", "bias"):
        kind = rest.split(".")[-1]
        q, k, v = split_qkv(tensor, args)
        return [(f"{attn}q_proj.{kind}", q), (f"{attn}k_proj.{kind}", k), (f"{attn}v_proj.{kind}", v)]
    if rest == "mlp.linear_fc1.weight":
        gate, up = tensor.chunk(2)
        return [(mlp + "gate_proj.weight", gate), (mlp + "up_proj.weight", up)]
    return [(prefix + ONE_TO_ONE_LAYER_NAMES[rest], tensor)]


def _is_glu_fc1(name: str, args: Namespace) -> bool:
    return args.swiglu and name.endswith("mlp.linear_fc1.weight")


def shard_for_rank(name: str, param: torch.Tensor, full: torch.Tensor, args: Namespace) -> torch.Tensor:
    """This tensor-parallel rank's slice of a full tensor, following the parameter's partitioning."""
    if not getattr(param, "tensor_model_parallel", False):
        return full
    tp_size = parallel_state.get_tensor_model_parallel_world_size()
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    dim = param.partition_dim
    if _is_glu_fc1(name, args):
        return torch.cat([half.chunk(tp_size, dim=dim)[tp_rank] for half in full.chunk(2, dim=dim)], dim=dim)
    return full.chunk(tp_size, dim=dim)[tp_rank]


def gather_full(name: str, param: torch.Tensor, args: Namespace, dst: int | None = None) -> torch.Tensor | None:
    """The full tensor of a (possibly tensor-parallel) parameter; every TP rank must call this. With `dst` (a rank
    within the TP group) only that rank assembles it and the others get None."""
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    tp_size = parallel_state.get_tensor_model_parallel_world_size()
    if not getattr(param, "tensor_model_parallel", False) or tp_size == 1:
        return param.detach() if dst is None or tp_rank == dst else None
    group = parallel_state.get_tensor_model_parallel_group()
    local = param.detach().contiguous()
    if dst is None:
        shards = [torch.empty_like(param) for _ in range(tp_size)]
        dist.all_gather(shards, local, group=group)
    else:
        shards = [torch.empty_like(param) for _ in range(tp_size)] if tp_rank == dst else None
        dist.gather(local, shards, dst=dist.get_global_rank(group, dst), group=group)
        if shards is None:
            return None
    dim = param.partition_dim
    if _is_glu_fc1(name, args):
        halves = [shard.chunk(2, dim=dim) for shard in shards]
        return torch.cat([torch.cat([h[0] for h in halves], dim=dim), torch.cat([h[1] for h in halves], dim=dim)],
                         dim=dim)
    return torch.cat(shards, dim=dim)


def check_hf_model_type(directory: str) -> str:
    with open(os.path.join(directory, "config.json")) as f:
        model_type = json.load(f).get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"{directory}: model_type {model_type!r} is not supported (supported: {SUPPORTED_MODEL_TYPES})")
    return model_type


@torch.no_grad()
def load_hf_weights(model: torch.nn.Module, directory: str, args: Namespace) -> None:
    """Copy an HF checkpoint into `model` (unwrapped GPTModel or a DDP wrapper), shard by shard."""
    check_hf_model_type(directory)
    reader = SafetensorReader(directory)
    for name, param in unwrap(model).named_parameters():
        if name.startswith("output_layer.") and getattr(args, "role", "actor") == "critic":
            continue  # a critic's value head starts from its initialisation, not the language-model head
        full = hf_tensor_for(name, reader, args)
        shard = shard_for_rank(name, param, full, args)
        if shard.shape != param.shape:
            raise ValueError(f"{name}: HF gives shape {tuple(shard.shape)} for this rank, the model has "
                             f"{tuple(param.shape)} (do the model flags match {directory}/config.json?)")
        param.copy_(shard.to(param.dtype))


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    while hasattr(model, "module"):
        model = model.module
    return model


def iter_hf_tensors(model: torch.nn.Module, args: Namespace, dst: int | None = None
                    ) -> Iterator[tuple[str, torch.Tensor]]:
    """Full HF tensors of the model, one parameter at a time (collective over the TP group: every TP rank must
    iterate). With `dst` only that TP rank receives tensors; the others iterate over nothing but take part."""
    for name, param in unwrap(model).named_parameters():
        full = gather_full(name, param, args, dst)
        if full is not None:
            yield from megatron_to_hf(name, full, args)


@torch.no_grad()
def save_hf_weights(model: torch.nn.Module, args: Namespace, output_dir: str, origin_hf_dir: str | None,
                    max_shard_bytes: int = 5 * 1024**3) -> None:
    """Write an HF checkpoint (safetensors + config/tokenizer from `origin_hf_dir`) into a temporary directory
    renamed when complete. Called by every rank: only the first data-parallel replica's TP group takes part in the
    gather, and only global rank 0 assembles full tensors, moves them to the host and writes them, one shard
    (at most `max_shard_bytes`) at a time, so no rank ever holds the whole model on the host."""
    writer = not dist.is_initialized() or dist.get_rank() == 0
    gathers = parallel_state.get_data_parallel_rank(with_context_parallel=True) == 0
    staging = output_dir.rstrip("/") + ".tmp"
    if writer:
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(staging)
    if gathers:
        shards = _SafetensorShards(staging, max_shard_bytes) if writer else None
        for name, tensor in iter_hf_tensors(model, args, dst=0):
            if name == "lm_head.weight" and not args.untie_embeddings_and_output_weights:
                continue
            shards.add(name, tensor.to("cpu", copy=True).contiguous())
        if writer:
            shards.close()
    if writer:
        if origin_hf_dir:
            for asset in HF_ASSET_FILES:
                if os.path.exists(os.path.join(origin_hf_dir, asset)):
                    shutil.copy(os.path.join(origin_hf_dir, asset), staging)
        shutil.rmtree(output_dir, ignore_errors=True)
        os.replace(staging, output_dir)
    if dist.is_initialized():
        dist.barrier()


class _SafetensorShards:
    """Writes tensors into safetensors files of at most `max_shard_bytes` as they arrive, then names them as HF
    does (`model.safetensors`, or `model-0000i-of-0000N.safetensors` with an index)."""

    def __init__(self, directory: str, max_shard_bytes: int):
        self.directory, self.max_shard_bytes = directory, max_shard_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.files: list[list[str]] = []  # tensor names per written file
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + nbytes > self.max_shard_bytes:
            self._flush()
        self.pending[name] = tensor
        self.pending_bytes += nbytes
        self.total_bytes += nbytes

    def _flush(self) -> None:
        save_file(self.pending, self._temporary(len(self.files)), metadata={"format": "pt"})
        self.files.append(list(self.pending))
        self.pending, self.pending_bytes = {}, 0

    def _temporary(self, index: int) -> str:
        return os.path.join(self.directory, f"part-{index}.safetensors.tmp")

    def close(self) -> None:
        if self.pending or not self.files:
            self._flush()
        if len(self.files) == 1:
            os.replace(self._temporary(0), os.path.join(self.directory, "model.safetensors"))
            return
        weight_map = {}
        for i, names in enumerate(self.files):
            filename = f"model-{i + 1:05d}-of-{len(self.files):05d}.safetensors"
            os.replace(self._temporary(i), os.path.join(self.directory, filename))
            weight_map.update({name: filename for name in names})
        with open(os.path.join(self.directory, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}, f, indent=2)

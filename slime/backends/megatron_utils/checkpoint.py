"""Megatron torch_dist checkpoints: `{save}/iter_{rollout_id:07d}/` plus `latest_checkpointed_iteration.txt`.

A checkpoint is written into `iter_XXXXXXX.tmp/` and renamed when every rank has finished, and only then is the
tracker file (itself written to a temporary file and renamed) pointed at it: a crash during a save leaves the
previous checkpoint as the latest, never a pointer to a partial one. Model, optimizer, LR scheduler, per-rank RNG
states and the iteration are saved; the model and optimizer load into any tensor/data-parallel layout.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
from argparse import Namespace
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state, tensor_parallel
from megatron.core.dist_checkpointing.mapping import ShardedObject

from slime.backends.megatron_utils.cpu_bridges import cuda_literals_on_cpu
from slime.backends.megatron_utils.hf_weights import load_hf_weights, unwrap
from slime.utils.arguments import hf_model_type, is_megatron_checkpoint

logger = logging.getLogger(__name__)

TRACKER = "latest_checkpointed_iteration.txt"


def checkpoint_dir(root: str, iteration: int | str) -> str:
    name = iteration if isinstance(iteration, str) else f"iter_{iteration:07d}"
    return os.path.join(root, name)


def _rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _parallel_layout() -> list[int]:
    return [parallel_state.get_pipeline_model_parallel_world_size(),
            parallel_state.get_tensor_model_parallel_world_size(),
            parallel_state.get_data_parallel_world_size(with_context_parallel=True)]


def _rng_state() -> ShardedObject:
    state = {
        "random": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }
    pp = parallel_state.get_pipeline_model_parallel_rank()
    tp = parallel_state.get_tensor_model_parallel_rank()
    dp = parallel_state.get_data_parallel_rank(with_context_parallel=True)
    return ShardedObject("rng_state", state, tuple(_parallel_layout()), (pp, tp, dp), replica_id=0)


def _restore_rng(state: dict) -> None:
    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def _sharded_state_dict(args: Namespace, model, optimizer, scheduler, *, loading: bool, with_optimizer: bool,
                        with_rng: bool) -> dict[str, Any]:
    state: dict[str, Any] = {"model": unwrap(model).sharded_state_dict()}
    if with_optimizer and optimizer is not None:
        state["optimizer"] = optimizer.sharded_state_dict(state["model"], is_loading=loading)
        state["opt_param_scheduler"] = scheduler.state_dict()
    if with_rng:
        state["rng_state"] = _rng_state()
    return state


def save_checkpoint(args: Namespace, iteration: int, model, optimizer, scheduler, release: bool = False) -> str:
    """`release=True` writes `{save}/release` (a converted checkpoint, not a point in a run), as slime's tools do."""
    final = checkpoint_dir(args.save, "release" if release else iteration)
    staging = final + ".tmp"
    if _rank0():
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(staging)
    _barrier()
    state = _sharded_state_dict(args, model, optimizer, scheduler, loading=False,
                                with_optimizer=not args.no_save_optim, with_rng=not args.no_save_rng)
    state["iteration"] = iteration
    state["parallel_layout"] = _parallel_layout()
    # The flags travel with the checkpoint, so tools can rebuild the model from the checkpoint alone.
    state["args"] = {k: v for k, v in vars(args).items()
                     if isinstance(v, (int, float, str, bool, type(None))) and k not in ("rank", "local_rank")}
    with cuda_literals_on_cpu():
        dist_checkpointing.save(state, staging)
    _barrier()
    if _rank0():
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
        tracker = os.path.join(args.save, TRACKER)
        with open(tracker + ".tmp", "w") as f:
            f.write("release" if release else str(iteration))
        os.replace(tracker + ".tmp", tracker)
        logger.info("saved checkpoint %s", final)
    _barrier()
    return final


def read_tracker(directory: str) -> int | str:
    with open(os.path.join(directory, TRACKER)) as f:
        value = f.read().strip()
    return value if value == "release" else int(value)


def load_checkpoint(args: Namespace, model, optimizer, scheduler) -> int:
    """Load `--load` into the model (and optimizer/scheduler/RNG unless finetuning). Returns the iteration loaded
    (0 for weights-only loads; -1 when there is nothing to load and the model keeps its random initialisation)."""
    if args.load is None:
        logger.warning("no --load / --ref-load / HF checkpoint given: training starts from random weights")
        return -1
    if not is_megatron_checkpoint(args.load) and not os.path.isdir(checkpoint_dir(args.load, "release")):
        if hf_model_type(args.load) is None:
            raise FileNotFoundError(f"--load {args.load} is neither a Megatron checkpoint (no {TRACKER}) nor an HF "
                                    "model directory (no config.json)")
        load_hf_weights(model, args.load, args)
        if optimizer is not None:
            optimizer.reload_model_params()
        logger.info("initialised weights from HF checkpoint %s", args.load)
        return 0
    iteration = args.ckpt_step if args.ckpt_step is not None else (
        read_tracker(args.load) if os.path.exists(os.path.join(args.load, TRACKER)) else "release")
    directory = checkpoint_dir(args.load, iteration)
    # A release checkpoint (a conversion) holds weights only.
    full_resume = not args.finetune and iteration != "release"
    # Per-rank RNG streams only carry over to the same (PP, TP, DP) layout; model and optimizer reshard.
    saved_layout = dist_checkpointing.load_common_state_dict(directory).get("parallel_layout")
    same_layout = saved_layout == _parallel_layout()
    if full_resume and not same_layout and not args.no_load_rng:
        logger.info("checkpoint layout (PP, TP, DP) %s differs from %s: RNG states are not restored",
                    saved_layout, _parallel_layout())
    state = _sharded_state_dict(args, model, optimizer, scheduler, loading=True,
                                with_optimizer=full_resume and not args.no_load_optim,
                                with_rng=full_resume and same_layout and not args.no_load_rng)
    with cuda_literals_on_cpu():
        loaded = dist_checkpointing.load(state, directory)
    unwrap(model).load_state_dict(loaded["model"])
    if "optimizer" in loaded:
        optimizer.load_state_dict(loaded["optimizer"])
        scheduler.load_state_dict(loaded["opt_param_scheduler"])
    elif optimizer is not None:
        optimizer.reload_model_params()
    if "rng_state" in loaded:
        _restore_rng(loaded["rng_state"])
    logger.info("loaded checkpoint %s (%s)", directory, "resume" if full_resume else "weights only")
    return int(iteration) if full_resume else 0

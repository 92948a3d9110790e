"""Megatron torch_dist checkpoints: `{save}/iter_{rollout_id:07d}/` plus `latest_checkpointed_iteration.txt`.

A checkpoint is written into `iter_XXXXXXX.tmp/` and renamed when every rank has finished, and only then is the
tracker file (itself written to a temporary file and renamed) pointed at it: a crash during a save leaves the
previous checkpoint as the latest, never a pointer to a partial one. Model, optimizer, LR scheduler, per-rank RNG
states and the iteration are saved; the model and optimizer load into any tensor/data-parallel layout.

Saving and loading use Megatron's fully parallel strategies over the data-parallel group, as Megatron-LM does by
default: the replicated state (weights, and the optimizer without the distributed optimizer) is divided among the
data-parallel ranks, each writes (and on load reads) its share, instead of DP rank 0 writing everything while the
others wait. With `--async-save` the shards are written by a background process (Megatron's async calls queue);
the rename and the tracker update run as the save's finalisation, before the next save starts, at
`finalize_async_save()` / `destroy_distributed()`, and the save of the last rollout is synchronous (as slime's
driver forces it), so a run never ends with a checkpoint still being written.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
from argparse import Namespace
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.api import CheckpointException
from megatron.core import dist_checkpointing, parallel_state, tensor_parallel
from megatron.core.dist_checkpointing.mapping import ShardedObject
from megatron.core.dist_checkpointing.serialization import (
    get_default_load_sharded_strategy,
    get_default_save_sharded_strategy,
)
from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue
from megatron.core.dist_checkpointing.strategies.fully_parallel import (
    FullyParallelLoadStrategyWrapper,
    FullyParallelSaveStrategyWrapper,
)

from slime.backends.megatron_utils.cpu_bridges import cuda_literals_on_cpu
from slime.backends.megatron_utils.hf_weights import load_hf_weights, unwrap
from slime.utils.errors import UserError
from slime.utils.model_dirs import hf_model_type, is_megatron_checkpoint

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


def content_metadata(args: Namespace) -> dict[str, Any]:
    """How the state is laid out, stored with the checkpoint and read back to load it, as Megatron-LM does. The
    distributed optimizer's state is saved in Megatron-LM's default `dp_reshardable` format: every DP rank writes
    its own shard without any gather, and the checkpoint reshards across data-parallel sizes (not TP/PP sizes)."""
    metadata: dict[str, Any] = {"singleton_local_shards": False, "chained_optim_avoid_prefix": True}
    if args.use_distributed_optimizer:
        metadata["distrib_optim_sharding_type"] = "dp_reshardable"
    return metadata


def _sharded_state_dict(args: Namespace, model, optimizer, scheduler, *, loading: bool, with_optimizer: bool,
                        with_rng: bool, metadata: dict[str, Any]) -> dict[str, Any]:
    # Copies: Megatron adds the process group to the dict it is given, which must not reach the saved metadata.
    state: dict[str, Any] = {"model": unwrap(model).sharded_state_dict(metadata=dict(metadata))}
    if with_optimizer and optimizer is not None:
        state["optimizer"] = optimizer.sharded_state_dict(state["model"], is_loading=loading, metadata=dict(metadata))
        state["opt_param_scheduler"] = scheduler.state_dict()
    if with_rng:
        state["rng_state"] = _rng_state()
    return state


_async_saves: AsyncCallsQueue | None = None


def finalize_async_save(blocking: bool = True) -> None:
    """Finish pending `--async-save` checkpoints (rename, tracker). Collective: every rank must call it."""
    if _async_saves is not None and _async_saves.get_num_unfinalized_calls():
        with cuda_literals_on_cpu():
            _async_saves.maybe_finalize_async_calls(blocking=blocking)


def _data_parallel_group() -> dist.ProcessGroup:
    return parallel_state.get_data_parallel_group(with_context_parallel=True)


def _publish(args: Namespace, staging: str, final: str, tracker_value: str) -> None:
    """Make a fully written checkpoint visible: rename it into place, then point the tracker at it."""
    _barrier()
    if _rank0():
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
        tracker = os.path.join(args.save, TRACKER)
        with open(tracker + ".tmp", "w") as f:
            f.write(tracker_value)
        os.replace(tracker + ".tmp", tracker)
        logger.info("saved checkpoint %s", final)
    _barrier()


def save_checkpoint(args: Namespace, iteration: int, model, optimizer, scheduler, release: bool = False) -> str:
    """`release=True` writes `{save}/release` (a converted checkpoint, not a point in a run), as slime's tools do."""
    global _async_saves
    finalize_async_save(blocking=True)
    final = checkpoint_dir(args.save, "release" if release else iteration)
    staging = final + ".tmp"
    if _rank0():
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(staging)
    _barrier()
    metadata = content_metadata(args)
    if optimizer is not None and not args.no_save_optim:
        _materialise_adam_state(optimizer)  # a save before the first step
    state = _sharded_state_dict(args, model, optimizer, scheduler, loading=False,
                                with_optimizer=not args.no_save_optim, with_rng=not args.no_save_rng,
                                metadata=metadata)
    state["iteration"] = iteration
    state["parallel_layout"] = _parallel_layout()
    # The flags travel with the checkpoint, so tools can rebuild the model from the checkpoint alone.
    state["args"] = {k: v for k, v in vars(args).items()
                     if isinstance(v, (int, float, str, bool, type(None))) and k not in ("rank", "local_rank")}
    last_rollout = args.num_rollout is not None and iteration >= args.num_rollout - 1
    asynchronous = args.async_save and not release and not last_rollout
    strategy = FullyParallelSaveStrategyWrapper(get_default_save_sharded_strategy(), _data_parallel_group())
    with cuda_literals_on_cpu():
        request = dist_checkpointing.save(state, staging, sharded_strategy=strategy, async_sharded_save=asynchronous,
                                          content_metadata=metadata)
    publish = partial(_publish, args, staging, final, "release" if release else str(iteration))
    if request is None:
        publish()
    else:
        request.add_finalize_fn(publish)
        if _async_saves is None:
            _async_saves = AsyncCallsQueue()
        with cuda_literals_on_cpu():
            _async_saves.schedule_async_request(request)
        logger.info("writing checkpoint %s in the background", final)
    return final


def read_tracker(directory: str) -> int | str:
    with open(os.path.join(directory, TRACKER)) as f:
        value = f.read().strip()
    return value if value == "release" else int(value)


def _check_optimizer_state_fits(args: Namespace, directory: str, metadata: dict, saved_layout: list | None) -> None:
    """The optimizer state loads only into the optimizer kind that saved it, and the distributed optimizer's
    state only into the same TP x PP layout: say so, instead of Megatron's missing-key errors."""
    saved_distributed = "distrib_optim_sharding_type" in metadata
    if saved_distributed != bool(args.use_distributed_optimizer):
        kind = "the distributed optimizer" if saved_distributed else "the non-distributed optimizer"
        raise ValueError(f"{directory} holds the state of {kind}; resume with the same --use-distributed-optimizer "
                         "setting, or pass --no-load-optim to load the weights only")
    if saved_distributed and saved_layout is not None and saved_layout[:2] != _parallel_layout()[:2]:
        raise ValueError(f"{directory} holds distributed-optimizer state for (PP, TP) = {tuple(saved_layout[:2])}, "
                         f"which reshards across data-parallel sizes only, not to {tuple(_parallel_layout()[:2])}; "
                         "resume with the same TP/PP sizes, or pass --no-load-optim to load the weights only")


def _torch_adams(optimizer: Any) -> list[torch.optim.Adam]:
    inners = [inner.optimizer for inner in getattr(optimizer, "chained_optimizers", [optimizer])]
    return [inner for inner in inners if isinstance(inner, torch.optim.Adam)]


def _materialise_adam_state(optimizer: Any) -> None:
    """Give a torch Adam that has not stepped yet zeroed moments and a zero step count (what it would start from):
    Megatron's distributed optimizer reads its inner state to build the state dict to save or load, and without
    Apex/TE's fused Adam (which keeps the step per group) it expects one step value per parameter. On load the
    checkpoint's state then replaces these."""
    for adam in _torch_adams(optimizer):
        if adam.state:
            continue
        for group in adam.param_groups:
            for param in group["params"]:
                adam.state[param] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(param),
                                     "exp_avg_sq": torch.zeros_like(param)}


def _give_sgd_a_state_initialiser(optimizer: Any) -> None:
    """Megatron builds SGD without the state initialiser its loader calls; SGD's only state is the momentum buffer,
    which a fresh SGD creates at its first step, so the initialiser zeroes one per parameter for the checkpoint's
    values to replace."""
    def init_momentum(opt: torch.optim.Optimizer, config: Any = None) -> None:
        for group in opt.param_groups:
            for param in group["params"]:
                opt.state[param].setdefault("momentum_buffer", torch.zeros_like(param))

    for inner in getattr(optimizer, "chained_optimizers", [optimizer]):
        if getattr(inner, "init_state_fn", True) is None and isinstance(inner.optimizer, torch.optim.SGD):
            inner.init_state_fn = init_momentum


def _restore_adam_steps(optimizer: Any) -> None:
    """torch Adam counts steps per parameter; the distributed optimizer's checkpoint keeps one count per group (as
    fused Adam does) and loads it into the groups only. Without this the bias correction would restart."""
    for adam in _torch_adams(optimizer):
        for group in adam.param_groups:
            if "step" not in group:
                continue
            for param in group["params"]:
                if "step" in adam.state.get(param, {}):
                    adam.state[param]["step"] = torch.tensor(float(group["step"]))


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
    common = dist_checkpointing.load_common_state_dict(directory)
    saved_layout = common.get("parallel_layout")
    same_layout = saved_layout == _parallel_layout()
    if full_resume and not same_layout and not args.no_load_rng:
        logger.info("checkpoint layout (PP, TP, DP) %s differs from %s: RNG states are not restored",
                    saved_layout, _parallel_layout())
    with_optimizer = full_resume and not args.no_load_optim and optimizer is not None
    metadata = dist_checkpointing.load_content_metadata(preloaded_state_dict=common) or {}
    if with_optimizer:
        _check_optimizer_state_fits(args, directory, metadata, saved_layout)
        _materialise_adam_state(optimizer)
        _give_sgd_a_state_initialiser(optimizer)
    with_rng = full_resume and same_layout and not args.no_load_rng
    state = _sharded_state_dict(args, model, optimizer, scheduler, loading=True, with_optimizer=with_optimizer,
                                with_rng=with_rng, metadata=metadata)
    strategy = FullyParallelLoadStrategyWrapper(get_default_load_sharded_strategy(directory), _data_parallel_group())
    with cuda_literals_on_cpu():
        try:
            loaded = dist_checkpointing.load(state, directory, sharded_strategy=strategy)
        except (CheckpointException, Exception) as exc:  # noqa: BLE001 - only a shape mismatch is re-worded
            # (torch's CheckpointException, which carries the per-rank errors, is a BaseException)
            mismatch = re.search(r"shape mismatch for loaded \((.*?)\) and expected \((.*?)\) tensor for key (\S+)",
                                 str(exc))
            if mismatch is None:
                raise
            raise UserError(f"the checkpoint {directory} is of another model: {mismatch[3]} has shape "
                            f"{mismatch[1]} there and {mismatch[2]} here (do the model flags match the "
                            "checkpoint's?)") from exc
    # What was asked for, not what is in `loaded`: the checkpoint's non-sharded parts (optimizer param groups
    # among them) always come back.
    # No autograd: in fp32 the distributed optimizer's master shards are views of the (grad-requiring) parameters.
    with torch.no_grad():
        unwrap(model).load_state_dict(loaded["model"])
        if with_optimizer:
            optimizer.load_state_dict(loaded["optimizer"])
            _restore_adam_steps(optimizer)
            scheduler.load_state_dict(loaded["opt_param_scheduler"])
        elif optimizer is not None:
            optimizer.reload_model_params()
    if with_rng:
        _restore_rng(loaded["rng_state"])
    logger.info("loaded checkpoint %s (%s)", directory, "resume" if full_resume else "weights only")
    return int(iteration) if full_resume else 0

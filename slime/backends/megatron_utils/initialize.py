"""Process-group and seed set-up for the Megatron trainer (one process per device, or per CPU worker)."""

from __future__ import annotations

import datetime
import logging
import os
import random
from argparse import Namespace

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state, tensor_parallel

from slime.backends.megatron_utils.checkpoint import finalize_async_save
from slime.backends.megatron_utils.cpu_bridges import apply_cpu_bridges
from slime.utils.device import dist_backend, has_gpu

logger = logging.getLogger(__name__)


def init_distributed(args: Namespace, rank: int = 0, world_size: int = 1) -> None:
    """Join (or, alone, create) the torch.distributed world; MASTER_ADDR/MASTER_PORT come from the environment."""
    apply_cpu_bridges()
    if not dist.is_initialized():
        if has_gpu():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        timeout = datetime.timedelta(minutes=args.distributed_timeout_minutes)
        if world_size == 1:
            # Alone, no rendezvous is needed: an in-memory store avoids picking (and racing for) a port.
            dist.init_process_group(backend=dist_backend(args), store=dist.HashStore(), rank=0, world_size=1,
                                    timeout=timeout)
        else:
            for name in ("MASTER_ADDR", "MASTER_PORT"):
                if name not in os.environ:
                    raise RuntimeError(f"{name} must be set when {world_size} trainer processes join")
            dist.init_process_group(backend=dist_backend(args), rank=rank, world_size=world_size, timeout=timeout)
    args.rank, args.world_size = dist.get_rank(), dist.get_world_size()
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=args.tensor_model_parallel_size,
            pipeline_model_parallel_size=args.pipeline_model_parallel_size,
            context_parallel_size=args.context_parallel_size,
            create_gloo_process_groups=True,
        )
    args.data_parallel_size = parallel_state.get_data_parallel_world_size()
    set_seed(args.seed)


def set_seed(seed: int) -> None:
    """Megatron's seeding: the same weights on every data-parallel rank, distinct dropout streams per TP rank."""
    pp_rank = parallel_state.get_pipeline_model_parallel_rank()
    seed = seed + 100 * pp_rank
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def destroy_distributed() -> None:
    """Leave the world, after finishing any checkpoint still being written in the background (--async-save)."""
    if dist.is_initialized() and parallel_state.model_parallel_is_initialized():
        finalize_async_save(blocking=True)
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()

"""The Megatron trainer of one device (or CPU worker). Plain Python, so tests run it in-process; in a run, each
Ray actor of `slime/ray/train_actor.py` holds one and hands it that rank's shard."""

from __future__ import annotations

import logging
import os
from argparse import Namespace
from typing import Any

import torch
from megatron.core import parallel_state

from slime.backends.megatron_utils.checkpoint import load_checkpoint, save_checkpoint
from slime.backends.megatron_utils.hf_weights import save_hf_weights
from slime.backends.megatron_utils.initialize import init_distributed
from slime.backends.megatron_utils.model import (
    forward_only_loss,
    reset_optimizer_states,
    setup_model_and_optimizer,
    train_one_step,
)
from slime.utils.errors import NotSupportedError
from slime.utils.misc import load_function
from slime.utils.train_data import tensorize

logger = logging.getLogger(__name__)


def _check_advantages(args: Namespace) -> None:
    """slime computes reference/old log-probs, advantages and returns before training unless
    --disable-compute-advantages-and-returns; none of that exists here yet. sft_loss reads none of it."""
    if not args.compute_advantages_and_returns or args.loss_type == "sft_loss" or args.debug_rollout_only:
        return
    if args.loss_type == "policy_loss":
        raise NotSupportedError("--loss-type policy_loss without --disable-compute-advantages-and-returns",
                                "advantages and returns are computed by RL, which arrives with the SGLang rollout")
    logger.warning("--loss-type %s without --disable-compute-advantages-and-returns: advantages, returns and "
                   "log-probs are not computed yet (RL), so the loss receives none of them", args.loss_type)


class MegatronTrainRayActor:
    def __init__(self, world_size: int = 1, rank: int = 0, master_addr: str | None = None,
                 master_port: int | None = None):
        self.world_size, self.rank = world_size, rank
        if master_addr is not None:
            os.environ["MASTER_ADDR"] = master_addr
        if master_port is not None:
            os.environ["MASTER_PORT"] = str(master_port)
        self.args: Namespace | None = None

    def init(self, args: Namespace) -> int:
        """Join the process group, build model/optimizer/scheduler, load weights. Returns the rollout to start at."""
        _check_advantages(args)
        self.args = args
        init_distributed(args, self.rank, self.world_size)
        if args.custom_megatron_init_path:
            load_function(args.custom_megatron_init_path)(args)
        self.model, self.optimizer, self.scheduler = setup_model_and_optimizer(args)
        # Hooks are loaded now, so that a bad path fails at start-up rather than after the first rollout.
        self.postprocess = load_function(args.rollout_data_postprocess_path) if args.rollout_data_postprocess_path \
            else None
        self.before_train_step = load_function(args.custom_megatron_before_train_step_hook_path) \
            if args.custom_megatron_before_train_step_hook_path else None
        loaded_iteration = load_checkpoint(args, self.model, self.optimizer, self.scheduler)
        start = args.start_rollout_id if args.start_rollout_id is not None else max(loaded_iteration, -1) + 1
        logger.info("trainer rank %d/%d ready; starting at rollout %d", self.rank, self.world_size, start)
        return start

    def data_parallel_rank(self) -> int:
        return parallel_state.get_data_parallel_rank()

    def train(self, rollout_id: int, rollout_data: dict[str, Any]) -> list[dict[str, float]]:
        """Train on this data-parallel rank's shard (from `split_train_data_by_dp`); one entry per optimizer step."""
        if self.args.debug_rollout_only:  # slime's rollout-only debug mode: generate, never train
            return []
        shard = tensorize(rollout_data)
        if self.postprocess is not None:
            self.postprocess(self.args, rollout_id, shard)
        reset_optimizer_states(self.args, self.optimizer)  # with --reset-optimizer-states, as slime does per rollout
        step_metrics = []
        num_steps = len(shard["micro_batches"])
        for step_id, micro_batches in enumerate(shard["micro_batches"]):
            if self.before_train_step is not None:
                self.before_train_step(self.args, rollout_id, step_id, self.model, self.optimizer, self.scheduler)
            metrics = train_one_step(self.args, self.model, self.optimizer, self.scheduler, shard, micro_batches,
                                     shard["global_batch_sizes"][step_id])
            metrics.update(rollout_id=rollout_id, step=rollout_id * num_steps + step_id)
            step_metrics.append(metrics)
            if self.rank == 0 and (metrics["step"] + 1) % self.args.log_interval == 0:
                logger.info(
                    "rollout %d step %d: loss %.4f | lr %.3g | grad norm %.3f | %.0f tokens/s | %.3f TFLOP/s | MFU %.1f%%",
                    rollout_id, step_id, metrics.get("loss", float("nan")), metrics["lr"], metrics["grad_norm"],
                    metrics["tokens_per_s"], metrics["tflops"], 100 * metrics["mfu"],
                )
        if self.args.save_debug_train_data:
            self._save_debug_train_data(rollout_id, shard)
        return step_metrics

    def _save_debug_train_data(self, rollout_id: int, shard: dict[str, Any]) -> None:
        """slime's dump: `{rollout_id, rank, rollout_data}` at the template formatted with rollout_id and rank."""
        path = self.args.save_debug_train_data.format(rollout_id=rollout_id, rank=self.rank)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        # Written whole, then renamed: ranks sharing a template without {rank} must not interleave their bytes.
        staging = f"{path}.{os.getpid()}.tmp"
        torch.save({"rollout_id": rollout_id, "rank": self.rank, "rollout_data": shard}, staging)
        os.replace(staging, path)
        logger.info("saved the train data of rollout %d (rank %d) to %s", rollout_id, self.rank, path)

    def eval_loss(self, eval_data: dict[str, Any]) -> dict[str, float]:
        shard = tensorize(eval_data)
        micro_batches = [mb for step in shard["micro_batches"] for mb in step]
        return forward_only_loss(self.args, self.model, shard, micro_batches)

    def save_model(self, rollout_id: int) -> None:
        if self.args.save:
            save_checkpoint(self.args, rollout_id, self.model, self.optimizer, self.scheduler)
        if self.args.save_hf:
            save_hf_weights(self.model, self.args, self.args.save_hf.format(rollout_id=rollout_id),
                            origin_hf_dir=self.args.hf_checkpoint)

    def update_weights(self) -> None:
        """Push the weights to the inference engines. No run starts an engine yet (every flag that would is refused
        as not supported), so, as in slime without engines, there is nothing to push."""

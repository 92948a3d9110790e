"""The training actor: one per device (or CPU worker). Plain Python, so tests run it in-process; the Ray layer
(`slime/ray/`) wraps the same class as a remote actor."""

from __future__ import annotations

import logging
import os
from argparse import Namespace
from typing import Any

from slime.backends.megatron_utils.checkpoint import load_checkpoint, save_checkpoint
from slime.backends.megatron_utils.hf_weights import save_hf_weights
from slime.backends.megatron_utils.initialize import init_distributed
from slime.backends.megatron_utils.model import forward_only_loss, setup_model_and_optimizer, train_one_step
from slime.utils.train_data import tensorize

logger = logging.getLogger(__name__)


class MegatronTrainRayActor:
    def __init__(self, world_size: int = 1, rank: int = 0, master_addr: str | None = None,
                 master_port: int | None = None):
        self.world_size, self.rank = world_size, rank
        if master_addr is not None:
            os.environ["MASTER_ADDR"] = master_addr
        if master_port is not None:
            os.environ["MASTER_PORT"] = str(master_port)
        self.args: Namespace | None = None

    def init(self, args: Namespace, role: str = "actor", with_ref: bool = False) -> int:
        """Join the process group, build model/optimizer/scheduler, load weights. Returns the rollout to start at."""
        if role != "actor" or with_ref:
            raise NotImplementedError("only the SFT/actor role without a reference model is implemented so far")
        self.args = args
        init_distributed(args, self.rank, self.world_size)
        self.model, self.optimizer, self.scheduler = setup_model_and_optimizer(args)
        loaded_iteration = load_checkpoint(args, self.model, self.optimizer, self.scheduler)
        start = args.start_rollout_id if args.start_rollout_id is not None else max(loaded_iteration, -1) + 1
        logger.info("trainer rank %d/%d ready; starting at rollout %d", self.rank, self.world_size, start)
        return start

    def train(self, rollout_id: int, rollout_data: dict[str, Any]) -> list[dict[str, float]]:
        """Train on this data-parallel rank's shard (from `split_train_data_by_dp`); one entry per optimizer step."""
        shard = tensorize(rollout_data)
        step_metrics = []
        for step_id, micro_batches in enumerate(shard["micro_batches"]):
            metrics = train_one_step(self.args, self.model, self.optimizer, self.scheduler, shard, micro_batches,
                                     shard["global_batch_sizes"][step_id])
            metrics.update(rollout_id=rollout_id, step=rollout_id * len(shard["micro_batches"]) + step_id)
            step_metrics.append(metrics)
            if self.rank == 0:
                logger.info(
                    "rollout %d step %d: loss %.4f | lr %.3g | grad norm %.3f | %.0f tokens/s | %.3f TFLOP/s | MFU %.1f%%",
                    rollout_id, step_id, metrics.get("loss", float("nan")), metrics["lr"], metrics["grad_norm"],
                    metrics["tokens_per_s"], metrics["tflops"], 100 * metrics["mfu"],
                )
        return step_metrics

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
        """Push weights to the inference engines. SFT (--debug-train-only) has none, so this does nothing."""
        if self.args.debug_train_only:
            return
        raise NotImplementedError("weight sync to SGLang engines arrives with the RL rollout")

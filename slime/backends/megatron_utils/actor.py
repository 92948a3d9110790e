"""The Megatron trainer of one device (or CPU worker). Plain Python, so tests run it in-process; in a run, each
Ray actor of `slime/ray/train_actor.py` holds one and hands it that rank's shard."""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import time
from argparse import Namespace
from typing import Any

import torch
from megatron.core import parallel_state

from slime.backends.megatron_utils.advantages import compute_advantages_and_returns
from slime.backends.megatron_utils.checkpoint import load_checkpoint, save_checkpoint
from slime.backends.megatron_utils.hf_weights import save_hf_weights
from slime.backends.megatron_utils.initialize import init_distributed
from slime.backends.megatron_utils.model import (
    compute_log_probs,
    compute_values,
    forward_only_loss,
    reset_optimizer_states,
    setup_model_and_optimizer,
    train_one_step,
)
from slime.backends.megatron_utils.model_provider import is_critic
from slime.backends.megatron_utils.offload import TrainerMemory
from slime.backends.megatron_utils.reference import ReferenceWeights
from slime.utils.device import has_gpu
from slime.utils.misc import load_function
from slime.utils.train_data import tensorize

logger = logging.getLogger(__name__)


def needs_old_log_probs(args: Namespace, num_steps: int) -> bool:
    """Whether the old policy's log-probs need their own forward pass. With one optimizer step per rollout the
    policy has not moved when the step starts, so the old log-probs are the current ones, detached, and the loss
    takes them from its own forward: a saving slime makes under the same conditions. Anything that reads the old
    log-probs outside the ratio (TIS, mismatch metrics, KL reward shaping, GSPO's sequence ratio, OPSM, a critic, custom
    advantages or losses), or dropout (which makes the training forward differ from an eval forward), needs the pass."""
    if args.use_rollout_logprobs:
        return False  # the engines' log-probs are the old policy
    return (num_steps > 1 or args.loss_type != "policy_loss" or args.kl_coef != 0 or args.use_tis
            or args.get_mismatch_metrics or args.use_critic
            or args.advantage_estimator == "gspo" or bool(args.custom_advantage_function_path)
            or args.use_opsm or args.attention_dropout > 0 or args.hidden_dropout > 0)


def _without_kl_shaping(args: Namespace) -> Namespace:
    critic_args = copy.copy(args)
    critic_args.kl_coef = 0.0
    return critic_args


def is_rl(args: Namespace) -> bool:
    """RL training: the trainer computes log-probs and advantages before the steps (slime's switch)."""
    return args.compute_advantages_and_returns and args.loss_type != "sft_loss"


class MegatronTrainRayActor:
    def __init__(self, world_size: int = 1, rank: int = 0, master_addr: str | None = None,
                 master_port: int | None = None):
        self.world_size, self.rank = world_size, rank
        if master_addr is not None:
            os.environ["MASTER_ADDR"] = master_addr
        if master_port is not None:
            os.environ["MASTER_PORT"] = str(master_port)
        self.args: Namespace | None = None
        self.reference: ReferenceWeights | None = None
        self.weight_updater: Any = None
        self.memory: TrainerMemory | None = None  # --offload-train on GPUs
        self.last_values: list[torch.Tensor] | None = None  # the critic's, of its last shard
        self.logged_skip = False
        # When `init` finished each of its steps (time.time()), for the driver's start-up report.
        self.startup: dict[str, float] = {}

    def init(self, args: Namespace) -> int:
        """Join the process group, build model/optimizer/scheduler, load weights. Returns the rollout to start at."""
        self.args = args
        init_distributed(args, self.rank, self.world_size)
        self.startup["process_group"] = time.time()
        if args.custom_megatron_init_path:
            load_function(args.custom_megatron_init_path)(args)
        self.model, self.optimizer, self.scheduler = setup_model_and_optimizer(args)
        self.startup["model_and_optimizer"] = time.time()
        if args.offload_train:
            if has_gpu():
                self.memory = TrainerMemory(self.model, self.optimizer, "cuda")
            elif self.rank == 0:
                logger.info("--offload-train: CPU trainers keep their memory (a no-op without GPUs)")
        # Hooks are loaded now, so that a bad path fails at start-up rather than after the first rollout.
        self.postprocess = load_function(args.rollout_data_postprocess_path) if args.rollout_data_postprocess_path \
            else None
        self.before_train_step = load_function(args.custom_megatron_before_train_step_hook_path) \
            if args.custom_megatron_before_train_step_hook_path else None
        loaded_iteration = load_checkpoint(args, self.model, self.optimizer, self.scheduler)
        if is_rl(args) and not is_critic(args) and (args.use_kl_loss or args.kl_coef != 0):
            self.reference = ReferenceWeights.load(args, self.model)
        self.startup["weights_loaded"] = time.time()
        start = args.start_rollout_id if args.start_rollout_id is not None else max(loaded_iteration, -1) + 1
        # The weight version the engines serve: the number of rollouts the weights were trained on, so a resumed
        # run continues the count of the run it resumes.
        self.weight_version = start
        logger.info("trainer rank %d/%d ready; starting at rollout %d", self.rank, self.world_size, start)
        return start

    def data_parallel_rank(self) -> int:
        return parallel_state.get_data_parallel_rank()

    def train(self, rollout_id: int, rollout_data: dict[str, Any],
              values: list[torch.Tensor] | None = None) -> list[dict[str, float]]:
        """Train on this data-parallel rank's shard (from `split_train_data_by_dp`); one entry per optimizer step.
        `values`: the critic's values of the same shard (PPO)."""
        if self.args.debug_rollout_only:  # slime's rollout-only debug mode: generate, never train
            return []
        if self.memory is not None:
            self.memory.wake_up()  # awake until the driver puts the trainer to sleep again after its save
        shard = tensorize(rollout_data)
        if values is not None:
            shard["values"] = values
        if is_critic(self.args):
            prepare_metrics = self._prepare_critic_data(shard)
        else:
            prepare_metrics = self._prepare_rl_data(rollout_id, shard) if is_rl(self.args) else {}
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
            metrics.update(rollout_id=rollout_id, step=rollout_id * num_steps + step_id, **prepare_metrics)
            step_metrics.append(metrics)
            if self.rank == 0 and (metrics["step"] + 1) % self.args.log_interval == 0:
                logger.info(
                    "rollout %d step %d: loss %.4f | lr %.3g | grad norm %.3f | %.0f tokens/s | %.3f TFLOP/s | MFU %.1f%%",
                    rollout_id, step_id, metrics.get("loss", float("nan")), metrics["lr"], metrics["grad_norm"],
                    metrics["tokens_per_s"], metrics["tflops"], 100 * metrics["mfu"],
                )
        if self.args.save_debug_train_data:
            self._save_debug_train_data(rollout_id, shard)
        if self.reference is not None and self.args.ref_update_interval \
                and (rollout_id + 1) % self.args.ref_update_interval == 0:
            self.reference.refresh_from(self.model)
            logger.info("reference model refreshed from the actor after rollout %d", rollout_id)
        self.weight_version = rollout_id + 1
        return step_metrics

    def _prepare_critic_data(self, shard: dict[str, Any]) -> dict[str, float]:
        """The critic's values of the shard (its old values, for the clipped value loss and for the actor's GAE),
        then the returns it regresses on. Like slime's critic it holds no log-probs, so its returns carry no KL
        penalty."""
        started = time.perf_counter()
        shard["values"] = compute_values(self.args, self.model, shard)
        self.last_values = shard["values"]
        compute_advantages_and_returns(_without_kl_shaping(self.args), shard)
        return {"values_time": time.perf_counter() - started}

    def critic_values(self) -> list[torch.Tensor]:
        """The values of the last shard the critic trained on, computed before its steps (what the actor's GAE
        uses for that rollout)."""
        assert self.last_values is not None, "critic_values before the critic trained"
        return self.last_values

    def sleep(self) -> None:
        """--offload-train: free this trainer's device memory (parameters and optimizer state to host memory,
        gradients dropped) until it next trains; the engines generate in the memory meanwhile."""
        if self.memory is None:
            return
        freed = self.memory.sleep()
        if self.rank == 0 and freed:
            logger.info("trainer asleep: %.2f GiB of device memory freed", freed / 2**30)

    def _awake(self, parameters_only: bool = False) -> contextlib.AbstractContextManager:
        """`TrainerMemory.awake` under --offload-train on GPUs; nothing to wake otherwise."""
        return self.memory.awake(parameters_only) if self.memory is not None else contextlib.nullcontext()

    def _prepare_rl_data(self, rollout_id: int, shard: dict[str, Any]) -> dict[str, float]:
        """Reference and old log-probs (forward-only passes), then advantages and returns, into the shard.
        Returns the time each part took (reported with every step of the rollout)."""
        args, timings = self.args, {}
        if self.reference is not None:
            started = time.perf_counter()
            with self.reference.swapped_in(self.model):
                shard["ref_log_probs"] = compute_log_probs(args, self.model, shard)
            timings["ref_log_probs_time"] = time.perf_counter() - started
        if needs_old_log_probs(args, len(shard["micro_batches"])):
            started = time.perf_counter()
            shard["log_probs"] = compute_log_probs(args, self.model, shard)
            timings["log_probs_time"] = time.perf_counter() - started
        elif not self.logged_skip and not args.use_rollout_logprobs:
            self.logged_skip = True
            if self.rank == 0:
                logger.info("one optimizer step per rollout: the old log-probs are the current ones (detached), so "
                            "their forward pass is skipped")
        started = time.perf_counter()
        compute_advantages_and_returns(args, shard)
        timings["advantages_time"] = time.perf_counter() - started
        return timings

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
        with self._awake():
            return forward_only_loss(self.args, self.model, shard, micro_batches)

    def save_model(self, rollout_id: int) -> None:
        with self._awake():
            if self.args.save:
                save_checkpoint(self.args, rollout_id, self.model, self.optimizer, self.scheduler)
            if self.args.save_hf:
                save_hf_weights(self.model, self.args, self.args.save_hf.format(rollout_id=rollout_id),
                                origin_hf_dir=self.args.hf_checkpoint)

    def connect_engines(self, engine_urls: list[str]) -> None:
        """The engines this trainer pushes its weights to (their own server addresses)."""
        from slime.backends.megatron_utils.update_weight import build_weight_updater

        if self.weight_updater is not None:  # engines restarted (--use-fault-tolerance): new addresses, new group
            self.weight_updater.close()
        self.weight_updater = build_weight_updater(self.args, self.model, engine_urls)

    def update_weights(self) -> dict[str, float]:
        """Push the weights to the inference engines, as weight version `self.weight_version` (the number of
        rollouts trained on). Without engines (SFT, replayed rollouts) there is nothing to push."""
        if self.weight_updater is None:
            return {}
        with self._awake(parameters_only=True):
            return self.weight_updater.update(self.weight_version)

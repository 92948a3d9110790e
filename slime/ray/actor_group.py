"""N training actors, one per device (or CPU worker), forming one torch.distributed world."""

from __future__ import annotations

import logging
import time
from argparse import Namespace
from typing import Any

import ray

from slime.ray.placement_group import Placement
from slime.ray.train_actor import TrainRayActor

logger = logging.getLogger(__name__)
WAIT_LOG_INTERVAL_S = 30.0


def wait_all(refs: list, what: str) -> list:
    """Results of all refs; the first failure raises at once (with the remote traceback) instead of waiting for
    peers that may never finish, and a long wait says what it waits for."""
    results: dict[Any, Any] = {}
    pending = list(refs)
    started = last_log = time.monotonic()
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=1.0)
        for ref in ready:
            results[ref] = ray.get(ref)
        if time.monotonic() - last_log > WAIT_LOG_INTERVAL_S:
            last_log = time.monotonic()
            logger.info("waiting for %s: %d of %d done after %.0f s", what, len(refs) - len(pending), len(refs),
                        last_log - started)
    return [results[ref] for ref in refs]


class RayTrainGroup:
    """The actor's trainers, or the critic's (PPO), which share the actor's devices and layout as in slime."""

    def __init__(self, args: Namespace, placement: Placement):
        world_size = args.actor_num_nodes * args.actor_num_gpus_per_node
        self.role = args.role
        env = {k: str(v) for k, v in args.train_env_vars.items()}
        actor_class = ray.remote(TrainRayActor)
        # Sharing devices with the engines (slime's fractions: trainer 0.4, engine 0.2 of a GPU bundle).
        # With a critic, actor and critic trainers take turns on the same bundles (on CPU, the same cores).
        share = 0.4 if args.use_critic or (placement.uses_gpus and (args.colocate or args.debug_rollout_only)) else 1
        self.engines_connected = False
        self.startup: dict[str, float] = {}
        self.data_parallel_ranks: list[int] = []  # per trainer, from `init`: which shard it is given
        self.actors = [
            actor_class.options(
                num_cpus=share * placement.cpus_per_bundle,
                num_gpus=share if placement.uses_gpus else 0,
                scheduling_strategy=placement.strategy(rank),
                runtime_env={"env_vars": env} if env else None,
            ).remote(world_size, rank)
            for rank in range(world_size)
        ]

    def init(self, args: Namespace) -> int:
        """Build every trainer (model, optimizer, weights); returns the rollout to start at. `startup` then holds
        when the slowest trainer reached each start-up milestone."""
        address, port = wait_all([self.actors[0].rendezvous_address.remote()], "the trainers to start")[0]
        results = wait_all([actor.init.remote(args, address, port) for actor in self.actors],
                           "trainers to initialise")
        starts = [start for start, _, _ in results]
        if len(set(starts)) != 1:
            raise RuntimeError(f"trainers disagree on the rollout to start at: {starts}")
        self.startup = {key: max(startup[key] for _, startup, _ in results) for key in results[0][1]}
        self.data_parallel_ranks = [rank for _, _, rank in results]
        return starts[0]

    def train(self, rollout_id: int, shards: list, values: list | None = None) -> list[dict[str, float]]:
        """`shards`: refs to the rollout's shards, one per data-parallel rank (`request_rollout`); `values`: per
        trainer, the critic's values of its shard (object refs from `critic_values`)."""
        return self.finish_train(rollout_id, self.start_train(rollout_id, shards, values))

    def start_train(self, rollout_id: int, shards: list, values: list | None = None) -> list:
        """Ask every trainer for its step on `rollout_id`, without waiting: `finish_train` waits for the metrics.
        Each is given its own shard's ref as an argument, which Ray resolves for it alone."""
        return [a.train.remote(rollout_id, shards[self.data_parallel_ranks[rank]], values[rank] if values else None)
                for rank, a in enumerate(self.actors)]

    def finish_train(self, rollout_id: int, refs: list) -> list[dict[str, float]]:
        return wait_all(refs, f"the {self.role} training on rollout {rollout_id}")[0]

    def critic_values(self) -> list:
        """Refs to each critic rank's values of its last shard, handed to the same actor rank without a copy
        through the driver."""
        return [a.critic_values.remote() for a in self.actors]

    def eval_loss(self, shards: list) -> dict[str, float]:
        return wait_all([a.eval_loss.remote(shards[self.data_parallel_ranks[rank]])
                         for rank, a in enumerate(self.actors)], "the validation loss")[0]

    def save_model(self, rollout_id: int) -> None:
        wait_all([a.save_model.remote(rollout_id) for a in self.actors], f"the checkpoint of rollout {rollout_id}")

    def connect_engines(self, engine_urls: list[str]) -> None:
        wait_all([a.connect_engines.remote(engine_urls) for a in self.actors], "trainers to reach the engines")
        self.engines_connected = True

    def sleep(self) -> None:
        """--offload-train: the trainers free their device memory until they next train."""
        wait_all([a.sleep.remote() for a in self.actors], f"the {self.role} trainers to release their memory")

    def update_weights(self) -> dict[str, float]:
        """Every trainer takes part (tensor-parallel gathers); rank 0 reports the sync's metrics. Without engines
        (SFT, replayed rollouts) there is nothing to push, and no round trip to the trainers after every step."""
        if not self.engines_connected:
            return {}
        return wait_all([a.update_weights.remote() for a in self.actors], "the weight update")[0]

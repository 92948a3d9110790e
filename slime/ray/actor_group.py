"""N training actors, one per device (or CPU worker), forming one torch.distributed world."""

from __future__ import annotations

import logging
import time
from argparse import Namespace
from typing import Any

import ray

from slime.ray.placement_group import Placement
from slime.ray.train_actor import TrainRayActor
from slime.utils.misc import free_port

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


@ray.remote(num_cpus=0)
def _rendezvous_address() -> tuple[str, int]:
    return ray.util.get_node_ip_address(), free_port()


class RayTrainGroup:
    """The actor's trainers, or the critic's (PPO), which share the actor's devices and layout as in slime."""

    def __init__(self, args: Namespace, placement: Placement):
        world_size = args.actor_num_nodes * args.actor_num_gpus_per_node
        self.role = args.role
        env = {k: str(v) for k, v in args.train_env_vars.items()}
        address, port = ray.get(_rendezvous_address.options(scheduling_strategy=placement.strategy(0)).remote())
        actor_class = ray.remote(TrainRayActor)
        # Sharing devices with the engines (slime's fractions: trainer 0.4, engine 0.2 of a GPU bundle).
        # With a critic, actor and critic trainers take turns on the same bundles (on CPU, the same cores).
        share = 0.4 if args.use_critic or (placement.uses_gpus and (args.colocate or args.debug_rollout_only)) else 1
        self.actors = [
            actor_class.options(
                num_cpus=share,
                num_gpus=share if placement.uses_gpus else 0,
                scheduling_strategy=placement.strategy(rank),
                runtime_env={"env_vars": env} if env else None,
            ).remote(world_size, rank, address, port)
            for rank in range(world_size)
        ]

    def init(self, args: Namespace) -> int:
        starts = wait_all([actor.init.remote(args) for actor in self.actors], "trainers to initialise")
        if len(set(starts)) != 1:
            raise RuntimeError(f"trainers disagree on the rollout to start at: {starts}")
        return starts[0]

    def train(self, rollout_id: int, boxes: list, values: list | None = None) -> list[dict[str, float]]:
        """`values`: per rank, the critic's values of its shard (object refs from `critic_values`)."""
        refs = [a.train.remote(rollout_id, boxes, values[rank] if values else None)
                for rank, a in enumerate(self.actors)]
        return wait_all(refs, f"the {self.role} training on rollout {rollout_id}")[0]

    def critic_values(self) -> list:
        """Refs to each critic rank's values of its last shard, handed to the same actor rank without a copy
        through the driver."""
        return [a.critic_values.remote() for a in self.actors]

    def eval_loss(self, boxes: list) -> dict[str, float]:
        return wait_all([a.eval_loss.remote(boxes) for a in self.actors], "the validation loss")[0]

    def save_model(self, rollout_id: int) -> None:
        wait_all([a.save_model.remote(rollout_id) for a in self.actors], f"the checkpoint of rollout {rollout_id}")

    def connect_engines(self, engine_urls: list[str]) -> None:
        wait_all([a.connect_engines.remote(engine_urls) for a in self.actors], "trainers to reach the engines")

    def sleep(self) -> None:
        """--offload-train: the trainers free their device memory until they next train."""
        wait_all([a.sleep.remote() for a in self.actors], f"the {self.role} trainers to release their memory")

    def update_weights(self) -> dict[str, float]:
        """Every trainer takes part (tensor-parallel gathers); rank 0 reports the sync's metrics."""
        return wait_all([a.update_weights.remote() for a in self.actors], "the weight update")[0]

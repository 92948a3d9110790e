"""The trainer as a Ray actor: it holds a backend trainer object (Megatron's) and gives it this rank's shard.

The backend is imported inside the actor process, never by the driver: the driver stays free of Megatron (and its
import time and CUDA libraries), and the backend runs without Ray in tests.
"""

from __future__ import annotations

import time
from argparse import Namespace
from typing import Any

import ray

from slime.utils.logging_utils import configure_worker_process
from slime.utils.misc import free_port, process_start_time


class TrainRayActor:
    """Created as soon as the placement group is: the backend's imports (torch, Megatron: seconds) run while the
    rollout manager starts and the driver learns the run length; `init` then builds the trainer."""

    def __init__(self, world_size: int, rank: int):
        # When this trainer's start-up milestones were reached (time.time()), for the driver's start-up report.
        self.startup = {"process_started": process_start_time()}
        configure_worker_process()  # before the backend's imports: Megatron's import-time notes are silenced
        from slime.backends.megatron_utils.actor import MegatronTrainRayActor

        self.backend_class = MegatronTrainRayActor
        self.world_size, self.rank = world_size, rank
        self.backend: Any = None
        self.startup["imported"] = time.time()

    def rendezvous_address(self) -> tuple[str, int]:
        """(this node's address, a free port on it): where the trainers' process group meets (asked of rank 0)."""
        return ray.util.get_node_ip_address(), free_port()

    def init(self, args: Namespace, master_addr: str, master_port: int) -> tuple[int, dict[str, float], int]:
        """Build the trainer; returns the rollout to start at, the start-up milestones and this trainer's
        data-parallel rank (whose shard it is given: its tensor-parallel peers get the same one)."""
        self.startup["init_started"] = time.time()
        self.backend = self.backend_class(self.world_size, self.rank, master_addr, master_port)
        start = self.backend.init(args)
        self.startup.update(self.backend.startup)  # process group, model and optimizer, weights loaded
        self.startup["initialised"] = time.time()
        return start, self.startup, self.backend.data_parallel_rank()

    def train(self, rollout_id: int, shard: dict[str, Any], values: Any = None) -> list[dict[str, float]]:
        return self.backend.train(rollout_id, shard, values)

    def critic_values(self) -> Any:
        return self.backend.critic_values()

    def eval_loss(self, shard: dict[str, Any]) -> dict[str, float]:
        return self.backend.eval_loss(shard)

    def save_model(self, rollout_id: int) -> None:
        self.backend.save_model(rollout_id)

    def connect_engines(self, engine_urls: list[str]) -> None:
        self.backend.connect_engines(engine_urls)

    def update_weights(self) -> dict[str, float]:
        return self.backend.update_weights()

    def sleep(self) -> None:
        self.backend.sleep()

"""The trainer as a Ray actor: it holds a backend trainer object (Megatron's) and gives it this rank's shard.

The backend is imported inside the actor process, never by the driver: the driver stays free of Megatron (and its
import time and CUDA libraries), and the backend runs without Ray in tests.
"""

from __future__ import annotations

from argparse import Namespace
from typing import Any

import ray


class TrainRayActor:
    def __init__(self, world_size: int, rank: int, master_addr: str, master_port: int):
        from slime.backends.megatron_utils.actor import MegatronTrainRayActor

        self.backend = MegatronTrainRayActor(world_size, rank, master_addr, master_port)

    def _my_shard(self, boxes: list) -> dict[str, Any]:
        # Every tensor-parallel peer of a data-parallel rank fetches the same shard.
        return ray.get(boxes[self.backend.data_parallel_rank()].inner)

    def init(self, args: Namespace) -> int:
        return self.backend.init(args)

    def train(self, rollout_id: int, boxes: list, values: Any = None) -> list[dict[str, float]]:
        return self.backend.train(rollout_id, self._my_shard(boxes), values)

    def critic_values(self) -> Any:
        return self.backend.critic_values()

    def eval_loss(self, boxes: list) -> dict[str, float]:
        return self.backend.eval_loss(self._my_shard(boxes))

    def save_model(self, rollout_id: int) -> None:
        self.backend.save_model(rollout_id)

    def connect_engines(self, engine_urls: list[str]) -> None:
        self.backend.connect_engines(engine_urls)

    def update_weights(self) -> dict[str, float]:
        return self.backend.update_weights()

    def sleep(self) -> None:
        self.backend.sleep()

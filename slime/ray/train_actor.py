"""The trainer as a Ray actor: the in-process `MegatronTrainRayActor`, plus fetching this rank's shard."""

from __future__ import annotations

from typing import Any

import ray
from megatron.core import parallel_state

from slime.backends.megatron_utils.actor import MegatronTrainRayActor


class TrainRayActor(MegatronTrainRayActor):
    def _my_shard(self, boxes: list) -> dict[str, Any]:
        # Every TP/PP peer of a data-parallel rank fetches the same shard.
        return ray.get(boxes[parallel_state.get_data_parallel_rank()].inner)

    def train(self, rollout_id: int, boxes: list) -> list[dict[str, float]]:  # type: ignore[override]
        return super().train(rollout_id, self._my_shard(boxes))

    def eval_loss(self, boxes: list) -> dict[str, float]:  # type: ignore[override]
        return super().eval_loss(self._my_shard(boxes))

    def fail_for_test(self, message: str) -> None:
        """Raise in this actor (used by tests of failure handling)."""
        raise RuntimeError(message)

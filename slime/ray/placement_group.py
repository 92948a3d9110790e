"""One placement group for the training actors (and, in RL, the inference engines), ordered by node and device.

On a GPU cluster each bundle is one GPU; on a machine without GPUs each bundle is one CPU worker, so slime's own
`--actor-num-gpus-per-node N` runs N CPU trainers unchanged. A cluster that lacks what is asked for is an error that
says how much was asked and how much exists, never an endless wait.
"""

from __future__ import annotations

import logging
import socket
from argparse import Namespace
from dataclasses import dataclass

import ray
from ray.util.placement_group import PlacementGroup, placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from slime.utils.errors import UserError

logger = logging.getLogger(__name__)

PLACEMENT_TIMEOUT_S = 60


class ClusterResourceError(UserError, RuntimeError):
    """The Ray cluster does not have the devices the flags ask for."""


@dataclass
class Placement:
    pg: PlacementGroup | None
    bundle_indices: list[int]  # bundles in (node, device) order
    uses_gpus: bool

    def strategy(self, rank: int) -> PlacementGroupSchedulingStrategy:
        return PlacementGroupSchedulingStrategy(placement_group=self.pg,
                                                placement_group_bundle_index=self.bundle_indices[rank])


def placement_layout(args: Namespace) -> tuple[int, int]:
    """(devices to reserve, offset of the rollout engines' devices), as slime lays them out."""
    actor = args.actor_num_nodes * args.actor_num_gpus_per_node
    if args.debug_train_only:
        return actor, 0
    # External engines (--rollout-external-engine-addrs) run elsewhere: nothing to reserve for them.
    rollout = 0 if args.rollout_external else (args.rollout_num_gpus or 0)
    if args.debug_rollout_only:  # the (idle) trainers share the engines' devices, or have their own when none
        return rollout or actor, 0
    if args.colocate:
        return max(actor, rollout), 0
    return actor + rollout, actor


@ray.remote(num_cpus=0)
def _bundle_location() -> tuple[str, list[int]]:
    return ray.util.get_node_ip_address(), [int(g) for g in ray.get_gpu_ids()]


def _ip_sort_key(ip: str) -> tuple:
    try:
        return tuple(int(part) for part in socket.inet_aton(ip))
    except OSError:
        return (ip,)


def create_placement_group(num_devices: int) -> Placement:
    if num_devices == 0:
        return Placement(None, [], False)
    resources = ray.cluster_resources()
    uses_gpus = resources.get("GPU", 0) > 0
    kind = "GPU" if uses_gpus else "CPU"
    available = int(resources.get(kind, 0))
    if num_devices > available:
        raise ClusterResourceError(
            f"the flags ask for {num_devices} {kind}s (--actor-num-nodes x --actor-num-gpus-per-node, plus rollout "
            f"GPUs), but the Ray cluster has {available} {kind}s ({dict(resources)})"
        )
    bundle = {"GPU": 1, "CPU": 1} if uses_gpus else {"CPU": 1}
    pg = placement_group([dict(bundle) for _ in range(num_devices)], strategy="PACK")
    try:
        ray.get(pg.ready(), timeout=PLACEMENT_TIMEOUT_S)
    except ray.exceptions.GetTimeoutError:
        ray.util.remove_placement_group(pg)
        raise ClusterResourceError(
            f"{num_devices} {kind} bundles could not be placed within {PLACEMENT_TIMEOUT_S} s; free resources now: "
            f"{ray.available_resources()}"
        ) from None
    locations = ray.get([
        _bundle_location.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
            placement_group=pg, placement_group_bundle_index=i)).remote()
        for i in range(num_devices)
    ])
    order = sorted(range(num_devices), key=lambda i: (_ip_sort_key(locations[i][0]), locations[i][1], i))
    logger.info("placement group of %d %s bundles on nodes %s", num_devices, kind,
                sorted({locations[i][0] for i in order}))
    return Placement(pg, order, uses_gpus)


def create_placement_groups(args: Namespace) -> dict[str, Placement]:
    num_devices, rollout_offset = placement_layout(args)
    placement = create_placement_group(num_devices)
    actor_count = args.actor_num_nodes * args.actor_num_gpus_per_node
    return {
        "actor": Placement(placement.pg, placement.bundle_indices[:actor_count], placement.uses_gpus),
        "rollout": Placement(placement.pg, placement.bundle_indices[rollout_offset:], placement.uses_gpus),
    }

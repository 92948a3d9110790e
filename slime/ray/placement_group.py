"""One placement group for the training actors (and, in RL, the inference engines), ordered by node and device.

On a GPU cluster each bundle is one GPU; on a machine without GPUs each bundle is one CPU worker, so slime's own
`--actor-num-gpus-per-node N` runs N CPU trainers unchanged. A CPU worker gets an equal share of its node's cores
(see `cpus_per_worker`). A cluster that lacks what is asked for is an error that says how much was asked and how
much exists, never an endless wait.
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
    cpus_per_bundle: int = 1

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
def _bundle_gpu_ids() -> list[int]:
    return [int(g) for g in ray.get_gpu_ids()]


def _ip_sort_key(ip: str) -> tuple:
    try:
        return tuple(int(part) for part in socket.inet_aton(ip))
    except OSError:
        return (ip,)


def cpus_per_worker(node_cpus: list[int], workers: int) -> int:
    """The most cores each of `workers` CPU workers can reserve, the workers spread over nodes with `node_cpus`
    cores. Ray gives an actor as many torch threads as cores it reserves (OMP_NUM_THREADS), so one core per worker
    would leave a trainer with 1 thread on a machine of 2 cores and 1 trainer, ~1.4x slower than the same step
    run in process."""
    cpus = max(1, sum(node_cpus) // workers)
    while cpus > 1 and sum(n // cpus for n in node_cpus) < workers:
        cpus -= 1
    return cpus


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
    cpus = 1 if uses_gpus else cpus_per_worker(
        [int(node["Resources"].get("CPU", 0)) for node in ray.nodes() if node["Alive"]], num_devices)
    bundle = {"GPU": 1, "CPU": 1} if uses_gpus else {"CPU": cpus}
    pg = placement_group([dict(bundle) for _ in range(num_devices)], strategy="PACK")
    try:
        ray.get(pg.ready(), timeout=PLACEMENT_TIMEOUT_S)
    except ray.exceptions.GetTimeoutError:
        ray.util.remove_placement_group(pg)
        raise ClusterResourceError(
            f"{num_devices} {kind} bundles could not be placed within {PLACEMENT_TIMEOUT_S} s; free resources now: "
            f"{ray.available_resources()}"
        ) from None
    addresses = {node["NodeID"]: node["NodeManagerAddress"] for node in ray.nodes()}
    bundle_nodes = ray.util.placement_group_table(pg)["bundles_to_node_id"]
    ips = [addresses[bundle_nodes[i]] for i in range(num_devices)]
    # A bundle's GPU ids are known only inside it. Without GPUs there are none to order by, and no task runs: a
    # worker process that ran a task is never given to an actor, so the trainers and the rollout manager can take
    # the processes Ray started with the cluster (each already past its Python start and Ray import).
    gpu_ids = ray.get([
        _bundle_gpu_ids.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
            placement_group=pg, placement_group_bundle_index=i)).remote()
        for i in range(num_devices)
    ]) if uses_gpus else [[] for _ in range(num_devices)]
    order = sorted(range(num_devices), key=lambda i: (_ip_sort_key(ips[i]), gpu_ids[i], i))
    logger.info("placement group of %d %s bundles on nodes %s", num_devices,
                kind if uses_gpus else f"{cpus}-core CPU", sorted(set(ips)))
    return Placement(pg, order, uses_gpus, cpus)


def create_placement_groups(args: Namespace) -> dict[str, Placement]:
    num_devices, rollout_offset = placement_layout(args)
    placement = create_placement_group(num_devices)
    actor_count = args.actor_num_nodes * args.actor_num_gpus_per_node
    return {
        "actor": Placement(placement.pg, placement.bundle_indices[:actor_count], placement.uses_gpus,
                           placement.cpus_per_bundle),
        "rollout": Placement(placement.pg, placement.bundle_indices[rollout_offset:], placement.uses_gpus,
                             placement.cpus_per_bundle),
    }

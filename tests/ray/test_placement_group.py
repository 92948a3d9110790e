"""Placement on a simulated 2-node Ray cluster: bundles spread over nodes and ordered; too few devices is an error."""

from __future__ import annotations

import pytest
import ray
from ray.cluster_utils import Cluster

from slime.ray.placement_group import ClusterResourceError, create_placement_group, placement_layout
from slime.utils.arguments import parse_args

from conftest import SFT_FLAGS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_node_cluster():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 1})
    cluster.add_node(num_cpus=1, num_gpus=1)
    ray.init(address=cluster.address)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@ray.remote(num_cpus=0)
def where() -> str:
    return ray.get_runtime_context().get_node_id()


def test_bundles_span_both_nodes_in_order(two_node_cluster):
    placement = create_placement_group(2)
    assert placement.uses_gpus
    nodes = [ray.get(where.options(scheduling_strategy=placement.strategy(rank)).remote()) for rank in range(2)]
    assert len(set(nodes)) == 2
    assert sorted(placement.bundle_indices) == [0, 1]
    ray.util.remove_placement_group(placement.pg)


def test_too_few_devices_is_an_error_with_counts(two_node_cluster):
    with pytest.raises(ClusterResourceError, match=r"ask for 3 GPUs .* has 2 GPUs"):
        create_placement_group(3)


def test_layout_follows_slime():
    args = parse_args(SFT_FLAGS + ["--actor-num-gpus-per-node", "4"])
    assert placement_layout(args) == (4, 0)  # --debug-train-only reserves only the trainers
    args.debug_train_only, args.rollout_num_gpus = False, 2
    assert placement_layout(args) == (6, 4)
    args.colocate = True
    assert placement_layout(args) == (4, 0)

"""One trainer process of a multi-process test (gloo on CPU). Writes its rank-0 results to --out.

  python dist_worker.py --rank R --world-size N --port P --out results.pt -- <slime flags>
"""

from __future__ import annotations

import argparse
import os
import sys

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world-size", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--save-at", type=int, default=None)
    parser.add_argument("flags", nargs=argparse.REMAINDER)
    options = parser.parse_args()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(options.port))
    torch.set_num_threads(1)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from megatron_helpers import random_samples, shards_for, tiny_args

    from megatron.core import parallel_state

    from slime.backends.megatron_utils.actor import MegatronTrainRayActor
    from slime.backends.megatron_utils.hf_weights import iter_hf_tensors

    flags = [f for f in options.flags if f != "--"]
    args = tiny_args(*flags, gpus=options.world_size)
    actor = MegatronTrainRayActor(world_size=options.world_size, rank=options.rank)
    start = actor.init(args)
    metrics = []
    for rollout_id in range(start, start + options.steps):
        samples = random_samples(options.samples, seed=rollout_id)
        shard = shards_for(args, samples, args.data_parallel_size)[parallel_state.get_data_parallel_rank()]
        metrics += actor.train(rollout_id, shard)
        if options.save_at == rollout_id:
            actor.save_model(rollout_id)
    weights = {name: t.clone() for name, t in iter_hf_tensors(actor.model, args)}
    if options.rank == 0:
        torch.save({"metrics": metrics, "weights": weights, "start": start}, options.out)


if __name__ == "__main__":
    main()

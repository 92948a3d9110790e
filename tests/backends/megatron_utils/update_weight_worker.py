"""One trainer process of test_update_weight.py's tensor-parallel test (gloo on CPU): one SGD step, then a weight
sync to --engine as version 41; rank 0 writes the gathered HF tensors to --out.

  python update_weight_worker.py --rank R --world-size N --port P --engine URL --out weights.pt -- <slime flags>
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
    parser.add_argument("--engine", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("flags", nargs=argparse.REMAINDER)
    options = parser.parse_args()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(options.port))
    torch.set_num_threads(1)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from megatron_helpers import random_samples, shards_for

    from slime.backends.megatron_utils.actor import MegatronTrainRayActor
    from slime.backends.megatron_utils.hf_weights import iter_hf_tensors
    from slime.backends.megatron_utils.update_weight import build_weight_updater
    from slime.utils.arguments import parse_args

    args = parse_args([f for f in options.flags if f != "--"])
    actor = MegatronTrainRayActor(world_size=options.world_size, rank=options.rank)
    actor.init(args)
    actor.train(0, shards_for(args, random_samples(4, seed=9), args.data_parallel_size)[0])
    updater = build_weight_updater(args, actor.model, [options.engine])
    try:
        updater.update(41)
    finally:
        updater.close()
    weights = {name: t.clone() for name, t in iter_hf_tensors(actor.model, args)}
    if options.rank == 0:
        torch.save(weights, options.out)


if __name__ == "__main__":
    main()

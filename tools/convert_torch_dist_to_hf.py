"""Convert a Megatron torch_dist checkpoint written by this trainer to an HF checkpoint (safetensors + config).

  python tools/convert_torch_dist_to_hf.py --input-dir /root/ckpt/iter_0000099 --output-dir /root/hf_out \
      --origin-hf-dir /root/Qwen3-4B-Base

The model flags are read from the checkpoint itself; --origin-hf-dir supplies config.json and the tokenizer files.
Whatever tensor/data-parallel layout the checkpoint was saved with, this runs in one CPU process.
"""

from __future__ import annotations

import argparse
import os
import sys
from argparse import Namespace

from megatron.core import dist_checkpointing

from slime.backends.megatron_utils.hf_weights import save_hf_weights, unwrap
from slime.backends.megatron_utils.initialize import destroy_distributed, init_distributed
from slime.backends.megatron_utils.model_provider import build_gpt_model

SINGLE_PROCESS = {"tensor_model_parallel_size": 1, "pipeline_model_parallel_size": 1, "context_parallel_size": 1,
                  "sequence_parallel": False, "actor_num_nodes": 1, "actor_num_gpus_per_node": 1}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input-dir", required=True, help="A checkpoint directory (iter_XXXXXXX or release).")
    parser.add_argument("--output-dir", required=True, help="Where to write the HF checkpoint.")
    parser.add_argument("--origin-hf-dir", default=None, help="HF directory to copy config and tokenizer from.")
    parser.add_argument("-f", "--force", action="store_true", help="Overwrite --output-dir.")
    options = parser.parse_args(argv)
    if os.path.exists(options.output_dir) and not options.force:
        sys.exit(f"error: {options.output_dir} exists (use --force to overwrite)")
    common = dist_checkpointing.load_common_state_dict(options.input_dir)
    if "args" not in common:
        sys.exit(f"error: {options.input_dir} holds no model flags (not written by this trainer?)")
    args = Namespace(**{**common["args"], **SINGLE_PROCESS})
    init_distributed(args)
    model = build_gpt_model(args)
    state = dist_checkpointing.load({"model": unwrap(model).sharded_state_dict()}, options.input_dir)
    model.load_state_dict(state["model"])
    save_hf_weights(model, args, options.output_dir, origin_hf_dir=options.origin_hf_dir or args.hf_checkpoint)
    destroy_distributed()
    print(f"wrote {options.output_dir}")


if __name__ == "__main__":
    main()

"""Convert a Megatron torch_dist checkpoint to an HF checkpoint (safetensors + config).

  python tools/convert_torch_dist_to_hf.py --input-dir /root/ckpt/iter_0000099 --output-dir /root/hf_out \
      --origin-hf-dir /root/Qwen3-4B-Base

The model flags are read from the checkpoint itself: this trainer stores them as a dict, slime and Megatron-LM as
the argparse Namespace of the run (`common.pt`'s `args`); both are read. --origin-hf-dir supplies config.json, the
tokenizer files and, when the checkpoint does not record it, the unpadded vocabulary size. Whatever
tensor/data-parallel layout the checkpoint was saved with, this runs in one CPU process.
"""

from __future__ import annotations

import argparse
import enum
import json
import os
import sys
from argparse import Namespace
from typing import Any

from convert_hf_to_torch_dist import CONVERSION_DEFAULTS
from megatron.core import dist_checkpointing

from slime.backends.megatron_utils.hf_weights import save_hf_weights, unwrap
from slime.backends.megatron_utils.initialize import destroy_distributed, init_distributed
from slime.backends.megatron_utils.model_provider import build_gpt_model
from slime.utils.arguments import parse_args

SINGLE_PROCESS = {"tensor_model_parallel_size": 1, "pipeline_model_parallel_size": 1, "context_parallel_size": 1,
                  "sequence_parallel": False, "actor_num_nodes": 1, "actor_num_gpus_per_node": 1,
                  "custom_model_provider_path": None}


def _plain(value: Any) -> Any:
    # Megatron's Namespace holds enums (attention_backend) where our flags hold their names.
    return value.name if isinstance(value, enum.Enum) else value


def model_args(saved: dict | Namespace, origin_hf_dir: str | None) -> Namespace:
    """Our flags (defaults for what the checkpoint lacks) overlaid with the checkpoint's, on one process."""
    saved = vars(saved) if isinstance(saved, Namespace) else dict(saved)
    args = parse_args(CONVERSION_DEFAULTS)
    for key, value in saved.items():
        if key not in ("rank", "local_rank", "world_size", "data_parallel_size"):
            setattr(args, key, _plain(value))
    vars(args).update(SINGLE_PROCESS)
    if args.vocab_size is None:
        hf_dir = origin_hf_dir or args.hf_checkpoint
        config = os.path.join(hf_dir, "config.json") if hf_dir else None
        if config and os.path.exists(config):
            with open(config) as f:
                args.vocab_size = json.load(f)["vocab_size"]
        else:
            args.vocab_size = args.padded_vocab_size  # nothing says how much of the vocabulary is padding
    for flag in ("num_layers", "hidden_size", "num_attention_heads", "padded_vocab_size"):
        if getattr(args, flag, None) is None:
            sys.exit(f"error: the checkpoint's flags have no {flag}")
    return args


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
        sys.exit(f"error: {options.input_dir} holds no model flags (`args` in common.pt)")
    args = model_args(common["args"], options.origin_hf_dir)
    init_distributed(args)
    model = build_gpt_model(args)
    metadata = dist_checkpointing.load_content_metadata(preloaded_state_dict=common) or {}
    state = dist_checkpointing.load({"model": unwrap(model).sharded_state_dict(metadata=dict(metadata))},
                                    options.input_dir)
    unwrap(model).load_state_dict(state["model"])
    save_hf_weights(model, args, options.output_dir, origin_hf_dir=options.origin_hf_dir or args.hf_checkpoint)
    destroy_distributed()
    print(f"wrote {options.output_dir}")


if __name__ == "__main__":
    main()

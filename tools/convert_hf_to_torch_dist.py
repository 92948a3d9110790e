"""Convert an HF checkpoint (qwen3, qwen2, llama) to a Megatron torch_dist checkpoint (`{save}/release`).

  python tools/convert_hf_to_torch_dist.py ${MODEL_ARGS[@]} --hf-checkpoint /root/Qwen3-4B-Base \
      --save /root/Qwen3-4B-Base_torch_dist

Model flags may be omitted: they are then read from the HF config.json (and, when given, checked against it).
Runs on CPU or GPU in one process; the result loads into any tensor/data-parallel layout.
"""

from __future__ import annotations

import sys

from slime.backends.megatron_utils.checkpoint import save_checkpoint
from slime.backends.megatron_utils.hf_weights import load_hf_weights
from slime.backends.megatron_utils.initialize import destroy_distributed, init_distributed
from slime.backends.megatron_utils.model_provider import build_gpt_model
from slime.utils.arguments import parse_args

# The training-run flags parse_args requires, which a conversion has no use for.
CONVERSION_DEFAULTS = ["--rollout-batch-size", "1", "--num-rollout", "1", "--actor-num-gpus-per-node", "1",
                       "--debug-train-only"]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(CONVERSION_DEFAULTS + list(sys.argv[1:] if argv is None else argv))
    if not args.hf_checkpoint or not args.save:
        sys.exit("error: give --hf-checkpoint (input) and --save (output directory)")
    init_distributed(args)
    model = build_gpt_model(args)
    load_hf_weights(model, args.hf_checkpoint, args)
    path = save_checkpoint(args, 0, model, optimizer=None, scheduler=None, release=True)
    destroy_distributed()
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""A small randomly initialised Qwen3-architecture model with a real tokenizer and chat template (SmolLM2's
ChatML tokenizer by default: its 49k vocabulary keeps the CPU quick start fast; --tokenizer qwen3 for Qwen3's).

  python examples/quickstart/make_model.py --output-dir outputs/quickstart/init_model
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

import torch
import transformers

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools"))
from fetch_assets import FETCHERS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--tokenizer", choices=["smollm2", "qwen3"], default="smollm2")
    args = parser.parse_args()
    torch.manual_seed(0)
    tokenizer_dir = FETCHERS[f"{args.tokenizer}-tokenizer"]()
    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    config = transformers.Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=args.hidden_size, intermediate_size=4 * args.hidden_size,
        num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=2, head_dim=args.hidden_size // 4,
        max_position_embeddings=512, rms_norm_eps=1e-6, rope_theta=1e6, tie_word_embeddings=True,
        # No pad_token_id: SmolLM2's pad token is <|im_end|>, and transformers zero-initialises the embedding row of
        # the pad token. A zero row of a trained token gets a ~1/sqrt(rms_norm_eps) = 1000x gradient through the
        # first RMSNorm (Megatron, like slime, has no frozen padding row); generation passes the pad id itself.
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"), pad_token_id=None,
    )
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(args.output_dir)
    for name in os.listdir(tokenizer_dir):
        shutil.copy(os.path.join(tokenizer_dir, name), args.output_dir)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"Qwen3 with {params:.1f}M parameters ({args.layers} layers, hidden {args.hidden_size}) in {args.output_dir}")


if __name__ == "__main__":
    main()

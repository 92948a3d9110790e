"""What a model directory holds: an HF model (config.json of a supported type) or a Megatron checkpoint.

The command line (which of --load / --ref-load to start from) and the trainer (how to load it) both ask these
questions, so the answers and the one table of supported HF model types live here, below both.
"""

from __future__ import annotations

import json
import os

# HF model types whose weights the Megatron backend maps to and from (loads, exports, converts).
SUPPORTED_MODEL_TYPES = ("qwen3", "qwen2", "llama")

MEGATRON_TRACKER = "latest_checkpointed_iteration.txt"


def is_megatron_checkpoint(path: str | None) -> bool:
    return bool(path) and os.path.isfile(os.path.join(path, MEGATRON_TRACKER))


def load_hf_config(path: str) -> dict | None:
    """`config.json` of an HF directory with the fields the model flags derive from filled in, or None."""
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        return None
    with open(config_path) as f:
        config = json.load(f)
    if "rope_theta" not in config:
        params = config.get("rope_parameters") or config.get("rope_scaling") or {}
        config["rope_theta"] = params.get("rope_theta")
    if config.get("head_dim") is None and config.get("hidden_size") and config.get("num_attention_heads"):
        config["head_dim"] = config["hidden_size"] // config["num_attention_heads"]
    config.setdefault("num_key_value_heads", config.get("num_attention_heads"))
    config.setdefault("tie_word_embeddings", False)
    return config


def hf_model_type(path: str | None) -> str | None:
    """The `model_type` of an HF directory, or None when `path` holds no config.json."""
    config = load_hf_config(path) if path else None
    return config.get("model_type") if config else None

"""Helpers for trainer tests: tiny real HF checkpoints and args built from them."""

from __future__ import annotations

import torch

from slime.utils.arguments import parse_args


def save_tiny_hf_model(directory, model_type: str, **overrides):
    """A randomly initialised tiny HF model of the given type, saved as a real HF checkpoint."""
    import transformers

    common = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6, tie_word_embeddings=False)
    common.update(overrides)
    config_class = {"qwen3": transformers.Qwen3Config, "qwen2": transformers.Qwen2Config,
                    "llama": transformers.LlamaConfig}[model_type]
    if model_type == "qwen3":
        common.setdefault("head_dim", 16)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config_class(**common), dtype=torch.float32)
    if model_type == "qwen2":  # random non-zero biases, so the QKV bias mapping is exercised
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                torch.nn.init.normal_(proj.bias, std=0.5)
    for layer in model.model.layers:  # non-trivial norm weights, so a wrong norm mapping shows
        for module in layer.modules():
            if "RMSNorm" in type(module).__name__:
                torch.nn.init.normal_(module.weight, mean=1.0, std=0.2)
    model.save_pretrained(directory)
    return model


def args_for_hf(directory, *extra):
    return parse_args(["--rollout-batch-size", "1", "--num-rollout", "1", "--actor-num-gpus-per-node", "1",
                       "--hf-checkpoint", str(directory), "--attention-dropout", "0", "--hidden-dropout", "0",
                       *extra])

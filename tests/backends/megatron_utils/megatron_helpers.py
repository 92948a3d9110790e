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
                       "--debug-train-only", "--hf-checkpoint", str(directory), "--attention-dropout", "0",
                       "--hidden-dropout", "0", *extra])


TINY_MODEL_FLAGS = [
    "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--group-query-attention",
    "--num-query-groups", "2", "--kv-channels", "16", "--ffn-hidden-size", "128", "--swiglu",
    "--use-rotary-position-embeddings", "--disable-bias-linear", "--normalization", "RMSNorm", "--norm-epsilon", "1e-6",
    "--qk-layernorm", "--untie-embeddings-and-output-weights", "--attention-dropout", "0", "--hidden-dropout", "0",
]


def tiny_args(*extra, vocab: int = 512, gpus: int = 1, batch: int = 8):
    """A tiny Qwen3-shaped model trained with SGD (lr 1) so that weight changes equal minus the gradient."""
    return parse_args([
        *TINY_MODEL_FLAGS, "--vocab-size", str(vocab), "--make-vocab-size-divisible-by", "1",
        "--rollout-batch-size", str(batch), "--global-batch-size", str(batch), "--num-rollout", "4",
        "--loss-type", "sft_loss", "--disable-compute-advantages-and-returns", "--debug-train-only",
        "--actor-num-gpus-per-node", str(gpus), "--optimizer", "sgd", "--lr", "1.0", "--lr-decay-style", "constant",
        "--weight-decay", "0", "--clip-grad", "0", "--data-pad-size-multiplier", "8", *extra,
    ])


def random_samples(count: int, vocab: int = 512, seed: int = 0):
    """Multi-turn-like samples: a prompt, then a response whose mask has an untrained gap (a user turn)."""
    from slime.utils.types import Sample

    generator = torch.Generator().manual_seed(seed)
    samples = []
    for index in range(count):
        prompt_len = int(torch.randint(3, 12, (1,), generator=generator))
        response_len = int(torch.randint(4, 30, (1,), generator=generator))
        tokens = torch.randint(0, vocab, (prompt_len + response_len,), generator=generator).tolist()
        mask = [1] * response_len
        if response_len > 8:
            mask[3:6] = [0, 0, 0]
        samples.append(Sample(index=index, tokens=tokens, response_length=response_len, loss_mask=mask, reward=0))
    return samples


def shards_for(args, samples, dp_size: int = 1):
    from slime.utils.train_data import convert_samples_to_train_data, split_train_data_by_dp

    return split_train_data_by_dp(args, convert_samples_to_train_data(args, samples), dp_size)


def plain_log_probs(logits, rows, targets, temperature=1.0):
    """The reference the fused loss must equal: full-width log-softmax, gather, and the entropy from it."""
    index = torch.cat([torch.arange(s, e) for s, e in rows])
    log_softmax = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature, dim=-1)
    log_probs = log_softmax[index].gather(-1, targets[index].unsqueeze(-1)).squeeze(-1)
    entropy = -(log_softmax.exp() * log_softmax).sum(-1)[index]
    return log_probs, entropy

"""Helpers shared by the CPU engine tests: a tiny Qwen3 on a real tokenizer, HTTP calls with bounded timeouts,
and transformers references computed in the test process."""

from __future__ import annotations

import os
import shutil
from typing import Any

import requests
import torch
import transformers

import fetch_assets  # tools/, put on sys.path by tests/conftest.py
from slime.utils.misc import free_port  # noqa: F401 - re-exported to this directory's tests

TIMEOUT = 60
SESSION = requests.Session()
SESSION.trust_env = False  # loopback calls must not go through a proxy configured in the environment


def build_tiny_qwen3(out_dir: str, seed: int) -> str:
    """A ~1.6M-parameter Qwen3 with SmolLM2's tokenizer (49k vocabulary, ChatML template). The large init range
    makes the next-token distributions peaked enough that greedy decoding has clear winners and temperature has a
    visible effect."""
    tokenizer_dir = fetch_assets.FETCHERS["smollm2-tokenizer"]()
    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    config = transformers.Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=1024, tie_word_embeddings=True,
        initializer_range=0.2, eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out_dir)
    for name in os.listdir(tokenizer_dir):
        shutil.copy(os.path.join(tokenizer_dir, name), out_dir)
    return out_dir


def post(url: str, path: str, body: dict[str, Any] | None = None, timeout: float = TIMEOUT) -> requests.Response:
    return SESSION.post(f"{url}{path}", json=body or {}, timeout=timeout)


def get(url: str, path: str, timeout: float = TIMEOUT) -> requests.Response:
    return SESSION.get(f"{url}{path}", timeout=timeout)


def generate(url: str, input_ids: list[int], timeout: float = TIMEOUT, return_logprob: bool = True,
             **sampling: Any) -> dict[str, Any]:
    reply = post(url, "/generate", {"input_ids": input_ids, "sampling_params": sampling,
                                    "return_logprob": return_logprob}, timeout=timeout)
    assert reply.status_code == 200, reply.text
    return reply.json()


def server_state(url: str) -> dict[str, Any]:
    return get(url, "/get_server_info").json()["internal_states"][0]


def load_model(path: str) -> Any:
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def hf_greedy(model: Any, input_ids: list[int], max_new_tokens: int) -> list[int]:
    """transformers' own greedy `generate` (stops at the model's EOS, which it keeps, like SGLang)."""
    with torch.no_grad():
        out = model.generate(torch.tensor([input_ids]), attention_mask=torch.ones(1, len(input_ids), dtype=torch.long),
                             max_new_tokens=max_new_tokens, do_sample=False)
    return out[0, len(input_ids):].tolist()


def tempered_logprobs(model: Any, input_ids: list[int], output_ids: list[int], temperature: float) -> torch.Tensor:
    """log_softmax(logits / T) of each output token given everything before it: what slime's trainer computes."""
    with torch.no_grad():
        logits = model(torch.tensor([input_ids + output_ids])).logits[0].float()
    logprobs = torch.log_softmax(logits[len(input_ids) - 1:-1] / temperature, dim=-1)
    return logprobs.gather(1, torch.tensor(output_ids)[:, None])[:, 0]

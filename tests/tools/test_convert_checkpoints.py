"""HF -> torch_dist -> (train loads it) -> HF with the conversion tools, in fresh processes as users run them."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def tool(name, *argv):
    result = subprocess.run([sys.executable, str(REPO_ROOT / "tools" / name), *argv], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout


def test_round_trip_through_torch_dist(tmp_path):
    sys.path.insert(0, str(REPO_ROOT / "tests" / "backends" / "megatron_utils"))
    from megatron_helpers import save_tiny_hf_model

    save_tiny_hf_model(tmp_path / "hf", "qwen3")
    tool("convert_hf_to_torch_dist.py", "--hf-checkpoint", str(tmp_path / "hf"), "--save", str(tmp_path / "dist"))
    assert (tmp_path / "dist" / "latest_checkpointed_iteration.txt").read_text() == "release"
    tool("convert_torch_dist_to_hf.py", "--input-dir", str(tmp_path / "dist" / "release"),
         "--output-dir", str(tmp_path / "back"), "--origin-hf-dir", str(tmp_path / "hf"))
    original, back = load_file(tmp_path / "hf" / "model.safetensors"), load_file(tmp_path / "back" / "model.safetensors")
    assert set(original) == set(back)
    for name in original:
        assert torch.equal(original[name], back[name]), name


def test_reads_checkpoints_whose_flags_are_a_namespace(tmp_path):
    """slime and Megatron-LM store the run's argparse Namespace in common.pt (with Megatron's enums, dtypes and
    flags of their own, and no unpadded vocabulary size); the converter reads it and trims the padding using the HF
    config."""
    from argparse import Namespace

    from megatron.core.transformer.enums import AttnBackend

    sys.path.insert(0, str(REPO_ROOT / "tests" / "backends" / "megatron_utils"))
    from megatron_helpers import save_tiny_hf_model

    save_tiny_hf_model(tmp_path / "hf", "qwen3")
    tool("convert_hf_to_torch_dist.py", "--hf-checkpoint", str(tmp_path / "hf"), "--save", str(tmp_path / "dist"))
    common_path = tmp_path / "dist" / "release" / "common.pt"
    common = torch.load(common_path, weights_only=False)
    flags = dict(common["args"], attention_backend=AttnBackend.flash, params_dtype=torch.bfloat16,
                 tokenizer_type="HuggingFaceTokenizer", vocab_size=None)
    assert flags["padded_vocab_size"] > 300  # the padding that must be trimmed
    common["args"] = Namespace(**flags)
    torch.save(common, common_path)
    tool("convert_torch_dist_to_hf.py", "--input-dir", str(tmp_path / "dist" / "release"),
         "--output-dir", str(tmp_path / "back"), "--origin-hf-dir", str(tmp_path / "hf"))
    original = load_file(tmp_path / "hf" / "model.safetensors")
    back = load_file(tmp_path / "back" / "model.safetensors")
    assert set(original) == set(back)
    for name in original:
        assert torch.equal(original[name], back[name]), name

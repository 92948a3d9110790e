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

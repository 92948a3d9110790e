"""The TRL comparison and the GPU script run in CI on a tiny shape, so they cannot rot; both trainers' losses
agree at the first step (same weights, same batch, same loss definition) within 1e-4."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def test_gpu_script_tiny_on_cpu(tmp_path):
    result = subprocess.run(["bash", str(REPO_ROOT / "benchmarks" / "gpu_sft.sh"), "--tiny"],
                            env={**os.environ, "OUT": str(tmp_path),
                                 # the script runs `python`: this interpreter's
                                 "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    report = json.loads((tmp_path / "gpu_sft_tiny.json").read_text())
    assert report["first_step_loss_abs_diff"] < 1e-4
    assert len(report["ours"]["losses"]) == len(report["trl"]["losses"]) == 2
    for trainer in ("ours", "trl"):
        assert report[trainer]["tokens_per_s"] > 0 and 0 < report[trainer]["mfu"] < 1
        assert 0 <= report[trainer]["padding_fraction"] < 1 and report[trainer]["peak_memory_gb"] > 0
    padding = report["padding"]
    assert padding["ours_dynamic_batch"] < padding["trl_padded"]
    assert json.loads((tmp_path / "gpu_train_tiny.json").read_text())["results"]["tiny"]["tokens_per_s"] > 0

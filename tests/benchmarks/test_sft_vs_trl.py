"""The TRL comparison and the GPU script run in CI on a tiny shape, so they cannot rot; our trainer and TRL's, padded
and padding-free, agree at every step (same weights, same batches, same loss definition) within 1e-4."""

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
                                 "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]},
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    report = json.loads((tmp_path / "gpu_sft_tiny.json").read_text())
    assert set(report["trl"]) == {"padded", "padding_free", "packed"}
    assert set(report["max_step_loss_abs_diff"]) == {"padded", "padding_free"}
    for mode, difference in report["max_step_loss_abs_diff"].items():
        assert difference < 1e-4, (mode, difference)
    for run in (report["ours"], *report["trl"].values()):
        # --steps 2 of --batch-size 2, one epoch; TRL packed makes as many steps as its packs (the 4 short
        # conversations fit one).
        assert len(run["losses"]) == (1 if run is report["trl"]["packed"] else 2)
        assert run["tokens_per_s"] > 0 and 0 < run["mfu"] < 1 and run["peak_memory_gb"] > 0
    assert report["trl"]["padded"]["padding_fraction"] > 0.05  # two conversations of different lengths
    assert report["trl"]["padding_free"]["padding_fraction"] == report["trl"]["packed"]["padding_fraction"] == 0
    padding = report["padding"]
    assert padding["ours_dynamic_batch"] < padding["trl_padded"]
    # The same data and epochs: every run trains on the same real tokens, so the time ratios compare like with like.
    assert len({run["tokens"] for run in (report["ours"], *report["trl"].values())}) == 1
    assert set(report["speedup"]) == {"padded", "padding_free", "packed"}
    for run in (report["ours"], *report["trl"].values()):
        assert 0 < run["first_step_after_s"] < run["process_seconds"] and run["train_seconds"] > 0
    startup = report["ours"]["startup"]  # the probe's split of the trainer's own start
    assert all(startup[f"probe/{part}"] >= 0 for part in ("trainer_imports_s", "process_group_s", "model_build_s",
                                                          "checkpoint_load_s"))
    assert json.loads((tmp_path / "gpu_train_tiny.json").read_text())["results"]["tiny"]["tokens_per_s"] > 0

"""The training benchmark runs (tiny preset) so it cannot rot, and reports sane numbers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO_ROOT


def test_bench_train_tiny(tmp_path):
    out = tmp_path / "train.json"
    result = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "bench_train.py"), "--presets", "tiny",
                             "--steps", "1", "--seq-len", "64", "--output", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    tiny = report["results"]["tiny"]
    assert tiny["tokens_per_step"] == 4 * 64  # --seqs-per-step (default 4) sequences of --seq-len
    # Throughput is the step's tokens over its time (step_time_s is rounded to the millisecond).
    assert tiny["tokens_per_s"] * tiny["step_time_s"] == pytest.approx(tiny["tokens_per_step"], rel=0.1)
    assert tiny["tokens_per_s"] > 500, tiny  # ~11,000 on 2 shared cores: a much lower rate is a stall
    assert 0 < tiny["mfu"] < 1 and report["peak_tflops_used_for_mfu"] > 0

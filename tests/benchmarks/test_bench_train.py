"""The training benchmark runs (tiny preset) so it cannot rot, and reports sane numbers, its floor included."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO_ROOT


def test_bench_train_tiny(tmp_path):
    out = tmp_path / "train.json"
    result = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "bench_train.py"), "--presets", "tiny",
                             "--steps", "2", "--seq-len", "64", "--output", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    tiny = report["results"]["tiny"]
    assert tiny["tokens_per_step"] == 4 * 64  # the preset's 4 sequences of --seq-len
    # Throughput is the step's tokens over its (median) time.
    assert tiny["tokens_per_s"] * tiny["step_s"] == pytest.approx(tiny["tokens_per_step"], rel=0.01)
    assert tiny["tokens_per_s"] > 500, tiny  # ~7,000 on 2 shared cores: a much lower rate is a stall
    # MFU only > 0: the CPU peak is measured once, and on a shared machine a step can run faster than that moment.
    assert tiny["mfu"] > 0 and report["peak_tflops_used_for_mfu"] > 0
    # The floor replays every product of a step: per layer QKV, projection and the two MLP matrices, plus the output
    # layer, each forward, input-gradient and weight-gradient; and each layer's attention, once per sequence, forward
    # and backward.
    assert tiny["matmuls_per_step"] == 3 * (2 * 4 + 1)
    assert tiny["attention_kernels_per_step"] == 2 * 2 * 4
    # The output layer runs on the response positions only: 4 responses of 32 tokens, not the 256-token stream.
    assert tiny["logits_rows"] == 4 * 32 and tiny["logits_mb"] == pytest.approx(128 * 1024 * 4 / 1e6, abs=0.1)
    assert 0 < tiny["floor_products_s"] <= tiny["floor_s"] and len(tiny["step_over_floor_each"]) == 2
    assert tiny["step_over_floor"] == pytest.approx(tiny["step_s"] / tiny["floor_s"], rel=0.5)
    assert set(tiny["profile_s"]) == {"matmul", "attention", "fill", "copy", "other"}
    # The tiny preset unties its embeddings and clips: no tied-embedding kernels, both clipping passes.
    outside = tiny["outside_floor_s"]
    assert {"softmax", "adam", "clip_norm", "clip_scale", "per_token_scale"} <= set(outside)
    assert not any(name.startswith("tied_embedding") for name in outside) and min(outside.values()) > 0
    assert tiny["least_step_over_floor"] == pytest.approx(
        (tiny["floor_s"] + sum(outside.values())) / tiny["floor_s"], rel=0.05)

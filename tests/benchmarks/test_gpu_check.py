"""benchmarks/gpu_check.sh --dry-run: the GPU readiness check's plumbing on the CPU (tiny shapes, fp32), so the
script works the day a GPU is available."""

from __future__ import annotations

import json
import subprocess


from conftest import REPO_ROOT

EXPECTED = ["environment", "qwen3-4B step, full recompute", "bf16 step (transformer_engine spec)",
            "bf16 step (local spec)", "packed = per-sequence (local spec)", "HF export = weights",
            "checkpoint save (async) + load + resume", "fused log-prob = plain path"]


def test_dry_run_prints_every_check(tmp_path):
    out = tmp_path / "gpu_check.json"
    result = subprocess.run(["bash", str(REPO_ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", "--output", str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = {row["check"]: row for row in report["rows"]}
    assert list(rows) == EXPECTED
    assert rows["bf16 step (transformer_engine spec)"]["status"] == "skipped"  # no TE without a GPU
    assert all(row["status"] == "ok" for name, row in rows.items() if name != "bf16 step (transformer_engine spec)")
    assert rows["qwen3-4B step, full recompute"]["tokens_per_s"] > 0
    for name in EXPECTED:
        assert name in result.stdout  # the table


def test_a_failed_check_fails_the_script(tmp_path, monkeypatch):
    import sys

    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    import gpu_check

    monkeypatch.setattr(gpu_check, "BF16_LOSS_RTOL", -1.0)  # no loss can be within a negative tolerance
    monkeypatch.setattr(gpu_check.Check, "big_step", lambda self: None)  # not what this test is about
    assert gpu_check.main(["--dry-run", "--output", str(tmp_path / "out.json")]) == 1
    rows = {row["check"]: row for row in json.loads((tmp_path / "out.json").read_text())["rows"]}
    assert rows["bf16 step (local spec)"]["status"] == "FAIL"
    assert rows["checkpoint save (async) + load + resume"]["status"] == "ok"


def test_refuses_to_run_without_a_gpu_unless_dry():
    result = subprocess.run(["bash", str(REPO_ROOT / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2 and "use --dry-run" in result.stderr

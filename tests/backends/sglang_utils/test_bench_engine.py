"""The engine benchmark runs (smoke size) so it cannot rot, and its report has the promised fields."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]


def test_bench_engine_smoke(tmp_path):
    out = tmp_path / "bench_engine.json"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "bench_engine.py"), "--requests", "4", "--new-tokens", "3",
         "--concurrency", "1", "4", "--layers", "1", "--hidden-size", "32", "--threads", "1", "--output", str(out)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["transformers_generate"]["tokens_per_s"] > 0 and report["cpu_engine"]["tokens_per_s"] > 0
    # Same weights, same prompts, greedy: the engine's batched decoding reproduces transformers' outputs.
    assert report["cpu_engine"]["outputs_identical_to_transformers"] == 4
    assert [row["concurrency"] for row in report["concurrency_sweep"]] == [1, 4]
    assert report["engine_max_batch_size"] >= 2

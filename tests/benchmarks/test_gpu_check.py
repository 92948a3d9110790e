"""benchmarks/gpu_check.sh --dry-run: the GPU readiness check's plumbing on the CPU (tiny shapes, fp32), so the
script works the day a GPU is available."""

from __future__ import annotations

import json
import subprocess


from conftest import REPO_ROOT

EXPECTED = ["environment", "qwen3-4B step, full recompute", "bf16 step (transformer_engine spec)",
            "bf16 step (local spec)", "packed = per-sequence (local spec)", "HF export = weights",
            "checkpoint save (async) + load + resume", "fused log-prob = plain path",
            "RL step (GRPO, ref model, old log-probs)", "PPO critic step (value head)", "weight sync payloads on CUDA",
            "weight sync group (NCCL)", "trainer sleep (--offload-train)"]
# Without a GPU: no Transformer Engine, and NCCL serves only CUDA tensors (the group row runs over gloo instead).
SKIPPED_ON_CPU = {"bf16 step (transformer_engine spec)", "weight sync group (NCCL)"}


def test_dry_run_prints_every_check(tmp_path):
    out = tmp_path / "gpu_check.json"
    result = subprocess.run(["bash", str(REPO_ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", "--output", str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = {row["check"]: row for row in report["rows"]}
    assert list(rows) == EXPECTED
    assert all(row["status"] == ("skipped" if name in SKIPPED_ON_CPU else "ok") for name, row in rows.items())
    assert "over gloo" in rows["weight sync group (NCCL)"]["detail"]
    assert rows["qwen3-4B step, full recompute"]["tokens_per_s"] > 0
    rl = rows["RL step (GRPO, ref model, old log-probs)"]
    assert rl["kl_loss_step1"] == 0.0 and rl["ref_log_probs_s"] > 0 and rl["log_probs_s"] > 0  # both passes ran
    assert rows["PPO critic step (value head)"]["value_loss_last"] < rows["PPO critic step (value head)"][
        "value_loss_first"]
    assert rows["trainer sleep (--offload-train)"]["freed_bytes"] > 0
    for name in EXPECTED:
        assert name in result.stdout  # the table


def test_a_failed_check_fails_the_script(tmp_path, monkeypatch):
    import sys

    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    import gpu_check

    monkeypatch.setattr(gpu_check, "BF16_LOSS_RTOL", -1.0)  # no loss can be within a negative tolerance
    for not_about_this in ("big_step", "rl_rows"):
        monkeypatch.setattr(gpu_check.Check, not_about_this, lambda self: None)
    assert gpu_check.main(["--dry-run", "--output", str(tmp_path / "out.json")]) == 1
    rows = {row["check"]: row for row in json.loads((tmp_path / "out.json").read_text())["rows"]}
    assert rows["bf16 step (local spec)"]["status"] == "FAIL"
    assert rows["checkpoint save (async) + load + resume"]["status"] == "ok"


def test_only_rl_rows_replace_their_earlier_results_and_failures_are_one_line(tmp_path, monkeypatch):
    import sys

    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    import gpu_check
    import gpu_check_rl

    out = tmp_path / "gpu_check.json"
    fused = {"check": "fused log-prob = plain path", "status": "ok", "detail": "measured", "fused_ms": 57.0}
    out.write_text(json.dumps({"date": "2026-01-01", "seconds": 54.0, "machine": "one H200", "rows": [
        {"check": "environment", "status": "ok", "detail": "earlier"}, fused,
        {"check": "RL step (GRPO, ref model, old log-probs)", "status": "ok", "detail": "earlier"}]}))
    monkeypatch.setattr(gpu_check_rl, "PPO_KL_SMALL", -1.0)  # no |ppo_kl| is below a negative bound

    def broken_serializer(*_, **__):
        raise RuntimeError("first line\nsecond line")

    monkeypatch.setattr(gpu_check_rl, "serialize_bucket", broken_serializer)
    assert gpu_check.main(["--dry-run", "--only", "rl", "--output", str(out)]) == 1
    report = json.loads(out.read_text())
    rows = {row["check"]: row for row in report["rows"]}
    assert list(rows) == ["environment", "fused log-prob = plain path", *gpu_check_rl.RL_ROWS]
    assert rows["fused log-prob = plain path"] == fused and report["rows_from_earlier_run"] == [fused["check"]]
    assert report["machine"] == "one H200" and report["earlier_run"] == {"date": "2026-01-01", "seconds": 54.0}
    assert rows["environment"]["detail"] != "earlier"
    assert rows["RL step (GRPO, ref model, old log-probs)"]["status"] == "FAIL"
    assert rows["PPO critic step (value head)"]["status"] == "ok"
    assert rows["weight sync payloads on CUDA"] == {"check": "weight sync payloads on CUDA", "status": "FAIL",
                                                    "detail": "RuntimeError: first line second line"}
    assert rows["weight sync group (NCCL)"]["status"] == "skipped"


def test_refuses_to_run_without_a_gpu_unless_dry():
    result = subprocess.run(["bash", str(REPO_ROOT / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2 and "use --dry-run" in result.stderr

"""The default RL rollout end to end on CPU: train.py --debug-rollout-only starts the real sglang-router and two CPU
engine processes, generates groups through the router, rewards them, filters zero-variance groups with
over-sampling, saves the rollouts, and stops every process it started; evaluation generates with the eval flags and
logs slime's eval metrics; engines started outside the run (--rollout-external-engine-addrs) serve it instead."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "tests" / "backends" / "sglang_utils"))
from engine_helpers import build_tiny_qwen3  # noqa: E402
from test_fault_tolerance import Run  # noqa: E402
from test_train_drivers import RAY_TAG, run_driver  # noqa: E402

pytestmark = pytest.mark.slow

PROMPTS = ["Count to five:", "Name a colour:", "Say hello:", "Add 2 and 3:", "Spell dog:", "Pick a number:",
           "What is red?", "Greet me:"]


def test_rollout_only_run_generates_filters_rewards_and_saves(tmp_path):
    model = build_tiny_qwen3(str(tmp_path / "model"), seed=0)
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "label": ""}) + "\n" for p in PROMPTS))
    flags = [
        "--debug-rollout-only", "--actor-num-gpus-per-node", "1", "--rollout-num-gpus", "2",
        "--hf-checkpoint", model, "--prompt-data", str(data), "--input-key", "prompt", "--label-key", "label",
        "--num-rollout", "2", "--rollout-batch-size", "2", "--n-samples-per-prompt", "4",
        "--over-sampling-batch-size", "3", "--global-batch-size", "8",
        "--rollout-max-response-len", "6", "--rollout-temperature", "1.0", "--sglang-server-concurrency", "8",
        "--custom-rm-path", "rl_plugins.last_token_parity",
        "--dynamic-sampling-filter-path",
        "slime.rollout.filter_hub.dynamic_sampling_filters.check_reward_nonzero_std",
        "--save-debug-rollout-data", str(tmp_path / "rollouts" / "{rollout_id}.pt"),
        "--metrics-file", str(tmp_path / "metrics.jsonl"),
    ]
    run = Run(flags, tmp_path, "sglang-rollout")
    code = run.finish(timeout=600)
    assert code == 0, run.output[-4000:]

    for rollout_id in range(2):
        saved = torch.load(tmp_path / "rollouts" / f"{rollout_id}.pt", weights_only=False)
        samples = saved["samples"]
        assert saved["rollout_id"] == rollout_id and len(samples) == 2 * 4
        groups = [samples[i:i + 4] for i in range(0, 8, 4)]
        for group in groups:
            assert len({s["group_index"] for s in group}) == 1
            rewards = [s["reward"] for s in group]
            assert len(set(rewards)) > 1, rewards  # the filter kept only groups whose rewards differ
            for s in group:
                assert 1 <= s["response_length"] <= 6
                assert len(s["rollout_log_probs"]) == s["response_length"] == len(s["loss_mask"])
                assert all(lp <= 0 for lp in s["rollout_log_probs"])
                assert s["tokens"][-s["response_length"]:] and s["status"] in ("completed", "truncated")
                assert s["reward"] == float(s["tokens"][-1] % 2)
                assert s["weight_versions"]
    rollout_rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    rollout_rows = [row for row in rollout_rows if "rollout/step" in row]
    assert len(rollout_rows) == 2
    for row in rollout_rows:
        assert row["rollout/groups_submitted"] >= 3 and row["perf/generation_tokens_per_s"] > 0
        assert 0.0 <= row["rollout/raw_reward"] <= 1.0
        # Every submitted group is either kept, dropped (counted by reason), or still in flight when aborted.
        dropped = sum(v for k, v in row.items() if k.startswith("rollout/dynamic_filter/drop_"))
        assert dropped <= row["rollout/groups_submitted"] - 2
    # The router and the engine processes are gone with the run.
    assert run.server_kinds() == ["engine", "engine", "router"]
    assert not run.leftover_servers()


ROLLOUT_TESTS = REPO_ROOT / "tests" / "rollout"
sys.path.insert(0, str(ROLLOUT_TESTS))
from router_helpers import launch_router  # noqa: E402


def _plugin_env(**extra: str) -> dict[str, str]:
    """The driver's environment with this directory's and tests/rollout's plugins importable."""
    path = os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "tests" / "ray"), str(ROLLOUT_TESTS)])
    return {"PYTHONPATH": path, "OMP_NUM_THREADS": "1", **extra}


def _write_prompts(path, prompts) -> str:
    path.write_text("".join(json.dumps({"prompt": p, "label": ""}) + "\n" for p in prompts))
    return str(path)


def test_rl_evaluation_generates_with_the_eval_flags_and_logs_slimes_metrics(tmp_path):
    """--eval-interval with a generating rollout function: every eval dataset is generated through the engines with
    the eval sampling flags (greedy here) and an --eval-config entry's own overrides, rewarded, and logged as
    eval/<name>... by the driver; the custom loggers get slime's arguments."""
    model = build_tiny_qwen3(str(tmp_path / "model"), seed=0)
    config = tmp_path / "eval.yaml"
    config.write_text(json.dumps({"datasets": [  # YAML is a superset of JSON
        {"name": "math", "path": _write_prompts(tmp_path / "math.jsonl", ["Say hello:", "Spell dog:", "Greet me:"])},
        {"name": "short", "path": _write_prompts(tmp_path / "short.jsonl", ["Pick a number:", "What is red?"]),
         "n_samples_per_eval_prompt": 2, "max_response_len": 1},
    ]}))
    calls = tmp_path / "calls.jsonl"
    flags = [
        "--debug-rollout-only", "--actor-num-gpus-per-node", "1", "--rollout-num-gpus", "1",
        "--hf-checkpoint", model, "--prompt-data", _write_prompts(tmp_path / "train.jsonl", PROMPTS),
        "--input-key", "prompt", "--label-key", "label", "--num-rollout", "1", "--rollout-batch-size", "2",
        "--n-samples-per-prompt", "2", "--global-batch-size", "4", "--rollout-max-response-len", "6",
        "--custom-rm-path", "rollout_plugins.parity_score", "--reward-key", "score", "--eval-reward-key", "score",
        "--log-passrate", "--log-reward-category", "parity",
        "--eval-interval", "1", "--eval-config", str(config), "--n-samples-per-eval-prompt", "4",
        "--eval-max-response-len", "6", "--eval-max-context-len", "8", "--eval-temperature", "0",
        "--eval-top-p", "0.9", "--eval-top-k", "20",
        "--custom-rollout-log-function-path", "rollout_plugins.record_rollout_log",
        "--custom-eval-rollout-log-function-path", "rollout_plugins.record_eval_log",
        "--save-debug-rollout-data", str(tmp_path / "rollouts" / "{rollout_id}.pt"),
        "--metrics-file", str(tmp_path / "metrics.jsonl"),
    ]
    code, output, _ = run_driver("train.py", flags, tmp_path, env_extra={
        RAY_TAG: "sglang-eval", **_plugin_env(SLIME_TEST_LOG_CALLS=str(calls))})
    assert code == 0, output[-4000:]

    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = [row for row in rows if "eval/step" in row]
    assert len(evals) == 2  # before training and after rollout 0
    for row in evals:
        assert 0 <= row["eval/math"] <= 1 and row["eval/math-truncated_ratio"] == 1.0
        assert 1 <= row["eval/math/response_len/max"] <= 5
        categories = {k: v for k, v in row.items() if k.startswith("eval/math/error_cat/")}
        assert set(categories) <= {"eval/math/error_cat/odd", "eval/math/error_cat/even"}
        assert sum(categories.values()) == pytest.approx(1)
        assert categories.get("eval/math/error_cat/odd", 0) == pytest.approx(row["eval/math"])
        # Greedy: a prompt's 4 samples are identical, so passing once means passing every time.
        assert row["eval/math-pass@1"] == row["eval/math-pass@2"] == row["eval/math-pass@4"] == row["eval/math"]
        assert row["eval/short/response_len/max"] == 1 and {"eval/short-pass@1", "eval/short-pass@2"} <= set(row)
        assert "eval/short-pass@4" not in row  # that dataset's own 2 samples per prompt
    saved = torch.load(tmp_path / "rollouts" / "eval_0.pt", weights_only=False)["samples"]
    math = [s for s in saved if s["prompt"] in ("Say hello:", "Spell dog:", "Greet me:")]
    assert len(math) == 3 * 4 and len(saved) == 3 * 4 + 2 * 2
    for group in (math[i:i + 4] for i in range(0, 12, 4)):
        assert len({tuple(s["tokens"]) for s in group}) == 1  # greedy
    # --eval-max-context-len 8 bounds prompt + response (the 6 new tokens allowed would not fit).
    assert all(len(s["tokens"]) <= 8 for s in math) and any(len(s["tokens"]) == 8 for s in math)
    assert all(s["status"] == "truncated" for s in math)
    rollout_rows = [row for row in rows if "rollout/step" in row]
    assert rollout_rows and {"passrate/pass@1", "passrate/pass@2"} <= set(rollout_rows[0])
    assert sum(v for k, v in rollout_rows[0].items() if k.startswith("rollout/error_cat/")) == pytest.approx(1)
    recorded = [json.loads(line) for line in calls.read_text().splitlines()]
    assert {"kind": "rollout", "rollout_id": 0, "samples": 4, "all_samples": True} == {
        k: v for k, v in recorded[1].items() if k not in ("extra_keys", "rollout_time")}
    assert recorded[1]["rollout_time"] > 0 and "rollout/raw_reward" in recorded[1]["extra_keys"]
    assert [r for r in recorded if r["kind"] == "eval"] == [
        {"kind": "eval", "rollout_id": 0, "datasets": ["math", "short"], "samples": {"math": 12, "short": 4}}] * 2


def test_external_engines_are_used_and_left_running(tmp_path):
    """--rollout-external-engine-addrs: two engines started outside the run serve its rollouts through a router
    the run did not start either (--sglang-router-ip/port); the run starts no engine of its own and leaves both
    engines serving."""
    from engine_helpers import free_port, server_state
    from slime.backends.sglang_utils.cpu_engine.launcher import launch_cpu_engine

    model = build_tiny_qwen3(str(tmp_path / "model"), seed=0)
    # Started from this thread: an engine server ends with the thread that started it (PR_SET_PDEATHSIG).
    engines = [launch_cpu_engine(model, free_port(), extra_args=["--skip-server-warmup"], env={"OMP_NUM_THREADS": "1"},
                                 log_path=str(tmp_path / f"engine{i}.log")) for i in range(2)]
    router, router_args = launch_router()
    ip, port = router_args.sglang_router_ip, router_args.sglang_router_port
    try:
        flags = [
            "--debug-rollout-only", "--actor-num-gpus-per-node", "1", "--rollout-num-gpus", "2",
            "--sglang-router-ip", ip, "--sglang-router-port", str(port),
            "--hf-checkpoint", model, "--prompt-data", _write_prompts(tmp_path / "train.jsonl", PROMPTS),
            "--input-key", "prompt", "--num-rollout", "1", "--rollout-batch-size", "2", "--n-samples-per-prompt", "4",
            "--global-batch-size", "8", "--rollout-max-response-len", "4", "--custom-rm-path",
            "rl_plugins.last_token_parity", "--save-debug-rollout-data", str(tmp_path / "rollouts" / "{rollout_id}.pt"),
        ]
        addrs = ["--rollout-external-engine-addrs", f"127.0.0.1:{engines[0].port}", engines[1].url + "/"]
        run = Run(flags + addrs, tmp_path, "sglang-external", env_extra=_plugin_env())
        assert run.finish(timeout=600) == 0, run.output[-4000:]
        assert "2 external inference engines behind the router" in run.output
        assert run.server_kinds() == []  # neither an engine nor a router of its own
        served = [server_state(engine.url)["requests_finished"] for engine in engines]
        assert all(n > 0 for n in served) and sum(served) >= 2 * 4, served  # both engines served the rollout
        assert all(engine.alive() for engine in engines)
        assert len(torch.load(tmp_path / "rollouts" / "0.pt", weights_only=False)["samples"]) == 8
    finally:
        router.stop()
        for engine in engines:
            engine.stop()

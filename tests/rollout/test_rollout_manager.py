"""The rollout manager in this process, without engines: its metrics for evaluation and the logging flags (slime's
names and formulas), the RL/SFT switch of `RolloutManager.eval`, slime's custom logger contract, the eval sampling
flags, and the error for an external engine address where nothing answers. The eval function here returns fixed
results; generation end to end is in tests/ray/test_sglang_rollout.py and tests/ray/test_fault_tolerance.py."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rollout_plugins import FIXED_EVAL
from slime.ray.rollout import RolloutManager, pass_at_k, rollout_flag_metrics
from slime.rollout.sglang_rollout import sampling_params_from_args
from slime.utils.arguments import parse_args
from slime.utils.misc import free_port
from slime.utils.types import Sample

RL_FLAGS = ["--rollout-batch-size", "2", "--n-samples-per-prompt", "2", "--global-batch-size", "4",
            "--num-rollout", "1", "--actor-num-gpus-per-node", "1"]


def test_pass_at_k_is_the_unbiased_estimate_over_groups():
    # Group 0: 2 of 4 correct; group 1: none. pass@k = 1 - C(n-c, k) / C(n, k), averaged over the groups.
    rewards = [1, 0, 1, 0] + [0, 0, 0, 0]
    metrics = pass_at_k(rewards, 4)
    assert set(metrics) == {"pass@1", "pass@2", "pass@4"}
    assert metrics["pass@1"] == pytest.approx(0.5 / 2)
    assert metrics["pass@2"] == pytest.approx((1 - math.comb(2, 2) / math.comb(4, 2)) / 2)
    assert metrics["pass@4"] == pytest.approx(0.5)
    # Only a reward of exactly 1 counts as a pass (slime's rule); k stops at the largest power of 2 <= n.
    assert pass_at_k([0.5, 1, 0.5], 3) == {"pass@1": pytest.approx(1 / 3), "pass@2": pytest.approx(2 / 3)}
    assert pass_at_k([1, 0], 1) == {}
    with pytest.raises(ValueError, match="5 rewards do not make groups of 2"):
        pass_at_k([1, 0, 1, 0, 1], 2)


def test_eval_sampling_params_take_the_eval_flags_and_fall_back_to_the_rollout_flags():
    args = parse_args(RL_FLAGS + ["--rollout-temperature", "0.8", "--rollout-top-p", "0.7", "--rollout-top-k", "9",
                                  "--rollout-max-response-len", "11", "--eval-temperature", "0.5", "--eval-top-p",
                                  "0.9", "--eval-top-k", "5", "--eval-max-response-len", "7"])
    train, evaluation = sampling_params_from_args(args), sampling_params_from_args(args, evaluation=True)
    assert (train["temperature"], train["top_p"], train["top_k"], train["max_new_tokens"]) == (0.8, 0.7, 9, 11)
    assert (evaluation["temperature"], evaluation["top_p"], evaluation["top_k"], evaluation["max_new_tokens"]) == \
        (0.5, 0.9, 5, 7)
    unset = sampling_params_from_args(parse_args(RL_FLAGS + ["--rollout-max-response-len", "11"]), evaluation=True)
    assert unset["max_new_tokens"] == 11 and unset["temperature"] == 1.0


def _manager(tmp_path, *extra):
    args = parse_args(RL_FLAGS + ["--eval-prompt-data", "a", str(tmp_path / "unused.jsonl"),
                                  "--eval-function-path", "rollout_plugins.fixed_eval", "--reward-key", "score",
                                  "--n-samples-per-eval-prompt", "2", *extra])
    # No --rollout-num-gpus: no engines are started, so the manager runs in this process.
    return RolloutManager(args)


def test_eval_of_a_generating_function_returns_slimes_metrics_and_dumps_the_samples(tmp_path):
    manager = _manager(tmp_path, "--log-passrate", "--log-reward-category", "parity",
                       "--save-debug-rollout-data", str(tmp_path / "dump" / "{rollout_id}.pt"))
    result = manager.eval(3)
    assert result.loss_shards == {}  # not SFT: nothing for the trainers to compute
    m = result.metrics
    assert m["eval/a"] == pytest.approx(0.25)  # --eval-reward-key defaults to --reward-key: the "score" entry
    assert m["eval/a-truncated_ratio"] == pytest.approx(0.25)
    # Response lengths count trained tokens; median of 2, 4, 6, 8.
    assert (m["eval/a/response_len/mean"], m["eval/a/response_len/median"], m["eval/a/response_len/max"],
            m["eval/a/response_len/min"]) == (5, 5, 8, 2)
    assert m["eval/a/error_cat/odd"] == pytest.approx(0.25) and m["eval/a/error_cat/even"] == pytest.approx(0.75)
    # --n-samples-per-eval-prompt 2: prompt 0 passes at 1 of 2 tries, prompt 1 never.
    assert m["eval/a-pass@1"] == pytest.approx(0.25) and m["eval/a-pass@2"] == pytest.approx(0.5)
    assert m["eval/a/own_metric"] == 7.0  # the eval function's own metrics are kept
    saved = torch.load(tmp_path / "dump" / "eval_3.pt", weights_only=False)  # slime's name for an eval dump
    assert saved["rollout_id"] == 3 and [s["index"] for s in saved["samples"]] == [0, 1, 2, 3]


def test_eval_metrics_need_numbers_and_the_category_key(tmp_path):
    manager = _manager(tmp_path, "--eval-reward-key", "parity")
    with pytest.raises(ValueError, match="eval dataset a: rewards such as 'odd' are not numbers.*--eval-reward-key"):
        manager.eval(0)
    manager = _manager(tmp_path, "--log-reward-category", "kind")
    with pytest.raises(ValueError, match="--log-reward-category kind: the reward of sample 0 is .*not a dict"):
        manager.eval(0)


def test_a_custom_eval_logger_is_called_with_slimes_arguments_and_may_take_over(tmp_path, monkeypatch):
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv("SLIME_TEST_LOG_CALLS", str(calls))
    manager = _manager(tmp_path, "--custom-eval-rollout-log-function-path", "rollout_plugins.record_eval_log")
    assert manager.eval(5).metrics["eval/a"] == pytest.approx(0.25)  # returned False: default metrics too
    monkeypatch.setenv("SLIME_TEST_LOG_TAKES_OVER", "1")
    assert manager.eval(6).metrics == {}  # returned True: it logged the evaluation itself
    recorded = [json.loads(line) for line in calls.read_text().splitlines()]
    assert recorded == [{"kind": "eval", "rollout_id": r, "datasets": ["a"], "samples": {"a": 4}} for r in (5, 6)]


def test_rollout_flag_metrics_passrate_reward_category_and_multi_turn():
    args = parse_args(RL_FLAGS + ["--reward-key", "score", "--log-passrate", "--log-reward-category", "parity",
                                  "--log-multi-turn", "--rollout-max-response-len", "5"])
    samples = [Sample(index=s.index, group_index=s.group_index, reward=s.reward, response_length=n,
                      loss_mask=mask, metadata={"round_number": r})
               for s, n, mask, r in zip(FIXED_EVAL, [5, 3, 2, 4], [[1, 0, 0, 1, 1], [1, 1, 1], [0, 1], [1, 1, 1, 1]],
                                        [2, 1, 1, 3])]
    m = rollout_flag_metrics(args, samples)
    assert m["passrate/pass@1"] == pytest.approx(0.25) and m["passrate/pass@2"] == pytest.approx(0.5)
    assert m["rollout/error_cat/even"] == pytest.approx(0.75)
    assert m["multi_turn/raw_response_length/response_length_max"] == 5
    assert m["multi_turn/raw_response_length/response_length_clip_ratio"] == pytest.approx(0.25)
    # Without the tokens the loss mask leaves out (tool output, user turns).
    assert m["multi_turn/wo_obs_response_length/response_length_mean"] == pytest.approx((3 + 3 + 1 + 4) / 4)
    assert m["multi_turn/wo_obs_response_length/response_length_min"] == 1
    assert (m["multi_turn/multi_turn_metric/round_number_mean"], m["multi_turn/multi_turn_metric/round_number_max"]) \
        == (pytest.approx(7 / 4), 3)
    assert rollout_flag_metrics(parse_args(RL_FLAGS), samples) == {}  # each is off without its flag


def test_an_external_engine_address_where_nothing_answers_is_an_error_naming_the_flag(tmp_path):
    args = parse_args(RL_FLAGS + ["--debug-rollout-only", "--rollout-num-gpus", "1",
                                  "--rollout-external-engine-addrs", f"127.0.0.1:{free_port()}"])
    with pytest.raises(ValueError, match=r"^--rollout-external-engine-addrs 127\.0\.0\.1:\d+: no SGLang server "
                                         r"answers at http://127\.0\.0\.1:\d+ \(/server_info: .*; /get_server_info"):
        RolloutManager(args)

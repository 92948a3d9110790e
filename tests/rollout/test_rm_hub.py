"""Every built-in reward on known right and wrong answers, the boxed_ prefix, custom and group rewards, errors."""

from __future__ import annotations

import asyncio
import json
import threading
from argparse import Namespace
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from slime.rollout.filter_hub.dynamic_sampling_filters import (
    check_reward_nonzero_std,
    check_reward_nonzero_std_with_fallback,
)
from slime.rollout.rm_hub import RewardError, async_rm, batched_async_rm, validate_rm_type
from slime.rollout.rm_hub.math_utils import extract_boxed_answer, is_equivalent
from slime.rollout.rm_hub.text_rewards import extract_choice_letter, f1_score
from slime.utils.types import Sample


def _args(**overrides) -> Namespace:
    base = dict(rm_type=None, custom_rm_path=None, rm_url=None, reward_key=None)
    base.update(overrides)
    return Namespace(**base)


def _reward(rm_type: str, response: str, label, **sample_fields):
    sample = Sample(index=0, group_index=0, response=response, label=label, **sample_fields)
    return asyncio.run(async_rm(_args(rm_type=rm_type), sample))


def test_boxed_extraction_handles_nesting_and_takes_the_last_box():
    assert extract_boxed_answer(r"first \boxed{1} then \boxed{\frac{1}{2}} done") == r"\frac{1}{2}"
    assert extract_boxed_answer(r"\boxed{\{1, 2\}}") == r"\{1, 2\}"
    assert extract_boxed_answer("no box here") is None
    assert extract_boxed_answer(r"cut off \boxed{12") is None


@pytest.mark.parametrize("answer,reference,equal", [
    ("0.5", r"\frac{1}{2}", True), ("1/2", "0.5", True), ("3", "3.0", True), ("x+1", "1+x", True),
    ("4", "5", False), ("", "5", False), (None, "5", False),
])
def test_math_equivalence_is_semantic(answer, reference, equal):
    assert is_equivalent(answer, reference) is equal


def test_math_equivalence_works_off_the_main_thread():
    # Rollouts score rewards in an event-loop thread, where signal-based timeouts are not allowed.
    results = []
    worker = threading.Thread(target=lambda: results.append(is_equivalent("1/2", r"\frac{1}{2}")))
    worker.start()
    worker.join()
    assert results == [True]


def test_math_reward():
    assert _reward("math", r"so the answer is \boxed{\dfrac{1}{2}}.", "0.5") == 1
    assert _reward("math", r"so the answer is \boxed{3}.", "0.5") == 0
    assert _reward("math", "0.5 without a box", "0.5") == 0  # slime grades the boxed answer only
    assert _reward("math", r"\boxed{7}", [r"\boxed{7}", "seven"]) == 1  # a list of references, boxed or not


def test_deepscaler_reward_needs_the_answer_after_the_reasoning():
    assert _reward("deepscaler", r"<think>maybe \boxed{2}</think> The answer is \boxed{4}", "4") == 1
    assert _reward("deepscaler", r"<think>maybe \boxed{4}</think> The answer is \boxed{2}", "4") == 0
    assert _reward("deepscaler", r"The answer is \boxed{4}", "4") == 0  # no </think> or ###Response: 0
    assert _reward("deepscaler", r"###Response the answer is \boxed{4}", "4") == 1
    assert _reward("deepscaler", r"</think>\boxed{4}", "") == 0


def test_dapo_reward_reads_the_answer_line_in_the_last_300_characters():
    right = _reward("dapo", "work...\nAnswer: 42", "42")
    assert right == {"score": 1.0, "acc": True, "pred": "42"}
    wrong = _reward("dapo", "Answer: 41", "42")
    assert wrong["score"] == -1.0 and wrong["acc"] is False and wrong["pred"] == "41"
    far = _reward("dapo", "Answer: 42\n" + "x" * 400, "42")
    assert far["score"] == -1.0 and far["pred"] == "[INVALID]"


def test_f1_reward_and_boxed_prefix():
    assert _reward("f1", "The Eiffel Tower!", "eiffel tower") == pytest.approx(1.0)
    precision_half = f1_score("paris france", "paris")
    assert precision_half == pytest.approx((2 / 3, 0.5, 1.0))
    assert _reward("f1", "nothing in common", "paris") == 0.0
    # boxed_ reduces the response to its boxed answer before scoring.
    assert _reward("boxed_f1", r"blah blah paris is nice \boxed{Paris}", "paris") == pytest.approx(1.0)
    assert _reward("f1", r"blah blah paris is nice \boxed{Paris}", "paris") < 0.5


def test_gpqa_reward_extracts_the_letter():
    assert extract_choice_letter("I think (B) fits, so Answer: C") == "C"
    assert _reward("gpqa", r"Therefore \boxed{D}", "D") == 1.0
    assert _reward("gpqa", "The answer is A", "D") == 0.0
    choices = ["red", "green", "blue", "cyan"]
    assert _reward("gpqa", "Answer: B", "green", metadata={"choices": choices}) == 1.0
    with pytest.raises(RewardError, match="gpqa.*cannot tell the correct letter"):
        _reward("gpqa", "Answer: B", "no such option")


def test_random_reward_is_zero_or_one_and_metadata_rm_type_wins():
    assert {_reward("random", "", None) for _ in range(40)} == {0, 1}
    sample = Sample(index=3, response=r"\boxed{2}", label="2", metadata={"rm_type": "math"})
    assert asyncio.run(async_rm(_args(rm_type="f1"), sample)) == 1


def test_unknown_or_missing_reward_is_a_clear_error():
    with pytest.raises(ValueError, match="--rm-type 'nope' is not a built-in reward"):
        validate_rm_type("nope")
    validate_rm_type("boxed_math")
    with pytest.raises(RewardError, match="sample 5 .*no reward is configured"):
        asyncio.run(async_rm(_args(), Sample(index=5, group_index=1, response="x")))


async def _length_reward(args, sample):
    return len(sample.response)


async def _group_reward(args, samples):
    return [float(i) for i, _ in enumerate(samples)]


def _failing_reward(args, sample):
    raise KeyError("label")


def test_custom_reward_per_sample_group_and_failure_naming():
    args = _args(custom_rm_path=f"{__name__}._length_reward")
    samples = [Sample(index=i, response="x" * i) for i in range(3)]
    assert asyncio.run(async_rm(args, samples[2])) == 2
    group_args = _args(custom_rm_path=f"{__name__}._group_reward")
    assert asyncio.run(batched_async_rm(group_args, samples)) == [0.0, 1.0, 2.0]
    # Without a custom function a group is scored sample by sample with the built-in.
    boxed = [Sample(index=i, response=rf"\boxed{{{i}}}", label="1") for i in range(3)]
    assert asyncio.run(batched_async_rm(_args(rm_type="math"), boxed)) == [0, 1, 0]
    failing = Sample(index=7, group_index=2, response="x", custom_rm_path=f"{__name__}._failing_reward")
    with pytest.raises(RewardError, match=rf"{__name__}._failing_reward failed on sample 7 \(group 2\): KeyError"):
        asyncio.run(async_rm(_args(), failing))


class _RewardServer(BaseHTTPRequestHandler):
    calls = 0

    def do_POST(self):  # noqa: N802 - http.server's naming
        type(self).calls += 1
        if type(self).calls == 1:  # the first call fails: the client must retry
            self.send_response(503)
            self.end_headers()
            return
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        reply = json.dumps({"score": float(body["response"] == body["label"])}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


def test_remote_reward_retries_then_answers():
    server = HTTPServer(("127.0.0.1", 0), _RewardServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        args = _args(rm_type="remote_rm", rm_url=f"http://127.0.0.1:{server.server_port}/reward")
        sample = Sample(index=0, prompt="p", response="42", label="42")
        assert asyncio.run(async_rm(args, sample)) == {"score": 1.0}
        assert _RewardServer.calls == 2
    finally:
        server.shutdown()


def test_dynamic_sampling_filters():
    args = _args()
    same = [Sample(reward=1.0) for _ in range(4)]
    mixed = [Sample(reward=r) for r in (0.0, 1.0, 1.0, 0.0)]
    assert check_reward_nonzero_std(args, mixed).keep
    dropped = check_reward_nonzero_std(args, same)
    assert not dropped.keep and dropped.reason == "zero_std_1.0" and not dropped.keep_when_insufficient
    fallback = check_reward_nonzero_std_with_fallback(args, same)
    assert not fallback.keep and fallback.keep_when_insufficient
    keyed = Namespace(reward_key="score")
    assert not check_reward_nonzero_std(keyed, [Sample(reward={"score": -1.0}) for _ in range(2)]).keep

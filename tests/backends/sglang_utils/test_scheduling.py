"""Continuous batching, aborts, pause/continue and the control endpoints of the CPU engine."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from engine_helpers import generate, get, post, server_state

PROMPT = [17, 28, 5000, 7, 6, 42]
LONG = {"temperature": 0.9, "max_new_tokens": 900, "ignore_eos": True}


def wait_until(condition, timeout: float = 30.0, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(interval)


def load(url: str) -> dict:
    return get(url, "/v1/loads?include=core").json()["loads"][0]


def started_decoding(url: str, tokens_before: int, at_least: int = 5):
    return lambda: (load(url)["num_running_reqs"] > 0
                    and server_state(url)["generated_tokens"] >= tokens_before + at_least)


def test_concurrent_requests_are_batched(engine_a):
    sampling = {"temperature": 0, "max_new_tokens": 48, "ignore_eos": True}
    generate(engine_a.url, PROMPT, **sampling)  # warm the code paths once
    started = time.perf_counter()
    generate(engine_a.url, PROMPT, **sampling)
    one = time.perf_counter() - started
    histogram_before = server_state(engine_a.url)["batch_size_histogram"]
    prompts = [PROMPT[: 2 + i % 5] + [i] for i in range(8)]
    started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda p: generate(engine_a.url, p, **sampling), prompts))
    eight = time.perf_counter() - started
    assert all(len(r["output_ids"]) == 48 for r in replies)
    histogram = server_state(engine_a.url)["batch_size_histogram"]
    wide_steps = sum(v - histogram_before.get(k, 0) for k, v in histogram.items() if int(k) >= 4)
    assert wide_steps >= 30, histogram  # most of the 48 decode steps ran with at least 4 requests together
    assert eight < 0.5 * 8 * one, (one, eight)  # 8 concurrent requests cost far less than 8 sequential ones


def test_a_request_joins_a_running_batch(engine_a):
    tokens = server_state(engine_a.url)["generated_tokens"]
    with ThreadPoolExecutor(1) as pool:
        long = pool.submit(generate, engine_a.url, PROMPT, **{**LONG, "max_new_tokens": 600})
        wait_until(started_decoding(engine_a.url, tokens))
        short = generate(engine_a.url, PROMPT[:3], temperature=0, max_new_tokens=4, ignore_eos=True)
        assert not long.done(), "the short request had to wait for the long one"
        assert len(short["output_ids"]) == 4
        assert len(long.result(timeout=120)["output_ids"]) == 600


def test_abort_mid_generation_returns_partial_output(engine_a):
    tokens = server_state(engine_a.url)["generated_tokens"]
    with ThreadPoolExecutor(3) as pool:
        mine = pool.submit(lambda: post(engine_a.url, "/generate", {
            "input_ids": PROMPT, "rid": "abort-me", "sampling_params": LONG, "return_logprob": True}).json())
        others = [pool.submit(generate, engine_a.url, PROMPT, **LONG) for _ in range(2)]
        wait_until(started_decoding(engine_a.url, tokens))
        flush = get(engine_a.url, "/flush_cache")
        assert flush.status_code == 400 and flush.text == "Flush cache failed.\n"
        assert post(engine_a.url, "/abort_request", {"rid": "abort-me"}).content == b""
        reply = mine.result(timeout=30)
        meta = reply["meta_info"]
        assert meta["finish_reason"] == {"type": "abort", "message": "Aborted", "status_code": None, "err_type": None}
        assert 0 < meta["completion_tokens"] < 900
        assert len(meta["output_token_logprobs"]) == meta["completion_tokens"] == len(reply["output_ids"])
        assert not any(f.done() for f in others)
        assert post(engine_a.url, "/abort_request", {"abort_all": True}).status_code == 200
        for f in others:
            assert f.result(timeout=30)["meta_info"]["finish_reason"]["type"] == "abort"
    assert load(engine_a.url)["num_running_reqs"] + load(engine_a.url)["num_waiting_reqs"] == 0
    assert get(engine_a.url, "/flush_cache").status_code == 200


def test_pause_aborts_in_flight_holds_new_requests_until_continue(engine_a):
    tokens = server_state(engine_a.url)["generated_tokens"]
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(generate, engine_a.url, PROMPT, **LONG)
        wait_until(started_decoding(engine_a.url, tokens))
        paused = post(engine_a.url, "/pause_generation", {})
        assert paused.json() == {"message": "Generation paused successfully.", "status": "ok"}
        # Pause returns once the engine has answered every in-flight call (the reply may still be on its way).
        assert running.result(timeout=10)["meta_info"]["finish_reason"]["type"] == "abort"
        held = pool.submit(generate, engine_a.url, PROMPT, temperature=0, max_new_tokens=3)
        time.sleep(0.5)
        assert not held.done(), "a request sent while paused must be held, not answered"
        assert get(engine_a.url, "/flush_cache").status_code == 200  # nothing runs or waits in the engine
        assert post(engine_a.url, "/continue_generation", {}).json()["status"] == "ok"
        assert held.result(timeout=30)["meta_info"]["finish_reason"]["type"] == "length"


def test_pause_in_place_keeps_requests_and_retract_recomputes(engine_a):
    want = generate(engine_a.url, PROMPT, temperature=0, max_new_tokens=300, ignore_eos=True)["output_ids"]
    for mode in ("in_place", "retract"):
        tokens = server_state(engine_a.url)["generated_tokens"]
        with ThreadPoolExecutor(1) as pool:
            future = pool.submit(generate, engine_a.url, PROMPT, temperature=0, max_new_tokens=300, ignore_eos=True)
            wait_until(started_decoding(engine_a.url, tokens))
            assert post(engine_a.url, "/pause_generation", {"mode": mode}).status_code == 200
            frozen = server_state(engine_a.url)["generated_tokens"]
            time.sleep(0.3)
            assert server_state(engine_a.url)["generated_tokens"] == frozen and not future.done()
            post(engine_a.url, "/continue_generation", {})
            reply = future.result(timeout=60)
        assert reply["output_ids"] == want, mode  # greedy output unchanged by the pause (and the recompute)
        assert reply["meta_info"]["num_retractions"] == (1 if mode == "retract" else 0)


def test_health_info_and_version_endpoints(engine_a, model_dir_a):
    health = get(engine_a.url, "/health")
    assert health.status_code == 200 and health.content == b""
    started = time.perf_counter()
    assert get(engine_a.url, "/health_generate").status_code == 200
    assert time.perf_counter() - started < 10
    info = get(engine_a.url, "/get_model_info").json()
    assert info == get(engine_a.url, "/model_info").json()
    assert info["model_path"] == model_dir_a and info["architectures"] == ["Qwen3ForCausalLM"]
    assert info["model_type"] == "qwen3" and info["is_generation"] is True and info["weight_version"] == "default"
    server = get(engine_a.url, "/server_info").json()
    for key in ("tp_size", "pp_size", "ep_size", "dp_size"):
        assert server[key] == 1
    assert server["disaggregation_mode"] == "null" and server["enable_memory_saver"] is False
    assert server["max_req_input_len"] == 1023 and isinstance(server["internal_states"], list)
    assert get(engine_a.url, "/get_weight_version").json() == {"weight_version": "default"}
    loads = get(engine_a.url, "/v1/loads?include=core").json()
    assert loads["loads"][0]["num_running_reqs"] == 0 and loads["loads"][0]["max_running_requests"] == 256


def test_pause_rejects_an_unknown_mode(engine_a):
    reply = post(engine_a.url, "/pause_generation", {"mode": "sideways"})
    assert reply.status_code == 400 and "mode must be" in reply.json()["message"]
    assert generate(engine_a.url, PROMPT, max_new_tokens=2)["meta_info"]["finish_reason"]["type"] == "length"

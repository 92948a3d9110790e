"""Generation through the real sglang-router (PyPI 0.3.2) over two CPU engines registered with POST /workers."""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from engine_helpers import free_port, generate, get, post, server_state


def test_router_spreads_generation_over_two_engines(engine_a, engine_b, tmp_path):
    port = free_port()
    log = open(tmp_path / "router.log", "wb")
    router = subprocess.Popen(
        [sys.executable, "-m", "sglang_router.launch_router", "--host", "127.0.0.1", "--port", str(port),
         "--policy", "round_robin", "--prometheus-port", str(free_port()), "--log-level", "warn"],
        stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert router.poll() is None, (tmp_path / "router.log").read_text()
            try:
                if get(url, "/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "router did not start"
            time.sleep(0.2)
        for engine in (engine_a, engine_b):
            added = post(url, "/workers", {"url": engine.url, "worker_type": "regular"})
            assert added.status_code == 202, added.text
        # Registration runs in the background: the router checks /health, /server_info and /model_info first.
        while {w["url"] for w in get(url, "/workers").json()["workers"]} != {engine_a.url, engine_b.url}:
            assert time.monotonic() < deadline, get(url, "/workers").text
            time.sleep(0.2)

        before = [server_state(e.url)["requests_finished"] for e in (engine_a, engine_b)]
        prompts = [[17, 28, 5000 + i] for i in range(8)]
        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda p: generate(url, p, temperature=0, max_new_tokens=4, ignore_eos=True,
                                                       stop=None, no_stop_trim=True,
                                                       spaces_between_special_tokens=False), prompts))
        assert all(len(r["output_ids"]) == 4 and len(r["meta_info"]["output_token_logprobs"]) == 4 for r in replies)
        served = [server_state(e.url)["requests_finished"] - b for e, b in zip((engine_a, engine_b), before)]
        assert served[0] > 0 and served[1] > 0 and sum(served) == 8, served
        # A 400 from an engine comes back through the router unchanged.
        bad = post(url, "/generate", {"input_ids": [1, 2], "sampling_params": {"top_p": 0.0}})
        assert bad.status_code == 400 and "top_p must be in (0, 1]" in bad.json()["error"]["message"]
    finally:
        router.terminate()
        try:
            router.wait(timeout=10)
        except subprocess.TimeoutExpired:
            router.kill()
            router.wait(timeout=10)
        log.close()

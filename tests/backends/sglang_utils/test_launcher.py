"""Starting CPU engines: bad starts fail fast with one line naming the port and model directory."""

from __future__ import annotations

import socket
import time

import pytest

from engine_helpers import free_port
from slime.backends.sglang_utils.cpu_engine.launcher import CPUEngineStartError, launch_cpu_engine


def test_port_in_use_is_reported_with_port_and_model(model_dir_a, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(CPUEngineStartError) as error:
            launch_cpu_engine(model_dir_a, port, timeout=60, log_path=str(tmp_path / "engine.log"))
    message = str(error.value)
    assert f"127.0.0.1:{port}" in message and model_dir_a in message and "cannot listen" in message
    assert "\n" not in message and time.monotonic() - started < 30


def test_missing_model_dir_is_reported(tmp_path):
    missing = str(tmp_path / "no_model")
    with pytest.raises(CPUEngineStartError, match="directory does not exist") as error:
        launch_cpu_engine(missing, free_port(), timeout=60, log_path=str(tmp_path / "engine.log"))
    assert missing in str(error.value)


def test_multi_process_flags_are_refused(model_dir_a, tmp_path):
    with pytest.raises(CPUEngineStartError, match="not supported yet: --tp-size 2"):
        launch_cpu_engine(model_dir_a, free_port(), extra_args=["--tp-size", "2"], timeout=60,
                          log_path=str(tmp_path / "engine.log"))


def test_deterministic_inference_runs_requests_one_at_a_time(tmp_path):
    from slime.backends.sglang_utils.cpu_engine.server_args import parse_server_args

    (tmp_path / "config.json").write_text("{}")
    model = str(tmp_path)
    assert parse_server_args(["--model-path", model, "--max-running-requests", "8"]).max_running_requests == 8
    args = parse_server_args(["--model-path", model, "--max-running-requests", "8", "--enable-deterministic-inference"])
    assert args.enable_deterministic_inference and args.max_running_requests == 1

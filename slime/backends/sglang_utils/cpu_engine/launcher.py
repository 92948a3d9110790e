"""Start a CPU engine server as a subprocess and wait until it serves (no torch import in the caller)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Sequence

from slime.utils.misc import terminate_with_parent


class CPUEngineStartError(RuntimeError):
    """An engine server (the CPU engine, or SGLang on GPUs) died or never answered /health while starting."""


class CPUEngineProcess:
    """A running CPU engine: its URL, process and log file; `stop()` (or leaving a `with` block) ends it."""

    def __init__(self, process: subprocess.Popen, host: str, port: int, model_path: str, log_path: str) -> None:
        self.process, self.host, self.port = process, host, port
        self.model_path, self.log_path = model_path, log_path

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (uvicorn's graceful shutdown), then SIGKILL if it has not exited within `timeout`."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout)

    def __enter__(self) -> "CPUEngineProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _last_line(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return "(no log)"
    return lines[-1] if lines else "(empty log)"


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback must never go via a proxy


def _healthy(url: str) -> bool:
    try:
        with _NO_PROXY.open(f"{url}/health", timeout=2) as reply:
            return reply.status == 200
    except (urllib.error.URLError, OSError):
        return False


def launch_cpu_engine(model_path: str, port: int, *, host: str = "127.0.0.1", extra_args: Sequence[str] = (),
                      timeout: float = 120.0, log_path: str | None = None,
                      env: dict[str, str] | None = None) -> CPUEngineProcess:
    """Run `python -m slime.backends.sglang_utils.cpu_engine --model-path ... --host ... --port ...` and return
    once GET /health answers 200. Raises CPUEngineStartError naming the port and model directory, with the
    engine's last log line, if the process exits first (port taken, model directory missing, bad flag) or if it
    is not healthy within `timeout` seconds (then it is killed)."""
    if log_path is None:
        handle, log_path = tempfile.mkstemp(prefix=f"cpu_engine_{port}_", suffix=".log")
        os.close(handle)
    cmd = [sys.executable, "-m", "slime.backends.sglang_utils.cpu_engine", "--model-path", model_path,
           "--host", host, "--port", str(port), *extra_args]
    process = start_server(cmd, f"http://{host}:{port}", f"CPU engine for {model_path} on {host}:{port}", log_path,
                           timeout, env)
    return CPUEngineProcess(process, host, port, model_path, log_path)


def start_server(cmd: Sequence[str], url: str, what: str, log_path: str, timeout: float,
                 env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start a server process (output to `log_path`, ended with its parent) and return it once `url`/health answers
    200; raise CPUEngineStartError naming `what`, with the last log line, if it exits first or is not healthy within
    `timeout` seconds (then it is stopped). Shared by the CPU engine and real SGLang servers."""
    with open(log_path, "ab") as log:
        process = subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env={**os.environ, **(env or {})}, preexec_fn=terminate_with_parent)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise CPUEngineStartError(f"{what} exited with code {process.returncode} while starting: "
                                      f"{_last_line(log_path)} (log: {log_path})")
        if _healthy(url):
            return process
        time.sleep(0.2)
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
    raise CPUEngineStartError(f"{what} was not healthy after {timeout:.0f} s: {_last_line(log_path)} "
                              f"(log: {log_path})")

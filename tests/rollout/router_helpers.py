"""A real sglang-router for tests that bring their own (--sglang-router-ip/--sglang-router-port, or in-process
rollouts): on a free port, with its Prometheus exporter on a free port too, so that routers of concurrent test runs
on this machine do not collide on the exporter's default port."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from slime.backends.sglang_utils.cpu_engine.launcher import start_server
from slime.utils.misc import free_port


def launch_router(log_dir: Path) -> tuple[subprocess.Popen, str, int]:
    """Start the router and return (process, ip, port) once GET /health answers; stop it with `stop_router`."""
    port = free_port()
    cmd = [sys.executable, "-m", "sglang_router.launch_router", "--host", "127.0.0.1", "--port", str(port),
           "--policy", "round_robin", "--prometheus-port", str(free_port()), "--log-level", "warn",
           "--disable-circuit-breaker", "--disable-health-check"]
    process = start_server(cmd, f"http://127.0.0.1:{port}", "test router", str(log_dir / "router.log"), timeout=60)
    return process, "127.0.0.1", port


def stop_router(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def register_workers(ip: str, port: int, urls: list[str], timeout: float = 60.0) -> None:
    """POST /workers for each URL and wait until the router lists them all (it registers in the background)."""
    from slime.backends.sglang_utils.sglang_engine import HTTP

    base = f"http://{ip}:{port}"
    for url in urls:
        HTTP.post(f"{base}/workers", json={"url": url}, timeout=30).raise_for_status()
    deadline = time.monotonic() + timeout
    while {w["url"] for w in HTTP.get(f"{base}/workers", timeout=5).json()["workers"]} < set(urls):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the router at {base} did not list {urls} within {timeout:.0f} s")
        time.sleep(0.2)

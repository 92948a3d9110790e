"""One inference engine: the server process it owns, its registration with the router, and the calls slime makes.

`SGLangEngine` is a plain class; the rollout manager makes it a Ray actor, one per engine, placed on the rollout
share of the placement group. On GPUs the server is real SGLang (`python -m sglang.launch_server`, with slime's
server arguments and every `--sglang-*` flag passed through); without GPUs it is the CPU engine
(`slime.backends.sglang_utils.cpu_engine`), which serves the same HTTP API. Everything after start-up is HTTP, so
the two are driven by the same code.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import time
from argparse import Namespace
from typing import Any

import requests

from slime.backends.sglang_utils.cpu_engine.launcher import launch_cpu_engine, start_server
from slime.utils.misc import free_port

logger = logging.getLogger(__name__)
# Engines and the router are on this node or the cluster's network: never reach them through an HTTP proxy that
# the environment may configure for the outside world.
_HTTP = requests.Session()
_HTTP.trust_env = False

START_TIMEOUT_S = 600.0
# Flags slime sets itself; a --sglang-<same> pass-through would contradict them.
_OWN_SERVER_FLAGS = {"model_path", "host", "port", "tp_size", "random_seed", "nnodes", "node_rank"}


def _passthrough_flags(args: Namespace) -> list[str]:
    """`--sglang-<name> value` flags as `--<name> value` for the real SGLang server."""
    flags = []
    for dest in getattr(args, "sglang_passthrough", []):
        name = dest[len("sglang_"):]
        if name in _OWN_SERVER_FLAGS:
            continue
        value = getattr(args, dest)
        flag = "--" + name.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif isinstance(value, list):
            flags += [flag, *map(str, value)]
        elif value is not False and value is not None:
            flags += [flag, str(value)]
    return flags


class SGLangEngine:
    def __init__(self, args: Namespace, rank: int, uses_gpus: bool):
        self.args, self.rank, self.uses_gpus = args, rank, uses_gpus
        self.host = "127.0.0.1" if not uses_gpus else _node_ip()
        self.port = free_port(self.host)
        self.process: Any = None
        self.router_url = (f"http://{args.sglang_router_ip}:{args.sglang_router_port}"
                           if args.sglang_router_ip else None)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def init(self) -> str:
        """Start the server, wait until it serves, register it with the router. Returns its URL."""
        if not self.args.hf_checkpoint:
            raise ValueError("the inference engines need --hf-checkpoint (the model they serve)")
        seed = self.args.seed + self.rank
        if self.uses_gpus:
            self._launch_sglang(seed)
        else:
            self.process = launch_cpu_engine(
                self.args.hf_checkpoint, self.port, host=self.host, timeout=START_TIMEOUT_S,
                extra_args=["--random-seed", str(seed), "--skip-server-warmup",
                            "--max-running-requests", str(self.args.sglang_server_concurrency)],
                # One intra-op thread per engine unless asked otherwise: engines and trainers share this machine's
                # cores, and oversubscribed OpenMP threads make small models' steps many times slower.
                env={"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
        if self.router_url:
            _HTTP.post(f"{self.router_url}/workers", json={"url": self.url}, timeout=30).raise_for_status()
        logger.info("engine %d serving %s at %s", self.rank, self.args.hf_checkpoint, self.url)
        return self.url

    def _launch_sglang(self, seed: int) -> None:
        tp = self.args.rollout_num_gpus_per_engine
        cmd = [sys.executable, "-m", "sglang.launch_server", "--model-path", self.args.hf_checkpoint,
               "--host", self.host, "--port", str(self.port), "--tp-size", str(tp), "--random-seed", str(seed),
               "--trust-remote-code", "--skip-server-warmup", *_passthrough_flags(self.args)]
        handle, log_path = tempfile.mkstemp(prefix=f"sglang_engine_{self.rank}_", suffix=".log")
        os.close(handle)
        self.process = start_server(cmd, self.url, f"SGLang server for {self.args.hf_checkpoint} at {self.url}",
                                    log_path, START_TIMEOUT_S)

    def shutdown(self) -> None:
        if self.router_url:
            try:
                _HTTP.delete(f"{self.router_url}/workers/{self.url}", timeout=5)
            except requests.RequestException:
                pass
        if self.process is not None:
            if hasattr(self.process, "stop"):
                self.process.stop()
            elif self.process.poll() is None:
                self.process.terminate()
                self.process.wait(timeout=30)
            self.process = None


def _node_ip() -> str:
    import ray

    return ray.util.get_node_ip_address()


class Router:
    """The real `sglang-router` (pip), started as a subprocess on a free port unless --sglang-router-ip is given."""

    def __init__(self, args: Namespace):
        self.process: subprocess.Popen | None = None
        if args.sglang_router_ip:
            return
        args.sglang_router_ip = "127.0.0.1"
        args.sglang_router_port = free_port()
        cmd = [sys.executable, "-m", "sglang_router.launch_router", "--host", args.sglang_router_ip,
               "--port", str(args.sglang_router_port), "--policy", args.router_policy or "round_robin",
               "--log-level", args.router_log_level, "--disable-circuit-breaker", "--disable-health-check",
               "--request-timeout-secs", str(args.sglang_router_request_timeout_secs),
               "--balance-abs-threshold", str(args.router_balance_abs_threshold),
               "--balance-rel-threshold", str(args.router_balance_rel_threshold)]
        handle, log_path = tempfile.mkstemp(prefix="sglang_router_", suffix=".log")
        os.close(handle)
        url = f"http://{args.sglang_router_ip}:{args.sglang_router_port}"
        self.process = start_server(cmd, url, f"sglang-router at {url}", log_path, timeout=60)
        logger.info("sglang-router at %s", url)

    def wait_for_workers(self, args: Namespace, urls: list[str], timeout: float = 60.0) -> None:
        """Worker registration is queued by the router: wait until it lists every engine as healthy."""
        deadline = time.monotonic() + timeout
        listed: set[str] = set()
        while time.monotonic() < deadline:
            reply = _HTTP.get(f"http://{args.sglang_router_ip}:{args.sglang_router_port}/workers", timeout=5)
            listed = {w["url"] for w in reply.json().get("workers", []) if w.get("is_healthy", True)}
            if set(urls) <= listed:
                return
            time.sleep(0.2)
        raise RuntimeError(f"the router lists {sorted(listed)} after {timeout:.0f} s; expected {sorted(urls)}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process = None

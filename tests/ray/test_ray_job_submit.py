"""train.py under `ray job submit` joins the running cluster instead of starting its own (RAY_ADDRESS)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

from conftest import REPO_ROOT
from test_train_drivers import (  # noqa: F401 (quick_task is a fixture)
    RAY_TAG, own_ray_processes, quick_task, sft_flags, stop_processes, summary,
)

pytestmark = pytest.mark.slow


def test_train_py_as_a_ray_job(quick_task, tmp_path):
    from slime.utils.misc import free_port

    port, dashboard = free_port(), free_port()
    tag = uuid.uuid4().hex  # `ray start` daemonises; the tag finds this cluster's processes to stop them
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO_ROOT), RAY_TAG: tag}
    ray = os.path.join(os.path.dirname(sys.executable), "ray")
    # Every port of our own: Ray's fixed defaults (the job agent's 52365, the client server's 10001, ...) may be held by
    # another Ray on this machine, and an agent that cannot bind leaves the job server with "No available agent".
    own_ports = [f"--{name}={free_port()}" for name in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port",
        "ray-client-server-port", "node-manager-port", "object-manager-port")]
    # Our own temp dir too: `ray start` records its address in <temp dir>/ray_current_cluster, and a plain
    # `ray.init()` anywhere on the machine (other tests' drivers) would join the cluster recorded in /tmp/ray.
    # Short (under /tmp): Ray's socket paths must fit in 107 characters.
    temp_dir = tempfile.mkdtemp(prefix="rayjob", dir="/tmp")
    subprocess.run([ray, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "2",
                    "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--disable-usage-stats",
                    "--temp-dir", temp_dir, *own_ports], check=True, env=env, capture_output=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            result = subprocess.run(
                [ray, "job", "submit", "--address", f"http://127.0.0.1:{dashboard}", "--", sys.executable,
                 str(REPO_ROOT / "train.py"), *sft_flags(quick_task, tmp_path, 1, 4)],
                env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path,
            )
            output = result.stdout + result.stderr
            # `ray start` returns before the node's job agent has registered (slowly, on a loaded machine); the
            # job server then refuses the submission and asks to retry.
            if "No available agent to submit job" not in output or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert result.returncode == 0, output[-4000:]
        assert "succeeded" in output
        first, last = summary(output)
        assert last < 0.85 * first  # measured: 10.78 -> 8.14 in 4 rollouts
    finally:
        # Not `ray stop`: it stops every Ray on the machine, other tests' and users' included.
        stop_processes(own_ray_processes(tag))
        shutil.rmtree(temp_dir, ignore_errors=True)

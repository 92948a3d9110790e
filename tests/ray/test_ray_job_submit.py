"""train.py under `ray job submit` joins the running cluster instead of starting its own (RAY_ADDRESS)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from test_train_drivers import quick_task, sft_flags, summary  # noqa: F401 (quick_task is a fixture)

pytestmark = pytest.mark.slow


def test_train_py_as_a_ray_job(quick_task, tmp_path):
    from slime.backends.megatron_utils.initialize import free_port

    port, dashboard = free_port(), free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO_ROOT)}
    ray = os.path.join(os.path.dirname(sys.executable), "ray")
    subprocess.run([ray, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "2",
                    "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--disable-usage-stats"],
                   check=True, env=env, capture_output=True)
    try:
        result = subprocess.run(
            [ray, "job", "submit", "--address", f"http://127.0.0.1:{dashboard}", "--", sys.executable,
             str(REPO_ROOT / "train.py"), *sft_flags(quick_task, tmp_path, 1, 4)],
            env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path,
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-4000:]
        assert "succeeded" in output
        first, last = summary(output)
        assert last < first
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True)

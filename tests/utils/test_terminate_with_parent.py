"""A server started with `terminate_with_parent` does not outlive a parent that is SIGKILLed (as Ray kills actors)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil

from conftest import REPO_ROOT

PARENT = """
import subprocess, sys
from slime.utils.misc import terminate_with_parent
child = subprocess.Popen(["sleep", "120"], preexec_fn=terminate_with_parent if sys.argv[1] == "1" else None)
print(child.pid, flush=True)
sys.stdin.read()
"""


def _orphan_survives(protected: bool) -> bool:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    parent = subprocess.Popen([sys.executable, "-c", PARENT, "1" if protected else "0"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)
    child_pid = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=10)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if not psutil.pid_exists(child_pid) or psutil.Process(child_pid).status() == psutil.STATUS_ZOMBIE:
            return False
        time.sleep(0.1)
    os.kill(child_pid, signal.SIGKILL)
    return True


def test_child_dies_with_a_killed_parent_only_when_protected():
    assert not _orphan_survives(protected=True)
    assert _orphan_survives(protected=False)  # without it the server would be left behind

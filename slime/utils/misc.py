"""Small helpers shared by every layer: plugin loading by dotted path, periodic-action scheduling, the tokenizer,
a free port, when this process started."""

from __future__ import annotations

import functools
import importlib
import os
import socket
import sys
import time
from typing import Any, Callable

from slime.utils.errors import UserError


class PluginLoadError(UserError, ImportError):
    """A dotted path given on the command line does not resolve to a callable or class."""


@functools.lru_cache(maxsize=None)
def load_function(path: str) -> Callable[..., Any]:
    """Import `package.module.attribute` and return the attribute.

    This is how every extension point (rollout functions, data sources, custom losses, reward functions) is loaded.
    The error names the path and what went wrong, so a typo in a flag is found at start-up, not mid-run.
    """
    module_path, _, attr = path.rpartition(".")
    if not module_path or not attr:
        raise PluginLoadError(f"'{path}' is not a dotted path of the form package.module.function")
    try:
        module = importlib.import_module(module_path)
    except Exception as exc:  # noqa: BLE001 - any failure while importing user code is reported the same way
        raise PluginLoadError(
            f"cannot load '{path}': importing module '{module_path}' failed with {type(exc).__name__}: {exc}"
        ) from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        public = sorted(name for name in vars(module) if not name.startswith("_"))
        raise PluginLoadError(
            f"cannot load '{path}': module '{module_path}' has no attribute '{attr}' (it defines: {', '.join(public)})"
        ) from None


def should_run_periodic_action(
    rollout_id: int,
    interval: int | None,
    num_rollout_per_epoch: int | None = None,
    num_rollout: int | None = None,
) -> bool:
    """True when a save/eval due every `interval` rollouts (or at an epoch end, or at the last rollout) is due now."""
    if interval is None:
        return False
    if num_rollout is not None and rollout_id == num_rollout - 1:
        return True
    step = rollout_id + 1
    return step % interval == 0 or (num_rollout_per_epoch is not None and step % num_rollout_per_epoch == 0)


@functools.lru_cache(maxsize=8)
def load_tokenizer(path: str) -> Any:
    """The HF tokenizer (and chat template) of a local model directory; cached per process."""
    from transformers import AutoTokenizer

    if not os.path.isdir(path):
        raise FileNotFoundError(f"tokenizer directory {path!r} (--hf-checkpoint) does not exist")
    return AutoTokenizer.from_pretrained(path, trust_remote_code=True)


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free now (for the trainers' rendezvous and tests that start several processes)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def terminate_with_parent() -> None:
    """`preexec_fn` for server subprocesses: Linux sends the child SIGTERM when the process that started it dies, so a
    killed actor (Ray kills with SIGKILL, which runs no cleanup) leaves no engine or router behind."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def process_start_time() -> float:
    """When this process started, on the clock of time.time(): start-up times count from the command, including
    the interpreter's start and the imports. Read from /proc on Linux (to the kernel's clock tick); elsewhere, now."""
    try:
        with open("/proc/self/stat") as f:
            # Field 22 (starttime, in clock ticks since boot); the fields after the parenthesised name start at 3.
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return time.time()
    return time.time() - age

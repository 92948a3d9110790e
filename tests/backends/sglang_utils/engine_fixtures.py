"""CPU engine fixtures, loaded as a pytest plugin by tests/conftest.py: two tiny Qwen3 checkpoints (different
weights) and two engine servers on loopback, shared by this directory's tests and always stopped at the end of the
session."""

from __future__ import annotations

from typing import Iterator

import pytest
import torch

from engine_helpers import build_tiny_qwen3, free_port, load_model
from slime.backends.sglang_utils.cpu_engine.launcher import CPUEngineProcess, launch_cpu_engine


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Reference computations in this process use one thread too (the cores are shared; see _engine)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def model_dir_a(tmp_path_factory) -> str:
    return build_tiny_qwen3(str(tmp_path_factory.mktemp("qwen3_a")), seed=0)


@pytest.fixture(scope="session")
def model_dir_b(tmp_path_factory) -> str:
    return build_tiny_qwen3(str(tmp_path_factory.mktemp("qwen3_b")), seed=1)


@pytest.fixture(scope="session")
def model_a(model_dir_a):
    return load_model(model_dir_a)


def _engine(model_dir: str, log_dir, *extra: str) -> Iterator[CPUEngineProcess]:
    # One intra-op thread: the test machine's cores are shared, and OpenMP threads waiting on each other under
    # contention make a tiny model's steps tens of times slower.
    engine = launch_cpu_engine(model_dir, free_port(), extra_args=["--random-seed", "0", *extra], timeout=120,
                               env={"OMP_NUM_THREADS": "1"}, log_path=str(log_dir / "engine.log"))
    try:
        yield engine
    finally:
        engine.stop()


@pytest.fixture(scope="session")
def engine_a(model_dir_a, tmp_path_factory) -> Iterator[CPUEngineProcess]:
    """Serves model A for the generation tests; its weights never change."""
    yield from _engine(model_dir_a, tmp_path_factory.mktemp("engine_a"), "--enable-metrics")


@pytest.fixture(scope="session")
def engine_b(model_dir_a, tmp_path_factory) -> Iterator[CPUEngineProcess]:
    """Starts on model A too; the weight-update tests change its weights."""
    yield from _engine(model_dir_a, tmp_path_factory.mktemp("engine_b"), "--enable-memory-saver")

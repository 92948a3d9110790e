"""Failures inside Ray actors as a user sees them: a mistake is one line on stderr with exit status 2 and the full
traceback in a log file the line names; a crash keeps its traceback on stderr and exits with status 1."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT

pytestmark = pytest.mark.slow
HERE = os.path.dirname(os.path.abspath(__file__))
FLAGS = [
    "--rollout-function-path", "slime.rollout.sft_rollout.generate_rollout", "--prompt-data", "data.jsonl",
    "--input-key", "messages", "--rollout-batch-size", "2", "--global-batch-size", "2", "--num-rollout", "1",
    "--debug-train-only", "--actor-num-gpus-per-node", "1",
]
SFT = ["--loss-type", "sft_loss", "--disable-compute-advantages-and-returns"]
CONVERSATION = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'


def run_train(cwd: Path, *flags: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), HERE])}
    return subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), *flags], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def one_line_error(result: subprocess.CompletedProcess, message: str) -> str:
    """Checks the run ended with exactly `error: <message>; traceback in <log>` and no traceback on the terminal;
    returns the log file's text."""
    assert result.returncode == 2, result.stderr[-4000:]
    last = result.stderr.strip().splitlines()[-1]
    match = re.fullmatch(re.escape(f"error: {message}; traceback in ") + r"(\S+)", last)
    assert match, result.stderr[-4000:]
    assert "Traceback" not in result.stdout + result.stderr
    return Path(match[1]).read_text()


def test_malformed_jsonl_in_the_rollout_manager(tmp_path):
    (tmp_path / "data.jsonl").write_text('{"messages": [}\n' + CONVERSATION)
    result = run_train(tmp_path, *FLAGS, *SFT, "--save", str(tmp_path / "out"))
    log = one_line_error(result, "data.jsonl: line 1: malformed JSON (Expecting value)")
    assert (tmp_path / "out" / "logs").is_dir() and len(list((tmp_path / "out" / "logs").iterdir())) == 1
    assert "Traceback (most recent call last)" in log and "_scan_jsonl" in log  # the rollout manager's own frames
    assert "DataError: data.jsonl: line 1: malformed JSON (Expecting value)" in log
    # Start-up noise is gone: Megatron's Apex / Transformer Engine notes and library deprecation warnings.
    assert "Apex" not in result.stderr and "Warning" not in result.stderr, result.stderr[-4000:]


def test_a_user_error_in_the_trainer(tmp_path):
    (tmp_path / "data.jsonl").write_text(CONVERSATION * 2)
    result = run_train(tmp_path, *FLAGS, *SFT)  # no model flags and no --hf-checkpoint
    log = one_line_error(result, "--num-layers is not set (give model flags, or --hf-checkpoint)")
    assert "transformer_config_from_args" in log  # raised in the trainer actor, traceback kept in the log


def test_a_crash_keeps_its_traceback(tmp_path):
    (tmp_path / "data.jsonl").write_text(CONVERSATION * 2)
    result = run_train(tmp_path, *FLAGS, *SFT, "--data-source-path", "user_error_plugins.BrokenDataSource")
    assert result.returncode == 1, result.stderr[-4000:]
    assert "Traceback (most recent call last)" in result.stderr
    assert "RuntimeError: the data source broke" in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    match = re.fullmatch(r"the run crashed; this traceback is also in (\S+)", last)
    assert match, result.stderr[-4000:]
    assert "RuntimeError: the data source broke" in Path(match[1]).read_text()

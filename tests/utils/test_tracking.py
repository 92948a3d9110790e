"""Metric sinks: W&B offline and TensorBoard write what they are given; a missing package is a clear error."""

from __future__ import annotations

import glob
import json
import sys

import pytest

from slime.utils.tracking import Tracker


def test_wandb_offline_and_tensorboard(tmp_path, monkeypatch, sft_args):
    monkeypatch.setenv("TENSORBOARD_DIR", str(tmp_path / "tb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    args = sft_args("--use-wandb", "--wandb-mode", "offline", "--wandb-dir", str(tmp_path), "--wandb-project", "t",
                    "--use-tensorboard", "--metrics-file", str(tmp_path / "metrics.jsonl"))
    tracker = Tracker(args)
    for step in range(3):
        tracker.log({"train/loss": 1.0 / (step + 1), "note": "text is skipped"}, step=step)
    tracker.finish()
    assert glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-*.wandb"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [round(e.value, 4) for e in events.Scalars("train/loss")] == [1.0, 0.5, 0.3333]
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == [{"step": s, "train/loss": 1.0 / (s + 1)} for s in range(3)]


def test_missing_wandb_is_a_clear_error(monkeypatch, sft_args):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(RuntimeError, match="pip install wandb"):
        Tracker(sft_args("--use-wandb"))

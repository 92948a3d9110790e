"""Metric sinks: every point the driver logs reaches W&B (read back from the offline run file), TensorBoard and the
metrics file on its own step axis, also when a rollout has several optimizer steps; a missing package is an error."""

from __future__ import annotations

import glob
import json
import struct
import sys
import time
import zlib

import pytest

from slime.ray.driver import Progress
from slime.utils.tracking import Tracker

STEPS_PER_ROLLOUT = 3
ROLLOUTS = 3


def read_wandb_records(path: str) -> list:
    """The records of a `.wandb` transaction log, decoded with wandb's own protobuf schema.

    wandb 0.31 ships no Python reader for this file (its reader moved into the Go service), so the framing is read
    here: a 7-byte file header (`:W&B`, magic 0xBEE1, version 0), then 32 KiB blocks of chunks, each with a header
    (CRC-32 of type + payload, payload length, type: 1 full, 2 first, 3 middle, 4 last).
    """
    from wandb.proto import wandb_internal_pb2

    data = open(path, "rb").read()
    assert struct.unpack("<4sHB", data[:7]) == (b":W&B", 0xBEE1, 0), "not a W&B transaction log"
    block, position, pending, records = 32768, 7, b"", []
    while position + 7 <= len(data):
        left_in_block = block - position % block
        if left_in_block < 7:  # too small for a chunk header: padding up to the next block
            position += left_in_block
            continue
        checksum, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if kind == 0:
            position += left_in_block
            continue
        if position + 7 + length > len(data):  # a chunk still being written
            break
        payload = data[position + 7:position + 7 + length]
        assert zlib.crc32(bytes([kind]) + payload) == checksum, f"corrupt chunk at byte {position}"
        position += 7 + length
        pending += payload
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def read_finished_run(path: str, timeout: float = 60.0) -> list:
    """The run's records once its exit record is on disk: `finish()` can return before W&B's service has flushed the
    transaction log (it flushes on a timer and at exit)."""
    deadline = time.monotonic() + timeout
    while True:
        records = read_wandb_records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def drive_progress(args) -> tuple[list[tuple[str, int, float]], list[tuple[str, int, float]]]:
    """What the driver logs for ROLLOUTS rollouts of STEPS_PER_ROLLOUT optimizer steps each, with an eval after
    rollout 1: returns the (key, step, value) points expected on the train axis and on the other axes."""
    progress = Progress(args)
    train_points, other_points = [], []
    for rollout_id in range(ROLLOUTS):
        step_metrics = []
        for i in range(STEPS_PER_ROLLOUT):
            step = rollout_id * STEPS_PER_ROLLOUT + i
            metrics = {"step": step, "loss": 10.0 - step, "lr": 1e-3, "grad_norm": 1.0 + step,
                       "tokens_per_s": 100.0, "step_time": 0.5}
            step_metrics.append(metrics)
            train_points += [(f"train/{k}", step, float(v)) for k, v in metrics.items() if k != "step"]
        rollout_metrics = {"rollout/samples": 4.0 + rollout_id, "perf/rollout_time": 0.25 * rollout_id,
                           "sft/tokens": 100.0 * rollout_id, "rollout/note": "text is not a metric"}
        progress.log(rollout_id, rollout_metrics, step_metrics)
        other_points += [(k, rollout_id, float(v)) for k, v in rollout_metrics.items() if not isinstance(v, str)]
        if rollout_id == 1:
            progress.log_eval(rollout_id, {"eval/val/loss": 7.5})
            other_points.append(("eval/val/loss", rollout_id, 7.5))
    progress.summary()
    return train_points, other_points


def test_every_point_on_its_own_axis_in_wandb_tensorboard_and_the_metrics_file(tmp_path, monkeypatch, sft_args):
    monkeypatch.setenv("TENSORBOARD_DIR", str(tmp_path / "tb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    args = sft_args("--use-wandb", "--wandb-mode", "offline", "--wandb-dir", str(tmp_path), "--wandb-project", "t",
                    "--use-tensorboard", "--metrics-file", str(tmp_path / "metrics.jsonl"), "--num-rollout", "3")
    train_points, other_points = drive_progress(args)
    axis = {"train": "train/step", "rollout": "rollout/step", "perf": "rollout/step", "sft": "rollout/step",
            "eval": "eval/step"}
    expected = {(key, axis[key.split("/")[0]], step, value) for key, step, value in train_points + other_points}

    # W&B: every history row carries exactly one axis step, and every logged point is there.
    (run_file,) = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-*.wandb"))
    records = read_finished_run(run_file)
    got = set()
    for record in records:
        if record.WhichOneof("record_type") != "history":
            continue
        # wandb-core writes flat keys as a one-element nested_key
        row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
        steps = [key for key in row if key.endswith("/step")]
        assert len(steps) == 1, row
        got |= {(key, steps[0], row[steps[0]], value) for key, value in row.items()
                if not key.startswith("_") and key != steps[0]}
    assert got == expected
    step_metrics = {r.metric.glob_name or r.metric.name: r.metric.step_metric
                    for r in records if r.WhichOneof("record_type") == "metric" and r.metric.step_metric}
    assert {k: step_metrics[k] for k in ("train/*", "rollout/*", "perf/*", "eval/*", "sft/*")} == {
        "train/*": "train/step", "rollout/*": "rollout/step", "perf/*": "rollout/step", "eval/*": "eval/step",
        "sft/*": "rollout/step"}

    # TensorBoard: each tag at its own axis's steps.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tb = {(tag, axis[tag.split("/")[0]], e.step, round(e.value, 5))
          for tag in events.Tags()["scalars"] for e in events.Scalars(tag)}
    assert tb == {(k, a, s, round(v, 5)) for k, a, s, v in expected}

    # The metrics file: one line per axis per call, keyed by that axis's step.
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    from_file = set()
    for line in lines:
        (step_key,) = [k for k in line if k.endswith("/step")]
        from_file |= {(k, step_key, line[step_key], v) for k, v in line.items() if k != step_key}
    assert from_file == expected


def test_always_use_train_step_moves_rollout_and_eval_points_to_train_steps(tmp_path, sft_args):
    # 4 prompts x 2 samples per rollout, 4 samples per optimizer step: rollout r starts at train step 2r.
    args = sft_args("--metrics-file", str(tmp_path / "m.jsonl"), "--wandb-always-use-train-step",
                    "--n-samples-per-prompt", "2")
    tracker = Tracker(args)
    tracker.log({"train/loss": 1.0}, step=5)
    tracker.log({"rollout/samples": 8, "perf/rollout_time": 0.5}, step=3)
    tracker.log({"eval/val/loss": 2.0}, step=3)
    tracker.finish()
    lines = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert lines == [{"train/step": 5, "train/loss": 1.0},
                     {"rollout/step": 6, "rollout/samples": 8.0, "perf/rollout_time": 0.5},
                     {"eval/step": 6, "eval/val/loss": 2.0}]


def test_wandb_group_gets_a_random_suffix_unless_disabled(tmp_path, monkeypatch, sft_args):
    monkeypatch.setenv("WANDB_SILENT", "true")
    groups = []
    for extra in ([], ["--disable-wandb-random-suffix"]):
        tracker = Tracker(sft_args("--use-wandb", "--wandb-mode", "offline", "--wandb-dir", str(tmp_path),
                                   "--wandb-group", "exp", *extra))
        groups.append((tracker.wandb_run.group, tracker.wandb_run.name))
        tracker.finish()
    (suffixed, suffixed_name), plain = groups
    assert suffixed.startswith("exp_") and len(suffixed) == len("exp_") + 6 and suffixed_name == suffixed
    assert plain == ("exp", "exp")


def test_missing_wandb_is_a_clear_error(monkeypatch, sft_args):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(RuntimeError, match="pip install wandb"):
        Tracker(sft_args("--use-wandb"))

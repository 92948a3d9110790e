"""The rollout manager: a Ray actor that owns the data source and the rollout function, and turns each rollout's
samples into one training shard per data-parallel rank (each trainer fetches only its own)."""

from __future__ import annotations

import logging
import time
from argparse import Namespace
from dataclasses import dataclass
from typing import Any

import ray

from slime.rollout.base_types import call_rollout_fn, check_eval_output, check_train_output
from slime.utils.misc import load_function
from slime.utils.train_data import (
    REQUIRED_TRAIN_KEYS,
    convert_samples_to_train_data,
    load_debug_rollout_data,
    post_process_rewards,
    save_debug_rollout_data,
    split_eval_data_by_dp,
    split_train_data_by_dp,
    tensorize,
)
from slime.utils.types import Sample

logger = logging.getLogger(__name__)


@dataclass
class Box:
    """Holds an ObjectRef so Ray does not resolve it when the list is passed to every trainer."""

    inner: Any


class RolloutManager:
    def __init__(self, args: Namespace):
        self.args = args
        self.data_source = load_function(args.data_source_path)(args)
        self.generate_rollout = load_function(args.rollout_function_path)
        self.eval_generate_rollout = load_function(args.eval_function_path)
        # The cursor as of the end of each generated rollout: with train_async.py, rollout N+1 is already drawn
        # when rollout N is saved, and saving the live cursor would skip a batch on resume.
        self.cursor_after: dict[int, dict[str, Any]] = {}

    def dataset_size(self) -> int:
        return len(self.data_source)

    def generate(self, rollout_id: int) -> tuple[list[Box], dict[str, Any]]:
        """One rollout: samples from the rollout function (or a saved rollout), as per-DP-rank shards."""
        started = time.perf_counter()
        samples, metrics = self._rollout_samples(rollout_id)
        if self.args.save_debug_rollout_data:
            save_debug_rollout_data(self.args.save_debug_rollout_data.format(rollout_id=rollout_id), rollout_id,
                                    samples)
        data = self._convert(samples)
        shards = split_train_data_by_dp(self.args, data, self.args.data_parallel_size)
        metrics.update({
            "rollout/samples": len(samples),
            "rollout/epoch": getattr(self.data_source, "epoch_id", 0),
            "perf/rollout_time": time.perf_counter() - started,
        })
        return [Box(ray.put(tensorize(shard))) for shard in shards], metrics

    def _rollout_samples(self, rollout_id: int) -> tuple[list[Sample], dict[str, Any]]:
        if self.args.load_debug_rollout_data:
            path = self.args.load_debug_rollout_data.format(rollout_id=rollout_id)
            return load_debug_rollout_data(path, self.args.load_debug_rollout_data_subsample), {}
        output = call_rollout_fn(self.generate_rollout, self.args, rollout_id, self.data_source, evaluation=False)
        if hasattr(self.data_source, "state_dict"):
            self.cursor_after[rollout_id] = self.data_source.state_dict()
        samples = check_train_output(output, self.args.rollout_function_path, self.args.n_samples_per_prompt)
        return samples, dict(output.metrics or {})

    def _convert(self, samples: list[Sample]) -> dict[str, Any]:
        if self.args.custom_convert_samples_to_train_data_path:
            path = self.args.custom_convert_samples_to_train_data_path
            data = load_function(path)(self.args, samples)
            missing = [key for key in REQUIRED_TRAIN_KEYS if key not in data]
            if missing:
                raise ValueError(f"--custom-convert-samples-to-train-data-path {path} returned no {missing}")
            return data
        raw_rewards, rewards = post_process_rewards(self.args, samples)
        return convert_samples_to_train_data(self.args, samples, rewards)

    def eval(self, rollout_id: int) -> dict[str, list[Box]]:
        """Held-out data per eval dataset, as per-DP-rank shards for a forward-only loss (SFT validation)."""
        output = call_rollout_fn(self.eval_generate_rollout, self.args, rollout_id, self.data_source, evaluation=True)
        check_eval_output(output, self.args.eval_function_path)
        boxes = {}
        for name, result in output.data.items():
            data = convert_samples_to_train_data(self.args, result["samples"])
            shards = split_eval_data_by_dp(self.args, data, self.args.data_parallel_size)
            boxes[name] = [Box(ray.put(tensorize(shard))) for shard in shards]
        return boxes

    def save(self, rollout_id: int) -> None:
        self.data_source.save(rollout_id, self.cursor_after.get(rollout_id))
        for old in [r for r in self.cursor_after if r <= rollout_id]:
            del self.cursor_after[old]

    def load(self, rollout_id: int | None) -> None:
        self.data_source.load(rollout_id)

    def dispose(self) -> None:
        """Nothing to release for file-backed rollouts; RL will stop its engines and router here."""


def create_rollout_manager(args: Namespace, uses_gpus: bool) -> Any:
    """The manager reserves a CPU on GPU clusters; on a CPU machine every core goes to the trainers."""
    return ray.remote(RolloutManager).options(num_cpus=1 if uses_gpus else 0, num_gpus=0).remote(args)

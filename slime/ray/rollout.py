"""The rollout manager: a Ray actor that owns the data source and the rollout function, and turns each rollout's
samples into one training shard per data-parallel rank (each trainer fetches only its own)."""

from __future__ import annotations

import logging
import time
from argparse import Namespace
from dataclasses import dataclass
from typing import Any

import ray

from slime.backends.sglang_utils.sglang_engine import Router, SGLangEngine
from slime.ray.placement_group import Placement
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
    def __init__(self, args: Namespace, placement: Placement | None = None):
        self.args = args
        self.router: Router | None = None
        self.engines: list[Any] = []
        if needs_engines(args):
            self._start_engines(placement)
        self.data_source = load_function(args.data_source_path)(args)
        self.generate_rollout = load_function(args.rollout_function_path)
        self.eval_generate_rollout = load_function(args.eval_function_path)
        # The cursor as of the end of each generated rollout: with train_async.py, rollout N+1 is already drawn
        # when rollout N is saved, and saving the live cursor would skip a batch on resume.
        self.cursor_after: dict[int, dict[str, Any]] = {}

    def _start_engines(self, placement: Placement | None) -> None:
        """The router, then one engine actor per `--rollout-num-gpus-per-engine` devices of the rollout share;
        the run's rollout function reaches them through the router's address in args."""
        args = self.args
        self.router = Router(args)
        per_engine = args.rollout_num_gpus_per_engine
        num_engines = args.rollout_num_gpus // per_engine
        uses_gpus = bool(placement and placement.uses_gpus)
        engine_class = ray.remote(SGLangEngine)
        for rank in range(num_engines):
            # A fraction of the bundle, as slime asks, so that a trainer can share it (--debug-rollout-only); the
            # server process the actor starts is not counted by Ray either way.
            options: dict[str, Any] = {"num_cpus": 0.2 if uses_gpus else 0, "num_gpus": 0.2 if uses_gpus else 0}
            if placement is not None and placement.pg is not None:
                options["scheduling_strategy"] = placement.strategy(rank * per_engine)
            self.engines.append(engine_class.options(**options).remote(args, rank, uses_gpus))
        urls = ray.get([engine.init.remote() for engine in self.engines])
        self.router.wait_for_workers(args, urls)
        logger.info("%d inference engines behind the router at %s:%s", num_engines, args.sglang_router_ip,
                    args.sglang_router_port)

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
        return convert_samples_to_train_data(self.args, samples, rewards, raw_rewards)

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
        """Stop the engines (their server processes) and the router."""
        if self.engines:
            ray.get([engine.shutdown.remote() for engine in self.engines])
            self.engines = []
        if self.router is not None:
            self.router.stop()
            self.router = None


def needs_engines(args: Namespace) -> bool:
    """Engines serve generation; SFT (--debug-train-only) and replays of saved rollouts need none."""
    return not args.debug_train_only and not args.load_debug_rollout_data and bool(args.rollout_num_gpus)


def create_rollout_manager(args: Namespace, placement: Placement) -> Any:
    """The manager reserves a CPU on GPU clusters; on a CPU machine every core goes to the trainers and engines.
    Its engines go on `placement`, the rollout share of the placement group."""
    manager = ray.remote(RolloutManager).options(num_cpus=1 if placement.uses_gpus else 0, num_gpus=0)
    return manager.remote(args, placement)

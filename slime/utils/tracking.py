"""Metric sinks: Weights & Biases (`--use-wandb`, offline with `--wandb-mode offline`), TensorBoard
(`--use-tensorboard`) and a JSON-lines file (`--metrics-file`). The first two are optional installs; asking for one
that is missing is an error that says what to install, at start-up rather than at the first metric.

Metrics live on three step axes, as in slime: `train/*` on `train/step` (optimizer steps), `eval/*` on `eval/step`,
and everything else a rollout reports (`rollout/*`, `perf/*`, a rollout function's own namespaces) on
`rollout/step`. A rollout with several optimizer steps logs train steps past the rollout id; one shared step would
make W&B drop every later point whose step is lower than the last one, so each axis carries its own step metric and
no W&B call passes `step=`.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from argparse import Namespace
from typing import Any

AXES = ("train", "rollout", "eval")
# Namespaces slime plots against rollout/step; any other namespace seen in a rollout's metrics is added on first use.
ROLLOUT_NAMESPACES = ("rollout", "perf", "multi_turn", "passrate")
STEP_KEYS = {f"{axis}/step" for axis in AXES}


def axis_of(key: str) -> str:
    namespace = key.split("/", 1)[0]
    return namespace if namespace in ("train", "eval") else "rollout"


class Tracker:
    def __init__(self, args: Namespace):
        self.args = args
        self.wandb_run = None
        self.writer = None
        self.defined: set[str] = set()
        self.metrics_file = open(args.metrics_file, "a") if getattr(args, "metrics_file", None) else None
        if args.use_wandb:
            self._init_wandb(args)
        if args.use_tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise RuntimeError("--use-tensorboard needs the tensorboard package: pip install tensorboard") from None
            directory = os.environ.get("TENSORBOARD_DIR") or os.path.join(
                "tensorboard_log", args.tb_project_name or "slime",
                args.tb_experiment_name or time.strftime("%Y%m%d-%H%M%S"))
            self.writer = SummaryWriter(directory)

    def _init_wandb(self, args: Namespace) -> None:
        try:
            import wandb
        except ImportError:
            raise RuntimeError("--use-wandb needs the wandb package: pip install wandb") from None
        if args.wandb_key:
            os.environ.setdefault("WANDB_API_KEY", args.wandb_key)
        if args.wandb_host:
            os.environ.setdefault("WANDB_BASE_URL", args.wandb_host)
        group = args.wandb_group
        if group and not args.disable_wandb_random_suffix:
            # slime's default: runs launched with the same --wandb-group still get distinct groups and names.
            group = f"{group}_{secrets.token_hex(3)}"
        self.wandb_run = wandb.init(
            project=args.wandb_project or "slime", entity=args.wandb_team, group=group, name=group,
            mode=args.wandb_mode, dir=args.wandb_dir, id=args.wandb_run_id, resume="allow",
            config={k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool, type(None)))},
        )
        for axis in AXES:
            self.wandb_run.define_metric(f"{axis}/step")
        for namespace in ("train", "eval", *ROLLOUT_NAMESPACES):
            self._define(f"{namespace}/*", axis_of(f"{namespace}/"))

    def _define(self, pattern: str, axis: str) -> None:
        self.wandb_run.define_metric(pattern, step_metric=f"{axis}/step")
        self.defined.add(pattern)

    def _axis_step(self, axis: str, step: int) -> int:
        """`--wandb-always-use-train-step` puts rollout and eval points at the train step their rollout starts."""
        if axis == "train" or not self.args.wandb_always_use_train_step:
            return step
        args = self.args
        return step * args.rollout_batch_size * args.n_samples_per_prompt // args.global_batch_size

    def log(self, metrics: dict[str, Any], step: int) -> None:
        """Log numeric `metrics` (text is skipped), each key on its axis. `step` is the optimizer step when logging
        `train/*` keys and the rollout id otherwise (as the driver calls it); it is mapped to each axis's step."""
        by_axis: dict[str, dict[str, float]] = {}
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and key not in STEP_KEYS:
                by_axis.setdefault(axis_of(key), {})[key] = float(value)
        for axis, values in by_axis.items():
            axis_step = self._axis_step(axis, step)
            if self.wandb_run is not None:
                self._define_new_namespaces(values, axis)
                self.wandb_run.log({**values, f"{axis}/step": axis_step})
            if self.writer is not None:
                for key, value in values.items():
                    self.writer.add_scalar(key, value, axis_step)
            if self.metrics_file is not None:
                self.metrics_file.write(json.dumps({f"{axis}/step": axis_step, **values}) + "\n")
                self.metrics_file.flush()

    def _define_new_namespaces(self, values: dict[str, float], axis: str) -> None:
        for key in values:
            namespace, slash, _ = key.partition("/")
            pattern = f"{namespace}/*" if slash else key
            if pattern not in self.defined:
                self._define(pattern, axis)

    def finish(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()
        if self.writer is not None:
            self.writer.close()
        if self.metrics_file is not None:
            self.metrics_file.close()

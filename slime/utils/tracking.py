"""Metric sinks: Weights & Biases (`--use-wandb`, offline with `--wandb-mode offline`), TensorBoard
(`--use-tensorboard`) and a JSON-lines file (`--metrics-file`). Both are optional installs; asking for one that is missing is an error that says what to
install, at start-up rather than at the first metric."""

from __future__ import annotations

import json
import os
import time
from argparse import Namespace
from typing import Any


class Tracker:
    def __init__(self, args: Namespace):
        self.wandb_run = None
        self.writer = None
        self.metrics_file = open(args.metrics_file, "a") if getattr(args, "metrics_file", None) else None
        if args.use_wandb:
            try:
                import wandb
            except ImportError:
                raise RuntimeError("--use-wandb needs the wandb package: pip install wandb") from None
            if args.wandb_key:
                os.environ.setdefault("WANDB_API_KEY", args.wandb_key)
            if args.wandb_host:
                os.environ.setdefault("WANDB_BASE_URL", args.wandb_host)
            self.wandb_run = wandb.init(
                project=args.wandb_project or "slime", entity=args.wandb_team, group=args.wandb_group,
                mode=args.wandb_mode, dir=args.wandb_dir, id=args.wandb_run_id, resume="allow",
                config={k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool, type(None)))},
            )
        if args.use_tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise RuntimeError("--use-tensorboard needs the tensorboard package: pip install tensorboard") from None
            directory = os.environ.get("TENSORBOARD_DIR") or os.path.join(
                "tensorboard_log", args.tb_project_name or "slime", args.tb_experiment_name or time.strftime("%Y%m%d-%H%M%S"))
            self.writer = SummaryWriter(directory)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        if self.wandb_run is not None:
            self.wandb_run.log(numeric, step=step)
        if self.writer is not None:
            for key, value in numeric.items():
                self.writer.add_scalar(key, value, step)
        if self.metrics_file is not None:
            self.metrics_file.write(json.dumps({"step": step, **numeric}) + "\n")
            self.metrics_file.flush()

    def finish(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()
        if self.writer is not None:
            self.writer.close()
        if self.metrics_file is not None:
            self.metrics_file.close()

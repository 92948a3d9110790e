"""Logging set-up shared by the driver and the tools."""

from __future__ import annotations

import logging
import os
import warnings


def configure_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    # Megatron-core warns at import about optional CUDA extensions that the CPU path deliberately does without.
    warnings.filterwarnings("ignore", message=".*(Transformer Engine|Apex|apex).*")
    os.environ.setdefault("PYTHONWARNINGS", "ignore::UserWarning")

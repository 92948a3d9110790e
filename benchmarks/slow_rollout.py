"""The SFT reader plus a fixed delay per rollout ($SLOW_ROLLOUT_SECONDS): a rollout of known cost for bench_async."""

from __future__ import annotations

import os
import time

from slime.rollout.sft_rollout import generate_rollout as sft_generate_rollout


def generate_rollout(args, rollout_id, data_source, evaluation=False):
    time.sleep(float(os.environ.get("SLOW_ROLLOUT_SECONDS", "1.0")))
    return sft_generate_rollout(args, rollout_id, data_source, evaluation)

"""The SFT reader plus a fixed delay per rollout ($SLOW_ROLLOUT_SECONDS): a rollout of known cost for bench_async.

With $SLOW_ROLLOUT_TIMES set, each training rollout appends its own duration (seconds, one per line) to that file,
so the benchmark measures the rollout alone rather than assuming its cost.
"""

from __future__ import annotations

import os
import time

from slime.rollout.sft_rollout import generate_rollout as sft_generate_rollout, sft_dataset_checks


def generate_rollout(args, rollout_id, data_source, evaluation=False):
    started = time.perf_counter()
    time.sleep(float(os.environ.get("SLOW_ROLLOUT_SECONDS", "1.0")))
    result = sft_generate_rollout(args, rollout_id, data_source, evaluation)
    if os.environ.get("SLOW_ROLLOUT_TIMES") and not evaluation:
        with open(os.environ["SLOW_ROLLOUT_TIMES"], "a") as f:
            f.write(f"{time.perf_counter() - started}\n")
    return result


# The SFT reader's row checks, declared so this wrapper is an SFT rollout as the reader is.
generate_rollout.dataset_checks = sft_dataset_checks

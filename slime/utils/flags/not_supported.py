"""slime's flags that parse here but do nothing yet, each with what is missing.

A flag in this table is refused at parse time ("not supported yet: --flag (why)") when it is given a value other
than a harmless one (its default, unless listed). It stays declared so that slime's scripts get this message
rather than "unknown flag", and so that lifting a refusal is one deleted line: an issue that implements a flag
removes its entry here (docs/fidelity.md lists the table; tests/utils/test_no_silent_flags.py checks that every
other flag is read by the code).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from slime.utils.errors import NotSupportedError

RL = "RL arrives with the SGLang rollout"
ENGINES = "SGLang engines arrive with the RL rollout"
GENERATION = "generation arrives with the SGLang rollout"
REWARDS = "rewards arrive with the RL rollout"
WEIGHT_SYNC = "weight sync to engines arrives with the RL rollout"
MOE = "mixture-of-experts models are not supported yet"
# Pipeline and context parallelism build in Megatron but have not been checked against world size 1's losses and
# weights on this trainer (metrics from the last stage, packed sequences split across CP ranks). Lifting this
# refusal means deleting the four PARALLEL entries below once that check exists.
PARALLEL = "pipeline and context parallelism are not verified on this trainer yet; use data and tensor parallelism"
UNIT = (None, 1)  # parallel sizes: 1 (or unset) means "not parallel", which is what runs


@dataclass(frozen=True)
class Refusal:
    why: str
    harmless: tuple[Any, ...] | None = None  # None: only the parser's default is harmless


NOT_SUPPORTED: dict[str, Refusal] = {
    # cluster
    "--num-gpus-per-node": Refusal(f"it places SGLang engines; {ENGINES}"),
    "--offload": Refusal(ENGINES),
    "--offload-train": Refusal(ENGINES),
    "--train-backend": Refusal("only the Megatron backend exists"),
    # data and rollout
    "--multimodal-keys": Refusal("multimodal data is not supported yet"),
    "--rollout-data-transport": Refusal("rollout data travels through Ray's object store only"),
    "--update-weight-mode": Refusal(WEIGHT_SYNC),
    # training, parallelism and model
    "--balance-by-flops": Refusal("packing micro-batches by FLOPs is not implemented (--balance-data is)"),
    "--pipeline-model-parallel-size": Refusal(PARALLEL, UNIT),
    "--num-layers-per-virtual-pipeline-stage": Refusal(PARALLEL),
    "--context-parallel-size": Refusal(PARALLEL, UNIT),
    "--allgather-cp": Refusal(PARALLEL),
    "--expert-model-parallel-size": Refusal(MOE, UNIT),
    "--expert-tensor-parallel-size": Refusal(MOE, UNIT),
    "--num-experts": Refusal(MOE),
    "--train-iters": Refusal("slime derives the number of steps from --num-rollout or --num-epoch"),
    "--spec": Refusal("custom Megatron layer specs are not supported yet"),
    "--model-name": Refusal("HF conversion takes the model type from --hf-checkpoint's config.json"),
    "--ckpt-format": Refusal("only torch_dist checkpoints are written and read"),
    # algorithm
    "--keep-old-actor": Refusal(RL),
    "--custom-megatron-before-log-prob-hook-path": Refusal(f"log-prob forwards are part of RL; {RL}"),
    # evaluation and logging
    "--log-correct-samples": Refusal(REWARDS),
    # debugging
    "--ci-test": Refusal("slime's CI-only assertions are not reproduced"),
    # SGLang engines and router (undeclared --sglang-* flags are refused with the same reason)
    "--sglang-config": Refusal(ENGINES),
    "--sglang-mem-fraction-static": Refusal(ENGINES),
    "--sglang-context-length": Refusal(ENGINES),
    "--sglang-tensor-parallel-size": Refusal(ENGINES),
    "--sglang-data-parallel-size": Refusal(ENGINES),
    "--sglang-pipeline-parallel-size": Refusal(ENGINES),
    "--sglang-enable-dp-attention": Refusal(ENGINES),
    "--prefill-num-servers": Refusal(ENGINES),
}


def refusals(args: argparse.Namespace, parser: argparse.ArgumentParser, passthrough: list[str]) -> list[str]:
    """"not supported yet" messages, one per reason, naming every table flag given a value that is not harmless
    and every pass-through `--sglang-*` flag. Run on the values as given, before validation derives defaults."""
    dests = {s: a.dest for a in parser._actions for s in a.option_strings}
    given: dict[str, list[str]] = {}  # reason -> flags as typed, in table order
    for flag, refusal in NOT_SUPPORTED.items():
        dest = dests[flag]
        harmless = refusal.harmless if refusal.harmless is not None else (parser.get_default(dest),)
        value = getattr(args, dest)
        if value not in harmless:
            given.setdefault(refusal.why, []).append(" ".join([flag, *_shown(value)]))
    if passthrough:
        given.setdefault(ENGINES, []).extend("--" + dest.replace("_", "-") for dest in passthrough)
    return [str(NotSupportedError(", ".join(flags), why)) for why, flags in given.items()]


def _shown(value: Any) -> list[str]:
    """The value as the user typed it; nothing for a switch."""
    if isinstance(value, bool):
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [str(value)]

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

ENGINE_LAYOUTS = ("engine groups, SGLang-side TP/DP/PP layouts and prefill-decode disaggregation are not "
                  "implemented (one server per --rollout-num-gpus-per-engine devices is)")
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
    "--critic-num-nodes": Refusal("the critic shares the actor's devices and layout (it hands each actor rank the "
                                  "values of that rank's shard)"),
    "--critic-num-gpus-per-node": Refusal("the critic shares the actor's devices and layout (it hands each actor "
                                          "rank the values of that rank's shard)"),
    "--num-gpus-per-node": Refusal("placing engines across several nodes is not implemented"),
    "--train-backend": Refusal("only the Megatron backend exists"),
    # data and rollout
    "--multimodal-keys": Refusal("multimodal data is not supported yet"),
    "--rollout-data-transport": Refusal("rollout data travels through Ray's object store only"),
    "--update-weight-mode": Refusal("delta weight updates are not implemented (full ones are)"),
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
    "--keep-old-actor": Refusal("a second copy of the actor for the old policy is not implemented"),
    "--custom-megatron-before-log-prob-hook-path": Refusal("the log-prob passes call no hook yet"),
    # evaluation and logging
    "--log-correct-samples": Refusal("the statistics of correct samples need the trainer's log-probs, which the "
                                     "trainer does not report per sample yet"),
    # debugging
    "--ci-test": Refusal("slime's CI-only assertions are not reproduced"),
    # SGLang engine layouts beyond one server per --rollout-num-gpus-per-engine devices (other --sglang-* flags go
    # to SGLang's server as they are; the CPU engine honours the memory fraction and context length)
    "--sglang-config": Refusal(ENGINE_LAYOUTS),
    "--sglang-tensor-parallel-size": Refusal(ENGINE_LAYOUTS),
    "--sglang-data-parallel-size": Refusal(ENGINE_LAYOUTS),
    "--sglang-pipeline-parallel-size": Refusal(ENGINE_LAYOUTS),
    "--sglang-enable-dp-attention": Refusal(ENGINE_LAYOUTS),
    "--prefill-num-servers": Refusal(ENGINE_LAYOUTS),
}


def refusals(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[str]:
    """"not supported yet" messages, one per reason, naming every table flag given a value that is not harmless.
    Run on the values as given, before validation derives defaults."""
    dests = {s: a.dest for a in parser._actions for s in a.option_strings}
    given: dict[str, list[str]] = {}  # reason -> flags as typed, in table order
    for flag, refusal in NOT_SUPPORTED.items():
        dest = dests[flag]
        harmless = refusal.harmless if refusal.harmless is not None else (parser.get_default(dest),)
        value = getattr(args, dest)
        if value not in harmless:
            given.setdefault(refusal.why, []).append(" ".join([flag, *_shown(value)]))
    return [str(NotSupportedError(", ".join(flags), why)) for why, flags in given.items()]


def _shown(value: Any) -> list[str]:
    """The value as the user typed it; nothing for a switch."""
    if isinstance(value, bool):
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [str(value)]

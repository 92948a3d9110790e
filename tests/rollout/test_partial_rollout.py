"""--partial-rollout with over-sampling, against a real CPU engine behind the real sglang-router: the groups still
in flight when the batch is full are aborted mid-generation, go back to the data source's buffer, and continue in
the next rollout from where they stopped; with --mask-offpolicy-in-partial-rollout the tokens generated under the
older policy are kept in the context but not trained (slime's semantics)."""

from __future__ import annotations

import copy
import json
from typing import Iterator

import pytest

from engine_helpers import build_tiny_qwen3, free_port
from router_helpers import launch_router, register_workers
from slime.backends.sglang_utils.cpu_engine.launcher import launch_cpu_engine
from slime.rollout.data_source import RolloutDataSourceWithBuffer
from slime.rollout.sglang_rollout import generate_rollout
from slime.utils.arguments import parse_args
from slime.utils.types import Sample

pytestmark = pytest.mark.slow

CONTEXT = 74
MAX_RESPONSE = 60
# Rows 0-1 take 34 tokens of the context (40 left to generate), rows 2-5 are short (60 to generate). Decoding runs
# in lockstep on the engine, so rows 0-1 finish first and rows 2-3 are cut off with about 40 tokens; next rollout
# they need about 20 more while the new rows 4-5 need 60, a margin of many decode steps over arrival jitter.
LONG = [f"Count the {fruit}:" + f" {fruit[:-1]}" * 30 for fruit in ("apples", "pears")]
SHORT = ["Say hello:", "Name a colour:", "Spell dog:", "Greet me:"]


@pytest.fixture(scope="module")
def serving(tmp_path_factory) -> Iterator[tuple[str, tuple[str, int]]]:
    """One CPU engine registered with a real router, shared by this module's tests."""
    workdir = tmp_path_factory.mktemp("partial_rollout")
    model = build_tiny_qwen3(str(workdir / "model"), seed=0)
    engine = launch_cpu_engine(model, free_port(), extra_args=["--random-seed", "0", "--skip-server-warmup"],
                               env={"OMP_NUM_THREADS": "1"}, log_path=str(workdir / "engine.log"))
    router, router_args = launch_router()
    try:
        register_workers(router, router_args, [engine.url])
        yield model, (router_args.sglang_router_ip, router_args.sglang_router_port)
    finally:
        router.stop()
        engine.stop()


def _flatten(groups: list[list[Sample]]) -> list[Sample]:
    return [s for group in groups for s in group]


@pytest.mark.parametrize("mask_offpolicy", [True, False], ids=["masked", "unmasked"])
def test_aborted_groups_go_back_to_the_buffer_and_continue_next_rollout(serving, tmp_path, mask_offpolicy):
    model, (router_ip, router_port) = serving
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in LONG + SHORT))
    args = parse_args([
        "--hf-checkpoint", model, "--prompt-data", str(data), "--input-key", "prompt",
        "--rollout-batch-size", "2", "--over-sampling-batch-size", "4", "--n-samples-per-prompt", "2",
        "--global-batch-size", "4", "--num-rollout", "2", "--actor-num-gpus-per-node", "1",
        "--rollout-max-response-len", str(MAX_RESPONSE), "--rollout-max-context-len", str(CONTEXT),
        "--custom-rm-path", "rollout_plugins.parity_score", "--reward-key", "score",
        "--partial-rollout", *(["--mask-offpolicy-in-partial-rollout"] if mask_offpolicy else []),
    ])
    args.sglang_router_ip, args.sglang_router_port = router_ip, router_port
    source = RolloutDataSourceWithBuffer(args)

    first = generate_rollout(args, 0, source)
    assert first.metrics["rollout/groups_submitted"] == 4
    # Two groups filled the batch (rows 0-1, unless the machine's timing reordered them); the two still in flight
    # were aborted and went back to the buffer, in the order they came back.
    kept = {group[0].group_index for group in first.samples}
    assert len(kept) == 2 and kept | {group[0].group_index for group in source.buffer} == {0, 1, 2, 3}
    recycled = {s.index: s for s in copy.deepcopy(_flatten(source.buffer))}
    partial = [s for s in recycled.values() if s.status == Sample.Status.ABORTED]
    assert partial, [(s.index, s.status) for s in recycled.values()]
    for sample in partial:  # cut off with part of a response: unscored, tagged with the rollout it started in
        assert 0 < sample.response_length < MAX_RESPONSE and sample.reward is None, sample
        assert sample.metadata["start_rollout_id"] == 0
        assert len(sample.rollout_log_probs) == len(sample.loss_mask) == sample.response_length

    second = generate_rollout(args, 1, source)
    # The buffer is drained first (the new rows 4-5 come after it); each recycled sample is now either finished in
    # this batch or, cut off again, back in the buffer.
    later = {s.index: s for s in _flatten(second.samples) + _flatten(source.buffer)}
    assert {s.group_index for s in later.values()} == {s.group_index for s in recycled.values()} | {4, 5}
    finished = 0
    for before in partial:
        after, done = later[before.index], before.response_length
        # Continued, not restarted: the earlier tokens and their log-probs are kept and the response grew.
        assert after.tokens[:len(before.tokens)] == before.tokens
        assert after.rollout_log_probs[:done] == before.rollout_log_probs
        assert done < after.response_length <= MAX_RESPONSE and len(after.tokens) <= CONTEXT
        assert len(after.weight_versions) == 2  # one generate call per rollout
        assert after.metadata["start_rollout_id"] == 0  # where it started, not where it finished
        trained = after.response_length - done
        assert after.loss_mask == ([0] * done if mask_offpolicy else [1] * done) + [1] * trained
        assert len(after.rollout_log_probs) == after.response_length
        if after.status != Sample.Status.ABORTED:
            assert after.status in (Sample.Status.COMPLETED, Sample.Status.TRUNCATED) and after.reward is not None
            finished += 1
    # Having at most 40 tokens left against the new rows' 60, the recycled groups finish first.
    assert finished and {group[0].group_index for group in second.samples} <= {s.group_index for s in partial}

"""The GRPO comparison (benchmarks/grpo_vs_trl.py) and its GPU script (benchmarks/gpu_grpo.sh).

The GPU script's --tiny form runs in CI so that neither rots: it is grpo_vs_trl.py's tiny form of the long workload
with the GPU options off (CPU engines, TRL's default generation), ours colocated as on one GPU. TRL's GRPOTrainer and
train.py each run two steps in their own process, on the same prompts in the same order, and both report times,
rewards, lengths, the FLOPs floor and held-out accuracy. The other tests check the pieces that decide the figures:
the recitation task and its reward, the padding and FLOPs arithmetic, and the quick workload's inputs."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import grpo_workloads  # noqa: E402
from examples.long_answers import task  # noqa: E402
from examples.long_answers.reward import score_response  # noqa: E402


@pytest.mark.slow
def test_gpu_script_tiny_both_sides_same_steps_same_prompts(tmp_path):
    result = subprocess.run(["bash", str(REPO_ROOT / "benchmarks" / "gpu_grpo.sh"), "--tiny",
                             "--work-dir", str(tmp_path / "work")],
                            env={**os.environ, "RAY_AUTH_MODE": "disabled", "OUT": str(tmp_path)},
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    report = json.loads((tmp_path / "gpu_grpo_tiny.json").read_text())
    trl, ours = report["trl"], report["ours"]
    assert ours["ran"], ours.get("reason")
    assert report["workload"] == "long" and report["config"]["colocate"] is True
    assert report["trl_prompts_in_file_order"] is True
    assert report["same_steps_and_prompts"] is True
    assert report["warm_up"]["steps"] == 2 and report["warm_up"]["first_loss"] > 0
    assert report["held_out_initial"]["total"] == 8
    assert len(report["matmul"]["tflops_measured"]) == 2 and min(report["matmul"]["tflops_measured"]) > 0
    assert ours["machine"]["matmul_tflops"] == report["matmul"]["tflops_measured"]
    for side in (trl, ours):
        assert side["steps"] == 2 and len(side["prompts_per_step"]) == 2
        assert all(len(step) == 2 for step in side["prompts_per_step"])  # --tiny: 2 prompts x 4 completions
        assert len(side["mean_reward_per_step"]) == 2 and all(0 <= r <= 1 for r in side["mean_reward_per_step"])
        assert len(side["generation_seconds_per_step"]) == len(side["train_seconds_per_step"]) == 2
        assert all(t > 0 for t in side["generation_seconds_per_step"] + side["train_seconds_per_step"])
        assert side["generation_tokens_per_s"] > 0 and side["process_seconds"] > 0
        assert side["held_out"]["total"] == 8 and 0 <= side["held_out"]["accuracy"] <= 1
        assert [len(step) for step in side["completion_lengths_per_step"]] == [8, 8]
        assert all(1 <= n <= 8 for step in side["completion_lengths_per_step"] for n in step)
        assert side["completion_length"]["count"] == 16
        # The same prompts render to the same token counts on both sides.
        assert side["prompt_lengths_per_step"] == trl["prompt_lengths_per_step"]
        floor = side["floor"]
        assert all(f > 0 for f in floor["generation_floor_seconds_per_step"] + floor["training_floor_seconds_per_step"])
        assert floor["median_over_floor"]["step"] > 0
    assert len(ours["weight_sync_seconds_per_step"]) == 2
    # The two steps trained different prompts (the data advanced), and the recitation task was used.
    assert trl["prompts_per_step"][0] != trl["prompts_per_step"][1]
    assert all(q.startswith("Start at: ") for step in trl["prompts_per_step"] for q in step)


def test_quick_workload_inputs_are_the_quick_starts(tmp_path):
    """The default workload's data: the RL quick start's reasoning-gym splits, questions read from the metadata."""
    grpo_workloads.build_data(grpo_workloads.WORKLOADS["quick"], str(tmp_path), seed=0, tiny=True)
    rows = [json.loads(line) for line in open(tmp_path / "train.jsonl")]
    assert len(rows) == grpo_workloads.QUICK_SPLITS["train"]
    assert all(grpo_workloads.question(row["metadata"]).startswith("Calculate ") for row in rows)
    assert grpo_workloads.question(json.dumps(rows[0]["metadata"])) == rows[0]["metadata"]["reasoning_gym"]["entry"][
        "question"]


def test_recitation_task_held_out_starts_used_nowhere_else_rl_prompts_among_the_warm_ups(tmp_path, smollm2_tokenizer,
                                                                                           qwen3_tokenizer):
    files = task.build(str(tmp_path), {"held_out": 50, "train": 40}, seed=0)
    starts = {}
    for split, path in files.items():
        rows = [json.loads(line) for line in open(path)]
        starts[split] = {row["messages"][1]["content"] for row in rows}
        assert len(starts[split]) == len(rows)
    assert {split: len(found) for split, found in starts.items()} == {"held_out": 50, "train": 40, "sft": 582}
    assert not starts["held_out"] & (starts["sft"] | starts["train"]) and starts["train"] <= starts["sft"]
    sentence = task.sentences()[1]  # the 4-word sentence
    row = task.rl_row(sentence, 1)
    assert row["label"] == "Text: " + " ".join(sentence[1:]) + "."
    assert row["metadata"] == {"question": f"Start at: {sentence[1]}", "answer": row["label"]}
    # Every word is one token after a space in both tokenizers, so k words answer in k + 3 tokens ("Text", ":", the
    # words, "."): from 4 to 203, before the end of the turn.
    text = task.words()
    assert len(text) == len(set(text)) == sum(task.SENTENCE_LENGTHS)
    for tokenizer in (smollm2_tokenizer, qwen3_tokenizer):
        assert all(len(tokenizer(" " + word, add_special_tokens=False)["input_ids"]) == 1 for word in text)
        lengths = [len(tokenizer(task.answer(s, i), add_special_tokens=False)["input_ids"])
                   for s in task.sentences() for i in (0, len(s) - 1)]
        assert min(lengths) == 4 and max(lengths) == 203
    with pytest.raises(ValueError, match="start words"):
        task.build(str(tmp_path), {"held_out": 600, "train": 33}, seed=0)


def test_recitation_reward_full_marks_only_for_the_exact_recitation_partial_credit_by_prefix():
    metadata = {"question": "Start at: cat", "answer": "Text: cat dog fox."}
    assert score_response("Text: cat dog fox.", metadata) == 1.0
    assert score_response("<think>\n\n</think>\n\nText:  cat dog\nfox.", json.dumps(metadata)) == 1.0
    # Prefix over the longer list; the "Text:" prefix counts as a word.
    assert score_response("Text: cat dog", metadata) == 0.75  # stopped early
    assert score_response("Text: cat dog fox. owl", metadata) == 0.8  # ran past the full stop
    assert score_response("Text: cat dog fox", metadata) == 0.75  # no full stop
    assert score_response("Text: dog fox.", metadata) == 0.25  # wrong start
    assert score_response("cat dog fox.", metadata) == 0.0 and score_response("", metadata) == 0.0
    with pytest.raises(ValueError, match="answer"):
        score_response("Text:", {"question": "?"})


def test_padded_batch_shares_and_length_summary():
    # One step of two samples, prompts 3 and 5 tokens, completions 2 and 6: a padded batch decodes 2 x 6 positions
    # for 8 real ones, and trains 2 x (5 + 6) positions for 16 real ones.
    shares = grpo_workloads.padded_batch_shares([[3, 5]], [[2, 6]])
    assert shares["generation"] == pytest.approx(1 - 8 / 12)
    assert shares["training"] == pytest.approx(1 - 16 / 22)
    summary = grpo_workloads.length_summary(list(range(1, 11)), limit=10)
    assert (summary["p10"], summary["p50"], summary["p90"], summary["max"]) == (2, 6, 10, 10)
    assert summary["mean"] == 5.5 and summary["share_at_limit"] == 0.1


def test_step_flops_against_a_token_by_token_count():
    """The floor's generation FLOPs against an explicit KV-cached count: every position fed through the model once
    (the prompt's in the prefill, then each generated token but the last), attending to itself and every earlier
    position, the output layer only where a token is sampled. Training: 3x a forward over prompt + completion with
    the output layer at the completion's positions."""
    shape = argparse.Namespace(num_layers=2, hidden_size=8, ffn_hidden_size=16, num_attention_heads=2,
                               num_query_groups=1, kv_channels=4, swiglu=True, vocab_size=50)
    layers, heads, d = 2, 2, 4
    linear = 2 * 8 * (heads * d + 2 * d) + 2 * heads * d * 8 + 2 * 8 * 16 * 3  # QKV, projection, SwiGLU MLP
    head = 2 * 8 * 50
    prompt, completion = 5, 3
    fed = prompt + completion - 1
    explicit = 0
    for position in range(fed):
        explicit += layers * (linear + 4 * heads * d * (position + 1))  # QK^T and PV over position + 1 keys
        if position >= prompt - 1:
            explicit += head
    flops = grpo_workloads.step_flops(shape, [prompt], [completion])
    # slime/utils/flops.py counts causal attention as exactly half of the full s x s, leaving out the diagonal's
    # half: 2 * heads * d * s per layer less than the token-by-token count.
    assert flops["generation"] == pytest.approx(explicit - layers * 2 * heads * d * fed)
    n = prompt + completion
    assert flops["training"] == pytest.approx(3 * (layers * (n * linear + 2 * heads * d * n * n) + head * completion))

"""tools/prepare_reasoning_gym.py: disjoint, deterministic splits in the formats slime's readers take, and clear
errors for unknown tasks and options. The splits are read back through the project's own readers."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from conftest import REPO_ROOT
from slime.rollout.data_source import build_dataset
from slime.utils.arguments import parse_args

TOOL = REPO_ROOT / "tools" / "prepare_reasoning_gym.py"
SMALL = json.dumps({"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2})


def run(*argv):
    return subprocess.run([sys.executable, str(TOOL), *argv], capture_output=True, text=True)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def question(row):
    return next(m["content"] for m in row["messages"] if m["role"] == "user")


def test_splits_are_disjoint_deterministic_and_scorable(tmp_path):
    from reasoning_gym import get_score_answer_fn

    argv = ["--task", "chain_sum", "--config", SMALL, "--train", "300", "--held-out", "50", "--sft", "120",
            "--seed", "3"]
    for out in ("a", "b"):
        result = run(*argv, "--output-dir", str(tmp_path / out))
        assert result.returncode == 0, result.stderr
    splits = {name: read_jsonl(tmp_path / "a" / f"{name}.jsonl") for name in ("train", "held_out", "sft")}
    assert {k: len(v) for k, v in splits.items()} == {"train": 300, "held_out": 50, "sft": 120}
    questions = {k: [question(r) for r in v] for k, v in splits.items()}
    for name, texts in questions.items():
        assert len(set(texts)) == len(texts), name
    assert not set(questions["held_out"]) & (set(questions["train"]) | set(questions["sft"]))
    assert not set(questions["train"]) & set(questions["sft"])
    for name in ("train", "held_out", "sft"):  # --seed fixes everything
        assert (tmp_path / "a" / f"{name}.jsonl").read_text() == (tmp_path / "b" / f"{name}.jsonl").read_text()
    other = run(*argv[:-1], "4", "--output-dir", str(tmp_path / "c"))
    assert other.returncode == 0 and read_jsonl(tmp_path / "c" / "train.jsonl") != splits["train"]

    score = get_score_answer_fn("chain_sum")
    for row in splits["train"][:20] + splits["held_out"][:20]:
        entry = row["metadata"]["reasoning_gym"]["entry"]
        assert row["metadata"]["reasoning_gym"]["task"] == "chain_sum"
        assert entry["question"] == question(row) and entry["answer"] == row["label"]
        assert len(entry["metadata"]["expression"].split()) == 3  # two terms, one operator
        assert score(row["label"], entry) == 1.0
        assert [m["role"] for m in row["messages"]] == ["system", "user"]
        assert "<answer>" in row["messages"][0]["content"]
    for row in splits["sft"]:
        assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
        expression = question(row).rsplit(":", 1)[1].strip(" =")
        assert row["messages"][2]["content"] == f"<answer>{eval(expression)}</answer>"  # test-only check


def test_rows_read_by_slimes_prompt_reader_and_sft_reader(tmp_path, smollm2_tokenizer):
    from slime.rollout.sft_rollout import SftReader

    result = run("--config", SMALL, "--train", "8", "--held-out", "4", "--sft", "8", "--format", "parquet",
                 "--output-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert json.loads(pq.read_table(tmp_path / "train.parquet").column("metadata")[0].as_py())["reasoning_gym"]
    tokenizer_dir = smollm2_tokenizer.name_or_path
    args = parse_args(["--rollout-batch-size", "2", "--num-rollout", "1", "--actor-num-gpus-per-node", "1",
                       "--debug-rollout-only", "--rollout-num-gpus", "1", "--hf-checkpoint", tokenizer_dir,
                       "--input-key", "messages", "--label-key", "label", "--apply-chat-template",
                       "--prompt-data", str(tmp_path / "train.parquet")])
    samples = build_dataset(args, str(tmp_path / "train.parquet")).samples(range(8))
    for sample in samples:
        assert sample.prompt.endswith("<|im_start|>assistant\n") and "<answer>" in sample.prompt
        entry = sample.metadata["reasoning_gym"]["entry"]
        assert sample.label == entry["answer"] and entry["question"] in sample.prompt
    sft_args = parse_args(["--rollout-batch-size", "2", "--num-rollout", "1", "--actor-num-gpus-per-node", "1",
                           "--debug-train-only", "--hf-checkpoint", tokenizer_dir, "--input-key", "messages",
                           "--rollout-function-path", "slime.rollout.sft_rollout.generate_rollout",
                           "--loss-type", "sft_loss", "--prompt-data", str(tmp_path / "sft.parquet")])
    reader = SftReader(sft_args)
    sample = build_dataset(sft_args, str(tmp_path / "sft.parquet")).samples([0])[0]
    assert reader.prepare(sample) is None
    trained = reader.mask_generator.get_text_from_loss_mask(sample.tokens[-sample.response_length:],
                                                            sample.loss_mask)
    assert trained == [f"{sample.prompt[2]['content']}<|im_end|>"]


@pytest.mark.parametrize("argv, message", [
    (["--task", "chain_summ"], "unknown reasoning-gym task 'chain_summ' (did you mean chain_sum"),
    (["--task", "no_such_task_at_all"], "known tasks: "),
    (["--config", '{"min_term": 2}'], "chain_sum has no option min_term (its options: allow_negation"),
    (["--config", '{"min_terms": 5, "max_terms": 2}'], "is not valid for chain_sum: max_terms must be >= min_terms"),
    (["--config", "[1]"], "--config must be a JSON object"),
    (["--config", '{"min_terms": 2, "max_terms": 2, "max_digits": 1}', "--train", "300"],
     "gave only 200 distinct questions"),
])
def test_user_errors_are_one_clear_line(tmp_path, argv, message):
    result = run(*argv, "--output-dir", str(tmp_path / "out"))
    assert result.returncode != 0
    assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "train.jsonl").exists()

"""tools/prepare_rl_data.py: prompt + label rows in slime's RL format, bad rows named (or counted with
--skip-bad-rows), and the output is what the RL data source reads."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq

from conftest import REPO_ROOT

TOOL = REPO_ROOT / "tools" / "prepare_rl_data.py"


def run(*argv):
    return subprocess.run([sys.executable, str(TOOL), *map(str, argv)], capture_output=True, text=True)


def test_parquet_with_other_columns_becomes_prompt_label_jsonl(tmp_path):
    source = tmp_path / "aime.parquet"
    pq.write_table(pa.table({"problem": ["What is 1+1?", "Find x: 2x = 6."], "answer": [2, 3], "id": [7, 8]}),
                   source)
    out = tmp_path / "out" / "aime.jsonl"
    result = run("--input", source, "--output", out, "--prompt-column", "problem", "--label-column", "answer",
                 "--keep-column", "id")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == [{"prompt": "What is 1+1?", "label": "2", "id": 7}, {"prompt": "Find x: 2x = 6.", "label": "3",
                                                                        "id": 8}]
    assert "wrote 2 rows" in result.stdout


def test_chat_prompts_pass_and_a_bad_row_is_named_or_counted(tmp_path):
    source = tmp_path / "dapo.jsonl"
    good = {"prompt": [{"role": "user", "content": "Solve 3+4."}], "label": "7"}
    source.write_text(json.dumps(good) + "\n" + json.dumps({"prompt": "no label here"}) + "\n")
    out = tmp_path / "dapo_out.jsonl"
    result = run("--input", source, "--output", out)
    assert result.returncode != 0 and f"{source}: line 2: column 'label' holds no label" in result.stderr
    assert not out.exists() and not (tmp_path / "dapo_out.jsonl.tmp").exists()  # nothing half-written
    result = run("--input", source, "--output", out, "--skip-bad-rows")
    assert result.returncode == 0 and "(1 skipped)" in result.stdout
    assert [json.loads(line) for line in out.read_text().splitlines()] == [good]


def test_the_output_is_read_by_the_rl_dataset(tmp_path):
    from slime.utils.data import Dataset

    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"question": f"Q{i}", "answer": i}) + "\n" for i in range(3)))
    out = tmp_path / "rl.jsonl"
    assert run("--input", source, "--output", out, "--prompt-column", "question", "--label-column",
               "answer").returncode == 0
    dataset = Dataset(str(out), prompt_key="prompt", label_key="label")
    samples = sorted(dataset.samples(range(len(dataset))), key=lambda s: s.label)
    assert [(s.prompt, s.label) for s in samples] == [("Q0", "0"), ("Q1", "1"), ("Q2", "2")]

"""The OpenHermes (ShareGPT) converter: formats in, messages parquet out, and clear errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from conftest import REPO_ROOT

TOOL = REPO_ROOT / "tools" / "prepare_openhermes.py"


def record(i, roles=("system", "human", "gpt")):
    return {"conversations": [{"from": r, "value": f"{r} {i}"} for r in roles], "source": "test", "id": i}


def run(*argv):
    return subprocess.run([sys.executable, str(TOOL), *argv], capture_output=True, text=True)


@pytest.mark.parametrize("fmt", ["json", "jsonl", "parquet"])
def test_converts_each_local_format(tmp_path, fmt):
    records = [record(i) for i in range(2500)] + [record(9, roles=("human",))]
    source = tmp_path / f"in.{fmt}"
    if fmt == "json":
        source.write_text(json.dumps(records, indent=1))
    elif fmt == "jsonl":
        source.write_text("\n".join(json.dumps(r) for r in records))
    else:
        import pyarrow as pa

        pq.write_table(pa.Table.from_pylist(records), source)
    out = tmp_path / "out.parquet"
    result = run("--input", str(source), "--output", str(out), "--keep-columns", "source")
    assert result.returncode == 0, result.stderr
    assert "wrote 2501 conversations" in result.stdout and "1 without an assistant turn" in result.stdout
    table = pq.read_table(out)
    assert table.column_names == ["messages", "source"]
    assert pq.ParquetFile(out).num_row_groups == 3  # written in row groups while streaming
    assert table.slice(0, 1).to_pylist()[0]["messages"] == [
        {"role": "system", "content": "system 0"},
        {"role": "user", "content": "human 0"},
        {"role": "assistant", "content": "gpt 0"},
    ]


def test_unknown_role_stops_with_row_and_role(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps(record(0)) + "\n" + json.dumps(record(1, roles=("human", "chatgpt"))) + "\n")
    out = tmp_path / "out.parquet"
    result = run("--input", str(source), "--output", str(out))
    assert result.returncode != 0
    assert "in.jsonl: line 2: unknown role 'chatgpt'" in result.stderr
    assert not out.exists() and not (tmp_path / "out.parquet.tmp").exists()
    result = run("--input", str(source), "--output", str(out), "--role-map", "chatgpt=assistant")
    assert result.returncode == 0, result.stderr
    assert pq.read_table(out).to_pylist()[1]["messages"][1]["role"] == "assistant"


def test_truncated_json_array_is_reported(tmp_path):
    source = tmp_path / "in.json"
    source.write_text(json.dumps([record(0), record(1)])[:-30])
    result = run("--input", str(source), "--output", str(tmp_path / "out.parquet"))
    assert result.returncode != 0 and "ends early after record 1" in result.stderr


def test_converted_data_feeds_the_sft_reader(tmp_path, sft_args):
    from slime.rollout.data_source import RolloutDataSourceWithBuffer
    from slime.rollout.sft_rollout import generate_rollout

    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(json.dumps(record(i)) for i in range(6)))
    out = tmp_path / "out.parquet"
    assert run("--input", str(source), "--output", str(out)).returncode == 0
    args = sft_args("--prompt-data", str(out))
    output = generate_rollout(args, 0, RolloutDataSourceWithBuffer(args))
    assert len(output.samples) == 4 and all(sum(g[0].loss_mask) > 0 for g in output.samples)

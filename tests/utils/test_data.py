"""Reading datasets: formats, shards, globs, slices, random access, bounded memory, and every kind of bad input."""

from __future__ import annotations

import json
import tracemalloc

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from slime.utils.data import DataError, Dataset, RowStore, parse_path_spec


def conversation(i: int, assistant: bool = True) -> list[dict]:
    turns = [{"role": "user", "content": f"question {i}"}]
    if assistant:
        turns.append({"role": "assistant", "content": f"answer {i}"})
    return turns


def write_parquet(path, rows, row_group_size=None):
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)
    return str(path)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def ids_of(dataset, positions=None):
    positions = range(len(dataset)) if positions is None else positions
    return [s.prompt[0]["content"] for s in dataset.samples(positions)]


def test_parquet_multi_row_group_random_access(tmp_path):
    rows = [{"messages": conversation(i)} for i in range(50)]
    path = write_parquet(tmp_path / "d.parquet", rows, row_group_size=7)
    dataset = Dataset(path, prompt_key="messages")
    assert len(dataset) == 50
    assert ids_of(dataset, [49, 0, 13, 14, 13]) == ["question 49", "question 0", "question 13", "question 14",
                                                     "question 13"]
    dataset.shuffle(epoch=1)
    order = dataset.order.tolist()
    assert sorted(order) == list(range(50)) and order != list(range(50))
    assert ids_of(dataset, range(5)) == [f"question {i}" for i in order[:5]]


def test_directory_of_shards_and_glob_and_jsonl(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    write_parquet(shards / "part-000.parquet", [{"messages": conversation(i)} for i in range(3)])
    write_parquet(shards / "part-001.parquet", [{"messages": conversation(i)} for i in range(3, 8)])
    assert ids_of(Dataset(str(shards), prompt_key="messages")) == [f"question {i}" for i in range(8)]
    assert len(Dataset(str(shards / "part-*.parquet"), prompt_key="messages")) == 8
    jsonl = tmp_path / "j"
    jsonl.mkdir()
    write_jsonl(jsonl / "a.jsonl", [{"messages": conversation(i)} for i in range(2)])
    (jsonl / "b.jsonl").write_text("\n" + json.dumps({"messages": conversation(2)}) + "\n\n")
    assert ids_of(Dataset(str(jsonl), prompt_key="messages")) == ["question 0", "question 1", "question 2"]


def test_mixed_formats_and_empty_directory_are_errors(tmp_path):
    write_parquet(tmp_path / "a.parquet", [{"messages": conversation(0)}])
    write_jsonl(tmp_path / "b.jsonl", [{"messages": conversation(1)}])
    with pytest.raises(DataError, match="mixes data formats"):
        Dataset(str(tmp_path), prompt_key="messages")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no"):
        Dataset(str(tmp_path / "empty"), prompt_key="messages")
    with pytest.raises(DataError, match="no data file matches"):
        Dataset(str(tmp_path / "missing-*.parquet"), prompt_key="messages")


@pytest.mark.parametrize(
    "suffix, expected",
    [("@[2:5]", [2, 3, 4]), ("@[:3]", [0, 1, 2]), ("@[-2:]", [8, 9]), ("@[7:]", [7, 8, 9]), ("", list(range(10)))],
)
def test_slices(tmp_path, suffix, expected):
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": conversation(i)} for i in range(10)])
    dataset = Dataset(path + suffix, prompt_key="messages")
    assert ids_of(dataset) == [f"question {i}" for i in expected]
    if suffix:
        assert dataset.stats.skipped["outside_slice"] == 10 - len(expected)


def test_parse_path_spec_keeps_plain_paths():
    assert parse_path_spec("/a/b@c.parquet") == ("/a/b@c.parquet", slice(None))
    assert parse_path_spec("d.parquet@[1:-1]") == ("d.parquet", slice(1, -1))


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"messages": conversation(0)}) + "\n\n{not json\n")
    with pytest.raises(DataError, match=r"bad\.jsonl: line 3: malformed JSON"):
        Dataset(str(path), prompt_key="messages")


def test_missing_input_key_lists_the_columns(tmp_path):
    path = write_parquet(tmp_path / "d.parquet", [{"conversations": [], "id": "x"}])
    with pytest.raises(DataError, match=r"no column 'messages'; the columns are \['conversations', 'id'\]"):
        Dataset(path, prompt_key="messages")
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": conversation(0)}, {"text": "x"}])
    with pytest.raises(DataError, match=r"d\.jsonl: line 2: no key 'messages' .* \['text'\]"):
        Dataset(path, prompt_key="messages")


def test_unknown_role_names_the_row(tmp_path):
    rows = [{"messages": conversation(0)}, {"messages": [{"role": "gpt", "content": "hi"}]}]
    path = write_parquet(tmp_path / "d.parquet", rows)
    with pytest.raises(DataError, match=r"d\.parquet: row 1: message 0 has unknown role 'gpt'"):
        Dataset(path, prompt_key="messages", require_assistant_turn=True)
    # Rows not used as chat conversations are handed over unchecked, as slime's data source does.
    assert len(Dataset(path, prompt_key="messages")) == 2


def test_empty_and_assistantless_conversations_are_skipped_and_counted(tmp_path, caplog):
    rows = [
        {"messages": conversation(0)},
        {"messages": []},
        {"messages": conversation(2, assistant=False)},
        {"messages": conversation(3)},
    ]
    path = write_parquet(tmp_path / "d.parquet", rows)
    with caplog.at_level("INFO"):
        dataset = Dataset(path, prompt_key="messages", require_assistant_turn=True)
    assert ids_of(dataset) == ["question 0", "question 3"]
    assert dataset.stats.rows_read == 4 and dataset.stats.rows_kept == 2
    assert dataset.stats.skipped == {"empty_conversation": 1, "no_assistant_turn": 1}
    assert "rows read 4, kept 2, skipped 2 (empty_conversation: 1, no_assistant_turn: 1)" in caplog.text
    # Without declared checks every row is kept, as slime keeps it (RL prompts have no assistant turn).
    assert len(Dataset(path, prompt_key="messages")) == 4


def test_tools_label_and_metadata(tmp_path):
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    rows = [{"messages": conversation(0), "tools": json.dumps(tools), "label": "42", "metadata": {"source": "s"}}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    (sample,) = Dataset(path, prompt_key="messages", tool_key="tools", label_key="label").samples([0])
    assert sample.metadata["tools"] == tools and sample.label == "42" and sample.metadata["source"] == "s"
    assert sample.metadata["row_location"].endswith("d.jsonl: line 1")


def test_parquet_struct_nulls_are_dropped_from_messages(tmp_path):
    # pyarrow stores messages as structs with the union of keys; missing keys come back as None.
    rows = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "loss": False}]}]
    path = write_parquet(tmp_path / "d.parquet", rows)
    (sample,) = Dataset(path, prompt_key="messages").samples([0])
    assert sample.prompt == [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "loss": False}]


def test_string_prompts_rendered_with_the_chat_template(tmp_path, qwen3_tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "What is 1+1?"}, {"prompt": "  "}])
    dataset = Dataset(path, prompt_key="prompt", tokenizer=qwen3_tokenizer, apply_chat_template=True)
    assert dataset.stats.skipped == {"empty_prompt": 1}
    (sample,) = dataset.samples([0])
    assert sample.prompt == "<|im_start|>user\nWhat is 1+1?<|im_end|>\n<|im_start|>assistant\n"


def test_prompt_length_filter(tmp_path, qwen3_tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "short"}, {"prompt": "long " * 50}])
    dataset = Dataset(path, prompt_key="prompt", tokenizer=qwen3_tokenizer, max_prompt_len=10)
    assert len(dataset) == 1 and dataset.stats.skipped == {"prompt_too_long": 1}


def test_prompt_length_filter_measures_what_slime_measures(tmp_path, qwen3_tokenizer, caplog):
    long_list = [{"role": "user", "content": "long " * 50}]
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": long_list}, {"prompt": "long " * 50}, {"prompt": "hi"}])
    with caplog.at_level("INFO"):
        dataset = Dataset(path, prompt_key="prompt", tokenizer=qwen3_tokenizer, max_prompt_len=10)
    # As in slime, a list prompt is not measured unless it is rendered with the chat template.
    assert len(dataset) == 2 and dataset.stats.skipped == {"prompt_too_long": 1}
    assert "does not apply to the 1 list prompts" in caplog.text
    # Rendered prompts are measured after rendering: "hi" is 1 token, but 9 with the template around it.
    rendered = Dataset(path, prompt_key="prompt", tokenizer=qwen3_tokenizer, max_prompt_len=8, apply_chat_template=True)
    assert len(rendered) == 0 and rendered.stats.skipped == {"prompt_too_long": 3}


def test_sample_check_sees_whole_samples_while_indexing_parquet(tmp_path):
    tools = json.dumps([{"type": "function", "function": {"name": "f", "parameters": {}}}])
    rows = [{"messages": conversation(i), "tools": tools if i % 2 else None, "label": str(i)} for i in range(6)]
    path = write_parquet(tmp_path / "d.parquet", rows, row_group_size=4)
    seen = []

    def check(sample):
        seen.append((sample.label, "tools" in sample.metadata, sample.metadata["row_location"]))
        return "has_tools" if "tools" in sample.metadata else None

    dataset = Dataset(path, prompt_key="messages", tool_key="tools", label_key="label", sample_check=check)
    assert ids_of(dataset) == ["question 0", "question 2", "question 4"]
    assert dataset.stats.skipped == {"has_tools": 3}
    assert seen[:2] == [("0", False, f"{path}: row 0"), ("1", True, f"{path}: row 1")]


def peak_python_memory_while_indexing(path) -> tuple[int, RowStore]:
    tracemalloc.start()
    try:
        store = RowStore(path, ["messages"], lambda row, location: None)
        return tracemalloc.get_traced_memory()[1], store
    finally:
        tracemalloc.stop()


def test_loading_keeps_an_index_not_the_rows(tmp_path):
    """Indexing streams: the Python heap's peak does not grow with the dataset, and stays far below its size."""
    text = "x" * 1000
    row = {"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": text}]}
    small = write_parquet(tmp_path / "small.parquet", [row] * 5_000, row_group_size=2_000)
    big = write_parquet(tmp_path / "big.parquet", [row] * 40_000, row_group_size=2_000)
    small_peak, _ = peak_python_memory_while_indexing(small)
    big_peak, store = peak_python_memory_while_indexing(big)
    big_text_bytes = 40_000 * 2 * 1000
    assert len(store) == 40_000
    assert big_peak < 1.5 * small_peak, (small_peak, big_peak)
    assert big_peak < big_text_bytes / 10, f"peak Python memory {big_peak / 1e6:.1f} MB while indexing"
    assert store.read([39_999])[0][0]["messages"][1]["content"] == text

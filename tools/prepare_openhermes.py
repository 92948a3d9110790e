"""Convert ShareGPT-style chat data (OpenHermes-2.5: `conversations` of {from, value}) to OpenAI `messages` parquet.

  python tools/prepare_openhermes.py --input teknium/OpenHermes-2.5 --output /root/openhermes2_5.parquet
  python tools/prepare_openhermes.py --input openhermes2_5.json --output openhermes2_5.parquet

--input is a hub dataset name (where the hub is reachable) or a local .json (one array), .jsonl or .parquet file.
Rows are streamed: the input is never loaded whole. Roles: human -> user, gpt -> assistant, system -> system
(user/assistant/tool pass through; add more with --role-map chatgpt=assistant). An unknown role stops the
conversion with the row number and the role. The output is written to a temporary file and renamed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

DEFAULT_ROLE_MAP = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "tool": "tool",
}
MESSAGE_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
ROW_GROUP_ROWS = 1000


class ConversionError(ValueError):
    pass


def iter_json_array(path: str, chunk_size: int = 1 << 20) -> Iterator[dict[str, Any]]:
    """Objects of a top-level JSON array, decoded incrementally so a multi-GB file is never held in memory."""
    decoder = json.JSONDecoder()
    with open(path, encoding="utf-8") as f:
        buffer, started, record = "", False, 0
        while True:
            chunk = f.read(chunk_size)
            buffer += chunk
            position = 0
            while True:
                while position < len(buffer) and buffer[position] in " \t\r\n,":
                    position += 1
                if not started and position < len(buffer):
                    if buffer[position] != "[":
                        raise ConversionError(f"{path}: expected a JSON array of records")
                    started, position = True, position + 1
                    continue
                if position < len(buffer) and buffer[position] == "]":
                    return
                try:
                    obj, end = decoder.raw_decode(buffer, position)
                except json.JSONDecodeError:
                    break  # need more text
                yield obj
                record += 1
                position = end
            buffer = buffer[position:]
            if not chunk:
                raise ConversionError(f"{path}: the JSON array ends early after record {record} (truncated file?)")


def iter_rows(source: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(location, row) pairs from a local file or a hub dataset."""
    if source.endswith(".jsonl"):
        with open(source, encoding="utf-8") as f:
            for line_number, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        yield f"{source}: line {line_number}", json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise ConversionError(f"{source}: line {line_number}: malformed JSON ({exc.msg})") from None
    elif source.endswith(".json"):
        for index, row in enumerate(iter_json_array(source)):
            yield f"{source}: record {index}", row
    elif source.endswith(".parquet"):
        index = 0
        for batch in pq.ParquetFile(source).iter_batches(batch_size=ROW_GROUP_ROWS):
            for row in batch.to_pylist():
                yield f"{source}: row {index}", row
                index += 1
    elif os.path.exists(source):
        raise ConversionError(f"{source}: unsupported format (use .json, .jsonl or .parquet)")
    else:
        from datasets import load_dataset

        for index, row in enumerate(load_dataset(source, split="train", streaming=True)):
            yield f"{source}: row {index}", row


def convert_row(row: dict[str, Any], location: str, role_map: dict[str, str]) -> list[dict[str, str]]:
    conversations = row.get("conversations")
    if conversations is None:
        raise ConversionError(f"{location}: no 'conversations' field; the row has {sorted(row)}")
    messages = []
    for turn in conversations:
        role = turn.get("from")
        if role not in role_map:
            raise ConversionError(f"{location}: unknown role {role!r} (known: {sorted(role_map)}; see --role-map)")
        messages.append({"role": role_map[role], "content": turn.get("value") or ""})
    return messages


def convert(source: str, output: str, role_map: dict[str, str], keep_columns: list[str]) -> dict[str, int]:
    stats = {"rows": 0, "no_assistant_turn": 0, "empty": 0}
    schema = pa.schema([("messages", MESSAGE_TYPE)] + [(c, pa.string()) for c in keep_columns])
    tmp = output + ".tmp"
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    try:
        _write(source, tmp, schema, role_map, keep_columns, stats)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    os.replace(tmp, output)
    return stats


def _write(source: str, tmp: str, schema: pa.Schema, role_map: dict[str, str], keep_columns: list[str],
           stats: dict[str, int]) -> None:
    started = time.monotonic()
    batch: dict[str, list[Any]] = {name: [] for name in schema.names}
    with pq.ParquetWriter(tmp, schema) as writer:
        def flush() -> None:
            writer.write_table(pa.table(batch, schema=schema))
            for column in batch.values():
                column.clear()

        for location, row in iter_rows(source):
            messages = convert_row(row, location, role_map)
            stats["rows"] += 1
            stats["empty"] += not messages
            stats["no_assistant_turn"] += bool(messages) and all(m["role"] != "assistant" for m in messages)
            batch["messages"].append(messages)
            for column in keep_columns:
                value = row.get(column)
                batch[column].append(value if value is None or isinstance(value, str) else json.dumps(value))
            if len(batch["messages"]) == ROW_GROUP_ROWS:
                flush()
                if stats["rows"] % 100_000 == 0:
                    print(f"{stats['rows']} rows ({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)
        if batch["messages"]:
            flush()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="Hub dataset name, or a local .json/.jsonl/.parquet file.")
    parser.add_argument("--output", required=True, help="Output .parquet file.")
    parser.add_argument("--role-map", nargs="*", default=[], metavar="FROM=TO", help="Extra role mappings.")
    parser.add_argument("--keep-columns", nargs="*", default=[], help="Input columns to copy (as strings).")
    args = parser.parse_args(argv)
    role_map = dict(DEFAULT_ROLE_MAP)
    for item in args.role_map:
        source_role, _, target = item.partition("=")
        if target not in ("system", "user", "assistant", "tool"):
            parser.error(f"--role-map {item}: target must be system, user, assistant or tool")
        role_map[source_role] = target
    try:
        stats = convert(args.input, args.output, role_map, args.keep_columns)
    except ConversionError as exc:
        sys.exit(f"error: {exc}")
    print(
        f"wrote {stats['rows']} conversations to {args.output} ({stats['empty']} empty and "
        f"{stats['no_assistant_turn']} without an assistant turn: training skips and counts those)"
    )


if __name__ == "__main__":
    main()

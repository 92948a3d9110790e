"""Prompt + label data for RL (slime's format: one JSON object per line with the prompt and the reference answer),
from a local .jsonl, .json or .parquet file, or a hub dataset name where the hub is reachable.

  python tools/prepare_rl_data.py --input dapo-math-17k.jsonl --output /root/dapo-math-17k/dapo-math-17k.jsonl
  python tools/prepare_rl_data.py --input aime-2024.parquet --output /root/aime-2024/aime-2024.jsonl \
      --prompt-column problem --label-column answer

The prompt is a string or a list of chat messages ({role, content}); the label is kept as text (numbers become their
decimal string). Every row is checked: a row without a prompt or a label stops the conversion naming its file and
line, unless --skip-bad-rows, which counts and reports them. Written to a temporary file and renamed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from prepare_openhermes import ConversionError, iter_rows


def _prompt(value: Any, location: str, column: str) -> Any:
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m and "content" in m
                                                  for m in value):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise ConversionError(f"{location}: column {column!r} holds no prompt (a non-empty string or a list of "
                          f"{{role, content}} messages), got {str(value)[:80]!r}")


def _label(value: Any, location: str, column: str) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise ConversionError(f"{location}: column {column!r} holds no label, got {str(value)[:80]!r}")


def convert(source: str, output: str, prompt_column: str, label_column: str, skip_bad_rows: bool = False,
            keep_columns: tuple[str, ...] = ()) -> dict[str, int]:
    stats = {"rows": 0, "skipped": 0}
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    tmp = output + ".tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as out:
            for location, row in iter_rows(source):
                try:
                    record = {"prompt": _prompt(row.get(prompt_column), location, prompt_column),
                              "label": _label(row.get(label_column), location, label_column)}
                except ConversionError as exc:
                    if not skip_bad_rows:
                        raise
                    stats["skipped"] += 1
                    print(f"skipped: {exc}", file=sys.stderr)
                    continue
                record.update({column: row[column] for column in keep_columns if column in row})
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
                stats["rows"] += 1
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    if stats["rows"] == 0:
        os.remove(tmp)
        raise ConversionError(f"{source}: no usable rows")
    os.replace(tmp, output)
    return stats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="A .jsonl/.json/.parquet file or a hub dataset name.")
    parser.add_argument("--output", required=True, help="The .jsonl file to write (--prompt-data).")
    parser.add_argument("--prompt-column", default="prompt", help="Column with the prompt (written as 'prompt').")
    parser.add_argument("--label-column", default="label", help="Column with the answer (written as 'label').")
    parser.add_argument("--keep-column", action="append", default=[], help="Also copy this column (repeatable).")
    parser.add_argument("--skip-bad-rows", action="store_true", help="Count and skip rows without prompt or label.")
    args = parser.parse_args(argv)
    try:
        stats = convert(args.input, args.output, args.prompt_column, args.label_column, args.skip_bad_rows,
                        tuple(args.keep_column))
    except ConversionError as exc:
        sys.exit(f"error: {exc}")
    print(f"wrote {stats['rows']} rows to {args.output} ({stats['skipped']} skipped); train with --prompt-data "
          f"{args.output} --input-key prompt --label-key label")


if __name__ == "__main__":
    main()

"""Reading prompt and chat datasets: .parquet and .jsonl, one file, a directory of shards or a glob, with slices.

Datasets can be far larger than memory (slime users hit a hang loading a 350 GB parquet), so nothing here turns the
whole dataset into Python objects. Loading is one streaming pass that checks every row and keeps only an index:
row-group boundaries for parquet, line offsets for jsonl, and an int64 array of the rows kept. Rows are read back on
demand, a batch at a time, grouped by row group so each row group is decoded once per batch.
"""

from __future__ import annotations

import collections
import glob
import json
import logging
import os
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pyarrow.parquet as pq

from slime.utils.types import Sample

logger = logging.getLogger(__name__)

SUPPORTED_SUFFIXES = (".parquet", ".jsonl")
CHAT_ROLES = ("system", "user", "assistant", "tool")
_SLICE_RE = re.compile(r"^(?P<path>.*)@\[(?P<start>-?\d*):(?P<end>-?\d*)\]$")
_SCAN_BATCH_ROWS = 1024
_ROW_GROUP_CACHE_BYTES = 512 * 1024**2


class DataError(ValueError):
    """Bad input data. The message names the file and the line (jsonl) or row (parquet)."""


@dataclass
class DataStats:
    """What loading did with every row: nothing is dropped without being counted here."""

    rows_read: int = 0
    rows_kept: int = 0
    skipped: collections.Counter = field(default_factory=collections.Counter)

    def summary(self) -> str:
        reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(self.skipped.items())) or "none"
        return f"rows read {self.rows_read}, kept {self.rows_kept}, skipped {sum(self.skipped.values())} ({reasons})"


def parse_path_spec(spec: str) -> tuple[str, slice]:
    """Split slime's `path@[start:end]` suffix (either bound optional, negatives allowed) from the path."""
    match = _SLICE_RE.match(spec)
    if not match:
        return spec, slice(None)
    bound = lambda text: int(text) if text else None  # noqa: E731
    return match["path"], slice(bound(match["start"]), bound(match["end"]))


def resolve_data_files(path: str) -> list[str]:
    """The data files behind a file path, a directory (its .parquet/.jsonl files, sorted) or a glob."""
    if os.path.isdir(path):
        files = sorted(
            os.path.join(root, name)
            for root, _, names in os.walk(path)
            for name in names
            if name.endswith(SUPPORTED_SUFFIXES)
        )
        if not files:
            raise DataError(f"directory {path} holds no {' or '.join(SUPPORTED_SUFFIXES)} files")
    elif os.path.isfile(path):
        files = [path]
    else:
        files = sorted(glob.glob(path, recursive=True))
        if not files:
            raise DataError(f"no data file matches {path!r} (not a file, a directory or a glob with matches)")
    for name in files:
        if not name.endswith(SUPPORTED_SUFFIXES):
            raise DataError(f"{name}: unsupported data format (use {' or '.join(SUPPORTED_SUFFIXES)})")
    formats = {os.path.splitext(name)[1] for name in files}
    if len(formats) > 1:
        raise DataError(f"{path} mixes data formats {sorted(formats)}; use one format per dataset")
    return files


class _Shard:
    """One data file: its row count and what is needed to seek to any row."""

    def __init__(self, path: str):
        self.path = path
        self.is_parquet = path.endswith(".parquet")
        self.num_rows = 0
        self.row_group_starts: np.ndarray | None = None
        self.line_offsets: np.ndarray | None = None
        self.line_numbers: np.ndarray | None = None

    def location(self, local_row: int) -> str:
        if self.is_parquet:
            return f"{self.path}: row {local_row}"
        return f"{self.path}: line {int(self.line_numbers[local_row])}"

    def scan(self, columns: list[str], optional: Sequence[str] = ()) -> Iterator[tuple[int, list[dict[str, Any]]]]:
        """Yield (first local row, rows) batches, building the seek index on the way. Parquet reads only `columns`
        (which must exist) and those of `optional` that do."""
        yield from (self._scan_parquet(columns, optional) if self.is_parquet else self._scan_jsonl())

    def _scan_parquet(self, columns: list[str], optional: Sequence[str]) -> Iterator[tuple[int, list[dict[str, Any]]]]:
        parquet_file = pq.ParquetFile(self.path)
        names = parquet_file.schema_arrow.names
        missing = [c for c in columns if c not in names]
        if missing:
            raise DataError(f"{self.path}: no column {missing[0]!r}; the columns are {names}")
        columns = columns + [c for c in optional if c in names and c not in columns]
        sizes = [parquet_file.metadata.row_group(i).num_rows for i in range(parquet_file.num_row_groups)]
        self.row_group_starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        self.num_rows = int(self.row_group_starts[-1])
        start = 0
        for batch in parquet_file.iter_batches(batch_size=_SCAN_BATCH_ROWS, columns=columns):
            rows = batch.to_pylist()
            yield start, rows
            start += len(rows)

    def _scan_jsonl(self) -> Iterator[tuple[int, list[dict[str, Any]]]]:
        offsets: list[int] = []
        line_numbers: list[int] = []
        self.line_numbers = line_numbers  # a list while scanning (locations of rows being checked), then an array
        rows: list[dict[str, Any]] = []
        position, start = 0, 0
        with open(self.path, "rb") as f:
            for line_number, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise DataError(f"{self.path}: line {line_number}: malformed JSON ({exc.msg})") from None
                    if not isinstance(row, dict):
                        raise DataError(
                            f"{self.path}: line {line_number}: expected a JSON object, got {type(row).__name__}"
                        )
                    offsets.append(position)
                    line_numbers.append(line_number)
                    rows.append(row)
                    if len(rows) == _SCAN_BATCH_ROWS:
                        yield start, rows
                        start += len(rows)
                        rows = []
                position += len(line)
        if rows:
            yield start, rows
        self.line_offsets = np.asarray(offsets, dtype=np.int64)
        self.line_numbers = np.asarray(line_numbers, dtype=np.int64)
        self.num_rows = len(offsets)

    def read_rows(self, local_rows: Sequence[int], cache: collections.OrderedDict) -> list[dict[str, Any]]:
        if not self.is_parquet:
            out = []
            with open(self.path, "rb") as f:
                for row in local_rows:
                    f.seek(int(self.line_offsets[row]))
                    out.append(json.loads(f.readline()))
            return out
        rows = np.asarray(local_rows, dtype=np.int64)
        groups = np.searchsorted(self.row_group_starts, rows, side="right") - 1
        out: list[Any] = [None] * len(rows)
        for group in np.unique(groups):
            members = np.nonzero(groups == group)[0]
            table = _cached_row_group(cache, self.path, int(group))
            taken = table.take(rows[members] - self.row_group_starts[group]).to_pylist()
            for i, row in zip(members, taken):
                out[i] = row
        return out


def _cached_row_group(cache: collections.OrderedDict, path: str, group: int) -> Any:
    """A decoded (Arrow, not Python) row group, from a small LRU cache bounded in bytes."""
    key = (path, group)
    table = cache.get(key)
    if table is not None:
        cache.move_to_end(key)
        return table
    table = pq.ParquetFile(path).read_row_group(group)
    cache[key] = table
    while len(cache) > 1 and sum(t.nbytes for t in cache.values()) > _ROW_GROUP_CACHE_BYTES:
        cache.popitem(last=False)
    return table


RowCheck = Callable[[dict[str, Any], str], "str | None"]


class RowStore:
    """Random access to the rows of one or more files, keeping only rows that pass `row_check`.

    `row_check(row, location)` returns None to keep a row, a reason string to skip (and count) it, or raises
    DataError to stop. Memory is an index of the kept rows plus a few decoded parquet row groups.
    """

    def __init__(self, spec: str, columns: list[str], row_check: RowCheck, optional_columns: Sequence[str] = ()):
        path, row_slice = parse_path_spec(spec)
        self.spec = spec
        self.shards = [_Shard(name) for name in resolve_data_files(path)]
        self.stats = DataStats()
        self._cache: collections.OrderedDict = collections.OrderedDict()
        started = time.monotonic()
        kept_chunks: list[np.ndarray] = []
        offset = 0
        for shard in self.shards:
            for start, rows in shard.scan(columns, optional_columns):
                kept = [
                    offset + start + i
                    for i, row in enumerate(rows)
                    if self._check(row_check, row, shard.location(start + i)) is None
                ]
                kept_chunks.append(np.asarray(kept, dtype=np.int64))
                self.stats.rows_read += len(rows)
            offset += shard.num_rows
            logger.info("indexed %s: %d rows (%.1f s so far)", shard.path, shard.num_rows, time.monotonic() - started)
        self.shard_starts = np.asarray([0] + [s.num_rows for s in self.shards], dtype=np.int64).cumsum()
        kept_rows = np.concatenate(kept_chunks) if kept_chunks else np.zeros(0, dtype=np.int64)
        self.kept_rows = self._apply_slice(kept_rows, row_slice, int(self.shard_starts[-1]))
        self.stats.rows_kept = len(self.kept_rows)

    def _check(self, row_check: RowCheck, row: dict[str, Any], location: str) -> str | None:
        reason = row_check(row, location)
        if reason is not None:
            self.stats.skipped[reason] += 1
        return reason

    def _apply_slice(self, kept_rows: np.ndarray, row_slice: slice, total: int) -> np.ndarray:
        """The slice selects raw rows of the (concatenated) files, as slime's read_file does."""
        if row_slice == slice(None):
            return kept_rows
        lo, hi, _ = row_slice.indices(total)
        outside = int(((kept_rows < lo) | (kept_rows >= hi)).sum())
        if outside:
            self.stats.skipped["outside_slice"] += outside
        return kept_rows[(kept_rows >= lo) & (kept_rows < hi)]

    def __len__(self) -> int:
        return len(self.kept_rows)

    def location(self, position: int) -> str:
        shard_index, local = self._locate(int(self.kept_rows[position]))
        return self.shards[shard_index].location(local)

    def _locate(self, global_row: int) -> tuple[int, int]:
        shard_index = int(np.searchsorted(self.shard_starts, global_row, side="right")) - 1
        return shard_index, global_row - int(self.shard_starts[shard_index])

    def read(self, positions: Sequence[int]) -> list[tuple[dict[str, Any], str]]:
        """Rows at these positions (indices into the kept rows), in order, each with its location."""
        located = [self._locate(int(self.kept_rows[p])) for p in positions]
        by_shard: dict[int, list[int]] = collections.defaultdict(list)
        for i, (shard_index, _) in enumerate(located):
            by_shard[shard_index].append(i)
        out: list[Any] = [None] * len(located)
        for shard_index, members in by_shard.items():
            shard = self.shards[shard_index]
            local_rows = [located[i][1] for i in members]
            for i, local, row in zip(members, local_rows, shard.read_rows(local_rows, self._cache)):
                out[i] = (row, shard.location(local))
        return out


def check_messages(messages: Any, location: str, require_assistant_turn: bool) -> str | None:
    """Validate an OpenAI-style message list. Returns a skip reason, or raises DataError on malformed input."""
    if messages is None or len(messages) == 0:
        return "empty_conversation"
    if not isinstance(messages, (list, tuple)):
        raise DataError(f"{location}: messages must be a list of {{'role', 'content'}} objects, got {messages!r:.80}")
    has_assistant = False
    for turn, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message:
            raise DataError(f"{location}: message {turn} is not an object with a 'role': {message!r:.80}")
        role = message["role"]
        if role not in CHAT_ROLES:
            raise DataError(f"{location}: message {turn} has unknown role {role!r} (expected one of {CHAT_ROLES})")
        has_assistant = has_assistant or role == "assistant"
    if require_assistant_turn and not has_assistant:
        return "no_assistant_turn"
    return None


def normalize_messages(messages: Sequence[Any]) -> list[Any]:
    """Drop keys whose value is None: parquet stores a message list as structs with the union of all keys."""
    return [{k: v for k, v in m.items() if v is not None} if isinstance(m, dict) else m for m in messages]


def parse_tools(raw: Any, location: str) -> list[dict[str, Any]] | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        try:
            raw = json.loads(raw) if raw.strip() else None
        except json.JSONDecodeError as exc:
            raise DataError(f"{location}: tools column is not valid JSON ({exc.msg})") from None
    if raw is None:
        return None
    if not isinstance(raw, (list, tuple)):
        raise DataError(f"{location}: tools must be a list of tool schemas, got {type(raw).__name__}")
    return [json.loads(t) if isinstance(t, str) else t for t in raw]


class Dataset:
    """The prompts of one dataset as `Sample`s, in a per-epoch shuffled order, read lazily.

    As slime's Dataset: string prompts are kept as they are or rendered through the chat template, list prompts are
    handed over as lists, and `max_prompt_len` drops string (or rendered) prompts longer than it, while list prompts
    are not measured. Prompts that are rendered here, or when `require_assistant_turn` is asked for, are checked as
    chat conversations (roles, emptiness); a rollout function's declared checks set `require_assistant_turn` and
    `sample_check` (see slime.rollout.base_types.DatasetChecks).
    """

    def __init__(
        self,
        path: str,
        *,
        prompt_key: str = "text",
        label_key: str | None = None,
        tool_key: str | None = None,
        metadata_key: str = "metadata",
        tokenizer: Any = None,
        apply_chat_template: bool = False,
        apply_chat_template_kwargs: dict[str, Any] | None = None,
        max_prompt_len: int | None = None,
        require_assistant_turn: bool = False,
        sample_check: Callable[[Sample], str | None] | None = None,
        seed: int = 42,
    ):
        if apply_chat_template and tokenizer is None:
            raise ValueError("apply_chat_template needs a tokenizer (--hf-checkpoint)")
        self.prompt_key, self.label_key, self.tool_key, self.metadata_key = prompt_key, label_key, tool_key, metadata_key
        self.tokenizer = tokenizer
        self.apply_chat_template = apply_chat_template
        self.apply_chat_template_kwargs = apply_chat_template_kwargs or {}
        self.max_prompt_len = max_prompt_len
        self.require_assistant_turn = require_assistant_turn
        self.sample_check = sample_check
        self.seed = seed
        self.unmeasured_list_prompts = 0
        # A sample check sees whole Samples, so the scan must also read the columns a Sample is built from.
        optional = [c for c in (tool_key, metadata_key, label_key) if c] if sample_check else []
        self.store = RowStore(path, [prompt_key], self._check_row, optional)
        self.stats = self.store.stats
        self.epoch: int | None = None
        self.order = np.arange(len(self.store), dtype=np.int64)
        if self.unmeasured_list_prompts:
            logger.info("dataset %s: --rollout-max-prompt-len %d does not apply to the %d list prompts (as in slime, "
                        "only string prompts, or prompts rendered with --apply-chat-template, are measured)",
                        path, max_prompt_len, self.unmeasured_list_prompts)
        logger.info("dataset %s: %s", path, self.stats.summary())

    def __len__(self) -> int:
        return len(self.store)

    def _check_row(self, row: dict[str, Any], location: str) -> str | None:
        if self.prompt_key not in row:
            raise DataError(f"{location}: no key {self.prompt_key!r} (--input-key); the row has {sorted(row)}")
        prompt = row[self.prompt_key]
        reason = None
        # Rows are checked as chat conversations only where they are used as such (rendered here, or declared by
        # the rollout function); otherwise they are handed over unchecked, as slime's data source hands them.
        if self.apply_chat_template or self.require_assistant_turn:
            if not isinstance(prompt, str):
                reason = check_messages(prompt, location, self.require_assistant_turn)
            elif self.apply_chat_template and not prompt.strip():
                reason = "empty_prompt"
        if reason is None and self.max_prompt_len is not None:
            reason = self._prompt_length_reason(prompt)
        if reason is None and self.sample_check is not None:
            reason = self.sample_check(self._to_sample(row, location))
        return reason

    def _prompt_length_reason(self, prompt: Any) -> str | None:
        if self.apply_chat_template:
            prompt = self._render(normalize_messages(prompt) if not isinstance(prompt, str) else prompt, None)
        elif not isinstance(prompt, str):
            self.unmeasured_list_prompts += 1
            return None
        return "prompt_too_long" if len(self._tokenize(prompt)) > self.max_prompt_len else None

    def _tokenize(self, text: str) -> list[int]:
        if self.tokenizer is None:
            raise ValueError("--rollout-max-prompt-len needs a tokenizer (--hf-checkpoint)")
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _render(self, messages: Any, tools: list[dict[str, Any]] | None) -> str:
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        return self.tokenizer.apply_chat_template(
            messages, tools=tools, tokenize=False, add_generation_prompt=True, **self.apply_chat_template_kwargs
        )

    def shuffle(self, epoch: int) -> None:
        """The order of this epoch, as slime's Dataset.shuffle computes it: Python's `random` seeded with
        seed + epoch shuffling the positions 0..n-1. A private generator gives the same order without reseeding the
        process-wide `random` module under other code's feet."""
        if epoch == self.epoch:
            return
        order = list(range(len(self.store)))
        random.Random(self.seed + epoch).shuffle(order)
        self.order = np.asarray(order, dtype=np.int64)
        self.epoch = epoch

    def samples(self, positions: Sequence[int]) -> list[Sample]:
        """Samples at these positions of the current epoch's order."""
        rows = self.store.read([int(self.order[p]) for p in positions])
        return [self._to_sample(row, location) for row, location in rows]

    def _to_sample(self, row: dict[str, Any], location: str) -> Sample:
        prompt = row[self.prompt_key]
        if not isinstance(prompt, str):
            prompt = normalize_messages(prompt)
        metadata = row.get(self.metadata_key) or {}
        if isinstance(metadata, str):
            metadata = json.loads(metadata) if metadata.strip() else {}
        metadata = dict(metadata)
        tools = parse_tools(row.get(self.tool_key), location) if self.tool_key else None
        if tools is not None:
            metadata["tools"] = tools
        metadata["row_location"] = location
        if self.apply_chat_template:
            prompt = self._render(prompt, tools)
        label = row.get(self.label_key) if self.label_key else None
        return Sample(prompt=prompt, label=label, metadata=metadata)

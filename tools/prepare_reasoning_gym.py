"""Build a verifiable RL task from a reasoning-gym generator: RL prompts, held-out prompts and SFT warm-up chats.

  python tools/prepare_reasoning_gym.py --task chain_sum \
      --config '{"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2}' \
      --train 2000 --held-out 200 --sft 2000 --seed 0 --output-dir data/chain_sum

Writes three disjoint splits (no question text appears in two of them) into --output-dir:

- `train.<fmt>`: RL prompts. `messages` (system + user, for `--input-key messages --apply-chat-template`), `label`
  (the reference answer, `--label-key label`) and `metadata` (`--metadata-key metadata`) holding
  `{"reasoning_gym": {"task": ..., "entry": {question, answer, metadata}}}`: what reasoning-gym's `score_answer`
  needs, read by `examples/reasoning_gym/reward.py` (`--custom-rm-path examples.reasoning_gym.reward.reward_func`).
- `held_out.<fmt>`: the same columns, for evaluation only (`--eval-prompt-data held_out .../held_out.jsonl`).
- `sft.<fmt>`: warm-up conversations for the SFT reader (`--input-key messages`): the same system and user turns
  plus an assistant turn `<answer>ANSWER</answer>`.

The system prompt is reasoning-gym's own "direct" prompt by default: answer between `<answer>` and `</answer>`,
which is where the reward looks. Everything is a function of --task, --config and --seed. In parquet, `metadata`
is a JSON string (entries of one task may differ in their keys); in jsonl it is an object. The data reader accepts
both.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import sys
from typing import Any

SPLITS = ("held_out", "sft", "train")
# Draws per wanted question before giving up on finding enough distinct ones (small configs repeat questions).
DRAWS_PER_QUESTION = 20


class TaskError(ValueError):
    """A task name or configuration reasoning-gym does not accept, said in the user's terms."""


def answer_text(answer: str) -> str:
    """The assistant's reply in the format the prompts ask for and the reward extracts."""
    return f"<answer>{answer}</answer>"


def default_system_prompt() -> str:
    from reasoning_gym.utils import SYSTEM_PROMPTS

    return SYSTEM_PROMPTS["direct"]


def make_dataset(task: str, config: dict[str, Any], size: int, seed: int) -> Any:
    """reasoning-gym's dataset object, with unknown names and config fields reported with what would be valid."""
    from reasoning_gym.factory import DATASETS, create_dataset

    if task not in DATASETS:
        close = difflib.get_close_matches(task, DATASETS, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else f"; known tasks: {', '.join(sorted(DATASETS))}"
        raise TaskError(f"unknown reasoning-gym task {task!r}{hint}")
    config_cls = DATASETS[task][1]
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(config) - fields - {"size", "seed"})
    if unknown:
        raise TaskError(f"--config: {task} has no option {', '.join(unknown)} "
                        f"(its options: {', '.join(sorted(fields))})")
    try:
        return create_dataset(task, **{**config, "size": size, "seed": seed})
    except (AssertionError, ValueError, TypeError) as exc:
        raise TaskError(f"--config {json.dumps(config)} is not valid for {task}: {exc or type(exc).__name__}") from None


def distinct_entries(task: str, config: dict[str, Any], wanted: int, seed: int) -> list[dict[str, Any]]:
    """The first `wanted` entries with distinct question texts, in generation order (which the seed fixes)."""
    draws = wanted * DRAWS_PER_QUESTION
    dataset = make_dataset(task, config, draws, seed)
    seen: set[str] = set()
    entries = []
    for index in range(draws):
        entry = dataset[index]
        if entry["question"] in seen:
            continue
        seen.add(entry["question"])
        entries.append(entry)
        if len(entries) == wanted:
            return entries
    raise TaskError(f"{task} with --config {json.dumps(config)} gave only {len(entries)} distinct questions in "
                    f"{draws} draws, fewer than the {wanted} asked for: ask for fewer or widen the config")


def prompt_messages(entry: dict[str, Any], system_prompt: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": system_prompt}, {"role": "user", "content": entry["question"]}]


def rl_row(task: str, entry: dict[str, Any], system_prompt: str) -> dict[str, Any]:
    return {
        "messages": prompt_messages(entry, system_prompt),
        "label": entry["answer"],
        "metadata": {"reasoning_gym": {"task": task, "entry": entry}},
    }


def sft_row(entry: dict[str, Any], system_prompt: str) -> dict[str, Any]:
    return {"messages": [*prompt_messages(entry, system_prompt),
                         {"role": "assistant", "content": answer_text(entry["answer"])}]}


def write_rows(rows: list[dict[str, Any]], path: str) -> None:
    tmp = path + ".tmp"
    if path.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        table_rows = [{**row, "metadata": json.dumps(row["metadata"])} if "metadata" in row else row for row in rows]
        pq.write_table(pa.Table.from_pylist(table_rows), tmp)
    else:
        with open(tmp, "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    os.replace(tmp, path)


def build(task: str, config: dict[str, Any], sizes: dict[str, int], seed: int, output_dir: str, fmt: str,
          system_prompt: str) -> dict[str, Any]:
    """Write the three splits and a manifest; returns the manifest."""
    for split, size in sizes.items():
        if size < 0:
            raise TaskError(f"--{split.replace('_', '-')} must be >= 0, got {size}")
    entries = distinct_entries(task, config, sum(sizes.values()), seed)
    os.makedirs(output_dir, exist_ok=True)
    files, start = {}, 0
    for split in SPLITS:
        chunk = entries[start:start + sizes[split]]
        start += sizes[split]
        rows = [sft_row(e, system_prompt) for e in chunk] if split == "sft" else [rl_row(task, e, system_prompt)
                                                                                  for e in chunk]
        files[split] = os.path.join(output_dir, f"{split}.{fmt}")
        write_rows(rows, files[split])
    manifest = {"task": task, "config": config, "seed": seed, "system_prompt": system_prompt,
                "sizes": sizes, "files": files}
    with open(os.path.join(output_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="chain_sum", help="A reasoning-gym dataset name.")
    parser.add_argument("--config", default="{}", help="JSON object of the task's config options (not size/seed).")
    parser.add_argument("--train", type=int, default=2000, help="RL prompts.")
    parser.add_argument("--held-out", type=int, default=200, help="Evaluation prompts, never trained on.")
    parser.add_argument("--sft", type=int, default=2000, help="SFT warm-up conversations.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--format", choices=["jsonl", "parquet"], default="jsonl")
    parser.add_argument("--system-prompt", default=None, help="Default: reasoning-gym's 'direct' prompt.")
    args = parser.parse_args(argv)
    try:
        config = json.loads(args.config)
    except json.JSONDecodeError as exc:
        sys.exit(f"error: --config is not valid JSON ({exc}): {args.config!r}")
    if not isinstance(config, dict):
        sys.exit(f"error: --config must be a JSON object, got {args.config!r}")
    sizes = {"held_out": args.held_out, "sft": args.sft, "train": args.train}
    try:
        manifest = build(args.task, config, sizes, args.seed, args.output_dir, args.format,
                         args.system_prompt if args.system_prompt is not None else default_system_prompt())
    except TaskError as exc:
        sys.exit(f"error: {exc}")
    print(f"{args.task}: {sizes['train']} RL prompts, {sizes['held_out']} held-out prompts, {sizes['sft']} SFT "
          f"conversations (disjoint questions) in {args.output_dir}")
    for split, path in manifest["files"].items():
        print(f"  {split}: {path}")


if __name__ == "__main__":
    main()

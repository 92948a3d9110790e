"""Data sources: where a rollout function gets its prompts, and the cursor that makes resumes continue exactly.

`RolloutDataSource` walks the global dataset in order (with `--rollout-shuffle`, in slime's per-epoch order seeded
by `rollout_seed + epoch`), wrapping into the next epoch inside a batch. Rows are handed over as slime's data source
hands them, minus those the rollout function's declared checks reject (base_types.DatasetChecks). Each prompt becomes
a group of `--n-samples-per-prompt` copies. `save`/`load` persist the cursor next to the model checkpoint, so a
resumed run reads the same samples an uninterrupted run would have.
"""

from __future__ import annotations

import abc
import copy
import logging
import os
from argparse import Namespace
from typing import Any

from slime.rollout.base_types import DatasetChecks, dataset_checks
from slime.utils.data import DataError, Dataset
from slime.utils.misc import load_function, load_tokenizer
from slime.utils.types import Sample

logger = logging.getLogger(__name__)


class DataSource(abc.ABC):
    @abc.abstractmethod
    def get_samples(self, num_samples: int) -> list[list[Sample]]:
        """The next `num_samples` prompt groups."""

    @abc.abstractmethod
    def add_samples(self, samples: list[list[Sample]]) -> None:
        """Give groups back (partial rollout recycles aborted groups)."""

    @abc.abstractmethod
    def save(self, rollout_id: int, state: dict[str, Any] | None = None) -> None:
        """Persist the cursor (or `state`, a `state_dict()` taken earlier) as of the end of `rollout_id`."""

    @abc.abstractmethod
    def load(self, rollout_id: int | None = None) -> None: ...

    @abc.abstractmethod
    def __len__(self) -> int: ...


def state_path(directory: str, rollout_id: int) -> str:
    return os.path.join(directory, "rollout", f"global_dataset_state_dict_{rollout_id}.pt")


def build_dataset(args: Namespace, path: str, checks: DatasetChecks | None = None) -> Dataset:
    """A Dataset configured from the data flags and the rollout function's declared checks (none: rows as slime's
    data source hands them); the tokenizer is loaded only when prompts are rendered or measured."""
    checks = checks or DatasetChecks()
    needs_tokenizer = args.apply_chat_template or args.rollout_max_prompt_len is not None
    if needs_tokenizer and not args.hf_checkpoint:
        raise DataError("--apply-chat-template and --rollout-max-prompt-len need --hf-checkpoint (the tokenizer)")
    return Dataset(
        path,
        prompt_key=args.input_key,
        label_key=args.label_key,
        tool_key=args.tool_key,
        metadata_key=args.metadata_key,
        tokenizer=load_tokenizer(args.hf_checkpoint) if needs_tokenizer else None,
        apply_chat_template=args.apply_chat_template,
        apply_chat_template_kwargs=args.apply_chat_template_kwargs,
        max_prompt_len=args.rollout_max_prompt_len,
        require_assistant_turn=checks.require_assistant_turn,
        sample_check=checks.sample_check,
        seed=args.rollout_seed,
    )


class RolloutDataSource(DataSource):
    def __init__(self, args: Namespace):
        self.args = args
        self.epoch_id = 0
        self.sample_group_index = 0
        self.sample_index = 0
        self.sample_offset = 0
        self.metadata: dict[str, Any] = {}
        self.dataset: Dataset | None = None
        if args.rollout_global_dataset and args.prompt_data:
            checks = dataset_checks(load_function(args.rollout_function_path), args)
            self.dataset = build_dataset(args, args.prompt_data, checks)
            if len(self.dataset) == 0:
                raise DataError(f"--prompt-data {args.prompt_data}: no usable rows ({self.dataset.stats.summary()})")
            if args.rollout_shuffle:
                self.dataset.shuffle(self.epoch_id)

    def __len__(self) -> int:
        return len(self.dataset) if self.dataset is not None else 0

    def _next_prompts(self, num_samples: int) -> list[Sample]:
        if self.dataset is None:
            return [Sample() for _ in range(num_samples)]
        prompts: list[Sample] = []
        while len(prompts) < num_samples:
            end = min(self.sample_offset + num_samples - len(prompts), len(self.dataset))
            # Read with the current epoch's order before a wrap reshuffles it.
            prompts.extend(self.dataset.samples(range(self.sample_offset, end)))
            self.sample_offset = end
            if self.sample_offset == len(self.dataset):
                self.epoch_id += 1
                self.sample_offset = 0
                if self.args.rollout_shuffle:
                    self.dataset.shuffle(self.epoch_id)
        return prompts

    def get_samples(self, num_samples: int) -> list[list[Sample]]:
        groups = []
        for prompt in self._next_prompts(num_samples):
            group = []
            for copy_index in range(self.args.n_samples_per_prompt):
                # Each read builds its prompts afresh, so the group's last sample can be the prompt itself: one
                # deep copy fewer per group (with one sample per prompt, as in SFT, none).
                last = copy_index == self.args.n_samples_per_prompt - 1
                sample = prompt if last else copy.deepcopy(prompt)
                sample.group_index = self.sample_group_index
                sample.index = self.sample_index
                self.sample_index += 1
                group.append(sample)
            self.sample_group_index += 1
            groups.append(group)
        return groups

    def add_samples(self, samples: list[list[Sample]]) -> None:
        raise RuntimeError("RolloutDataSource is read-only; use RolloutDataSourceWithBuffer to give samples back")

    def state_dict(self) -> dict[str, Any]:
        return {
            "sample_offset": self.sample_offset,
            "epoch_id": self.epoch_id,
            "sample_group_index": self.sample_group_index,
            "sample_index": self.sample_index,
            "metadata": copy.deepcopy(self.metadata),
        }

    def save(self, rollout_id: int, state: dict[str, Any] | None = None) -> None:
        """Also without the global dataset: slime saves nothing then, so a resumed run numbers its samples from 0
        again; here the sample and group indices continue, and a rollout function seeded by them resumes exactly."""
        import torch

        path = state_path(self.args.save, rollout_id)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # Write then rename: a crash mid-save never leaves a truncated state file behind.
        torch.save(state if state is not None else self.state_dict(), path + ".tmp")
        os.replace(path + ".tmp", path)

    def load(self, rollout_id: int | None = None) -> None:
        if self.args.load is None or rollout_id is None or rollout_id < 0:
            return
        path = state_path(self.args.load, rollout_id)
        if not os.path.exists(path):
            logger.info("no data-source state at %s: starting the data from the beginning", path)
            return
        import torch

        state = torch.load(path, weights_only=False)
        self.sample_offset = state["sample_offset"]
        self.epoch_id = state["epoch_id"]
        self.sample_group_index = state["sample_group_index"]
        self.sample_index = state["sample_index"]
        self.metadata = state.get("metadata", {})
        if self.args.rollout_shuffle and self.dataset is not None:
            self.dataset.shuffle(self.epoch_id)
        logger.info("data source resumed from %s: epoch %d, offset %d", path, self.epoch_id, self.sample_offset)


def pop_first(args: Namespace, rollout_id: int | None, buffer: list[list[Sample]], num_samples: int) -> list:
    """Default buffer policy: first in, first out."""
    taken = buffer[:num_samples]
    del buffer[:num_samples]
    return taken


class RolloutDataSourceWithBuffer(RolloutDataSource):
    """Adds a buffer of returned groups that is drained before new prompts are read (not checkpointed, as slime)."""

    def __init__(self, args: Namespace):
        super().__init__(args)
        self.buffer: list[list[Sample]] = []
        self.buffer_filter = load_function(args.buffer_filter_path) if args.buffer_filter_path else pop_first

    def get_samples(self, num_samples: int) -> list[list[Sample]]:
        groups = self.buffer_filter(self.args, None, self.buffer, num_samples) if self.buffer else []
        if len(groups) < num_samples:
            groups.extend(super().get_samples(num_samples - len(groups)))
        return groups

    def add_samples(self, samples: list[list[Sample]]) -> None:
        for group in samples:
            if len(group) != self.args.n_samples_per_prompt:
                raise ValueError(f"a group of {len(group)} samples returned; groups hold {self.args.n_samples_per_prompt}")
        self.buffer.extend(samples)

    def get_buffer_length(self) -> int:
        return len(self.buffer)

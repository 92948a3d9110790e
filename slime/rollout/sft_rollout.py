"""The SFT "rollout": read chat conversations, tokenise them through the chat template and mark the trained tokens.

Selected with `--rollout-function-path slime.rollout.sft_rollout.generate_rollout`. Each conversation becomes one
`Sample` whose `tokens` are the whole rendered conversation, whose response starts at the first trained token, and
whose `loss_mask` (response-aligned) marks the assistant tokens. Conversations longer than
`--rollout-max-context-len` follow `--sft-overlong-policy`; every conversation dropped or truncated is counted.

The reader declares its row checks (`generate_rollout.dataset_checks`): the data source then skips conversations
without an assistant turn and, under the drop policy, overlong ones while it indexes the data, so epochs count only
conversations that are trained. Called through a wrapper that does not declare them, the reader makes the same
checks as it reads, replacing each skipped conversation by the next one so batches stay full.
"""

from __future__ import annotations

import collections
import logging
from argparse import Namespace
from typing import Any

from slime.rollout.base_types import DatasetChecks, RolloutFnEvalOutput, RolloutFnTrainOutput
from slime.rollout.data_source import DataSource, build_dataset
from slime.utils.data import DataError
from slime.utils.mask_utils import LossMaskError, MultiTurnLossMaskGenerator, get_response_lengths
from slime.utils.misc import load_tokenizer
from slime.utils.types import Sample

logger = logging.getLogger(__name__)


class SftReader:
    """Turns message-list samples into training samples; keeps running counts of what it dropped or cut."""

    def __init__(self, args: Namespace):
        if not args.hf_checkpoint:
            raise ValueError("SFT needs --hf-checkpoint: its tokenizer and chat template build the loss masks")
        self.args = args
        self.tokenizer = load_tokenizer(args.hf_checkpoint)
        self.mask_generator = MultiTurnLossMaskGenerator(
            self.tokenizer, args.loss_mask_type, args.apply_chat_template_kwargs
        )
        self.max_len = args.rollout_max_context_len
        self.policy = args.sft_overlong_policy
        self.totals: collections.Counter = collections.Counter()
        self.example_logged = False
        self.eval_cache: dict[str, dict[str, list[Any]]] = {}

    def _encode(self, sample: Sample) -> tuple[list[int], list[int]]:
        """The conversation's token ids and (full-length) loss mask, from one render through the chat template."""
        location = sample.metadata.get("row_location", f"sample {sample.index}")
        messages = sample.prompt
        if isinstance(messages, str):
            raise DataError(
                f"{location}: SFT needs a message list in --input-key, got a string "
                "(convert the data with tools/prepare_openhermes.py, or check --input-key)"
            )
        try:
            return self.mask_generator.get_loss_mask(messages, tools=sample.metadata.get("tools"))
        except LossMaskError as exc:
            raise DataError(f"{location}: {exc}") from None

    def dataset_reason(self, sample: Sample) -> str | None:
        """Under `--sft-overlong-policy drop`, why this conversation would never be trained (checked while the data
        is indexed, so the epoch length counts only conversations that are trained), or None."""
        token_ids, loss_mask = self._encode(sample)
        if len(token_ids) > self.max_len:
            return "overlong_dropped"
        return "no_trained_tokens" if get_response_lengths([loss_mask])[0] == 0 else None

    def prepare(self, sample: Sample) -> str | None:
        """Fill tokens, response_length, loss_mask and reward in place; return a skip reason instead when unusable."""
        location = sample.metadata.get("row_location", f"sample {sample.index}")
        token_ids, loss_mask = self._encode(sample)
        truncated = False
        if self.max_len is not None and len(token_ids) > self.max_len:
            if self.policy == "error":
                raise DataError(
                    f"{location}: conversation of {len(token_ids)} tokens exceeds --rollout-max-context-len "
                    f"{self.max_len} (--sft-overlong-policy error)"
                )
            if self.policy == "drop":
                return "overlong_dropped"
            token_ids, loss_mask, truncated = token_ids[: self.max_len], loss_mask[: self.max_len], True
        response_length = get_response_lengths([loss_mask])[0]
        if response_length == 0:
            return "no_trained_tokens_after_truncation" if truncated else "no_trained_tokens"
        if truncated:
            self.totals["overlong_truncated"] += 1
            sample.status = Sample.Status.TRUNCATED
        sample.tokens = token_ids
        sample.response_length = response_length
        sample.loss_mask = loss_mask[-response_length:]
        sample.reward = 0
        if not self.example_logged:
            self.example_logged = True
            spans = self.mask_generator.get_text_from_loss_mask(token_ids, loss_mask)
            logger.info("first SFT sample (%s): %d tokens, trained spans: %r", location, len(token_ids), spans)
        return None

    def train_rollout(self, args: Namespace, rollout_id: int, data_source: DataSource) -> RolloutFnTrainOutput:
        if len(data_source) == 0:
            raise DataError("SFT needs --prompt-data (conversations to train on)")
        kept: list[list[Sample]] = []
        skipped: collections.Counter = collections.Counter()
        while len(kept) < args.rollout_batch_size:
            for group in data_source.get_samples(args.rollout_batch_size - len(kept)):
                if len(group) != 1:
                    raise ValueError("SFT trains each conversation once: use --n-samples-per-prompt 1")
                reason = self.prepare(group[0])
                if reason is None:
                    kept.append(group)
                else:
                    skipped[reason] += 1
            # One full pass over the data without filling a batch means the data (or the limit) is wrong.
            if sum(skipped.values()) > len(data_source):
                raise DataError(
                    f"rollout {rollout_id}: skipped {dict(skipped)} while filling a batch of {args.rollout_batch_size}; "
                    f"almost no conversation fits --rollout-max-context-len {self.max_len}"
                )
        self.totals.update(skipped)
        if skipped:
            logger.warning(
                "rollout %d: replaced %d conversations (%s); totals so far: %s",
                rollout_id, sum(skipped.values()), dict(skipped), dict(self.totals),
            )
        samples = [sample for (sample,) in kept]
        metrics = {f"sft/skipped_{reason}": count for reason, count in skipped.items()}
        metrics["sft/tokens"] = sum(len(s.tokens) for s in samples)
        metrics["sft/trained_tokens"] = sum(sum(s.loss_mask) for s in samples)
        metrics["sft/truncated"] = sum(s.status == Sample.Status.TRUNCATED for s in samples)
        return RolloutFnTrainOutput(samples=kept, metrics=metrics)

    def eval_rollout(self, args: Namespace) -> RolloutFnEvalOutput:
        """Every conversation of each eval dataset, prepared the same way (validation loss; no generation)."""
        for dataset_config in args.eval_datasets:
            name = dataset_config["name"]
            if name in self.eval_cache:
                continue
            dataset = build_dataset(args, dataset_config["path"], DatasetChecks(require_assistant_turn=True))
            samples, skipped = [], collections.Counter()
            for index, sample in enumerate(dataset.samples(range(len(dataset)))):
                sample.index = index
                reason = self.prepare(sample)
                if reason is None:
                    samples.append(sample)
                else:
                    skipped[reason] += 1
            if skipped:
                logger.warning("eval dataset %s: skipped %s of %d conversations", name, dict(skipped), len(dataset))
            self.eval_cache[name] = {
                "samples": samples,
                "rewards": [0.0] * len(samples),
                "truncated": [int(s.status == Sample.Status.TRUNCATED) for s in samples],
            }
        return RolloutFnEvalOutput(data={d["name"]: self.eval_cache[d["name"]] for d in args.eval_datasets})


_READER: SftReader | None = None


def _reader(args: Namespace) -> SftReader:
    """One reader per run (per args), built on first use."""
    global _READER
    if _READER is None or _READER.args is not args:
        _READER = SftReader(args)
    return _READER


def generate_rollout(
    args: Namespace, rollout_id: int, data_source: DataSource, evaluation: bool = False
) -> RolloutFnTrainOutput | RolloutFnEvalOutput:
    """slime's rollout-function contract (docs/rollout_function.md)."""
    if evaluation:
        return _reader(args).eval_rollout(args)
    return _reader(args).train_rollout(args, rollout_id, data_source)


def sft_dataset_checks(args: Namespace) -> DatasetChecks:
    """What the SFT reader requires of rows, declared so the data source applies it while indexing (this is what
    makes a run SFT; a custom rollout function can declare the same with `fn.dataset_checks = sft_dataset_checks`)."""
    drops_overlong = args.rollout_max_context_len is not None and args.sft_overlong_policy == "drop"
    return DatasetChecks(require_assistant_turn=True,
                         sample_check=_reader(args).dataset_reason if drops_overlong else None)


generate_rollout.dataset_checks = sft_dataset_checks

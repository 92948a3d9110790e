"""The running batch of the CPU engine: one transformers DynamicCache, left-padded to a common length.

Why this layout: transformers' attention takes one KV tensor per layer of shape [batch, heads, length, dim], an
attention mask and position ids. Left padding keeps every row's newest token in the last column, so one decode
forward serves every running request whatever its length, and each row's position ids count only its real tokens
(RoPE sees the same positions as an unpadded run). Requests join by a prefill of their own (left-padded among
themselves) whose cache is padded to the running length and concatenated along the batch; they leave by row
selection, after which columns that are padding in every remaining row are dropped, so a long request that has
left does not keep costing attention width.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


def _cache_kwarg(model: Any) -> str:
    # transformers 5 renamed the forward argument `past_key_values` to `cache`; older releases only know the former.
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def check_supported(model: Any) -> None:
    """Only full-attention decoder layers fit the left-padded cache; refuse others at load time, not mid-run."""
    cache = DynamicCache(config=model.config)
    kinds = {type(layer) for layer in cache.layers}
    if kinds and kinds != {DynamicLayer}:
        names = ", ".join(sorted(k.__name__ for k in kinds))
        raise ValueError(f"the CPU engine supports full-attention decoder models only; this model's cache uses {names}")


def _pad_left(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    if width == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = width
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


class PaddedBatch:
    """KV cache, attention mask, next position and pending input token of every running row, in row order."""

    def __init__(self, model: Any, pad_token_id: int) -> None:
        self.model = model
        self.pad_token_id = pad_token_id
        self.cache_kwarg = _cache_kwarg(model)
        self.cache: DynamicCache | None = None
        self.mask = torch.zeros(0, 0, dtype=torch.long)
        self.next_pos = torch.zeros(0, dtype=torch.long)
        self.pending = torch.zeros(0, dtype=torch.long)  # sampled last step, not yet fed to the model

    @property
    def size(self) -> int:
        return int(self.mask.shape[0])

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])

    def _forward(self, **kwargs: Any) -> torch.Tensor:
        cache = kwargs.pop("cache")
        out = self.model(**kwargs, **{self.cache_kwarg: cache}, use_cache=True)
        return out.logits

    @torch.inference_mode()
    def prefill(self, sequences: list[list[int]], full_logits: bool) -> tuple["PaddedBatch", torch.Tensor]:
        """Run the given token sequences as a new left-padded batch; returns it and its logits ([rows, vocab] at
        the last position, or [rows, length, vocab] when `full_logits`, for prompt log-probs)."""
        length = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), length), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), length), dtype=torch.long)
        for row, seq in enumerate(sequences):
            ids[row, length - len(seq):] = torch.tensor(seq, dtype=torch.long)
            mask[row, length - len(seq):] = 1
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        part = PaddedBatch(self.model, self.pad_token_id)
        part.cache = DynamicCache(config=self.model.config)
        logits = self._forward(input_ids=ids, attention_mask=mask, position_ids=positions, cache=part.cache,
                               logits_to_keep=0 if full_logits else 1)
        part.mask = mask
        part.next_pos = mask.sum(dim=1)
        return part, (logits if full_logits else logits[:, -1])

    def extend(self, part: "PaddedBatch") -> None:
        """Append the rows of a freshly prefilled batch (its pending tokens set to their first sampled tokens)."""
        if self.cache is None or self.size == 0:
            self.cache, self.mask, self.next_pos, self.pending = part.cache, part.mask, part.next_pos, part.pending
            return
        width = max(self.width, part.width)
        assert self.cache is not None and part.cache is not None
        for mine, theirs in zip(self.cache.layers, part.cache.layers):
            mine.keys = torch.cat([_pad_left(mine.keys, width - self.width, 2),
                                   _pad_left(theirs.keys, width - part.width, 2)], dim=0)
            mine.values = torch.cat([_pad_left(mine.values, width - self.width, 2),
                                     _pad_left(theirs.values, width - part.width, 2)], dim=0)
        self.mask = torch.cat([_pad_left(self.mask, width - self.width, 1),
                               _pad_left(part.mask, width - part.width, 1)], dim=0)
        self.next_pos = torch.cat([self.next_pos, part.next_pos])
        self.pending = torch.cat([self.pending, part.pending])

    @torch.inference_mode()
    def decode(self) -> torch.Tensor:
        """Feed every row's pending token; returns next-token logits [rows, vocab]."""
        self.mask = torch.cat([self.mask, torch.ones(self.size, 1, dtype=torch.long)], dim=1)
        logits = self._forward(input_ids=self.pending[:, None], attention_mask=self.mask,
                               position_ids=self.next_pos[:, None], cache=self.cache, logits_to_keep=1)
        self.next_pos = self.next_pos + 1
        return logits[:, -1]

    def set_pending(self, tokens: list[int]) -> None:
        self.pending = torch.tensor(tokens, dtype=torch.long)

    def keep(self, rows: list[int]) -> None:
        """Keep only `rows` (in this order) and drop the columns that are now padding everywhere."""
        if len(rows) == self.size:
            return
        if not rows:
            self.cache, self.mask = None, torch.zeros(0, 0, dtype=torch.long)
            self.next_pos = self.pending = torch.zeros(0, dtype=torch.long)
            return
        index = torch.tensor(rows, dtype=torch.long)
        self.mask, self.next_pos, self.pending = self.mask[index], self.next_pos[index], self.pending[index]
        # The first column holding a real token in any row; everything left of it is padding in every row.
        first = int(self.mask.any(dim=0).nonzero()[0, 0])
        assert self.cache is not None
        for layer in self.cache.layers:
            layer.keys = layer.keys[index, :, first:]
            layer.values = layer.values[index, :, first:]
        self.mask = self.mask[:, first:]

    def used_slots(self) -> int:
        return self.size * self.width

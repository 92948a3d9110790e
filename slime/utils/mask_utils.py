"""SFT loss masks: which tokens of a rendered conversation are trained.

The conversation is rendered **once** through the tokenizer's own chat template and tokenised with character
offsets; the assistant turns are located in that one render and mapped to tokens. Gluing per-message renders
together (what slime's `qwen`/`qwen3` types did) breaks templates whose output depends on context: Qwen3 drops the
thinking of historical turns, parallel tool responses share one user turn, templates insert a default system prompt.
Here the token ids are exactly `apply_chat_template(messages, tools=tools, tokenize=True)`.

Trained: each assistant turn from the end of its header (`<|im_start|>assistant\\n`, Llama-3's
`<|start_header_id|>assistant<|end_header_id|>\\n\\n`, ...) through its end-of-turn token (`<|im_end|>`, `<|eot_id|>`,
or whatever special token the template closes a turn with): thinking block, content and tool calls included.
Not trained: system, user and tool turns, every header (the generation prompt), text after the end-of-turn token,
and assistant messages marked `"loss": false` (or slime's `"step_loss_mask": 0`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

_PROBE_USER, _PROBE_ASSISTANT, _PROBE_NEXT_USER = "SlimeProbeUserTurn", "SlimeProbeAssistantTurn", "SlimeProbeNextTurn"


class LossMaskError(ValueError):
    """The chat template's output cannot be split into assistant turns unambiguously for this conversation."""


@dataclass(frozen=True)
class TurnMarkers:
    """Strings that open and close an assistant turn in a template's output, found by rendering a probe."""

    header: str
    end_of_turn: str


def is_trained_message(message: dict[str, Any]) -> bool:
    if message.get("role") != "assistant":
        return False
    loss = message.get("loss", message.get("step_loss_mask", 1))
    return bool(loss) if loss is not None else True


def get_response_lengths(loss_masks: Sequence[Sequence[int]]) -> list[int]:
    """Length of the response: from the first trained token to the end (0 when nothing is trained)."""
    lengths = []
    for mask in loss_masks:
        mask = list(mask)
        lengths.append(len(mask) - mask.index(1) if 1 in mask else 0)
    return lengths


def _longest_special_prefix(text: str, specials: Sequence[str]) -> str:
    matches = [s for s in specials if text.startswith(s)]
    return max(matches, key=len) if matches else ""


class MultiTurnLossMaskGenerator:
    """Builds `(token_ids, loss_mask)` for a message list.

    `tokenizer_type` keeps slime's `--loss-mask-type` choices. `qwen`, `qwen3` and `qwen3_5` all use the single
    render (they differed in slime only in how they glued per-message renders); `distill_qwen` trains the raw text
    of the last message after a templated prompt (and `qwen` switches to it for DeepSeek-distill tokenizers, as
    slime does).
    """

    def __init__(self, tokenizer: Any, tokenizer_type: str = "qwen", chat_template_kwargs: dict | None = None):
        if tokenizer_type not in ("qwen", "qwen3", "qwen3_5", "distill_qwen"):
            raise ValueError(f"unknown loss mask type {tokenizer_type!r}")
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError(f"{type(tokenizer).__name__} has no chat template; SFT masks need one")
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("loss masks need a fast tokenizer (character offsets); load it with use_fast=True")
        if tokenizer_type == "qwen" and "<｜Assistant｜>" in tokenizer.get_added_vocab():
            tokenizer_type = "distill_qwen"
        self.tokenizer = tokenizer
        self.tokenizer_type = tokenizer_type
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.markers = self._probe_markers()

    def _render(self, messages: list[dict[str, Any]], tools: Any = None, add_generation_prompt: bool = False) -> str:
        return self.tokenizer.apply_chat_template(
            messages,
            tools=tools,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            **self.chat_template_kwargs,
        )

    def _probe_markers(self) -> TurnMarkers:
        """Find the assistant header and end-of-turn strings from a user/assistant/user render.

        The assistant turn is not the last message of the probe, so templates that treat the final turn specially
        (Qwen3's empty thinking block) render it as they render any historical turn.
        """
        text = self._render(
            [
                {"role": "user", "content": _PROBE_USER},
                {"role": "assistant", "content": _PROBE_ASSISTANT},
                {"role": "user", "content": _PROBE_NEXT_USER},
            ]
        )
        try:
            user_end = text.index(_PROBE_USER) + len(_PROBE_USER)
            assistant_start = text.index(_PROBE_ASSISTANT, user_end)
            assistant_end = assistant_start + len(_PROBE_ASSISTANT)
            next_user = text.index(_PROBE_NEXT_USER, assistant_end)
        except ValueError:
            raise LossMaskError(f"the chat template does not render message contents verbatim: {text!r}") from None
        specials = sorted(self.tokenizer.get_added_vocab(), key=len, reverse=True)
        between_user_and_assistant = text[user_end:assistant_start]
        # The text between the two contents is "<end of user turn><assistant header>"; drop the first part.
        user_turn_end = _longest_special_prefix(between_user_and_assistant, specials)
        header = between_user_and_assistant[len(user_turn_end) :].lstrip()
        after_assistant = text[assistant_end:next_user]
        end_of_turn = _longest_special_prefix(after_assistant, specials)
        if not end_of_turn and self.tokenizer.eos_token and after_assistant.startswith(self.tokenizer.eos_token):
            end_of_turn = self.tokenizer.eos_token
        if not header or not end_of_turn:
            raise LossMaskError(
                f"cannot find the assistant header / end-of-turn token of this chat template (probe render: {text!r})"
            )
        return TurnMarkers(header=header, end_of_turn=end_of_turn)

    def get_loss_mask(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> tuple[list[int], list[int]]:
        if self.tokenizer_type == "distill_qwen":
            return self._distill_loss_mask(messages, tools)
        text = self._render(messages, tools)
        encoding = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        token_ids = list(encoding["input_ids"])
        offsets = np.asarray(encoding["offset_mapping"], dtype=np.int64).reshape(-1, 2)
        trained_chars = np.zeros(len(text) + 1, dtype=np.int64)
        for start, end in self._trained_spans(text, messages):
            trained_chars[start:end] = 1
        # A token is trained when any of its characters is: prefix sums make that one vectorised comparison.
        prefix = np.concatenate([[0], np.cumsum(trained_chars)])
        starts = offsets[:, 0]
        ends = np.maximum(offsets[:, 1], starts + 1)
        loss_mask = (prefix[ends] - prefix[starts] > 0).astype(np.int64).tolist()
        return token_ids, loss_mask

    def _trained_spans(self, text: str, messages: list[dict[str, Any]]) -> list[tuple[int, int]]:
        header, end_of_turn = self.markers.header, self.markers.end_of_turn
        assistant_turns = [m for m in messages if m.get("role") == "assistant"]
        found = text.count(header)
        # Templates that always append the generation prompt leave one header with nothing after it.
        expected = len(assistant_turns) + (1 if text.endswith(header) else 0)
        if found != expected:
            raise LossMaskError(
                f"the rendered conversation has {found} assistant headers {header!r} for {len(assistant_turns)} "
                "assistant messages (does a message contain template markup?)"
            )
        spans, cursor = [], 0
        for message in assistant_turns:
            start = text.index(header, cursor) + len(header)
            close = text.find(end_of_turn, start)
            if close < 0:
                raise LossMaskError(f"an assistant turn has no end-of-turn token {end_of_turn!r}")
            cursor = close + len(end_of_turn)
            if is_trained_message(message):
                spans.append((start, cursor))
        return spans

    def _distill_loss_mask(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
    ) -> tuple[list[int], list[int]]:
        if not messages or messages[-1].get("role") != "assistant":
            raise LossMaskError("distill_qwen needs the conversation to end with an assistant message")
        prompt = self._render(messages[:-1], tools, add_generation_prompt=True)
        prompt_ids = list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        response = messages[-1].get("content") or ""
        response_ids = list(self.tokenizer(response, add_special_tokens=False)["input_ids"])
        # Close the turn so the model learns to stop (without it, it never emits the end-of-turn token).
        end_id = self.tokenizer.convert_tokens_to_ids(self.markers.end_of_turn)
        if not response_ids or response_ids[-1] != end_id:
            response_ids.append(end_id)
        trained = 1 if is_trained_message(messages[-1]) else 0
        return prompt_ids + response_ids, [0] * len(prompt_ids) + [trained] * len(response_ids)

    def get_text_from_loss_mask(self, token_ids: Sequence[int], loss_mask: Sequence[int]) -> list[str]:
        """Decoded text of each contiguous trained span (for logs and tests)."""
        spans, current = [], []
        for token, trained in zip(token_ids, loss_mask):
            if trained:
                current.append(token)
            elif current:
                spans.append(current)
                current = []
        if current:
            spans.append(current)
        return [self.tokenizer.decode(span) for span in spans]

"""A multi-turn rollout with a calculator tool, for --custom-generate-function-path.

  python train.py ... --prompt-data data.jsonl --input-key messages --apply-chat-template --tool-key tools \
      --custom-generate-function-path examples.multi_turn_tool.generate.generate \
      --custom-rm-path examples.reasoning_gym.reward.reward_func

Per sample: the model answers; if its turn ends with a calculator call (see `calculator.py` for the two accepted
forms) and the end-of-turn token, the call is evaluated and its result appended as a tool turn rendered by the
model's own chat template (ChatML: `<|im_start|>tool ...`; Qwen3: a user turn holding `<tool_response>`), followed
by the assistant header; then the model continues. At most `MAX_TOOL_CALLS` calls; the next turn is the answer.

What the trainer gets: `tokens` = prompt + every turn; `loss_mask` (response-long) 1 on the model's tokens and 0
on the tool turns; `rollout_log_probs` the engine's log-probs of the model's tokens and 0.0 for tool tokens;
`response_length` counts all of it; `status` is that of the last model turn. `--rollout-max-response-len` bounds the
whole response, tool tokens included. Each model turn is one call of slime's `generate` (one HTTP request through
the router), so sampling, log-probs, weight versions and finish reasons are handled exactly as for single-turn
samples. `metadata["tool_calls"]` counts the calls that ran. Evaluation runs the same loop.

Give the prompts the tool schema (`calculator.TOOL_SCHEMA`, in the `--tool-key` column) so the chat template
shows the model what it can call.
"""

from __future__ import annotations

import functools
import json
from argparse import Namespace
from typing import Any

from slime.rollout.sglang_rollout import GenerateState
from slime.rollout.sglang_rollout import generate as generate_turn
from slime.utils.mask_utils import MultiTurnLossMaskGenerator
from slime.utils.types import Sample

from examples.multi_turn_tool.calculator import parse_tool_call, run_tool

MAX_TOOL_CALLS = 2
_SENTINEL = "\u2063TOOL-RESULT\u2063"  # rendered verbatim by templates; never produced by a model turn


def _turn_markup(tokenizer: Any, chat_template_kwargs: dict[str, Any]) -> tuple[str, str]:
    return _cached_turn_markup(tokenizer, json.dumps(chat_template_kwargs, sort_keys=True))


@functools.lru_cache(maxsize=8)
def _cached_turn_markup(tokenizer: Any, chat_template_kwargs_json: str) -> tuple[str, str]:
    """(end-of-turn string, tool-turn text with the sentinel where the result goes). The tool turn is everything the
    template writes after an assistant turn's end-of-turn token up to and including the next assistant header, found
    by rendering a probe conversation through the template."""
    kwargs = json.loads(chat_template_kwargs_json)
    end_of_turn = MultiTurnLossMaskGenerator(tokenizer, chat_template_kwargs=kwargs).markers.end_of_turn
    probe = tokenizer.apply_chat_template(
        [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"},
         {"role": "tool", "content": _SENTINEL}],
        tokenize=False, add_generation_prompt=True, **kwargs)
    at = probe.index(_SENTINEL)
    start = probe.rindex(end_of_turn, 0, at) + len(end_of_turn)
    return end_of_turn, probe[start:]


def tool_turn_text(tokenizer: Any, result: str, chat_template_kwargs: dict[str, Any] | None = None) -> str:
    """The text appended after a model turn that called the tool: the rendered tool message and the header of the
    next assistant turn."""
    _, markup = _turn_markup(tokenizer, chat_template_kwargs or {})
    return markup.replace(_SENTINEL, result)


async def generate(args: Namespace, sample: Sample, sampling_params: dict[str, Any],
                   evaluation: bool = False) -> Sample:
    state = GenerateState.get(args)
    tokenizer = state.tokenizer
    kwargs = args.apply_chat_template_kwargs or {}
    end_of_turn, _ = _turn_markup(tokenizer, kwargs)
    end_ids = tokenizer.encode(end_of_turn, add_special_tokens=False)
    sample.metadata.setdefault("tool_calls", 0)
    while True:
        if state.aborted:  # the rollout has what it needs; the engines were told to abort
            sample.status = Sample.Status.ABORTED
            return sample
        text_start = len(sample.response)
        sample = await generate_turn(args, sample, sampling_params)
        if sample.status != Sample.Status.COMPLETED:
            return sample
        expression = parse_tool_call(sample.response[text_start:])
        turn_ended = sample.tokens[-len(end_ids):] == end_ids
        if expression is None or not turn_ended or sample.metadata["tool_calls"] >= MAX_TOOL_CALLS:
            return sample
        text = tool_turn_text(tokenizer, run_tool(expression), kwargs)
        sample.append_response_tokens(tokenizer.encode(text, add_special_tokens=False), trainable=False, text=text)
        sample.metadata["tool_calls"] += 1

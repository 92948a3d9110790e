"""A custom SFT rollout in the style of slime's plugins: each row holds a prompt and a label, and the function builds
the tokens and the loss mask itself (the prompt rendered with the chat template's generation prompt, the label plus
the end-of-sequence token as the trained response).

  python train.py ... --rollout-function-path examples.custom_rollout.prompt_label_sft.generate_rollout \
      --prompt-data data.jsonl --input-key prompt --label-key label --loss-type sft_loss ...

Rows such as {"prompt": [{"role": "user", "content": "2+2?"}], "label": "4"} (or a plain string prompt) reach it as
slime's data source hands them: this function declares no dataset checks, so a prompt without an assistant turn is
not skipped the way the SFT reader's conversations would be.
"""

from __future__ import annotations

from argparse import Namespace
from typing import Any

from slime.rollout.base_types import RolloutFnTrainOutput
from slime.utils.misc import load_tokenizer
from slime.utils.types import Sample


def build_tokens(tokenizer: Any, sample: Sample) -> None:
    """Fill tokens, response_length, loss_mask and reward of one prompt + label sample."""
    messages = sample.prompt if isinstance(sample.prompt, list) else [{"role": "user", "content": sample.prompt}]
    prompt_text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(str(sample.label) + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    sample.tokens = prompt_ids + response_ids
    sample.response_length = len(response_ids)
    sample.loss_mask = [1] * len(response_ids)
    sample.reward = 0


def generate_rollout(
    args: Namespace, rollout_id: int, data_source: Any, evaluation: bool = False
) -> RolloutFnTrainOutput:
    if evaluation:
        raise NotImplementedError("this example has no eval set")
    tokenizer = load_tokenizer(args.hf_checkpoint)
    groups = data_source.get_samples(args.rollout_batch_size)
    for group in groups:
        for sample in group:
            if sample.label is None:
                raise ValueError(f"{sample.metadata.get('row_location')}: no label (--label-key {args.label_key})")
            build_tokens(tokenizer, sample)
    return RolloutFnTrainOutput(samples=groups,
                                metrics={"prompt_label/response_tokens": sum(g[0].response_length for g in groups)})

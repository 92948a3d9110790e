"""A custom rollout function: SFT samples made on the fly (small additions), no dataset file.

  python train.py ... --rollout-function-path examples.custom_rollout.arithmetic_rollout.generate_rollout \
      --disable-rollout-global-dataset --num-rollout 100 --loss-type sft_loss ...

It follows the rollout-function contract (docs/rollout_function.md): take `rollout_batch_size` groups from the
data source (blank samples here, numbered for us), fill tokens / response_length / loss_mask / reward, return them.
"""

from __future__ import annotations

import random

from slime.rollout.base_types import RolloutFnTrainOutput
from slime.utils.mask_utils import MultiTurnLossMaskGenerator, get_response_lengths
from slime.utils.misc import load_tokenizer


def make_messages(rng: random.Random) -> list[dict]:
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    return [{"role": "user", "content": f"What is {a} + {b}?"}, {"role": "assistant", "content": str(a + b)}]


def generate_rollout(args, rollout_id, data_source, evaluation=False):
    if evaluation:
        raise NotImplementedError("this example has no eval set")
    mask_generator = MultiTurnLossMaskGenerator(load_tokenizer(args.hf_checkpoint), args.loss_mask_type)
    groups = data_source.get_samples(args.rollout_batch_size)
    for group in groups:
        for sample in group:
            # Seeded by the sample's global index: a resumed run makes the same samples.
            sample.prompt = make_messages(random.Random(args.rollout_seed * 1_000_003 + sample.index))
            tokens, mask = mask_generator.get_loss_mask(sample.prompt)
            sample.tokens = tokens
            sample.response_length = get_response_lengths([mask])[0]
            sample.loss_mask = mask[-sample.response_length :]
            sample.reward = 0
    return RolloutFnTrainOutput(samples=groups, metrics={"arithmetic/samples": len(groups)})

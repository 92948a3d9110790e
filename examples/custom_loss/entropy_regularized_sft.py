"""A custom loss: SFT negative log-likelihood minus an entropy bonus (keeps the model from over-sharpening).

  python train_async.py ... --loss-type custom_loss \
      --custom-loss-function-path examples.custom_loss.entropy_regularized_sft.entropy_regularized_sft_loss

The contract: fn(args, batch, logits, sum_of_sample_mean) -> (loss, metrics). `sum_of_sample_mean` reduces
per-token values of the micro-batch's responses the same way the built-in losses do, so the usual
normalisation (--calculate-per-token-loss or per-sample means) applies unchanged. Tensor parallel safe.
"""

from __future__ import annotations

import torch

from slime.backends.megatron_utils.loss import get_log_probs_and_entropy

ENTROPY_COEF = 0.01


def entropy_regularized_sft_loss(args, batch, logits, sum_of_sample_mean):
    log_probs, entropy = get_log_probs_and_entropy(args, batch, logits, with_entropy=True)
    nll = -sum_of_sample_mean(torch.cat(log_probs))
    entropy_term = sum_of_sample_mean(torch.cat(entropy))
    loss = nll - ENTROPY_COEF * entropy_term
    return loss, {"loss": loss.detach(), "nll": nll.detach(), "entropy": entropy_term.detach()}

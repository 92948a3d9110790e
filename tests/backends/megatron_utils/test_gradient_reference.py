"""One SGD step of our trainer equals the same step taken by hand on transformers' model.

The reference is independent of our loss code: transformers' own causal-LM loss (its label shift, its
`ignore_index` masking, its `num_items_in_batch` normalisation) on each sequence alone and unpadded, then
`p -= lr * p.grad` in plain PyTorch. Our side is the whole trainer path: HF weights loaded into Megatron's GPTModel,
packed micro-batches, slime's loss scaling across micro-batches, Megatron's SGD optimizer, and the weights
converted back to HF names. SGD, not Adam: Adam divides the update by the gradient's own scale, so a wrong loss
scale (say, summing where slime averages) would leave Adam's first step almost unchanged and this check blind.
"""

from __future__ import annotations

import pytest
import torch
import transformers

from slime.backends.megatron_utils.actor import MegatronTrainRayActor
from slime.backends.megatron_utils.hf_weights import iter_hf_tensors

from megatron_helpers import args_for_hf, random_samples, save_tiny_hf_model, shards_for

pytestmark = pytest.mark.usefixtures("megatron_world")

LR = 0.1
VOCAB = 300
SAMPLES = 6
WEIGHT_TOLERANCE = 1e-5


def reference_sgd_step(hf_model: torch.nn.Module, samples: list, per_token: bool) -> tuple[float, float]:
    """transformers' loss over the step's samples with slime's normalisation, one hand-written SGD step.
    Returns the loss and the gradient's global L2 norm."""
    trained_tokens = sum(sum(s.loss_mask) for s in samples)
    hf_model.train()
    total = torch.zeros(())
    for sample in samples:
        tokens = torch.tensor(sample.tokens)
        labels = torch.full_like(tokens, -100)
        prompt = len(sample.tokens) - sample.response_length
        response_labels = tokens[prompt:].clone()
        response_labels[torch.tensor(sample.loss_mask) == 0] = -100
        labels[prompt:] = response_labels
        if per_token:
            # Every trained token of the step weighs the same: transformers divides this sample's summed NLL by
            # the step's token count.
            loss = hf_model(input_ids=tokens[None], labels=labels[None],
                            num_items_in_batch=torch.tensor(trained_tokens)).loss
        else:
            # Each sample's own masked mean, then the mean over the step's samples.
            loss = hf_model(input_ids=tokens[None], labels=labels[None]).loss / len(samples)
        loss.backward()
        total = total + loss.detach()
    grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in hf_model.parameters()]))
    with torch.no_grad():
        for param in hf_model.parameters():
            param -= LR * param.grad
    return float(total), float(grad_norm)


@pytest.mark.parametrize("per_token", [True, False], ids=["per-token", "per-sample"])
@pytest.mark.parametrize("max_tokens", [10_000, 48], ids=["one-micro-batch", "several-micro-batches"])
def test_one_sgd_step_equals_transformers(tmp_path, per_token, max_tokens):
    hf_model = save_tiny_hf_model(tmp_path, "qwen3", vocab_size=VOCAB)
    initial = {name: tensor.clone() for name, tensor in hf_model.state_dict().items()}
    samples = random_samples(SAMPLES, vocab=VOCAB, seed=11)
    args = args_for_hf(
        tmp_path, "--load", str(tmp_path), "--make-vocab-size-divisible-by", "1",
        "--rollout-batch-size", str(SAMPLES), "--global-batch-size", str(SAMPLES),
        "--loss-type", "sft_loss", "--disable-compute-advantages-and-returns", "--debug-train-only",
        "--optimizer", "sgd", "--lr", str(LR), "--lr-decay-style", "constant", "--weight-decay", "0",
        "--clip-grad", "0", "--use-dynamic-batch-size", "--max-tokens-per-gpu", str(max_tokens),
        *(["--calculate-per-token-loss"] if per_token else []),
    )
    actor = MegatronTrainRayActor()
    actor.init(args)
    shard = shards_for(args, samples)[0]
    micro_batches = len(shard["micro_batches"][0])
    assert micro_batches == 1 if max_tokens == 10_000 else micro_batches >= 3, micro_batches
    (metrics,) = actor.train(0, shard)
    ours = dict(iter_hf_tensors(actor.model, args))

    reference_loss, reference_grad_norm = reference_sgd_step(hf_model, samples, per_token)
    assert metrics["loss"] == pytest.approx(reference_loss, abs=1e-5)
    assert metrics["grad_norm"] == pytest.approx(reference_grad_norm, rel=1e-5)
    reference = hf_model.state_dict()
    assert set(ours) == set(reference)
    largest_update = 0.0
    for name, expected in reference.items():
        difference = (ours[name] - expected).abs().max().item()
        assert difference < WEIGHT_TOLERANCE, f"{name}: differs from transformers' SGD step by {difference:.2e}"
        largest_update = max(largest_update, (expected - initial[name]).abs().max().item())
    # The step must move weights far more than the tolerance, or a wrong gradient scale would pass unnoticed:
    # a loss off by a factor k changes the update by (k - 1) times its size.
    assert largest_update > 100 * WEIGHT_TOLERANCE, largest_update

"""The loss registry and slime's loss normalisation.

Every loss has the signature `fn(args, batch, logits, sum_of_sample_mean) -> (loss, metrics)`:
`sft_loss`, `policy_loss`, `value_loss`, and `custom_loss` (`--custom-loss-function-path`).

`sum_of_sample_mean(x)` reduces per-token values of the micro-batch's responses to one number:
- default: the sum over samples of each sample's masked mean (denominator: the loss-mask total of the sample's
  rollout, which is the sample's own when each sample is its own rollout);
- `--calculate-per-token-loss`: the plain masked sum.
`loss_function` then scales for Megatron's schedule so that one optimizer step's gradient is that of
- default: (sum of per-sample means over the step) / global_batch_size;
- per-token: (sum over every trained token of the step, on every DP rank) / (number of those tokens),
whatever the split into micro-batches and data-parallel ranks.
"""

from __future__ import annotations

from argparse import Namespace
from typing import Any, Callable

import torch
from megatron.core import parallel_state

from slime.backends.megatron_utils.log_probs import vocab_parallel_log_probs
from slime.utils.device import device, reduce_on_device
from slime.utils.misc import load_function
from slime.utils.ppo_utils import compute_approx_kl, compute_policy_loss

LossFn = Callable[[Namespace, dict, torch.Tensor, Callable], tuple[torch.Tensor, dict[str, torch.Tensor]]]


def response_spans(batch: dict) -> list[tuple[int, int]]:
    """[start, end) in the packed stream of the positions whose logits predict each sample's response tokens."""
    spans, offset = [], 0
    for total, response in zip(batch["total_lengths"], batch["response_lengths"]):
        spans.append((offset + total - response - 1, offset + total - 1))
        offset += total
    return spans


def get_log_probs_and_entropy(
    args: Namespace, batch: dict, logits: torch.Tensor, with_entropy: bool = False
) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """Per-sample response log-probs (and entropies) in fp32. logits: [1, T, vocab/tp] in the model's dtype;
    divided by --rollout-temperature as slime does (also for SFT). Only the response positions are computed."""
    spans = response_spans(batch)
    targets = torch.roll(batch["tokens"][0], shifts=-1)
    log_probs, entropy = vocab_parallel_log_probs(
        logits[0], spans, targets, temperature=args.rollout_temperature, with_entropy=with_entropy,
        chunk_size=getattr(args, "log_probs_chunk_size", None),
    )
    lengths = [e - s for s, e in spans]
    return list(log_probs.split(lengths)), (list(entropy.split(lengths)) if entropy is not None else None)


def make_sum_of_sample_mean(batch: dict, calculate_per_token_loss: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    masks = batch["loss_mask_flat"].float()
    if not calculate_per_token_loss:
        lengths = batch["response_lengths"]
        denominators = batch["rollout_mask_sums"].float().clamp(min=1)
        # output_size spares a device-to-host sync on GPU.
        repeats = torch.tensor(lengths, device=denominators.device)
        masks = masks / denominators.repeat_interleave(repeats, output_size=masks.numel())

    def sum_of_sample_mean(values: torch.Tensor) -> torch.Tensor:
        assert values.shape[0] == masks.shape[0], (values.shape, masks.shape)
        return (values * masks.to(values.device)).sum()

    return sum_of_sample_mean


def sft_loss_function(args: Namespace, batch: dict, logits: torch.Tensor, sum_of_sample_mean: Callable):
    log_probs, _ = get_log_probs_and_entropy(args, batch, logits)
    values = torch.cat(log_probs) if log_probs else logits.new_zeros(0)
    loss = -sum_of_sample_mean(values)
    if values.numel() == 0:
        loss = loss + 0 * logits.sum()  # keep the graph connected so every rank runs backward
    return loss, {"loss": loss.detach()}


def policy_loss_function(args: Namespace, batch: dict, logits: torch.Tensor, sum_of_sample_mean: Callable):
    """PPO-style clipped policy gradient (GRPO/GSPO/REINFORCE++ differ in their advantages), entropy bonus, KL loss."""
    log_probs, entropy = get_log_probs_and_entropy(args, batch, logits, with_entropy=True)
    new = torch.cat(log_probs)
    if args.use_rollout_logprobs:
        old = torch.cat(batch["rollout_log_probs"]).to(new)
    elif batch.get("log_probs") is not None:
        old = torch.cat(batch["log_probs"]).to(new)
    else:
        old = new.detach()  # one step per rollout: the current policy is the behaviour policy
    advantages = torch.cat(batch["advantages"]).to(new)
    ppo_kl = old - new
    pg, clipfrac = compute_policy_loss(ppo_kl, advantages, args.eps_clip, args.eps_clip_high, args.eps_clip_c)
    pg_loss = sum_of_sample_mean(pg)
    entropy_loss = sum_of_sample_mean(torch.cat(entropy))
    loss = pg_loss - args.entropy_coef * entropy_loss
    metrics = {"pg_loss": pg_loss.detach(), "entropy_loss": entropy_loss.detach(),
               "pg_clipfrac": sum_of_sample_mean(clipfrac).detach(), "ppo_kl": sum_of_sample_mean(ppo_kl).detach()}
    if args.use_kl_loss:
        kl = compute_approx_kl(new, torch.cat(batch["ref_log_probs"]).to(new), args.kl_loss_type)
        kl_loss = sum_of_sample_mean(kl)
        loss = loss + args.kl_loss_coef * kl_loss
        metrics["kl_loss"] = kl_loss.detach()
    metrics["loss"] = loss.detach()
    return loss, metrics


def value_loss_function(args: Namespace, batch: dict, logits: torch.Tensor, sum_of_sample_mean: Callable):
    """Clipped value loss of a critic whose output layer has one unit ([1, T, 1])."""
    values = torch.cat([logits[0, s:e, 0] for s, e in response_spans(batch)]).float()
    old_values = torch.cat(batch["values"]).to(values)
    returns = torch.cat(batch["returns"]).to(values)
    clipped = old_values + (values - old_values).clamp(-args.value_clip, args.value_clip)
    unclipped_loss, clipped_loss = (values - returns) ** 2, (clipped - returns) ** 2
    loss = sum_of_sample_mean(torch.maximum(unclipped_loss, clipped_loss))
    clipfrac = sum_of_sample_mean((clipped_loss > unclipped_loss).float())
    return loss, {"value_loss": loss.detach(), "value_clipfrac": clipfrac.detach()}


LOSS_FUNCTIONS: dict[str, LossFn] = {
    "sft_loss": sft_loss_function,
    "policy_loss": policy_loss_function,
    "value_loss": value_loss_function,
}


def resolve_loss_function(args: Namespace) -> LossFn:
    if args.loss_type == "custom_loss":
        return load_function(args.custom_loss_function_path)
    return LOSS_FUNCTIONS[args.loss_type]


def compute_loss(args: Namespace, batch: dict, logits: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
    """The registered loss of one micro-batch, unscaled, and its report: the trained-token count and the metrics
    (sums over the micro-batch, which `report_step_metrics` reduces). Everything stays on the device: reading a
    value here would wait for the GPU once per micro-batch and metric."""
    sum_of_sample_mean = make_sum_of_sample_mean(batch, args.calculate_per_token_loss)
    loss, metrics = resolve_loss_function(args)(args, batch, logits, sum_of_sample_mean)
    num_tokens = batch["loss_mask_flat"].sum()
    return loss, {"num_tokens": num_tokens, **{k: torch.as_tensor(v).detach().float() for k, v in metrics.items()}}


def loss_function(
    args: Namespace, batch: dict, num_microbatches: int, step_global_batch_size: int, logits: torch.Tensor
) -> tuple:
    """What Megatron's schedule calls on the last pipeline stage, scaled as the module docstring explains.

    The reported metrics are sums over this micro-batch; the trainer adds them over micro-batches and DP ranks and
    divides by the step's token count (per-token mode) or global batch size (default).
    """
    loss, report = compute_loss(args, batch, logits)
    if args.calculate_per_token_loss:
        return loss, report["num_tokens"].to(device=loss.device, dtype=torch.int), report
    dp_size = parallel_state.get_data_parallel_world_size(with_context_parallel=True)
    return loss * num_microbatches / step_global_batch_size * dp_size, report


def report_step_metrics(args: Namespace, reports: list[dict[str, Any]], step_global_batch_size: int | None,
                        num_samples: int = 0) -> dict[str, float]:
    """Step-level metrics from per-micro-batch reports, reduced over data-parallel ranks in one collective.

    The default denominator is the step's global batch size; with `step_global_batch_size=None` (validation) it is
    the number of samples, `num_samples` on this rank, summed over the data-parallel ranks in the same reduction.
    """
    keys = sorted({k for r in reports for k in r if k != "num_tokens"})
    totals = torch.zeros(len(keys) + 2, dtype=torch.float64, device=device())
    for report in reports:  # device tensors: nothing here waits for the GPU
        row = [report.get(k, 0.0) for k in keys] + [report["num_tokens"], 0.0]
        totals += torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device()) for v in row])
    totals[-1] = num_samples
    group = parallel_state.get_data_parallel_group(with_context_parallel=True, partial_data_parallel=False)
    *values, tokens, samples = reduce_on_device(totals, group).tolist()
    if args.calculate_per_token_loss:
        denominator = max(tokens, 1.0)
    else:
        denominator = step_global_batch_size if step_global_batch_size is not None else max(samples, 1.0)
    out = {k: v / denominator for k, v in zip(keys, values)}
    out["trained_tokens"] = tokens
    return out

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
from itertools import accumulate
from typing import Any, Callable

import torch
from megatron.core import parallel_state

from slime.backends.megatron_utils.log_probs import vocab_parallel_log_probs
from slime.utils.device import device, reduce_on_device
from slime.utils.misc import load_function
from slime.utils.ppo_utils import (
    compute_approx_kl,
    compute_cispo_loss,
    compute_gspo_kl,
    compute_opsm_mask,
    compute_policy_loss,
)

LossFn = Callable[[Namespace, dict, torch.Tensor, Callable], tuple[torch.Tensor, dict[str, torch.Tensor]]]


def response_spans(batch: dict) -> list[tuple[int, int]]:
    """[start, end) in the packed stream of the positions whose logits predict each sample's response tokens."""
    spans, offset = [], 0
    for total, response in zip(batch["total_lengths"], batch["response_lengths"]):
        spans.append((offset + total - response - 1, offset + total - 1))
        offset += total
    return spans


def response_positions(batch: dict) -> torch.Tensor:
    """The positions of every response span (`response_spans`), concatenated: a host tensor."""
    spans = response_spans(batch)
    return torch.cat([torch.arange(s, e) for s, e in spans]) if spans else torch.zeros(0, dtype=torch.long)


def logit_spans(batch: dict) -> list[tuple[int, int]]:
    """Each sample's response span in the rows of the logits a loss receives: `response_spans` when the logits
    cover the packed stream, consecutive ranges when they hold the response positions only (`forward_logits`)."""
    spans = response_spans(batch)
    if not batch.get("logits_at_responses"):
        return spans
    ends = list(accumulate(e - s for s, e in spans))
    return [(end - (e - s), end) for end, (s, e) in zip(ends, spans)]


def get_log_probs_and_entropy(
    args: Namespace, batch: dict, logits: torch.Tensor, with_entropy: bool = False
) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """Per-sample response log-probs (and entropies) in fp32. logits: [1, T, vocab/tp] in the model's dtype, or
    [1, R, vocab/tp] at the response positions only; divided by --rollout-temperature as slime does (also for SFT).
    Only the response positions are computed."""
    spans = logit_spans(batch)
    targets = torch.roll(batch["tokens"][0], shifts=-1)
    if batch.get("logits_at_responses"):
        targets = targets[batch["response_positions"]]
    # flatten, not [0]: a view whose backward is a view, where indexing's backward would zero-fill a
    # tokens-by-vocabulary gradient and copy into it.
    log_probs, entropy = vocab_parallel_log_probs(
        logits.flatten(0, 1), spans, targets, temperature=args.rollout_temperature, with_entropy=with_entropy,
        chunk_size=getattr(args, "log_probs_chunk_size", None),
    )
    lengths = [e - s for s, e in spans]
    return list(log_probs.split(lengths)), (list(entropy.split(lengths)) if entropy is not None else None)


def make_sum_of_sample_mean(batch: dict, calculate_per_token_loss: bool,
                            masks: list[torch.Tensor] | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The micro-batch's reducer (see the module docstring). `masks` replaces the loss masks in the numerator only
    (TIS/rejection masks): the per-rollout denominators stay those of the original masks, as slime keeps them."""
    flat = batch["loss_mask_flat"] if masks is None else torch.cat(masks).to(batch["loss_mask_flat"].device)
    masks = flat.float()
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


def _flat(batch: dict, key: str, like: torch.Tensor) -> torch.Tensor | None:
    """The micro-batch's per-sample tensors under `key` as one flat tensor on `like`'s device and dtype (one copy),
    or None when the rollout data has none."""
    values = batch.get(key)
    return torch.cat(values).to(like) if values else None


def _tis_ratio_metrics(ratio: torch.Tensor, weights: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"tis": ratio.detach(), "tis_clipfrac": (weights != ratio).float().detach(),
            "tis_abs": (ratio - 1).abs().detach()}


def vanilla_tis_function(args: Namespace, *, pg_loss: torch.Tensor, train_log_probs: list[torch.Tensor],
                         rollout_log_probs: list[torch.Tensor], loss_masks: list[torch.Tensor], **kwargs: Any
                         ) -> tuple[torch.Tensor, list[torch.Tensor], dict[str, torch.Tensor]]:
    """--use-tis: weight each token's loss by the train/rollout importance ratio exp(old - rollout), clipped to
    [--tis-clip-low, --tis-clip]. The contract of --custom-tis-function-path: (pg_loss, masks, per-token metrics)."""
    ratio = torch.exp(torch.cat(train_log_probs) - torch.cat(rollout_log_probs))
    weights = ratio.clamp(args.tis_clip_low, args.tis_clip)
    return pg_loss * weights, loss_masks, _tis_ratio_metrics(ratio, weights)


def icepop_function(args: Namespace, *, pg_loss: torch.Tensor, train_log_probs: list[torch.Tensor],
                    rollout_log_probs: list[torch.Tensor], loss_masks: list[torch.Tensor], **kwargs: Any
                    ) -> tuple[torch.Tensor, list[torch.Tensor], dict[str, torch.Tensor]]:
    """IcePop, slime's alternative for --custom-tis-function-path: tokens whose ratio leaves
    [--tis-clip-low, --tis-clip] get weight 0 instead of the bound."""
    ratio = torch.exp(torch.cat(train_log_probs) - torch.cat(rollout_log_probs))
    weights = torch.where((ratio >= args.tis_clip_low) & (ratio <= args.tis_clip), ratio, torch.zeros_like(ratio))
    return pg_loss * weights, loss_masks, _tis_ratio_metrics(ratio, weights)


def policy_loss_function(args: Namespace, batch: dict, logits: torch.Tensor, sum_of_sample_mean: Callable):
    """slime's policy loss: PPO's clipped surrogate (GSPO with sequence-level ratios, CISPO's stop-gradient
    weights), optional OPSM masking and TIS weights, minus --entropy-coef times the entropy, plus
    --kl-loss-coef times KL(policy || reference) with --use-kl-loss.

    Old log-probs: the engines' with --use-rollout-logprobs, else the trainer's (`log_probs`), else (when the trainer
    skipped that forward because the rollout has one optimizer step) the current ones, detached: ratio 1.
    """
    log_probs, entropy = get_log_probs_and_entropy(args, batch, logits, with_entropy=True)
    lengths, masks = batch["response_lengths"], batch["loss_masks"]
    new = torch.cat(log_probs)
    advantages = _flat(batch, "advantages", new)
    assert advantages is not None, "policy_loss: the trainer computes the advantages before training"
    rollout = _flat(batch, "rollout_log_probs", new)
    trainer_old = _flat(batch, "log_probs", new)
    if args.use_rollout_logprobs:
        if rollout is None:
            raise ValueError("--use-rollout-logprobs: the rollout returned no log-probs for its responses")
        old = rollout
    else:
        old = trainer_old if trainer_old is not None else new.detach()
    old_per_sample = list(old.split(lengths))

    if args.advantage_estimator == "gspo":
        ppo_kl = compute_gspo_kl(log_probs, old_per_sample, log_probs, masks).to(new)
    else:
        ppo_kl = old - new
    if args.advantage_estimator == "cispo":
        pg, clipfrac = compute_cispo_loss(ppo_kl, new, advantages, args.eps_clip, args.eps_clip_high)
    else:
        pg, clipfrac = compute_policy_loss(ppo_kl, advantages, args.eps_clip, args.eps_clip_high,
                                           eps_clip_c=args.eps_clip_c)

    metrics: dict[str, torch.Tensor] = {}
    if args.use_opsm:
        keep, metrics["opsm_clipfrac"] = compute_opsm_mask(args, log_probs, old_per_sample,
                                                           list(advantages.split(lengths)), masks)
        pg = pg * keep.to(pg)

    pg_masks = masks
    if args.use_tis or args.get_mismatch_metrics:
        if rollout is None:
            raise ValueError("--use-tis/--get-mismatch-metrics compare with the engines' log-probs, but the rollout "
                             "returned none for its responses")
        train = trainer_old if trainer_old is not None else new.detach()
        tis = load_function(args.custom_tis_function_path) if args.custom_tis_function_path else vanilla_tis_function
        pg, pg_masks, tis_metrics = tis(
            args, pg_loss=pg, train_log_probs=list(train.split(lengths)),
            rollout_log_probs=list(rollout.split(lengths)), loss_masks=masks, total_lengths=batch["total_lengths"],
            response_lengths=lengths,
        )
        # Mismatch metrics count every trained token, including those the TIS function rejects below.
        metrics["ois"] = sum_of_sample_mean(torch.exp(-ppo_kl.detach()))
        metrics.update({key: sum_of_sample_mean(value) for key, value in tis_metrics.items()})
        sum_of_sample_mean = make_sum_of_sample_mean(batch, args.calculate_per_token_loss, masks=pg_masks)

    if args.custom_pg_loss_reducer_function_path:
        pg_reducer = load_function(args.custom_pg_loss_reducer_function_path)(
            batch["total_lengths"], lengths, pg_masks, args.calculate_per_token_loss)
    else:
        pg_reducer = sum_of_sample_mean
    pg_loss = pg_reducer(pg)
    entropy_loss = sum_of_sample_mean(torch.cat(entropy))
    loss = pg_loss - args.entropy_coef * entropy_loss
    if args.use_kl_loss:
        # --use-unbiased-kl: samples come from the old policy, so the estimate is reweighted by the (differentiable)
        # current/old ratio.
        importance_ratio = torch.exp(new - old) if args.use_unbiased_kl else None
        kl = compute_approx_kl(new, _flat(batch, "ref_log_probs", new), args.kl_loss_type, importance_ratio)
        metrics["kl_loss"] = sum_of_sample_mean(kl)
        loss = loss + args.kl_loss_coef * metrics["kl_loss"]
    if new.numel() == 0:
        loss = loss + 0 * logits.sum()  # keep the graph connected so every rank runs backward
    if rollout is not None:
        compared = new.detach() if args.use_rollout_logprobs else old
        metrics["train_rollout_logprob_abs_diff"] = sum_of_sample_mean((compared - rollout).abs())
    metrics.update(loss=loss, pg_loss=pg_loss, entropy_loss=entropy_loss, pg_clipfrac=sum_of_sample_mean(clipfrac),
                   ppo_kl=sum_of_sample_mean(ppo_kl.detach()))
    return loss, {key: torch.as_tensor(value).detach() for key, value in metrics.items()}


def value_loss_function(args: Namespace, batch: dict, logits: torch.Tensor, sum_of_sample_mean: Callable):
    """Clipped value loss of a critic whose output layer has one unit ([1, T, 1])."""
    values = torch.cat([logits[0, s:e, 0] for s, e in logit_spans(batch)]).float()
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

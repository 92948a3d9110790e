"""Advantages and returns of one trainer rank's shard, computed before training on it (slime's
`compute_advantages_and_returns`, run on every data-parallel rank on its own samples).

The shard holds per-sample, response-long CPU tensors (`loss_masks`, and from the trainer `log_probs`,
`ref_log_probs`, `values`) and one reward per sample (`rewards`: already group-normalised by the rollout manager
for grpo, gspo, cispo and reinforce_plus_plus_baseline). This adds `kl` (the per-token KL used for reward shaping,
which custom advantage functions may read), `advantages` and `returns` (fp32, response-long, one per sample).
"""

from __future__ import annotations

from argparse import Namespace
from typing import Any

import torch
from megatron.core import parallel_state

from slime.utils.misc import load_function
from slime.utils.ppo_utils import (
    compute_approx_kl,
    get_advantages_and_returns_batch,
    get_grpo_returns,
    get_reinforce_plus_plus_baseline_advantages,
    get_reinforce_plus_plus_returns,
    masked_whiten,
)

GRPO_LIKE = ("grpo", "gspo", "cispo")


def _reward_shaping_kl(args: Namespace, shard: dict[str, Any]) -> list[torch.Tensor]:
    """Per-token KL(actor || reference) with --kl-loss-type's estimator when --kl-coef shapes the reward (the
    engines' log-probs stand for the actor's with --use-rollout-logprobs); zeros otherwise."""
    if args.kl_coef == 0:
        return [torch.zeros(n, dtype=torch.float32) for n in shard["response_lengths"]]
    log_probs = shard.get("rollout_log_probs") if args.use_rollout_logprobs else shard.get("log_probs")
    assert log_probs is not None and shard.get("ref_log_probs") is not None, \
        "--kl-coef != 0: the trainer computes the actor's and the reference's log-probs before the advantages"
    return [compute_approx_kl(lp, ref, args.kl_loss_type) for lp, ref in zip(log_probs, shard["ref_log_probs"])]


def _ppo_advantages(args: Namespace, shard: dict[str, Any], rewards: torch.Tensor,
                    kl: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """GAE with the critic's values: token rewards -kl_coef * kl, plus the sample's reward on its last token
    (slime's placement: the last response token, trained or not)."""
    assert shard.get("values") is not None, "--advantage-estimator ppo: the trainer adds the critic's values first"
    token_rewards = []
    for reward, k in zip(rewards, kl):
        row = -args.kl_coef * k.float()
        if row.numel():
            row[-1] += reward
        token_rewards.append(row)
    return get_advantages_and_returns_batch(shard["total_lengths"], shard["response_lengths"], shard["values"],
                                            token_rewards, args.gamma, args.lambd)


def _estimate(args: Namespace, shard: dict[str, Any],
              kl: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    if args.custom_advantage_function_path:
        load_function(args.custom_advantage_function_path)(args, shard)
        missing = [key for key in ("advantages", "returns") if shard.get(key) is None]
        if missing:
            raise ValueError(f"--custom-advantage-function-path {args.custom_advantage_function_path} must set "
                             f"rollout_data[{missing[0]!r}] (one response-long tensor per sample)")
        return shard["advantages"], shard["returns"]
    rewards = torch.as_tensor(shard["rewards"], dtype=torch.float32)
    estimator = args.advantage_estimator
    if estimator in GRPO_LIKE:
        returns = get_grpo_returns(rewards, kl)
        return list(returns), returns
    if estimator == "ppo":
        return _ppo_advantages(args, shard, rewards, kl)
    if estimator == "reinforce_plus_plus":
        returns = get_reinforce_plus_plus_returns(rewards, kl, shard["loss_masks"], shard["response_lengths"],
                                                  shard["total_lengths"], args.kl_coef, args.gamma)
        return list(returns), returns
    if estimator == "reinforce_plus_plus_baseline":
        advantages = get_reinforce_plus_plus_baseline_advantages(rewards, kl, shard["loss_masks"], args.kl_coef)
        return advantages, list(advantages)
    raise ValueError(f"unknown --advantage-estimator {estimator!r} (grpo, gspo, cispo, reinforce_plus_plus, "
                     "reinforce_plus_plus_baseline, ppo)")


def _response_long_fp32(name: str, values: list[Any], response_lengths: list[int]) -> list[torch.Tensor]:
    out = [torch.as_tensor(v, dtype=torch.float32).detach().cpu().reshape(-1) for v in values]
    if len(out) != len(response_lengths) or any(t.numel() != n for t, n in zip(out, response_lengths)):
        raise ValueError(f"{name}: expected {len(response_lengths)} response-long tensors of lengths "
                         f"{list(response_lengths)}, got lengths {[t.numel() for t in out]}")
    return out


def _whiten_over_data_parallel(advantages: list[torch.Tensor], loss_masks: list[torch.Tensor]) -> list[torch.Tensor]:
    """--normalize-advantages: every rank whitens its own advantages with the mean and variance of the trained
    tokens of all data-parallel ranks (one collective; every rank calls it, even one whose tokens are all masked)."""
    if not advantages:
        flat, masks = torch.zeros(0), torch.zeros(0)
    else:
        flat, masks = torch.cat(advantages), torch.cat([m.float() for m in loss_masks])
    group = parallel_state.get_data_parallel_group(with_context_parallel=True)
    whitened = masked_whiten(flat, masks, shift_mean=True, group=group)
    return list(whitened.split([a.numel() for a in advantages]))


def compute_advantages_and_returns(args: Namespace, shard: dict[str, Any]) -> None:
    """Fill `shard["kl"]`, `shard["advantages"]` and `shard["returns"]` for --advantage-estimator (or
    --custom-advantage-function-path, called as fn(args, rollout_data) to set both in place), then whiten the
    advantages over data-parallel ranks with --normalize-advantages."""
    kl = _reward_shaping_kl(args, shard)
    shard["kl"] = kl
    advantages, returns = _estimate(args, shard, kl)
    lengths = shard["response_lengths"]
    source = (f"--custom-advantage-function-path {args.custom_advantage_function_path}"
              if args.custom_advantage_function_path else f"--advantage-estimator {args.advantage_estimator}")
    advantages = _response_long_fp32(f"{source}: advantages", advantages, lengths)
    returns = _response_long_fp32(f"{source}: returns", returns, lengths)
    if args.normalize_advantages:
        advantages = _whiten_over_data_parallel(advantages, shard["loss_masks"])
    shard["advantages"], shard["returns"] = advantages, returns

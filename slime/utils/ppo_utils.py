"""RL math shared by the trainer and by plugins: KL estimators, the clipped policy loss, returns and advantages.

Names and signatures follow slime's `slime.utils.ppo_utils`, which custom losses and advantage functions import.
Every function here is plain torch on per-sample (or flat per-token) tensors: no process groups, no Megatron.
"""

from __future__ import annotations

import torch


def compute_approx_kl(log_probs: torch.Tensor, log_probs_base: torch.Tensor, kl_loss_type: str,
                      importance_ratio: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token estimate of KL(policy || base) from sampled tokens' log-probs.

    k1: r; k2: r^2 / 2; k3 and low_var_kl: exp(-r) - 1 + r (non-negative, unbiased), with r = log p - log p_base;
    low_var_kl is clamped to [-10, 10]. `importance_ratio` (--use-unbiased-kl) reweights samples drawn from an
    older policy.
    """
    log_ratio = log_probs.float() - log_probs_base.float()
    if kl_loss_type == "k1":
        kl = log_ratio
    elif kl_loss_type == "k2":
        kl = log_ratio**2 / 2.0
    elif kl_loss_type in ("k3", "low_var_kl"):
        kl = torch.exp(-log_ratio) - 1 + log_ratio
    else:
        raise ValueError(f"unknown --kl-loss-type {kl_loss_type!r} (k1, k2, k3, low_var_kl)")
    if importance_ratio is not None:
        kl = kl * importance_ratio
    if kl_loss_type == "low_var_kl":
        kl = kl.clamp(-10, 10)
    return kl


def compute_policy_loss(ppo_kl: torch.Tensor, advantages: torch.Tensor, eps_clip: float, eps_clip_high: float,
                        eps_clip_c: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate per token, with `ppo_kl = old log p - new log p` (so the ratio is exp(-ppo_kl)).

    Returns (losses, clipfrac): the loss is max(-ratio A, -clip(ratio, 1 - eps, 1 + eps_high) A); with dual clip
    (eps_clip_c > 1) a negative-advantage token's loss is capped at -eps_clip_c A.
    """
    ratio = torch.exp(-ppo_kl)
    unclipped = -ratio * advantages
    clipped = -ratio.clamp(1 - eps_clip, 1 + eps_clip_high) * advantages
    losses = torch.maximum(unclipped, clipped)
    clipfrac = (clipped > unclipped).float()
    if eps_clip_c is not None:
        if eps_clip_c <= 1.0:
            raise ValueError(f"--eps-clip-c must be > 1 (dual clip), got {eps_clip_c}")
        capped = torch.minimum(-eps_clip_c * advantages, losses)
        losses = torch.where(advantages < 0, capped, losses)
    return losses, clipfrac


def compute_gspo_kl(full_log_probs: list[torch.Tensor], full_old_log_probs: list[torch.Tensor],
                    loss_masks: list[torch.Tensor]) -> list[torch.Tensor]:
    """GSPO's sequence-level ratio: each sample's masked mean of (old - new), broadcast over its tokens."""
    out = []
    for new, old, mask in zip(full_log_probs, full_old_log_probs, loss_masks):
        mask = mask.to(new.dtype)
        mean = ((old - new) * mask).sum() / mask.sum().clamp(min=1)
        out.append(mean.expand_as(new))
    return out


def get_grpo_returns(rewards: torch.Tensor | list[float], kl: list[torch.Tensor]) -> list[torch.Tensor]:
    """GRPO/GSPO/CISPO: each sample's (already group-normalised) reward on every one of its tokens."""
    return [torch.full_like(k, float(r), dtype=torch.float32) for r, k in zip(rewards, kl)]


def _discounted_returns(token_rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    returns = torch.zeros_like(token_rewards)
    running = token_rewards.new_zeros(())
    for t in range(token_rewards.shape[0] - 1, -1, -1):
        running = token_rewards[t] + gamma * running
        returns[t] = running
    return returns


def get_reinforce_plus_plus_returns(rewards: torch.Tensor | list[float], kl: list[torch.Tensor],
                                    loss_masks: list[torch.Tensor], response_lengths: list[int],
                                    total_lengths: list[int], kl_coef: float, gamma: float) -> list[torch.Tensor]:
    """REINFORCE++: token rewards -kl_coef * kl on trained tokens, the sample's reward at its last trained token,
    discounted back with gamma. (`total_lengths` is part of slime's signature for context-parallel slicing.)"""
    out = []
    for reward, k, mask, length in zip(rewards, kl, loss_masks, response_lengths):
        mask = mask.to(torch.float32)
        assert k.shape[0] == length == mask.shape[0], (k.shape, length, mask.shape)
        token_rewards = -kl_coef * k.float() * mask
        trained = torch.nonzero(mask, as_tuple=False)
        if trained.numel():
            token_rewards[int(trained[-1])] += float(reward)
        out.append(_discounted_returns(token_rewards, gamma))
    return out


def get_reinforce_plus_plus_baseline_advantages(rewards: torch.Tensor | list[float], kl: list[torch.Tensor],
                                                loss_masks: list[torch.Tensor],
                                                kl_coef: float) -> list[torch.Tensor]:
    """REINFORCE++ with baseline: the group-mean-centred reward on every token, minus kl_coef * kl."""
    return [float(r) - kl_coef * k.float() for r, k in zip(rewards, kl)]


def get_advantages_and_returns(total_len: int, response_len: int, values: torch.Tensor, rewards: torch.Tensor,
                               gamma: float, lambd: float) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over one response: `values` and `rewards` are response-long; returns (advantages, returns = A + V)."""
    values, rewards = values.float(), rewards.float()
    advantages = torch.zeros_like(rewards)
    last = rewards.new_zeros(())
    for t in range(response_len - 1, -1, -1):
        next_value = values[t + 1] if t + 1 < response_len else rewards.new_zeros(())
        delta = rewards[t] + gamma * next_value - values[t]
        last = delta + gamma * lambd * last
        advantages[t] = last
    return advantages, advantages + values


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
                  epsilon: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked entries (unbiased variance); without shift_mean the mean is added back.
    The trainer calls it with statistics reduced over data-parallel ranks; alone it whitens locally."""
    mask = mask.to(values.dtype)
    count = mask.sum()
    mean = (values * mask).sum() / count
    variance = (((values - mean) ** 2) * mask).sum() / (count - 1).clamp(min=1)
    whitened = (values - mean) * torch.rsqrt(variance + epsilon)
    return whitened if shift_mean else whitened + mean


def normalize_group_rewards(rewards: list[float], group_size: int, std_normalization: bool) -> list[float]:
    """GRPO's reward normalisation: subtract each group's mean (and divide by its unbiased std + 1e-6).

    Groups are consecutive runs of `group_size` rewards; a count that is not a multiple is one group, as slime does
    when the batch is not made of whole groups.
    """
    tensor = torch.tensor(rewards, dtype=torch.float32)
    if tensor.numel() % group_size:
        tensor = tensor.view(1, -1)
    else:
        tensor = tensor.view(-1, group_size)
    centred = tensor - tensor.mean(dim=-1, keepdim=True)
    if std_normalization:
        std = tensor.std(dim=-1, keepdim=True) if tensor.shape[-1] > 1 else torch.zeros_like(centred[:, :1])
        centred = centred / (std + 1e-6)
    return centred.flatten().tolist()

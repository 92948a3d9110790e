"""RL math shared by the trainer and by plugins: KL estimators, the policy losses, returns and advantages.

Names and signatures follow slime's `slime.utils.ppo_utils`, which custom losses and advantage functions import.
Every function here is plain torch on per-sample (or flat per-token) tensors; the only collective is the optional
data-parallel reduction of `masked_whiten`, on a group the caller passes.
"""

from __future__ import annotations

from argparse import Namespace

import torch
import torch.distributed as dist

from slime.utils.device import reduce_on_device


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


def compute_cispo_loss(ppo_kl: torch.Tensor, log_probs: torch.Tensor, advantages: torch.Tensor, eps_clip: float,
                       eps_clip_high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """CISPO (MiniMax-M1): -sg(clip(ratio, 1 - eps, 1 + eps_high)) A log p.

    The clipped ratio is a constant weight, so a clipped token still sends its REINFORCE gradient through log p
    (PPO's clip would zero it). Returns (losses, clipfrac) with clipfrac marking tokens whose ratio was clipped.
    """
    ratio = torch.exp(-ppo_kl)
    weight = ratio.clamp(1 - eps_clip, 1 + eps_clip_high)
    return -weight.detach() * advantages * log_probs, (weight != ratio).float()


def _sequence_means(values: list[torch.Tensor], loss_masks: list[torch.Tensor]) -> list[torch.Tensor]:
    return [(v * m).sum() / m.sum().clamp(min=1) for v, m in zip(values, loss_masks)]


def compute_gspo_kl(full_log_probs: list[torch.Tensor], full_old_log_probs: list[torch.Tensor],
                    local_log_probs: list[torch.Tensor], loss_masks: list[torch.Tensor]) -> torch.Tensor:
    """GSPO's sequence-level ratio: each sample's masked mean of (old - new) over its full response, broadcast over
    the tokens this rank holds (`local_log_probs`: the same as the full ones without context parallelism)."""
    differences = [old - new for new, old in zip(full_log_probs, full_old_log_probs)]
    means = _sequence_means(differences, loss_masks)
    if not means:
        return torch.zeros(0)
    return torch.cat([mean.expand_as(local) for mean, local in zip(means, local_log_probs)])


def compute_opsm_mask(args: Namespace, full_log_probs: list[torch.Tensor], full_old_log_probs: list[torch.Tensor],
                      advantages: list[torch.Tensor], loss_masks: list[torch.Tensor]
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Off-policy sequence masking (--use-opsm): drop the tokens with a negative advantage of every sequence whose
    mean (old - new) log-prob exceeds --opsm-delta, i.e. that the policy has already moved away from.

    Returns (keep mask, flat over the samples; clipfrac): clipfrac sums, over sequences, the masked tokens over the
    sequence's trained-token count, which the step report then divides by its denominator as slime does.
    """
    differences = [(old - new).detach() for new, old in zip(full_log_probs, full_old_log_probs)]
    sequence_kl = _sequence_means(differences, loss_masks)
    dropped = [((a < 0) & (kl > args.opsm_delta)).float() for kl, a in zip(sequence_kl, advantages)]
    clipfrac = sum((d.sum() / m.sum().clamp(min=1) for d, m in zip(dropped, loss_masks)), torch.zeros(()))
    return (1 - torch.cat(dropped) if dropped else torch.zeros(0)), clipfrac


def get_grpo_returns(rewards: torch.Tensor | list[float], kl: list[torch.Tensor]) -> list[torch.Tensor]:
    """GRPO/GSPO/CISPO: each sample's (already group-normalised) reward on every one of its tokens."""
    return [torch.full_like(k, float(r), dtype=torch.float32) for r, k in zip(rewards, kl)]


def _pad_rows(rows: list[torch.Tensor]) -> torch.Tensor:
    """[B, max length] with zeros after each row's end: a zero reward (or value) past the end of a response is what
    makes its last real token terminal in the backward scans below."""
    out = torch.zeros(len(rows), max((r.numel() for r in rows), default=0), dtype=torch.float32,
                      device=rows[0].device if rows else None)
    for i, row in enumerate(rows):
        out[i, : row.numel()] = row
    return out


def chunked_discounted_returns(rewards: torch.Tensor, discount: float, chunk_size: int = 128) -> torch.Tensor:
    """G[t] = sum_{k >= t} discount^(k - t) rewards[k] along the last dim of [B, T], the same as the backward loop
    G[t] = r[t] + discount G[t + 1] but in T / chunk_size sequential steps: within a chunk the sum is a matrix
    product with the discount powers, and each chunk adds the discounted first return of the chunk after it."""
    batch, length = rewards.shape
    rewards = rewards.float()
    chunks = -(-length // chunk_size) if length else 0
    padded = torch.nn.functional.pad(rewards, (0, chunks * chunk_size - length)).view(batch, chunks, chunk_size)
    index = torch.arange(chunk_size, device=rewards.device)
    offset = index.unsqueeze(1) - index.unsqueeze(0)  # [j, i] = j - i: how far token j lies after token i
    # pow(0, 0) = 1 keeps each token's own reward when the discount is 0.
    powers = torch.where(offset >= 0, torch.pow(torch.tensor(float(discount)), offset.clamp(min=0).float()), 0.0)
    local = padded @ powers.to(rewards.device)
    carry_weight = torch.pow(torch.tensor(float(discount)), (chunk_size - index).float()).to(rewards.device)
    out = torch.empty_like(local)
    carry = rewards.new_zeros(batch)
    for c in range(chunks - 1, -1, -1):
        out[:, c] = local[:, c] + carry.unsqueeze(1) * carry_weight
        carry = out[:, c, 0]
    return out.reshape(batch, chunks * chunk_size)[:, :length]


def chunked_gae(rewards: torch.Tensor, values: torch.Tensor, gamma: float, lambd: float,
                chunk_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE on [B, T] rows that end in zeros past each response: A[t] = sum_k (gamma lambd)^k delta[t + k] with
    delta[t] = r[t] + gamma V[t + 1] - V[t] (V = 0 after the last token). Returns (advantages, returns = A + V)."""
    values = values.float()
    next_values = torch.nn.functional.pad(values[:, 1:], (0, 1))
    deltas = rewards.float() + gamma * next_values - values
    advantages = chunked_discounted_returns(deltas, gamma * lambd, chunk_size)
    return advantages, advantages + values


def get_advantages_and_returns_batch(total_lengths: list[int], response_lengths: list[int],
                                     values_list: list[torch.Tensor], rewards_list: list[torch.Tensor],
                                     gamma: float, lambd: float) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """GAE of every response at once (PPO): per-sample response-long values and token rewards in, per-sample
    (advantages, returns) out. (`total_lengths` is part of slime's signature for context-parallel slicing.)"""
    if not response_lengths:
        return [], []
    with torch.no_grad():
        advantages, returns = chunked_gae(_pad_rows(rewards_list), _pad_rows(values_list), gamma, lambd)
    return ([a[:n] for a, n in zip(advantages, response_lengths)], [r[:n] for r, n in zip(returns, response_lengths)])


def get_advantages_and_returns(total_len: int, response_len: int, values: torch.Tensor, rewards: torch.Tensor,
                               gamma: float, lambd: float) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over one response (slime's earlier per-sample form): returns (advantages, returns = A + V)."""
    (advantages,), (returns,) = get_advantages_and_returns_batch([total_len], [response_len], [values], [rewards],
                                                                 gamma, lambd)
    return advantages, returns


def get_reinforce_plus_plus_returns(rewards: torch.Tensor | list[float], kl: list[torch.Tensor],
                                    loss_masks: list[torch.Tensor], response_lengths: list[int],
                                    total_lengths: list[int], kl_coef: float, gamma: float) -> list[torch.Tensor]:
    """REINFORCE++: token rewards -kl_coef * kl on trained tokens, the sample's reward at its last trained token,
    discounted back with gamma. A sample with no trained token (removed) gets no reward rather than an error.
    (`total_lengths` is part of slime's signature for context-parallel slicing.)"""
    token_rewards = []
    for reward, k, mask, length in zip(rewards, kl, loss_masks, response_lengths):
        mask = mask.to(torch.float32)
        assert k.shape[0] == length == mask.shape[0], (k.shape, length, mask.shape)
        row = -kl_coef * k.float() * mask
        trained = torch.nonzero(mask, as_tuple=False)
        if trained.numel():
            row[int(trained[-1])] += float(reward)
        token_rewards.append(row)
    if not token_rewards:
        return []
    returns = chunked_discounted_returns(_pad_rows(token_rewards), gamma)
    return [r[:n] for r, n in zip(returns, response_lengths)]


def get_reinforce_plus_plus_baseline_advantages(rewards: torch.Tensor | list[float], kl: list[torch.Tensor],
                                                loss_masks: list[torch.Tensor],
                                                kl_coef: float) -> list[torch.Tensor]:
    """REINFORCE++ with baseline: the group-mean-centred reward on every token, minus kl_coef * kl."""
    return [float(r) - kl_coef * k.float() for r, k in zip(rewards, kl)]


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, epsilon: float = 1e-8,
                  group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """(x - mean) / std over the masked entries (unbiased variance); without shift_mean the mean is added back.

    With `group`, the mean and variance are those of the masked entries of every rank of the group together (one
    all-reduce of three sums, in float64 so that the one-pass variance does not cancel), and each rank whitens its
    own entries with them. Nothing masked anywhere leaves the values as they are: no token is trained on them.
    """
    mask = mask.to(torch.float64)
    wide = values.to(torch.float64)
    sums = torch.stack([(wide * mask).sum(), (wide * wide * mask).sum(), mask.sum()])
    total, total_sq, count = reduce_on_device(sums, group).tolist()
    if count == 0:
        return values
    mean = total / count
    variance = max(total_sq / count - mean**2, 0.0) * (count / (count - 1) if count > 1 else 1.0)
    whitened = (wide - mean) / (variance + epsilon) ** 0.5
    return (whitened if shift_mean else whitened + mean).to(values.dtype)


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

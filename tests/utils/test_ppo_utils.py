"""RL math against hand-computed values."""

from __future__ import annotations

import math
from argparse import Namespace

import pytest
import torch

from slime.utils.ppo_utils import (
    chunked_discounted_returns,
    compute_approx_kl,
    compute_cispo_loss,
    compute_gspo_kl,
    compute_opsm_mask,
    compute_policy_loss,
    get_advantages_and_returns,
    get_advantages_and_returns_batch,
    get_grpo_returns,
    get_reinforce_plus_plus_baseline_advantages,
    get_reinforce_plus_plus_returns,
    masked_whiten,
    normalize_group_rewards,
)


def test_kl_estimators():
    new, base = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    r = new - base  # [0.5, -1.0]
    assert torch.allclose(compute_approx_kl(new, base, "k1"), r)
    assert torch.allclose(compute_approx_kl(new, base, "k2"), r**2 / 2)
    k3 = torch.exp(-r) - 1 + r
    assert torch.allclose(compute_approx_kl(new, base, "k3"), k3)
    assert (k3 >= 0).all()
    huge = compute_approx_kl(torch.tensor([-30.0]), torch.tensor([0.0]), "low_var_kl")
    assert huge.item() == 10.0  # clamped, while k3 would be e^30
    weighted = compute_approx_kl(new, base, "k1", importance_ratio=torch.tensor([2.0, 0.5]))
    assert torch.allclose(weighted, r * torch.tensor([2.0, 0.5]))
    with pytest.raises(ValueError, match="unknown --kl-loss-type 'k9'"):
        compute_approx_kl(new, base, "k9")


def test_policy_loss_clips_and_dual_clips():
    # ratios 2.0 and 0.5 (ppo_kl = old - new = -log ratio)
    ppo_kl = -torch.log(torch.tensor([2.0, 0.5, 2.0]))
    advantages = torch.tensor([1.0, 1.0, -1.0])
    losses, clipfrac = compute_policy_loss(ppo_kl, advantages, eps_clip=0.2, eps_clip_high=0.28)
    # A>0, ratio 2: max(-2, -1.28) = -1.28 (clipped); A>0, ratio .5: max(-.5, -.8) = -.5; A<0, ratio 2: max(2, 1.28)=2
    assert torch.allclose(losses, torch.tensor([-1.28, -0.5, 2.0]))
    assert clipfrac.tolist() == [1.0, 0.0, 0.0]
    dual, _ = compute_policy_loss(ppo_kl, advantages, eps_clip=0.2, eps_clip_high=0.28, eps_clip_c=1.5)
    assert torch.allclose(dual, torch.tensor([-1.28, -0.5, 1.5]))  # the A<0 token is capped at -c*A = 1.5
    with pytest.raises(ValueError, match="--eps-clip-c must be > 1"):
        compute_policy_loss(ppo_kl, advantages, 0.2, 0.2, eps_clip_c=0.9)


def test_clip_boundaries():
    eps, eps_high = 0.2, 0.28
    # Exactly at a bound the clipped and unclipped losses are equal: not counted as clipped; just past it, clipped.
    ratios = torch.tensor([1 + eps_high, 1 + eps_high + 1e-3, 1 - eps, 1 - eps - 1e-3])
    advantages = torch.tensor([1.0, 1.0, -1.0, -1.0])
    losses, clipfrac = compute_policy_loss(-torch.log(ratios), advantages, eps, eps_high)
    assert clipfrac.tolist() == [0.0, 1.0, 0.0, 1.0]
    assert torch.allclose(losses, torch.tensor([-1.28, -1.28, 0.8, 0.8]), atol=1e-6)
    # The clip is one-sided per sign of A: a ratio below 1 - eps with A > 0 (or above 1 + eps_high with A < 0) is
    # not clipped, since the pessimistic bound is the unclipped term.
    losses, clipfrac = compute_policy_loss(-torch.log(torch.tensor([0.5, 1.5])), torch.tensor([1.0, -1.0]), eps,
                                           eps_high)
    assert torch.allclose(losses, torch.tensor([-0.5, 1.5])) and clipfrac.tolist() == [0.0, 0.0]


def test_dual_clip_boundary_and_gradient():
    c = 3.0
    ratios = torch.tensor([2.0, 3.0, 5.0, 5.0], requires_grad=True)
    advantages = torch.tensor([-1.0, -1.0, -1.0, 1.0])
    losses, _ = compute_policy_loss(-torch.log(ratios), advantages, 0.2, 0.2, eps_clip_c=c)
    # A < 0: max(-r A, -clip(r) A) = r until it reaches c; then capped at -c A = 3 (flat: no gradient).
    # A > 0, r = 5: the ordinary clip at 1.2 applies, dual clip does not.
    assert torch.allclose(losses, torch.tensor([2.0, 3.0, 3.0, -1.2]))
    losses.sum().backward()
    assert ratios.grad[[0, 2, 3]].tolist() == [1.0, 0.0, 0.0]  # (at the tie r = c the two branches share it)


def test_cispo_keeps_the_gradient_of_clipped_tokens():
    log_probs = torch.tensor([-1.0, -2.0, -0.5], requires_grad=True)
    old = torch.tensor([-1.0, -2.5, -0.5 + math.log(2.0)])  # ratios 1, e^0.5 = 1.65, 0.5
    advantages = torch.tensor([1.0, 2.0, -1.0])
    ppo_kl = old - log_probs
    losses, clipfrac = compute_cispo_loss(ppo_kl, log_probs, advantages, eps_clip=0.2, eps_clip_high=0.28)
    weights = torch.tensor([1.0, 1.28, 0.8])
    assert torch.allclose(losses, -weights * advantages * log_probs.detach())
    assert clipfrac.tolist() == [0.0, 1.0, 1.0]
    losses.sum().backward()
    # d/d logp of -sg(w) A logp = -w A: the ratio's own dependence on logp is stopped.
    assert torch.allclose(log_probs.grad, -weights * advantages)


def test_gspo_kl_is_the_masked_sequence_mean():
    new = [torch.tensor([-1.0, -2.0, -3.0]), torch.tensor([-1.0])]
    old = [torch.tensor([-1.0, -1.0, -1.0]), torch.tensor([-3.0])]
    out = compute_gspo_kl(new, old, new, [torch.tensor([1, 1, 0]), torch.tensor([1])])
    # (0 + 1) / 2 on each token of the first sample (the masked token does not count); -2 on the second.
    assert torch.allclose(out, torch.tensor([0.5, 0.5, 0.5, -2.0]))


def test_opsm_masks_negative_advantage_tokens_of_sequences_that_drifted():
    args = Namespace(opsm_delta=0.1)
    new = [torch.tensor([-1.0, -1.0]), torch.tensor([-1.0, -1.0]), torch.tensor([-1.0, -1.0, -1.0])]
    old = [torch.tensor([-0.5, -0.5]), torch.tensor([-0.5, -0.5]), torch.tensor([-1.0, -1.0, -0.9])]
    advantages = [torch.tensor([-1.0, -1.0]), torch.tensor([1.0, 1.0]), torch.tensor([-1.0, -1.0, -1.0])]
    masks = [torch.tensor([1, 1]), torch.tensor([1, 1]), torch.tensor([1, 1, 1])]
    keep, clipfrac = compute_opsm_mask(args, new, old, advantages, masks)
    # Sequence KLs 0.5, 0.5, 0.033: only the first (negative advantage, KL > delta) is dropped.
    assert keep.tolist() == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert clipfrac.item() == 1.0


def test_grpo_and_baseline_advantages():
    kl = [torch.zeros(2), torch.tensor([0.5, 0.0, 1.0])]
    returns = get_grpo_returns([1.5, -0.5], kl)
    assert [r.tolist() for r in returns] == [[1.5, 1.5], [-0.5, -0.5, -0.5]]
    baseline = get_reinforce_plus_plus_baseline_advantages([1.0, 2.0], kl, [torch.ones(2), torch.ones(3)], 0.1)
    assert torch.allclose(baseline[1], torch.tensor([1.95, 2.0, 1.9]))


def test_reinforce_plus_plus_returns():
    kl = [torch.tensor([0.1, 0.2, 0.3, 0.4])]
    mask = [torch.tensor([1, 1, 1, 0])]  # the reward lands on the last trained token (index 2)
    out = get_reinforce_plus_plus_returns([1.0], kl, mask, [4], [10], kl_coef=0.5, gamma=0.9)[0]
    token_rewards = [-0.05, -0.1, -0.15 + 1.0, 0.0]
    expected, running = [], 0.0
    for r in reversed(token_rewards):
        running = r + 0.9 * running
        expected.append(running)
    assert torch.allclose(out, torch.tensor(expected[::-1]))


def hand_discounted(rewards: list[float], discount: float) -> list[float]:
    out, running = [], 0.0
    for r in reversed(rewards):
        running = r + discount * running
        out.append(running)
    return out[::-1]


@pytest.mark.parametrize("discount", [0.0, 0.5, 0.97, 1.0])
def test_chunked_discounted_returns_equal_the_backward_loop(discount):
    generator = torch.Generator().manual_seed(1)
    rewards = torch.randn(3, 300, generator=generator)  # longer than two chunks of 128
    out = chunked_discounted_returns(rewards, discount)
    for row, got in zip(rewards, out):
        assert torch.allclose(got, torch.tensor(hand_discounted(row.tolist(), discount)), atol=2e-5)


def test_gae_matches_the_recursion_and_lambda_one_closed_form():
    values = torch.tensor([0.5, 0.2, -0.1])
    rewards = torch.tensor([0.0, 0.0, 1.0])
    adv, ret = get_advantages_and_returns(10, 3, values, rewards, gamma=1.0, lambd=1.0)
    # gamma = lambda = 1: A_t = (sum of rewards from t) - V_t
    assert torch.allclose(adv, torch.tensor([0.5, 0.8, 1.1]))
    assert torch.allclose(ret, torch.ones(3))
    adv, _ = get_advantages_and_returns(10, 3, values, rewards, gamma=0.9, lambd=0.5)
    d2 = 1.0 - (-0.1)
    d1 = 0.0 + 0.9 * (-0.1) - 0.2
    d0 = 0.0 + 0.9 * 0.2 - 0.5
    a2 = d2
    a1 = d1 + 0.45 * a2
    a0 = d0 + 0.45 * a1
    assert torch.allclose(adv, torch.tensor([a0, a1, a2]))


def test_batched_gae_of_unequal_lengths_equals_each_response_alone():
    generator = torch.Generator().manual_seed(2)
    lengths = [5, 200, 1]
    values = [torch.randn(n, generator=generator) for n in lengths]
    rewards = [torch.randn(n, generator=generator) for n in lengths]
    gamma, lambd = 0.99, 0.95
    advantages, returns = get_advantages_and_returns_batch([n + 3 for n in lengths], lengths, values, rewards,
                                                           gamma, lambd)
    for v, r, a, g in zip(values, rewards, advantages, returns):
        v, r = v.tolist(), r.tolist()
        deltas = [r[t] + gamma * (v[t + 1] if t + 1 < len(v) else 0.0) - v[t] for t in range(len(v))]
        expected = hand_discounted(deltas, gamma * lambd)  # padding past the shorter rows must not leak in
        assert torch.allclose(a, torch.tensor(expected), atol=1e-5)
        assert torch.allclose(g, a + torch.tensor(v))


def test_masked_whiten():
    values = torch.tensor([1.0, 2.0, 3.0, 100.0])
    mask = torch.tensor([1, 1, 1, 0])
    out = masked_whiten(values, mask)
    # mean 2, unbiased variance 1 over the three kept entries; the masked entry is shifted and scaled alike.
    assert torch.allclose(out, torch.tensor([-1.0, 0.0, 1.0, 98.0]), atol=1e-6)
    unshifted = masked_whiten(values, mask, shift_mean=False)
    assert torch.allclose(unshifted, out + 2.0, atol=1e-6)
    nothing_trained = masked_whiten(values, torch.zeros(4))
    assert torch.equal(nothing_trained, values)


def test_group_reward_normalisation():
    out = normalize_group_rewards([1.0, 0.0, 1.0, 1.0, 0.0, 0.0], group_size=3, std_normalization=False)
    assert out == pytest.approx([1 / 3, -2 / 3, 1 / 3, 2 / 3, -1 / 3, -1 / 3])
    std = normalize_group_rewards([1.0, 0.0, 1.0, 0.0], group_size=2, std_normalization=True)
    expected = 0.5 / (math.sqrt(0.5) + 1e-6)
    assert std == pytest.approx([expected, -expected, expected, -expected])
    same = normalize_group_rewards([1.0, 1.0], group_size=2, std_normalization=True)
    assert same == [0.0, 0.0]  # a zero-std group gives zero advantages, not NaN

"""RL math against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from slime.utils.ppo_utils import (
    compute_approx_kl,
    compute_gspo_kl,
    compute_policy_loss,
    get_advantages_and_returns,
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


def test_gspo_kl_is_the_masked_sequence_mean():
    new = [torch.tensor([-1.0, -2.0, -3.0])]
    old = [torch.tensor([-1.0, -1.0, -1.0])]
    out = compute_gspo_kl(new, old, [torch.tensor([1, 1, 0])])
    assert torch.allclose(out[0], torch.full((3,), 0.5))  # (0 + 1) / 2 on every token


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


def test_masked_whiten():
    values = torch.tensor([1.0, 2.0, 3.0, 100.0])
    mask = torch.tensor([1, 1, 1, 0])
    out = masked_whiten(values, mask)
    kept = out[:3]
    assert abs(kept.mean().item()) < 1e-6
    assert kept.std().item() == pytest.approx(1.0, abs=1e-4)
    unshifted = masked_whiten(values, mask, shift_mean=False)
    assert unshifted[:3].mean().item() == pytest.approx(2.0, abs=1e-5)


def test_group_reward_normalisation():
    out = normalize_group_rewards([1.0, 0.0, 1.0, 1.0, 0.0, 0.0], group_size=3, std_normalization=False)
    assert out == pytest.approx([1 / 3, -2 / 3, 1 / 3, 2 / 3, -1 / 3, -1 / 3])
    std = normalize_group_rewards([1.0, 0.0, 1.0, 0.0], group_size=2, std_normalization=True)
    expected = 0.5 / (math.sqrt(0.5) + 1e-6)
    assert std == pytest.approx([expected, -expected, expected, -expected])
    same = normalize_group_rewards([1.0, 1.0], group_size=2, std_normalization=True)
    assert same == [0.0, 0.0]  # a zero-std group gives zero advantages, not NaN

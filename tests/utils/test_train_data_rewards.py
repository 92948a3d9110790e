"""Reward post-processing before train data is built: slime's group normalisation and the custom hook; the debug
rollout files round-trip."""

from __future__ import annotations

from argparse import Namespace

import pytest

from slime.utils.train_data import load_debug_rollout_data, post_process_rewards, save_debug_rollout_data
from slime.utils.types import Sample


def _args(**overrides) -> Namespace:
    base = dict(advantage_estimator="grpo", rewards_normalization=True, grpo_std_normalization=True,
                n_samples_per_prompt=2, rollout_batch_size=2, reward_key=None, custom_reward_post_process_path=None)
    base.update(overrides)
    return Namespace(**base)


def _samples(rewards):
    return [Sample(index=i, reward=r) for i, r in enumerate(rewards)]


def test_grpo_centres_and_scales_each_group():
    raw, rewards = post_process_rewards(_args(), _samples([1.0, 0.0, 1.0, 1.0]))
    assert raw == [1.0, 0.0, 1.0, 1.0]
    scaled = 0.5 / (0.5**0.5 + 1e-6)
    assert rewards == pytest.approx([scaled, -scaled, 0.0, 0.0])


def test_baseline_estimator_centres_only_and_ppo_keeps_raw():
    _, centred = post_process_rewards(_args(advantage_estimator="reinforce_plus_plus_baseline"),
                                      _samples([1.0, 0.0, 3.0, 1.0]))
    assert centred == pytest.approx([0.5, -0.5, 1.0, -1.0])
    _, plain = post_process_rewards(_args(advantage_estimator="ppo"), _samples([1.0, 0.0, 3.0, 1.0]))
    assert plain == [1.0, 0.0, 3.0, 1.0]
    _, off = post_process_rewards(_args(rewards_normalization=False), _samples([1.0, 0.0, 3.0, 1.0]))
    assert off == [1.0, 0.0, 3.0, 1.0]


def test_a_batch_of_unexpected_size_is_normalised_as_one_group():
    _, rewards = post_process_rewards(_args(grpo_std_normalization=False), _samples([1.0, 0.0, 2.0]))
    assert rewards == pytest.approx([0.0, -1.0, 1.0])


def test_reward_key_selects_the_trained_value():
    samples = [Sample(reward={"score": s, "acc": True}) for s in (1.0, -1.0, 1.0, 1.0)]
    raw, rewards = post_process_rewards(_args(reward_key="score", grpo_std_normalization=False), samples)
    assert raw == [1.0, -1.0, 1.0, 1.0] and rewards == pytest.approx([1.0, -1.0, 0.0, 0.0])


def custom_post_process(args, samples):
    raw = [s.reward for s in samples]
    return raw, [10 * r for r in raw]


def test_custom_reward_post_process():
    args = _args(custom_reward_post_process_path=f"{__name__}.custom_post_process")
    assert post_process_rewards(args, _samples([1.0, 2.0])) == ([1.0, 2.0], [10.0, 20.0])


def test_debug_rollout_data_round_trip_and_subsample(tmp_path):
    samples = [Sample(index=i, tokens=[i, i + 1], response_length=1, reward=float(i), loss_mask=[1],
                      status=Sample.Status.TRUNCATED) for i in range(6)]
    path = str(tmp_path / "rollouts" / "3.pt")
    save_debug_rollout_data(path, 3, samples)
    loaded = load_debug_rollout_data(path)
    assert [s.to_dict() for s in loaded] == [s.to_dict() for s in samples]
    head_and_tail = load_debug_rollout_data(path, subsample=0.5)
    assert [s.index for s in head_and_tail] == [0, 4, 5]
    with pytest.raises(FileNotFoundError, match="--load-debug-rollout-data: .*missing.pt does not exist"):
        load_debug_rollout_data(str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="subsample must be in"):
        load_debug_rollout_data(path, subsample=1.5)

"""The trainer's RL preparation in-process: the reference model swapped in and out, the forward-only log-prob pass,
and the skipped old-log-prob pass giving the same update as the pass it skips."""

from __future__ import annotations

import pytest
import torch

from slime.backends.megatron_utils import actor as actor_module
from slime.backends.megatron_utils.actor import MegatronTrainRayActor, needs_old_log_probs
from slime.backends.megatron_utils.hf_weights import iter_hf_tensors
from slime.backends.megatron_utils.loss import get_log_probs_and_entropy
from slime.backends.megatron_utils.model import compute_log_probs, forward_logits, get_batch
from slime.backends.megatron_utils.reference import ReferenceWeights
from slime.utils.train_data import tensorize

from megatron_helpers import random_samples, save_tiny_hf_model, shards_for, tiny_args

pytestmark = pytest.mark.usefixtures("megatron_world")


def rl_args(*extra, **kwargs):
    """policy_loss with advantages computed by the trainer (parsed as SFT, then switched: the parser's run checks
    want engines, which an in-process trainer does not have)."""
    args = tiny_args("--optimizer", "adam", "--lr", "1e-2", *extra, **kwargs)
    args.loss_type, args.compute_advantages_and_returns = "policy_loss", True
    return args


def rl_samples(count, seed=0):
    samples = random_samples(count, seed=seed)
    generator = torch.Generator().manual_seed(seed + 100)
    for sample in samples:
        sample.reward = float(torch.randn((), generator=generator))
    return samples


def weights(actor, args):
    return {name: tensor.clone() for name, tensor in iter_hf_tensors(actor.model, args)}


def test_log_prob_pass_equals_the_training_forward_whatever_the_packing():
    args = rl_args("--use-dynamic-batch-size", "--max-tokens-per-gpu", "10000")
    actor = MegatronTrainRayActor()
    actor.init(args)
    shard = tensorize(shards_for(args, rl_samples(8))[0])
    batch = get_batch(args, shard, list(range(8)))
    with torch.no_grad():
        reference, _ = get_log_probs_and_entropy(args, batch, forward_logits(actor.model, batch))
    for budget in (10000, 60):  # one micro-batch, then several
        args.log_probs_max_tokens_per_gpu = budget
        got = compute_log_probs(args, actor.model, shard)
        assert len(got) == 8
        for mine, expected, length in zip(got, reference, shard["response_lengths"]):
            assert mine.shape == (length,) and torch.allclose(mine, expected, atol=1e-5)


def test_reference_weights_are_swapped_in_and_the_actor_restored_bit_for_bit():
    args = rl_args()
    actor = MegatronTrainRayActor()
    actor.init(args)
    reference = ReferenceWeights.load(args, actor.model)  # no --ref-load: the initial weights
    actor.train(0, shards_for(args, rl_samples(8))[0])
    trained = weights(actor, args)
    with reference.swapped_in(actor.model):
        inside = weights(actor, args)
    after = weights(actor, args)
    assert any(not torch.equal(inside[n], trained[n]) for n in trained)  # the reference really is different
    assert all(torch.equal(after[n], trained[n]) for n in trained)


def test_reference_model_from_ref_load_and_kl_loss(tmp_path):
    """The reference is --ref-load's weights even when the actor resumes from elsewhere; the KL loss is 0 while
    the actor equals the reference and grows once it has moved."""
    save_tiny_hf_model(tmp_path / "ref", "qwen3", vocab_size=512, hidden_size=64, intermediate_size=128,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    base = ["--hf-checkpoint", str(tmp_path / "ref"), "--ref-load", str(tmp_path / "ref"), "--use-kl-loss",
            "--kl-loss-coef", "0.1", "--kl-loss-type", "low_var_kl"]
    args = rl_args(*base)
    actor = MegatronTrainRayActor()
    actor.init(args)
    assert actor.reference is not None
    first = actor.train(0, shards_for(args, rl_samples(8))[0])
    assert first[0]["kl_loss"] == pytest.approx(0.0, abs=1e-7)
    second = actor.train(1, shards_for(args, rl_samples(8, seed=1))[0])
    assert second[0]["kl_loss"] > 1e-6
    assert second[0]["ref_log_probs_time"] > 0

    # A second trainer starting from other weights (random init) still gets --ref-load as its reference.
    other = rl_args(*base)
    other.load = None
    fresh = MegatronTrainRayActor()
    fresh.init(other)
    shard = tensorize(shards_for(other, rl_samples(8, seed=2))[0])
    with fresh.reference.swapped_in(fresh.model):
        from_reference = compute_log_probs(other, fresh.model, shard)
    from_actor = compute_log_probs(other, fresh.model, shard)
    with actor.reference.swapped_in(actor.model):
        expected = compute_log_probs(args, actor.model, shard)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(from_reference, expected))
    assert not all(torch.allclose(a, b, atol=1e-3) for a, b in zip(from_actor, expected))


def test_skipping_the_old_log_prob_pass_changes_nothing(monkeypatch):
    args = rl_args()
    assert not needs_old_log_probs(args, num_steps=1)
    assert needs_old_log_probs(args, num_steps=2)
    samples = rl_samples(8)
    results = []
    for forced in (False, True):
        monkeypatch.setattr(actor_module, "needs_old_log_probs", lambda *_, forced=forced: forced)
        actor = MegatronTrainRayActor()
        actor.init(args)
        initial = weights(actor, args)
        (metrics,) = actor.train(0, shards_for(args, samples)[0])
        assert ("log_probs_time" in metrics) == forced
        results.append((metrics, weights(actor, args)))
        assert any(not torch.equal(initial[n], results[-1][1][n]) for n in initial)  # the step moved the weights
    (skipped, skipped_weights), (computed, computed_weights) = results
    assert skipped["pg_loss"] == pytest.approx(computed["pg_loss"], abs=1e-6)
    assert computed["ppo_kl"] == pytest.approx(0.0, abs=1e-6)  # the pass really computed the same log-probs
    for name in skipped_weights:
        assert torch.allclose(skipped_weights[name], computed_weights[name], atol=1e-6), name


@pytest.mark.parametrize("flag", [["--use-tis"], ["--get-mismatch-metrics", "--custom-tis-function-path",
                                   "slime.backends.megatron_utils.loss.vanilla_tis_function"], ["--kl-coef", "0.1"],
                                  ["--attention-dropout", "0.1"], ["--advantage-estimator", "gspo"]])
def test_what_needs_the_old_log_prob_pass(flag, tmp_path):
    args = rl_args(*flag, "--ref-load", str(tmp_path))
    assert needs_old_log_probs(args, num_steps=1)


def test_critic_learns_the_returns_and_hands_the_actor_its_values(tmp_path):
    """PPO: the critic (a value head on the actor's network, from --ref-load's weights) regresses the returns of
    fixed rewards (its value loss falls), the actor's GAE uses the values the critic computed, and the actor's PPO
    steps on those advantages move its policy towards the advantaged tokens."""
    from slime.utils.arguments import role_args

    save_tiny_hf_model(tmp_path / "base", "qwen3", vocab_size=512, hidden_size=64, intermediate_size=128,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    args = rl_args("--hf-checkpoint", str(tmp_path / "base"), "--ref-load", str(tmp_path / "base"),
                   "--advantage-estimator", "ppo", "--gamma", "1.0", "--lambd", "0.95")
    args.use_critic = True
    critic = MegatronTrainRayActor()
    critic.init(role_args(args, "critic"))
    head = critic.model.module.output_layer.weight
    assert head.shape == (1, 64)
    samples = rl_samples(8)
    losses = [critic.train(r, shards_for(args, samples)[0])[0]["value_loss"] for r in range(6)]
    assert losses[-1] < 0.5 * losses[0], losses
    values = critic.critic_values()
    assert [v.shape[0] for v in values] == [s.response_length for s in samples]

    actor = MegatronTrainRayActor()
    actor.init(role_args(args, "actor"))
    shard = tensorize(shards_for(args, samples)[0])
    shard["values"] = values
    actor._prepare_rl_data(0, shard)
    # GAE with lambda 0.95 and the values: the last token's advantage is its reward minus its value.
    for sample, advantage, value in zip(samples, shard["advantages"], values):
        assert advantage[-1].item() == pytest.approx(sample.reward - value[-1].item(), abs=1e-5)
    assert "log_probs" in shard  # PPO keeps the old-log-prob pass

    # The actor's PPO steps on those advantages raise the advantage-weighted log-likelihood of the responses (the
    # surrogate PPO ascends): tokens with positive advantages become likelier, negative ones less likely.
    def surrogate():
        log_probs = compute_log_probs(args, actor.model, tensorize(shards_for(args, samples)[0]))
        return sum(float((a * lp).sum()) for a, lp in zip(shard["advantages"], log_probs))

    before = surrogate()
    for r in range(3):
        actor.train(r, shards_for(args, samples)[0], values=values)
    after = surrogate()  # -98.0 -> -32.8 when written
    assert after > before + 10.0, (before, after)


def test_ref_update_interval_makes_the_actor_the_reference(tmp_path):
    save_tiny_hf_model(tmp_path / "ref", "qwen3", vocab_size=512, hidden_size=64, intermediate_size=128,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    base = ["--hf-checkpoint", str(tmp_path / "ref"), "--ref-load", str(tmp_path / "ref"), "--use-kl-loss",
            "--kl-loss-coef", "0.1", "--kl-loss-type", "k3"]
    kl = {}
    for interval in (None, 1):
        args = rl_args(*base, *(["--ref-update-interval", str(interval)] if interval else []))
        actor = MegatronTrainRayActor()
        actor.init(args)
        actor.train(0, shards_for(args, rl_samples(8))[0])
        kl[interval] = actor.train(1, shards_for(args, rl_samples(8, seed=1))[0])[0]["kl_loss"]
    assert kl[None] > 1e-6 and kl[1] == pytest.approx(0.0, abs=1e-7)

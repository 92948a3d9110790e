"""policy_loss: its value, metrics and gradient against a plain autograd reference written from the formulas, for
each variant (PPO clip and dual clip, GSPO, CISPO, OPSM, TIS, KL losses, entropy, per-token and per-sample
reduction); the TIS and reducer plugin contracts; and the invariance of a training step to how the rollout is cut
into micro-batches."""

from __future__ import annotations

import math

import pytest
import torch

from slime.backends.megatron_utils.loss import icepop_function, policy_loss_function, vanilla_tis_function
from slime.backends.megatron_utils.model import get_batch
from slime.utils.misc import load_function

from megatron_helpers import tiny_args

pytestmark = pytest.mark.usefixtures("megatron_world")
VOCAB = 16


def policy_args(*flags, vocab: int = VOCAB, **attributes):
    """Parsed flags for policy_loss; flags whose run-level checks need a reference model or engines (not part of
    a loss) are set as attributes."""
    args = tiny_args(*flags, vocab=vocab)
    args.loss_type = "policy_loss"
    for key, value in attributes.items():
        assert hasattr(args, key), key
        setattr(args, key, value)
    return args


def make_shard(seed: int = 0) -> dict:
    """Three samples, the first two one rollout (a shared per-rollout denominator), the third with an untrained
    gap; every per-sample RL input the loss may read, with old log-probs away from the new ones."""
    generator = torch.Generator().manual_seed(seed)
    prompts, responses = [3, 2, 4], [5, 4, 7]
    masks = [torch.tensor([1, 1, 1, 1, 1]), torch.tensor([1, 1, 1, 0]), torch.tensor([1, 1, 0, 0, 1, 1, 1])]
    rollout_sums = [9.0, 9.0, 5.0]

    def per_token(scale, shift=0.0):
        return [torch.randn(n, generator=generator) * scale + shift for n in responses]

    return {
        "tokens": [torch.randint(0, VOCAB, (p + r,), generator=generator) for p, r in zip(prompts, responses)],
        "response_lengths": responses,
        "loss_masks": [m.int() for m in masks],
        "rollout_mask_sums": torch.tensor(rollout_sums),
        "advantages": [torch.full((n,), a) for n, a in zip(responses, [1.0, -0.7, -1.3])],
        "log_probs": per_token(0.8, -2.5),
        "ref_log_probs": per_token(0.8, -2.5),
        "rollout_log_probs": per_token(0.8, -2.5),
    }


def reference_loss(args, batch, logits):
    """policy_loss written out with log_softmax over the full vocabulary and plain tensor arithmetic."""
    log_softmax = torch.log_softmax(logits[0].float() / args.rollout_temperature, dim=-1)
    per_token_mode = args.calculate_per_token_loss
    totals: dict[str, torch.Tensor] = {}

    def add(name, values, mask, denominator):
        totals[name] = totals.get(name, 0.0) + (values * mask).sum() / (1.0 if per_token_mode else denominator)

    offset = 0
    for i, (total, response) in enumerate(zip(batch["total_lengths"], batch["response_lengths"])):
        positions = torch.arange(offset + total - response - 1, offset + total - 1)
        targets = batch["tokens"][0][positions + 1]
        offset += total
        new = log_softmax[positions, targets]
        entropy = -(log_softmax[positions].exp() * log_softmax[positions]).sum(-1)
        old, ref, rollout = (batch[k][i].float() for k in ("log_probs", "ref_log_probs", "rollout_log_probs"))
        if args.use_rollout_logprobs:
            old = rollout
        advantage = batch["advantages"][i].float()
        mask = batch["loss_masks"][i].float()
        denominator = max(float(batch["rollout_mask_sums"][i]), 1.0)
        if args.advantage_estimator == "gspo":
            log_ratio = ((new - old) * mask).sum() / mask.sum() * torch.ones(response)
        else:
            log_ratio = new - old
        ratio = log_ratio.exp()
        clipped_ratio = ratio.clamp(1 - args.eps_clip, 1 + args.eps_clip_high)
        if args.advantage_estimator == "cispo":
            pg = -clipped_ratio.detach() * advantage * new
            clipfrac = (clipped_ratio != ratio).float()
        else:
            pg = torch.maximum(-ratio * advantage, -clipped_ratio * advantage)
            clipfrac = (-clipped_ratio * advantage > -ratio * advantage).float()
            if args.eps_clip_c is not None:
                pg = torch.where(advantage < 0, torch.minimum(pg, -args.eps_clip_c * advantage), pg)
        if args.use_opsm:
            sequence_kl = ((old - new.detach()) * mask).sum() / mask.sum()
            dropped = ((advantage < 0) & (sequence_kl > args.opsm_delta)).float()
            pg = pg * (1 - dropped)
            totals["opsm_clipfrac"] = totals.get("opsm_clipfrac", 0.0) + dropped.sum() / mask.sum()
        if args.use_tis:
            tis = (batch["log_probs"][i] - rollout).exp()
            weights = tis.clamp(args.tis_clip_low, args.tis_clip)
            pg = pg * weights
            add("tis", tis, mask, denominator)
            add("tis_clipfrac", (weights != tis).float(), mask, denominator)
            add("tis_abs", (tis - 1).abs(), mask, denominator)
            add("ois", ratio.detach(), mask, denominator)
        add("pg_loss", pg, mask, denominator)
        add("pg_clipfrac", clipfrac, mask, denominator)
        add("ppo_kl", -log_ratio, mask, denominator)
        add("entropy_loss", entropy, mask, denominator)
        add("train_rollout_logprob_abs_diff", ((new.detach() if args.use_rollout_logprobs else old) - rollout).abs(),
            mask, denominator)
        if args.use_kl_loss:
            r = new - ref
            k3 = (-r).exp() - 1 + r
            kl = {"k1": r, "k2": r**2 / 2, "k3": k3, "low_var_kl": k3}[args.kl_loss_type]
            if args.use_unbiased_kl:
                kl = kl * (new - old).exp()
            if args.kl_loss_type == "low_var_kl":
                kl = kl.clamp(-10, 10)
            add("kl_loss", kl, mask, denominator)
    loss = totals["pg_loss"] - args.entropy_coef * totals["entropy_loss"]
    if args.use_kl_loss:
        loss = loss + args.kl_loss_coef * totals["kl_loss"]
    totals["loss"] = loss
    return loss, totals


VARIANTS = {
    "ppo_dual_clip_kl_k2_entropy": (["--eps-clip", "0.2", "--eps-clip-high", "0.28", "--eps-clip-c", "3",
                                     "--entropy-coef", "0.01", "--kl-loss-type", "k2"],
                                    dict(use_kl_loss=True, kl_loss_coef=0.1)),
    "gspo_opsm_k3_unbiased": (["--advantage-estimator", "gspo", "--eps-clip", "3e-4", "--eps-clip-high", "4e-4",
                               "--use-opsm", "--opsm-delta", "0.05", "--kl-loss-type", "k3", "--use-unbiased-kl"],
                              dict(use_kl_loss=True, kl_loss_coef=0.2)),
    "cispo_tis_low_var_kl": (["--advantage-estimator", "cispo", "--eps-clip", "1.0", "--eps-clip-high", "0.5",
                              "--use-tis", "--tis-clip", "1.5", "--tis-clip-low", "0.5", "--kl-loss-type",
                              "low_var_kl", "--entropy-coef", "0.05"],
                             dict(use_kl_loss=True, kl_loss_coef=0.3)),
    "grpo_rollout_logprobs": ([], dict(use_rollout_logprobs=True)),
}


@pytest.mark.parametrize("per_token", [False, True], ids=["per_sample", "per_token"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_value_metrics_and_gradient_equal_the_written_out_formulas(variant, per_token):
    flags, attributes = VARIANTS[variant]
    args = policy_args(*flags, *(["--calculate-per-token-loss"] if per_token else []), rollout_temperature=0.8,
                       **attributes)
    batch = get_batch(args, make_shard(), [0, 1, 2])
    logits = torch.randn(1, batch["tokens"].shape[1], VOCAB, generator=torch.Generator().manual_seed(1))
    mine = logits.clone().requires_grad_()
    loss, metrics = policy_loss_function(args, batch, mine, _reducer(args, batch))
    loss.backward()
    reference = logits.clone().requires_grad_()
    expected_loss, expected = reference_loss(args, batch, reference)
    expected_loss.backward()
    assert set(metrics) == set(expected)
    for name, value in expected.items():
        assert metrics[name].item() == pytest.approx(float(value), abs=1e-5), name
    assert torch.allclose(mine.grad, reference.grad, atol=1e-6)
    assert mine.grad.abs().sum() > 0
    if variant == "ppo_dual_clip_kl_k2_entropy":
        assert 0 < metrics["pg_clipfrac"] and metrics["kl_loss"] > 0  # the clip and the KL really act here
    if variant == "gspo_opsm_k3_unbiased":
        assert metrics["opsm_clipfrac"] > 0 and metrics["pg_clipfrac"] > 0
    if variant == "cispo_tis_low_var_kl":
        assert 0 < metrics["tis_clipfrac"] < metrics["tis"]


def _reducer(args, batch):
    from slime.backends.megatron_utils.loss import make_sum_of_sample_mean

    return make_sum_of_sample_mean(batch, args.calculate_per_token_loss)


def test_tis_weights_are_clipped_to_the_bounds():
    args = policy_args("--tis-clip", "2.0", "--tis-clip-low", "0.5")
    train = [torch.log(torch.tensor([0.25, 1.0, 3.0, 0.5]))]
    rollout = [torch.zeros(4)]
    pg = torch.tensor([1.0, 1.0, 1.0, 1.0])
    masks = [torch.ones(4)]
    weighted, out_masks, metrics = vanilla_tis_function(args, pg_loss=pg, train_log_probs=train,
                                                        rollout_log_probs=rollout, loss_masks=masks)
    assert torch.allclose(weighted, torch.tensor([0.5, 1.0, 2.0, 0.5]))  # 0.5 exactly at the bound stays
    assert out_masks is masks
    assert metrics["tis_clipfrac"].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert torch.allclose(metrics["tis_abs"], torch.tensor([0.75, 0.0, 2.0, 0.5]))
    dropped, _, _ = icepop_function(args, pg_loss=pg, train_log_probs=train, rollout_log_probs=rollout,
                                    loss_masks=masks)
    assert torch.allclose(dropped, torch.tensor([0.0, 1.0, 0.0, 0.5]))
    assert load_function("slime.backends.megatron_utils.loss.icepop_function") is icepop_function


SEEN: dict = {}


def reject_second_sample_tis(args, *, pg_loss, train_log_probs, rollout_log_probs, loss_masks, total_lengths,
                             response_lengths, **kwargs):
    """A --custom-tis-function-path plugin in slime's contract: it rejects every token of the second sample."""
    SEEN.update(total_lengths=total_lengths, response_lengths=response_lengths)
    masks = [m.clone().float() for m in loss_masks]
    masks[1].zero_()
    return pg_loss * 2.0, masks, {"doubled": torch.ones_like(pg_loss)}


def plain_sum_reducer(total_lengths, response_lengths, loss_masks, calculate_per_token_loss):
    """A --custom-pg-loss-reducer-function-path plugin: the masked sum, whatever the loss mode."""
    SEEN.update(reducer_masks=[m.clone() for m in loss_masks], per_token=calculate_per_token_loss)
    flat = torch.cat(loss_masks).float()
    return lambda x: (x * flat).sum()


def test_custom_tis_masks_and_pg_reducer_contracts():
    here = __name__
    args = policy_args("--get-mismatch-metrics", "--custom-tis-function-path", f"{here}.reject_second_sample_tis",
                       "--custom-pg-loss-reducer-function-path", f"{here}.plain_sum_reducer")
    shard = make_shard()
    del shard["log_probs"]  # on-policy: the importance ratio is 1 on every token
    batch = get_batch(args, shard, [0, 1, 2])
    logits = torch.randn(1, batch["tokens"].shape[1], VOCAB, generator=torch.Generator().manual_seed(2))
    sum_of_sample_mean = _reducer(args, batch)
    _, metrics = policy_loss_function(args, batch, logits, sum_of_sample_mean)
    assert SEEN["total_lengths"] == [8, 6, 11] and SEEN["response_lengths"] == [5, 4, 7]
    # The reducer gets the masks the TIS function returned.
    assert SEEN["reducer_masks"][1].sum() == 0 and SEEN["reducer_masks"][0].sum() == 5
    assert SEEN["per_token"] is False
    # Mismatch metrics are reduced over every trained token (before rejection): the mean of 1 per sample.
    assert metrics["doubled"].item() == pytest.approx(float(sum_of_sample_mean(torch.ones(16))), abs=1e-6)
    # The rest use the rejecting masks with the original per-rollout denominators: sample 1 drops out of the
    # means, samples 0 and 2 keep their denominators 9 (their rollout's, shared with sample 1) and 5.
    log_softmax = torch.log_softmax(logits[0], -1)
    entropy = -(log_softmax.exp() * log_softmax).sum(-1)
    expected = entropy[2:7].sum() / 9 + (entropy[17:24] * batch["loss_masks"][2]).sum() / 5  # prompts 3 and 4
    assert metrics["entropy_loss"].item() == pytest.approx(expected.item(), abs=1e-6)
    assert metrics["ois"].item() == pytest.approx(float(sum_of_sample_mean(torch.ones(16))), abs=1e-6)  # on-policy


def test_tis_without_engine_log_probs_is_refused():
    args = policy_args("--use-tis")
    shard = make_shard()
    del shard["rollout_log_probs"]
    batch = get_batch(args, shard, [0, 1, 2])
    logits = torch.zeros(1, batch["tokens"].shape[1], VOCAB)
    with pytest.raises(ValueError, match="--use-tis/--get-mismatch-metrics"):
        policy_loss_function(args, batch, logits, _reducer(args, batch))


def test_on_policy_step_has_ratio_one_and_reinforce_gradient():
    """Without old log-probs (the skipped old-log-prob pass) the ratio is 1: the gradient is -A d log p."""
    args = policy_args()
    shard = make_shard()
    del shard["log_probs"], shard["rollout_log_probs"]
    batch = get_batch(args, shard, [0, 1, 2])
    logits = torch.randn(1, batch["tokens"].shape[1], VOCAB, generator=torch.Generator().manual_seed(3),
                         requires_grad=True)
    loss, metrics = policy_loss_function(args, batch, logits, _reducer(args, batch))
    assert metrics["ppo_kl"] == 0 and metrics["pg_clipfrac"] == 0
    assert "train_rollout_logprob_abs_diff" not in metrics
    loss.backward()
    reference = logits.detach().clone().requires_grad_()
    log_softmax = torch.log_softmax(reference[0], -1)
    surrogate, offset = 0.0, 0
    for i, (total, response) in enumerate(zip(batch["total_lengths"], batch["response_lengths"])):
        positions = torch.arange(offset + total - response - 1, offset + total - 1)
        new = log_softmax[positions, batch["tokens"][0][positions + 1]]
        offset += total
        mask = batch["loss_masks"][i].float()
        surrogate = surrogate - (batch["advantages"][i] * new * mask).sum() / batch["rollout_mask_sums"][i]
    surrogate.backward()
    assert torch.allclose(logits.grad, reference.grad, atol=1e-6)


# --- a training step does not depend on the micro-batching ------------------------------------------------------

def train_step(args, samples, per_sample_inputs):
    from slime.backends.megatron_utils.hf_weights import iter_hf_tensors
    from slime.backends.megatron_utils.initialize import init_distributed
    from slime.backends.megatron_utils.model import setup_model_and_optimizer, train_one_step
    from slime.utils.train_data import tensorize

    from megatron_helpers import shards_for

    init_distributed(args)  # reseeds: every run starts from the same weights
    model, optimizer, scheduler = setup_model_and_optimizer(args)
    shard = tensorize(shards_for(args, samples)[0])
    for key, by_index in per_sample_inputs.items():  # in the shard's (packing-dependent) order
        shard[key] = [by_index[i] for i in shard["sample_indices"]]
    before = {n: t.clone() for n, t in iter_hf_tensors(model, args)}
    (micro_batches,) = shard["micro_batches"]
    metrics = train_one_step(args, model, optimizer, scheduler, shard, micro_batches, shard["global_batch_sizes"][0])
    grads = {n: before[n] - t for n, t in iter_hf_tensors(model, args)}  # SGD at lr 1: the gradient
    return metrics, grads, len(micro_batches)


def rl_inputs(args, samples):
    """Advantages and old/ref/rollout log-probs near the model's own log-probs, so that ratios are near 1 and only
    some tokens clip."""
    from slime.backends.megatron_utils.initialize import init_distributed
    from slime.backends.megatron_utils.loss import get_log_probs_and_entropy
    from slime.backends.megatron_utils.model import forward_logits, setup_model_and_optimizer
    from slime.utils.train_data import tensorize

    from megatron_helpers import shards_for

    init_distributed(args)
    model, _, _ = setup_model_and_optimizer(args)
    shard = tensorize(shards_for(args, samples)[0])
    batch = get_batch(args, shard, list(range(len(samples))))
    with torch.no_grad():
        log_probs, _ = get_log_probs_and_entropy(args, batch, forward_logits(model, batch))
    generator = torch.Generator().manual_seed(4)
    inputs: dict[str, dict[int, torch.Tensor]] = {k: {} for k in ("advantages", "log_probs", "ref_log_probs",
                                                                  "rollout_log_probs")}
    for index, current in zip(shard["sample_indices"], log_probs):
        inputs["advantages"][index] = torch.full_like(current, float(torch.randn((), generator=generator)))
        for key in ("log_probs", "ref_log_probs", "rollout_log_probs"):
            inputs[key][index] = current + 0.3 * torch.randn(current.shape, generator=generator)
    return inputs


@pytest.mark.parametrize("per_token", [True, False], ids=["per_token", "per_sample"])
def test_policy_loss_step_does_not_depend_on_micro_batching(per_token):
    from megatron_helpers import random_samples

    samples = random_samples(8)
    flags = [*(["--calculate-per-token-loss"] if per_token else []), "--eps-clip-c", "3", "--entropy-coef", "0.01",
             "--use-tis", "--use-opsm", "--kl-loss-type", "k3", "--use-unbiased-kl"]
    rl = dict(use_kl_loss=True, kl_loss_coef=0.1, vocab=512)
    inputs = rl_inputs(policy_args(*flags, **rl), samples)
    runs = [train_step(policy_args(*flags, *packing, **rl), samples, inputs) for packing in (
        ["--use-dynamic-batch-size", "--max-tokens-per-gpu", "10000"],
        ["--use-dynamic-batch-size", "--max-tokens-per-gpu", "40"],
        ["--micro-batch-size", "1"],
    )]
    (one, one_grads, count), *others = runs
    assert count == 1 and all(n > 2 for _, _, n in others)
    assert 0 < one["pg_clipfrac"] and 0 < one["tis_clipfrac"] and one["kl_loss"] > 0
    for metrics, grads, _ in others:
        for name in ("loss", "pg_loss", "pg_clipfrac", "ppo_kl", "kl_loss", "entropy_loss", "tis", "ois",
                     "train_rollout_logprob_abs_diff"):
            assert metrics[name] == pytest.approx(one[name], abs=1e-5), name
        for name, grad in grads.items():
            assert torch.allclose(grad, one_grads[name], atol=1e-6), name
    assert any(g.abs().sum() > 0 for g in one_grads.values())
    assert not math.isnan(one["loss"])

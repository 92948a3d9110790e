"""The trainer in-process (world size 1): loss normalisation invariants, learning, schedules, checkpoints."""

from __future__ import annotations

import json
import math

import pytest
import torch

from slime.backends.megatron_utils.actor import MegatronTrainRayActor
from slime.backends.megatron_utils.hf_weights import iter_hf_tensors
from slime.backends.megatron_utils.model import get_batch

from megatron_helpers import random_samples, shards_for, tiny_args

pytestmark = pytest.mark.usefixtures("megatron_world")


def train_once(args, samples, rollout_id=0, actor=None):
    actor = actor or MegatronTrainRayActor()
    if actor.args is None:
        actor.init(args)
    before = {n: t.clone() for n, t in iter_hf_tensors(actor.model, args)}
    (metrics,) = actor.train(rollout_id, shards_for(args, samples)[0])
    after = dict(iter_hf_tensors(actor.model, args))
    return metrics, {n: before[n] - after[n] for n in before}  # with SGD at lr 1: the gradient


@pytest.mark.parametrize("per_token", [True, False])
def test_loss_and_gradients_do_not_depend_on_micro_batching(per_token):
    samples = random_samples(8)
    mode = ["--calculate-per-token-loss"] if per_token else []
    one_batch = train_once(tiny_args(*mode, "--use-dynamic-batch-size", "--max-tokens-per-gpu", "10000"), samples)
    many = train_once(tiny_args(*mode, "--use-dynamic-batch-size", "--max-tokens-per-gpu", "40"), samples)
    per_sample = train_once(tiny_args(*mode, "--micro-batch-size", "1"), samples)
    for metrics, grads in (many, per_sample):
        assert metrics["loss"] == pytest.approx(one_batch[0]["loss"], abs=1e-5)
        for name, grad in grads.items():
            assert torch.allclose(grad, one_batch[1][name], atol=1e-6), name
    assert one_batch[0]["trained_tokens"] == sum(sum(s.loss_mask) for s in samples)


def test_per_token_and_per_sample_losses_are_the_definitions():
    samples = random_samples(4, seed=3)
    token_metrics, _ = train_once(tiny_args("--calculate-per-token-loss", batch=4), samples)
    sample_metrics, _ = train_once(tiny_args(batch=4), samples)
    # Recompute both from per-token NLLs of the same initial model.
    args = tiny_args(batch=4)
    actor = MegatronTrainRayActor()
    actor.init(args)
    shard = shards_for(args, samples)[0]
    from slime.utils.train_data import tensorize
    from slime.backends.megatron_utils.loss import get_log_probs_and_entropy

    shard = tensorize(shard)
    batch = get_batch(args, shard, list(range(len(samples))))
    with torch.no_grad():
        logits = actor.model(input_ids=batch["tokens"], position_ids=None, attention_mask=None,
                             packed_seq_params=batch["packed_seq_params"])
    log_probs, _ = get_log_probs_and_entropy(args, batch, logits)
    nll = [-(lp * m.float()) for lp, m in zip(log_probs, batch["loss_masks"])]
    per_token = sum(x.sum() for x in nll) / sum(m.sum() for m in batch["loss_masks"])
    per_sample = sum(x.sum() / m.sum() for x, m in zip(nll, batch["loss_masks"])) / len(samples)
    assert token_metrics["loss"] == pytest.approx(float(per_token), abs=1e-5)
    assert sample_metrics["loss"] == pytest.approx(float(per_sample), abs=1e-5)
    assert abs(token_metrics["loss"] - sample_metrics["loss"]) > 1e-4  # the two definitions really differ here


def test_packed_per_token_log_probs_equal_each_sequence_alone():
    args = tiny_args()
    actor = MegatronTrainRayActor()
    actor.init(args)
    from slime.utils.train_data import tensorize
    from slime.backends.megatron_utils.loss import get_log_probs_and_entropy

    shard = tensorize(shards_for(args, random_samples(8, seed=5))[0])

    def log_probs(indices):
        batch = get_batch(args, shard, indices)
        with torch.no_grad():
            logits = actor.model(input_ids=batch["tokens"], position_ids=None, attention_mask=None,
                                 packed_seq_params=batch["packed_seq_params"])
        return get_log_probs_and_entropy(args, batch, logits)[0]

    packed = log_probs(list(range(8)))
    for i in range(8):
        (alone,) = log_probs([i])
        assert (packed[i] - alone).abs().max().item() < 1e-5


def test_learns_a_small_chat_task_with_the_real_tokenizer(tmp_path, qwen3_tokenizer_dir):
    from megatron_helpers import save_tiny_hf_model
    import shutil, os
    from slime.rollout.data_source import RolloutDataSourceWithBuffer
    from slime.rollout.sft_rollout import generate_rollout
    from slime.utils.arguments import parse_args
    from slime.utils.train_data import convert_samples_to_train_data, split_train_data_by_dp

    save_tiny_hf_model(tmp_path, "qwen3", vocab_size=151936, hidden_size=32, intermediate_size=64, head_dim=8)
    for name in os.listdir(qwen3_tokenizer_dir):
        shutil.copy(os.path.join(qwen3_tokenizer_dir, name), tmp_path)
    words = ["apple", "river", "stone", "cloud", "tiger", "lemon", "piano", "maple"]
    rows = [{"messages": [{"role": "user", "content": f"Repeat: {w}"}, {"role": "assistant", "content": w}]}
            for w in words]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = parse_args([
        "--rollout-function-path", "slime.rollout.sft_rollout.generate_rollout", "--prompt-data",
        str(tmp_path / "data.jsonl"), "--input-key", "messages", "--rollout-batch-size", "8", "--global-batch-size",
        "8", "--num-rollout", "16", "--loss-type", "sft_loss", "--calculate-per-token-loss",
        "--disable-compute-advantages-and-returns", "--debug-train-only", "--actor-num-gpus-per-node", "1",
        "--hf-checkpoint", str(tmp_path), "--load", str(tmp_path), "--lr", "3e-2", "--lr-decay-style", "constant",
        "--attention-dropout", "0", "--hidden-dropout", "0", "--data-pad-size-multiplier", "8",
    ])
    actor = MegatronTrainRayActor()
    assert actor.init(args) == 0
    source = RolloutDataSourceWithBuffer(args)
    losses = []
    for rollout_id in range(args.num_rollout):
        samples = [g[0] for g in generate_rollout(args, rollout_id, source).samples]
        shard = split_train_data_by_dp(args, convert_samples_to_train_data(args, samples), 1)[0]
        losses.append(actor.train(rollout_id, shard)[0]["loss"])
    assert losses[0] > 10 and losses[-1] < 0.5 * losses[0], losses


def test_lr_schedule_counts_samples():
    args = tiny_args("--lr-decay-style", "cosine", "--lr", "1e-3", "--min-lr", "1e-4", "--lr-warmup-iters", "1",
                     "--optimizer", "adam", batch=4)
    args.num_rollout = 5  # 5 optimizer steps of 4 samples
    actor = MegatronTrainRayActor()
    actor.init(args)
    lrs = [actor.train(r, shards_for(args, random_samples(4, seed=r))[0])[0]["lr"] for r in range(5)]
    # Megatron's schedule in samples: warm-up over the first 4 samples (the first step runs at the initial lr 0),
    # then cosine from 1e-3 to 1e-4 over the remaining 16 of 20 samples.
    cosine = [1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi * ratio)) for ratio in (0.25, 0.5, 0.75)]
    assert lrs == pytest.approx([0.0, 1e-3, *cosine], rel=1e-6, abs=1e-12)


def test_throughput_metrics_are_reported():
    metrics, _ = train_once(tiny_args("--calculate-per-token-loss"), random_samples(8))
    assert metrics["tokens_per_s"] > 0 and metrics["tflops"] > 0 and 0 < metrics["mfu"] < 1
    assert metrics["grad_norm"] > 0


def test_step_flops_count_the_output_layer_where_it_runs():
    """The built-in losses run the output layer at the response positions only, so the step's FLOPs (TFLOP/s, MFU)
    count it there: counted at every position, a small model's MFU went over 100%."""
    from slime.utils.flops import training_flops

    args = tiny_args("--calculate-per-token-loss")
    samples = random_samples(8)
    metrics, _ = train_once(args, samples)
    lengths = [len(s.tokens) for s in samples]
    expected = training_flops(args, lengths, output_positions=sum(s.response_length for s in samples))
    assert metrics["tflops"] * 1e12 * metrics["step_time"] == pytest.approx(expected, rel=1e-9)
    assert expected < training_flops(args, lengths)


def test_save_load_continue_equals_uninterrupted(tmp_path):
    save = str(tmp_path / "ckpt")
    flags = ["--calculate-per-token-loss", "--optimizer", "adam", "--lr", "1e-3", "--save", save]
    straight = MegatronTrainRayActor()
    straight.init(tiny_args(*flags))
    for r in range(4):
        straight.train(r, shards_for(straight.args, random_samples(8, seed=r))[0])
    first = MegatronTrainRayActor()
    first.init(tiny_args(*flags))
    for r in range(2):
        first.train(r, shards_for(first.args, random_samples(8, seed=r))[0])
    first.save_model(1)
    assert (tmp_path / "ckpt" / "latest_checkpointed_iteration.txt").read_text() == "1"
    resumed = MegatronTrainRayActor()
    assert resumed.init(tiny_args(*flags, "--load", save)) == 2
    for r in range(2, 4):
        resumed.train(r, shards_for(resumed.args, random_samples(8, seed=r))[0])
    expected = dict(iter_hf_tensors(straight.model, straight.args))
    for name, tensor in iter_hf_tensors(resumed.model, resumed.args):
        assert torch.equal(tensor, expected[name]), name


def test_a_crash_during_save_leaves_the_previous_checkpoint_latest(tmp_path, monkeypatch):
    from megatron.core import dist_checkpointing

    args = tiny_args("--save", str(tmp_path))
    actor = MegatronTrainRayActor()
    actor.init(args)
    actor.save_model(0)

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(dist_checkpointing, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        actor.save_model(1)
    assert (tmp_path / "latest_checkpointed_iteration.txt").read_text() == "0"
    assert not (tmp_path / "iter_0000001").exists()


def test_save_hf_during_training(tmp_path):
    import transformers

    args = tiny_args("--save-hf", str(tmp_path / "hf_{rollout_id}"))
    actor = MegatronTrainRayActor()
    actor.init(args)
    actor.save_model(3)
    assert (tmp_path / "hf_3" / "model.safetensors").exists()
    from safetensors.torch import load_file

    exported = load_file(tmp_path / "hf_3" / "model.safetensors")
    assert exported["model.embed_tokens.weight"].shape == (512, 64)
    assert transformers is not None


def test_release_checkpoint_via_ref_load_initialises_weights_only(tmp_path):
    from slime.backends.megatron_utils.checkpoint import save_checkpoint

    source = MegatronTrainRayActor()
    source.init(tiny_args("--seed", "7", "--save", str(tmp_path / "dist")))
    save_checkpoint(source.args, 0, source.model, None, None, release=True)
    target = MegatronTrainRayActor()
    args = tiny_args("--ref-load", str(tmp_path / "dist"), "--load", str(tmp_path / "not-yet"))
    assert args.load == str(tmp_path / "dist") and args.finetune
    assert target.init(args) == 0
    expected = dict(iter_hf_tensors(source.model, source.args))
    for name, tensor in iter_hf_tensors(target.model, args):
        assert torch.equal(tensor, expected[name]), name


def test_full_recompute_gives_the_same_step():
    samples = random_samples(8)
    plain = train_once(tiny_args("--calculate-per-token-loss"), samples)
    recompute = train_once(tiny_args("--calculate-per-token-loss", "--recompute-granularity", "full",
                                     "--recompute-method", "uniform", "--recompute-num-layers", "1"), samples)
    assert recompute[0]["loss"] == pytest.approx(plain[0]["loss"], abs=1e-6)
    for name, grad in recompute[1].items():
        assert torch.allclose(grad, plain[1][name], atol=1e-6), name


def test_dropout_and_seed_are_honoured():
    samples = random_samples(8)
    flags = ["--calculate-per-token-loss", "--hidden-dropout", "0.3", "--attention-dropout", "0.3"]
    first = train_once(tiny_args(*flags, "--seed", "1"), samples)[0]["loss"]
    again = train_once(tiny_args(*flags, "--seed", "1"), samples)[0]["loss"]
    other_seed = train_once(tiny_args(*flags, "--seed", "2"), samples)[0]["loss"]
    no_dropout = train_once(tiny_args("--calculate-per-token-loss", "--seed", "1"), samples)[0]["loss"]
    assert first == again
    assert first != other_seed and first != no_dropout


def test_reset_optimizer_states_makes_the_next_step_a_fresh_adam_step():
    """slime's --reset-optimizer-states (the trainer applies it at the start of each rollout's training): Adam's
    moments and step restart, so the next step equals a fresh optimizer's first step from the same weights."""
    from slime.backends.megatron_utils.hf_weights import unwrap

    flags = ["--calculate-per-token-loss", "--optimizer", "adam", "--lr", "1e-2"]

    def after_second_rollout(reset: bool):
        args = tiny_args(*flags, *(["--reset-optimizer-states"] if reset else []))
        actor = MegatronTrainRayActor()
        actor.init(args)
        actor.train(0, shards_for(args, random_samples(8, seed=0))[0])
        weights = [p.detach().clone() for p in unwrap(actor.model).parameters()]
        actor.train(1, shards_for(args, random_samples(8, seed=1))[0])
        return weights, dict(iter_hf_tensors(actor.model, args))

    start, with_reset = after_second_rollout(reset=True)
    _, without_reset = after_second_rollout(reset=False)
    fresh = MegatronTrainRayActor()
    fresh.init(tiny_args(*flags))
    for param, value in zip(unwrap(fresh.model).parameters(), start):
        param.data.copy_(value)
    fresh.train(1, shards_for(fresh.args, random_samples(8, seed=1))[0])
    expected = dict(iter_hf_tensors(fresh.model, fresh.args))
    for name, tensor in with_reset.items():
        assert torch.allclose(tensor, expected[name], atol=1e-7), name
    assert any(not torch.allclose(tensor, expected[name], atol=1e-5) for name, tensor in without_reset.items())


def test_output_layer_runs_on_the_response_positions_only(monkeypatch):
    """The built-in losses get the logits of the response positions only (prompts and padding skip the
    vocabulary-wide output layer): they equal the full logits there, and the step's loss and every gradient equal
    those computed from every position's logits (what a custom loss gets)."""
    from slime.backends.megatron_utils import model as model_module
    from slime.backends.megatron_utils.model import forward_logits
    from slime.utils.train_data import tensorize

    samples = random_samples(8)
    args = tiny_args("--calculate-per-token-loss")
    actor = MegatronTrainRayActor()
    actor.init(args)
    batch = get_batch(args, tensorize(shards_for(args, samples)[0]), list(range(8)))
    with torch.no_grad():
        full = forward_logits(actor.model, batch)
        assert not batch["logits_at_responses"]
        selected = forward_logits(actor.model, batch, responses_only=True)
    assert batch["logits_at_responses"]
    assert selected.shape[1] == sum(s.response_length for s in samples) < full.shape[1]
    assert torch.allclose(selected[0], full[0, batch["response_positions"]], atol=1e-6)

    only = train_once(tiny_args("--calculate-per-token-loss"), samples)
    monkeypatch.setattr(model_module, "uses_response_logits_only", lambda args: False)
    every = train_once(tiny_args("--calculate-per-token-loss"), samples)
    assert only[0]["loss"] == pytest.approx(every[0]["loss"], abs=1e-6)
    for name, grad in only[1].items():
        assert torch.allclose(grad, every[1][name], atol=1e-6), name


def test_critic_values_from_the_response_positions_equal_the_full_pass():
    from slime.backends.megatron_utils.model import compute_values, forward_logits
    from slime.backends.megatron_utils.loss import response_spans
    from slime.utils.arguments import role_args
    from slime.utils.train_data import tensorize

    args = tiny_args("--optimizer", "adam")
    args.loss_type, args.compute_advantages_and_returns, args.use_critic = "policy_loss", True, True
    args = role_args(args, "critic")
    critic = MegatronTrainRayActor()
    critic.init(args)
    shard = tensorize(shards_for(args, random_samples(8))[0])
    values = compute_values(args, critic.model, shard)
    batch = get_batch(args, shard, list(range(8)))
    with torch.no_grad():
        full = forward_logits(critic.model, batch)[0, :, 0]
    for value, (start, end) in zip(values, response_spans(batch)):
        assert torch.allclose(value, full[start:end], atol=1e-6)


def test_torch_adam_runs_fused_with_the_same_updates():
    """Without TE/Apex, Megatron's Adam is torch's; the trainer switches it to the fused kernel, whose updates equal
    the per-parameter loop's up to float rounding."""
    from slime.backends.megatron_utils.hf_weights import unwrap

    flags = ["--calculate-per-token-loss", "--optimizer", "adam", "--lr", "1e-2"]
    actor = MegatronTrainRayActor()
    actor.init(tiny_args(*flags))
    inner = getattr(actor.optimizer, "chained_optimizers", [actor.optimizer])
    groups = [group for optimizer in inner for group in optimizer.optimizer.param_groups]
    assert groups and all(group["fused"] for group in groups)
    start = [p.detach().clone() for p in unwrap(actor.model).parameters()]
    for r in range(2):
        actor.train(r, shards_for(actor.args, random_samples(8, seed=r))[0])
    fused = [p.detach().clone() for p in unwrap(actor.model).parameters()]

    plain = MegatronTrainRayActor()
    plain.init(tiny_args(*flags))
    for optimizer in getattr(plain.optimizer, "chained_optimizers", [plain.optimizer]):
        for group in optimizer.optimizer.param_groups:
            group.update(fused=None, foreach=False)
    for param, value in zip(unwrap(plain.model).parameters(), start):
        param.data.copy_(value)
    for r in range(2):
        plain.train(r, shards_for(plain.args, random_samples(8, seed=r))[0])
    for got, expected, before in zip(fused, unwrap(plain.model).parameters(), start):
        assert torch.allclose(got, expected, atol=1e-6)
    assert any(not torch.allclose(got, before, atol=1e-4) for got, before in zip(fused, start))

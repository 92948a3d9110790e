"""Resume of an RL run on CPU: GRPO through train.py, relaunched from the checkpoint its uninterrupted twin wrote after
rollout 1, ends with the same weights, after the same prompts in the same order, each rollout generated on the
weight version the uninterrupted run used.

Bit-equal weights need the same samples, so the engines must sample reproducibly across a restart: with
--sglang-enable-deterministic-inference every request carries slime's `sampling_seed` (rollout_seed + its index in
the group) and draws from a generator of its own, and the engine's numerics do not depend on what else it serves.
Without it an engine's shared generator starts again from its seed on relaunch, and a batch's rounding (about 1e-6
in a log-prob) is enough to flip a sampled token of a near-uniform tiny model now and then."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from test_rl_training import grpo_flags, peaked_tiny_qwen3
from test_train_drivers import RAY_TAG, run_driver

pytestmark = pytest.mark.slow

ROLLOUTS = 4
CHECKPOINT = 1  # rollout after which the resumed run starts


def run(out, model, tag):
    # 3 of the 8 prompts per rollout: the checkpoint after rollout 1 sits mid-epoch (6 rows used), and rollout 2
    # wraps into epoch 1 inside its batch, so both the cursor and the next epoch's shuffle come from the checkpoint.
    flags = grpo_flags(out, model, 2, 2, ROLLOUTS, "--rollout-batch-size", "3", "--global-batch-size", "12",
                       "--save", str(out / "ckpt"), "--load", str(out / "ckpt"), "--save-interval", "2",
                       "--save-hf", str(out / "hf_{rollout_id}"), "--sglang-enable-deterministic-inference")
    code, output, _ = run_driver("train.py", flags, out, env_extra={RAY_TAG: tag, "OMP_NUM_THREADS": "1"})
    assert code == 0, output[-4000:]
    return output


def crashed_after(straight, resumed, rollout_id):
    """`resumed`/ckpt as a run of the same command that died after saving rollout `rollout_id` would leave it."""
    source, target = straight / "ckpt", resumed / "ckpt"
    shutil.copytree(source / f"iter_{rollout_id:07d}", target / f"iter_{rollout_id:07d}")
    (target / "rollout").mkdir()
    name = f"global_dataset_state_dict_{rollout_id}.pt"
    shutil.copy(source / "rollout" / name, target / "rollout" / name)
    (target / "latest_checkpointed_iteration.txt").write_text(str(rollout_id))


def rollout_samples(out, rollout_id):
    samples = torch.load(out / "rollouts" / f"{rollout_id}.pt", weights_only=False)["samples"]
    return sorted(samples, key=lambda s: s["index"])


def test_resumed_grpo_run_equals_the_uninterrupted_run(tmp_path):
    model = peaked_tiny_qwen3(str(tmp_path / "model"))
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    straight.mkdir()
    resumed.mkdir()
    run(straight, model, "rl-resume-straight")
    crashed_after(straight, resumed, CHECKPOINT)
    output = run(resumed, model, "rl-resume-resumed")  # the same command, relaunched
    assert f"rollout {CHECKPOINT + 2}/{ROLLOUTS}" in output and f"rollout {CHECKPOINT + 1}/{ROLLOUTS}" not in output
    assert not (resumed / "rollouts" / f"{CHECKPOINT}.pt").exists()  # it continued after the checkpoint

    prompts = []
    for rollout_id in range(CHECKPOINT + 1, ROLLOUTS):
        expected, got = rollout_samples(straight, rollout_id), rollout_samples(resumed, rollout_id)
        # Data order: the same prompts under the same sample and group indices.
        assert [(s["index"], s["group_index"], s["prompt"]) for s in got] == \
               [(s["index"], s["group_index"], s["prompt"]) for s in expected], rollout_id
        prompts.append([s["prompt"] for s in expected])
        # Rollout r is generated on the weights trained on rollouts 0..r-1, in both runs.
        assert all(s["weight_versions"] == [str(rollout_id)] for s in expected + got), rollout_id
        # The same responses with the same log-probs, bit for bit: the engines sampled reproducibly across the
        # restart, from the same weights, whatever each request was batched with on whichever engine.
        assert [s["tokens"] for s in got] == [s["tokens"] for s in expected], rollout_id
        assert [s["rollout_log_probs"] for s in got] == [s["rollout_log_probs"] for s in expected], rollout_id
    assert len({p for batch in prompts for p in batch}) > 3  # not one batch of prompts over and over

    expected = load_file(straight / f"hf_{ROLLOUTS - 1}" / "model.safetensors")
    got = load_file(resumed / f"hf_{ROLLOUTS - 1}" / "model.safetensors")
    assert expected.keys() == got.keys()
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name
    # Training moved the weights after the checkpoint: the equality above is not that of two copies of it.
    saved = load_file(straight / f"hf_{CHECKPOINT}" / "model.safetensors")
    assert not torch.equal(expected["model.embed_tokens.weight"], saved["model.embed_tokens.weight"])

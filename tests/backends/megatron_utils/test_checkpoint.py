"""--async-save: a checkpoint written in the background becomes visible (renamed, tracker updated) only when it is
finalised, holds the weights of the moment it was requested, and the last rollout's save is synchronous."""

from __future__ import annotations

import pytest
import torch

from slime.backends.megatron_utils.actor import MegatronTrainRayActor
from slime.backends.megatron_utils.checkpoint import finalize_async_save
from slime.backends.megatron_utils.hf_weights import iter_hf_tensors

from megatron_helpers import random_samples, shards_for, tiny_args

pytestmark = pytest.mark.usefixtures("megatron_world")


def test_async_save_is_published_when_finalised(tmp_path):
    save = tmp_path / "ckpt"
    tracker = save / "latest_checkpointed_iteration.txt"
    flags = ["--calculate-per-token-loss", "--optimizer", "adam", "--lr", "1e-3", "--save", str(save), "--async-save"]
    args = tiny_args(*flags)  # --num-rollout 4
    actor = MegatronTrainRayActor()
    actor.init(args)
    actor.train(0, shards_for(args, random_samples(8, seed=0))[0])
    actor.save_model(0)
    assert not tracker.exists() and not (save / "iter_0000000").exists()  # still being written
    actor.train(1, shards_for(args, random_samples(8, seed=1))[0])
    saved_weights = {name: t.clone() for name, t in iter_hf_tensors(actor.model, args)}
    actor.save_model(1)  # finalises rollout 0's save first
    assert tracker.read_text() == "0" and (save / "iter_0000000").is_dir()
    # Training on while rollout 1's checkpoint is written must not leak into it.
    actor.train(2, shards_for(args, random_samples(8, seed=2))[0])
    finalize_async_save()
    assert tracker.read_text() == "1" and not (save / "iter_0000001.tmp").exists()
    actor.save_model(3)  # the last rollout: synchronous
    assert tracker.read_text() == "3"

    resumed = MegatronTrainRayActor()
    resumed_args = tiny_args(*flags, "--load", str(save), "--ckpt-step", "1")
    assert resumed.init(resumed_args) == 2
    for name, tensor in iter_hf_tensors(resumed.model, resumed_args):
        assert torch.equal(tensor, saved_weights[name]), name


def test_optimizer_state_that_cannot_load_is_explained(tmp_path):
    save = tmp_path / "ckpt"
    flags = ["--optimizer", "adam", "--lr", "1e-3", "--save", str(save), "--use-distributed-optimizer"]
    actor = MegatronTrainRayActor()
    actor.init(tiny_args(*flags))
    actor.save_model(0)
    other_kind = tiny_args(*flags, "--no-use-distributed-optimizer", "--load", str(save))
    with pytest.raises(ValueError, match="same --use-distributed-optimizer setting, or pass --no-load-optim"):
        MegatronTrainRayActor().init(other_kind)
    assert MegatronTrainRayActor().init(tiny_args(*flags, "--no-use-distributed-optimizer", "--load", str(save),
                                                  "--no-load-optim")) == 1
    # The distributed optimizer's state (Megatron's dp_reshardable format) does not follow a TP change.
    common_path = save / "iter_0000000" / "common.pt"
    common = torch.load(common_path, weights_only=False)
    common["parallel_layout"] = [1, 2, 1]
    torch.save(common, common_path)
    with pytest.raises(ValueError, match=r"\(PP, TP\) = \(1, 2\).*--no-load-optim"):
        MegatronTrainRayActor().init(tiny_args(*flags, "--load", str(save)))


def test_a_checkpoint_of_another_model_is_named_in_one_line(tmp_path):
    save = tmp_path / "ckpt"
    actor = MegatronTrainRayActor()
    actor.init(tiny_args("--save", str(save)))
    actor.save_model(0)
    from slime.utils.errors import UserError

    with pytest.raises(UserError, match=r"iter_0000000 is of another model: decoder.layers.mlp.linear_fc1.weight"):
        MegatronTrainRayActor().init(tiny_args("--load", str(save), "--ffn-hidden-size", "96"))


def test_sgd_resumes_with_its_momentum(tmp_path):
    """Megatron builds SGD without the state initialiser its loader needs; the momentum buffers come back."""
    save = tmp_path / "ckpt"
    flags = ["--optimizer", "sgd", "--lr", "1e-2", "--save", str(save)]  # Megatron's SGD momentum: 0.9
    actor = MegatronTrainRayActor()
    actor.init(tiny_args(*flags))
    actor.train(0, shards_for(tiny_args(*flags), random_samples(8))[0])
    actor.save_model(0)
    inner = getattr(actor.optimizer, "chained_optimizers", [actor.optimizer])[0].optimizer
    buffers = [state["momentum_buffer"].clone() for state in inner.state.values()]
    resumed = MegatronTrainRayActor()
    assert resumed.init(tiny_args(*flags, "--load", str(save))) == 1
    inner = getattr(resumed.optimizer, "chained_optimizers", [resumed.optimizer])[0].optimizer
    loaded = [state["momentum_buffer"] for state in inner.state.values()]
    assert len(loaded) == len(buffers) and all(torch.equal(a, b) for a, b in zip(loaded, buffers))
    assert any(b.abs().sum() > 0 for b in buffers)

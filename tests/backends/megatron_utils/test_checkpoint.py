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

"""The loss registry: custom losses by path, the RL losses' math (the KL estimators are tested with ppo_utils)."""

from __future__ import annotations

import pytest
import torch

from slime.backends.megatron_utils.actor import MegatronTrainRayActor
from slime.backends.megatron_utils.loss import (
    policy_loss_function,
    resolve_loss_function,
    value_loss_function,
)

from megatron_helpers import random_samples, shards_for, tiny_args

pytestmark = pytest.mark.usefixtures("megatron_world")
EXAMPLE = "examples.custom_loss.entropy_regularized_sft.entropy_regularized_sft_loss"


def first_step(*flags):
    args = tiny_args("--calculate-per-token-loss", *flags)
    actor = MegatronTrainRayActor()
    actor.init(args)
    return actor.train(0, shards_for(args, random_samples(8))[0])[0]


def test_custom_loss_by_path(monkeypatch):
    import examples.custom_loss.entropy_regularized_sft as example

    sft = first_step()
    custom = first_step("--loss-type", "custom_loss", "--custom-loss-function-path", EXAMPLE)
    assert custom["nll"] == pytest.approx(sft["loss"], abs=1e-6)
    assert custom["loss"] == pytest.approx(custom["nll"] - example.ENTROPY_COEF * custom["entropy"], abs=1e-6)
    monkeypatch.setattr(example, "ENTROPY_COEF", 0.0)
    assert first_step("--loss-type", "custom_loss", "--custom-loss-function-path", EXAMPLE)["loss"] == \
        pytest.approx(sft["loss"], abs=1e-6)


def test_custom_loss_needs_a_path(capsys):
    with pytest.raises(SystemExit):
        tiny_args("--loss-type", "custom_loss")
    assert "--custom-loss-function-path" in capsys.readouterr().err


def test_registry():
    assert resolve_loss_function(tiny_args()).__name__ == "sft_loss_function"
    assert resolve_loss_function(tiny_args("--loss-type", "policy_loss")) is policy_loss_function


class Args:
    value_clip = 0.2


def test_value_loss_clips():
    batch = {"total_lengths": [3], "response_lengths": [2], "values": [torch.tensor([0.0, 0.0])],
             "returns": [torch.tensor([1.0, 1.0])]}
    logits = torch.tensor([[[0.1], [1.0], [5.0]]])  # positions 0 and 1 hold the values of the two response steps
    loss, metrics = value_loss_function(Args, batch, logits, lambda x: x.sum())
    # Position 0: 0.81 either way; position 1: value 1.0 is clipped to 0.2 -> max((1-1)^2, (0.2-1)^2) = 0.64.
    assert loss.item() == pytest.approx(0.64 + 0.81)
    assert metrics["value_clipfrac"].item() == 1.0


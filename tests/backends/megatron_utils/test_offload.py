"""--offload-train: the trainer's sleep frees its parameters, gradients and optimizer state, and waking gives back
exactly what it had. The trainer uses it on GPUs only; here the same mechanism runs on CPU storages."""

from __future__ import annotations

import pytest
import torch

from slime.backends.megatron_utils.actor import MegatronTrainRayActor
from slime.backends.megatron_utils.offload import TrainerMemory

from megatron_helpers import random_samples, shards_for, tiny_args

pytestmark = pytest.mark.usefixtures("megatron_world")


def _trainer(args) -> MegatronTrainRayActor:
    trainer = MegatronTrainRayActor()
    trainer.init(args)
    return trainer


def _state(trainer):
    params = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    optimizer = [v.clone() for s in trainer.optimizer.optimizer.state.values() for v in s.values()
                 if isinstance(v, torch.Tensor)]
    return params, optimizer


def test_sleep_frees_everything_and_training_resumes_bit_for_bit():
    args = tiny_args("--optimizer", "adam", "--lr", "1e-2", "--offload-train")
    samples = [random_samples(8, seed=seed) for seed in range(3)]
    plain, sleeper = _trainer(args), _trainer(args)
    assert sleeper.memory is None  # CPU trainers keep their memory: sleep is a no-op there...
    sleeper.sleep()
    # ...so put this one on the mechanism the GPU trainers use.
    sleeper.memory = TrainerMemory(sleeper.model, sleeper.optimizer, "cpu")

    for rollout_id, batch in enumerate(samples):
        expected = plain.train(rollout_id, shards_for(args, batch)[0])
        params_before, optimizer_before = _state(sleeper)
        sleeper.sleep()
        assert sleeper.memory.asleep
        assert all(p.untyped_storage().nbytes() == 0 for p in sleeper.model.parameters())
        assert all(b.grad_data.untyped_storage().nbytes() == 0 for b in sleeper.model.buffers)
        assert all(v.untyped_storage().nbytes() == 0 for s in sleeper.optimizer.optimizer.state.values()
                   for v in s.values() if isinstance(v, torch.Tensor) and v.dim() > 0)
        sleeper.save_model(rollout_id)  # wakes for the save (nothing to write here) and sleeps again
        assert sleeper.memory.asleep
        with sleeper.memory.awake(parameters_only=True):  # what a weight sync sees
            for name, param in sleeper.model.named_parameters():
                assert torch.equal(param, params_before[name]), name
            assert all(b.grad_data.untyped_storage().nbytes() == 0 for b in sleeper.model.buffers)
        assert all(p.untyped_storage().nbytes() == 0 for p in sleeper.model.parameters())

        got = sleeper.train(rollout_id, shards_for(args, batch)[0])  # wakes, then the same step as `plain`
        assert not sleeper.memory.asleep
        if rollout_id > 0:  # the optimizer state it woke with is the state it slept with
            assert len(optimizer_before) > 0
        assert [m["loss"] for m in got] == [m["loss"] for m in expected]
        assert [m["grad_norm"] for m in got] == [m["grad_norm"] for m in expected]
    for (name, a), b in zip(plain.model.named_parameters(), sleeper.model.parameters()):
        assert torch.equal(a, b), name


def test_sleep_reports_the_bytes_it_frees_once():
    args = tiny_args("--optimizer", "adam", "--lr", "1e-2")
    trainer = _trainer(args)
    trainer.train(0, shards_for(args, random_samples(8))[0])  # creates Adam's two moments
    memory = TrainerMemory(trainer.model, trainer.optimizer, "cpu")
    param_bytes = sum(p.numel() * p.element_size() for p in trainer.model.parameters())
    freed = memory.sleep()
    # Parameters, their gradient buffer and two fp32 moments: at least four times the parameters' bytes.
    assert freed >= 4 * param_bytes
    assert memory.sleep() == 0  # already asleep
    memory.wake_up()
    assert not memory.asleep and all(p.untyped_storage().nbytes() > 0 for p in trainer.model.parameters())

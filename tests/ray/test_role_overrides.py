"""--megatron-config-path through the driver: the actor role's overrides reach the trainers (and only them)."""

from __future__ import annotations

import re

import pytest
import yaml
from safetensors.torch import load_file

from test_train_drivers import quick_task, run_driver, sft_flags  # noqa: F401 (quick_task is a fixture)

pytestmark = pytest.mark.slow


def test_actor_overrides_reach_the_trainers(quick_task, tmp_path):
    config = tmp_path / "roles.yaml"
    config.write_text(yaml.safe_dump({"megatron": [{"name": "frozen", "role": "actor", "overrides": {"lr": "0"}}]}))
    flags = sft_flags(quick_task, tmp_path, 1, 2, "--save-interval", "2", "--megatron-config-path", str(config))
    assert flags[flags.index("--lr") + 1] == "2e-2"  # the command line's rate, which the actor role replaces
    code, output, _ = run_driver("train.py", flags, tmp_path)
    assert code == 0, output[-4000:]
    assert re.search(r"rollout 2/2 \(epoch 0\) \| loss [\d.]+ \| lr 0 \|", output), output[-3000:]
    initial, trained = load_file(quick_task / "model" / "model.safetensors"), load_file(tmp_path / "hf_1" /
                                                                                         "model.safetensors")
    assert set(trained) <= set(initial)
    for name, tensor in trained.items():
        assert tensor.equal(initial[name].to(tensor.dtype)), name  # a learning rate of 0 leaves every weight as is

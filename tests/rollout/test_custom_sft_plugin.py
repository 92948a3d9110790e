"""A custom rollout plugin run with `--loss-type sft_loss` (prompt + label rows; it builds tokens and masks itself, as
slime plugins do) through the real rollout manager actor and data source, and the manager's check of what a rollout
function returns, on the real Qwen3 tokenizer."""

from __future__ import annotations

import json
import os

import pytest
import ray

from slime.ray.driver import set_num_rollout
from slime.ray.placement_group import Placement
from slime.ray.rollout import create_rollout_manager, request_rollout
from slime.utils.arguments import parse_args

from conftest import REPO_ROOT, SFT_FLAGS

pytestmark = pytest.mark.slow
HERE = os.path.dirname(os.path.abspath(__file__))
PLUGIN = "examples.custom_rollout.prompt_label_sft.generate_rollout"

# Prompts without an assistant turn (the answer is the label), and plain string prompts, as RL-style datasets hold.
ROWS = [
    {"prompt": [{"role": "user", "content": "What is 2 + 2?"}], "label": "4"},
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}],
     "label": "Paris"},
    {"prompt": "Spell cat backwards.", "label": "tac"},
    {"prompt": [{"role": "user", "content": "3 * 3?"}], "label": "9"},
    {"prompt": "Opposite of hot?", "label": "cold"},
    {"prompt": [{"role": "user", "content": "Largest planet?"}], "label": "Jupiter"},
]


@pytest.fixture(scope="module")
def local_ray():
    env = {"PYTHONPATH": os.pathsep.join([str(REPO_ROOT), HERE])}
    ray.init(num_cpus=1, include_dashboard=False, _node_ip_address="127.0.0.1", runtime_env={"env_vars": env})
    yield
    ray.shutdown()


def plugin_args(tmp_path, tokenizer_dir, *extra):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    flags = list(SFT_FLAGS)
    del flags[flags.index("--num-rollout"):flags.index("--num-rollout") + 2]  # --num-epoch instead
    flags[flags.index("slime.rollout.sft_rollout.generate_rollout")] = PLUGIN
    return parse_args([*flags, "--hf-checkpoint", tokenizer_dir, "--prompt-data", str(path), "--input-key", "prompt",
                       "--label-key", "label", "--num-epoch", "2", *extra])


def expected_tokens(tokenizer, row) -> tuple[list[int], int]:
    messages = row["prompt"] if isinstance(row["prompt"], list) else [{"role": "user", "content": row["prompt"]}]
    prompt = tokenizer(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
                       add_special_tokens=False)["input_ids"]
    response = tokenizer(row["label"] + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    return prompt + response, len(response)


def test_prompt_label_plugin_with_sft_loss_through_the_rollout_manager(local_ray, tmp_path, qwen3_tokenizer_dir,
                                                                        qwen3_tokenizer):
    args = plugin_args(tmp_path, qwen3_tokenizer_dir)
    assert args.loss_type == "sft_loss"
    manager = create_rollout_manager(args, Placement(None, [], False))
    # Every row reaches the plugin: 6 rows, batches of 4 -> 1 rollout per epoch, 2 epochs.
    assert set_num_rollout(args, manager) == 1 and args.num_rollout == 2
    for rollout_id, rows in ((0, ROWS[:4]), (1, ROWS[4:] + ROWS[:2])):  # the second batch wraps into epoch 1
        metrics, shards = request_rollout(args, manager, rollout_id)
        metrics, (shard,) = ray.get(metrics), ray.get(shards)
        expected = [expected_tokens(qwen3_tokenizer, row) for row in rows]
        assert [shard["tokens"][shard["partition"].index(i)].tolist() for i in range(4)] == [t for t, _ in expected]
        assert [shard["response_lengths"][shard["partition"].index(i)] for i in range(4)] == [n for _, n in expected]
        assert all((m == 1).all() for m in shard["loss_masks"])
        assert metrics["rollout/epoch"] == rollout_id and metrics["rollout/samples"] == 4
        assert metrics["prompt_label/response_tokens"] == sum(n for _, n in expected)
    ray.kill(manager)


@pytest.mark.parametrize("function, message", [
    ("contract_plugins.drops_a_sample_from_one_group", r"group 1 holds 1 samples; every group holds "
                                                       r"--n-samples-per-prompt 2"),
    ("contract_plugins.flat_list", r"group 0 is a Sample, not a list"),
])
def test_the_manager_rejects_a_broken_return_naming_the_function(local_ray, tmp_path, qwen3_tokenizer_dir,
                                                                  function, message):
    args = plugin_args(tmp_path, qwen3_tokenizer_dir, "--rollout-function-path", function,
                       "--n-samples-per-prompt", "2", "--global-batch-size", "8")
    manager = create_rollout_manager(args, Placement(None, [], False))
    with pytest.raises(ray.exceptions.RayTaskError, match=rf"rollout function {function}: {message}"):
        ray.get(request_rollout(args, manager, 0)[0])
    ray.kill(manager)

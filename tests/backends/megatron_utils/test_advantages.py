"""compute_advantages_and_returns on a trainer rank's shard: every estimator and reward-shaping KL type against the
formula written out on small tensors, custom advantage functions, and whitening over data-parallel ranks (a real
2-process gloo world).

Run as a script, this file is one rank of that world (see `run_dp_world`)."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

from slime.backends.megatron_utils.advantages import compute_advantages_and_returns
from slime.utils.arguments import build_parser
from slime.utils.misc import free_port

pytestmark = pytest.mark.usefixtures("megatron_world")


def make_args(**overrides):
    """The parser's defaults for every flag (so the names are the real ones), with the test's values."""
    args = build_parser().parse_args(["--rollout-batch-size", "1"])
    for key, value in overrides.items():
        assert hasattr(args, key), key
        setattr(args, key, value)
    return args


def make_shard():
    """Two samples: responses of 3 and 2 tokens, the first with an untrained last token."""
    return {
        "response_lengths": [3, 2],
        "total_lengths": [7, 4],
        "loss_masks": [torch.tensor([1, 1, 0], dtype=torch.int), torch.tensor([1, 1], dtype=torch.int)],
        "rewards": torch.tensor([1.0, -0.5]),
        "log_probs": [torch.tensor([-1.0, -0.5, -2.0]), torch.tensor([-0.2, -3.0])],
        "ref_log_probs": [torch.tensor([-1.5, -0.5, -1.0]), torch.tensor([-0.4, -2.0])],
        "rollout_log_probs": [torch.tensor([-1.1, -0.4, -2.0]), torch.tensor([-0.3, -3.0])],
        "values": [torch.tensor([0.3, 0.1, -0.2]), torch.tensor([0.5, 0.0])],
    }


K1 = [[0.5, 0.0, -1.0], [0.2, -1.0]]  # log_probs - ref_log_probs


def kl_by_type(kind: str, log_ratios=K1) -> list[list[float]]:
    def one(r):
        if kind == "k1":
            return r
        if kind == "k2":
            return r * r / 2
        return min(max(math.exp(-r) - 1 + r, -10), 10) if kind == "low_var_kl" else math.exp(-r) - 1 + r

    return [[one(r) for r in row] for row in log_ratios]


def assert_rows(got, expected, atol=1e-6):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.dtype == torch.float32
        assert torch.allclose(g, torch.as_tensor(e, dtype=torch.float32), atol=atol), (g, e)


@pytest.mark.parametrize("estimator", ["grpo", "gspo", "cispo"])
def test_grpo_like_estimators_broadcast_the_reward(estimator):
    shard = make_shard()
    # --kl-coef does not enter GRPO's advantages (slime computes the KL and leaves it to the KL loss, if any).
    compute_advantages_and_returns(make_args(advantage_estimator=estimator, kl_coef=0.1), shard)
    assert_rows(shard["advantages"], [[1.0] * 3, [-0.5] * 2])
    assert_rows(shard["returns"], [[1.0] * 3, [-0.5] * 2])
    assert_rows(shard["kl"], K1)


@pytest.mark.parametrize("kind", ["k1", "k2", "k3", "low_var_kl"])
def test_reward_shaping_kl_types_in_reinforce_plus_plus_baseline(kind):
    shard = make_shard()
    args = make_args(advantage_estimator="reinforce_plus_plus_baseline", kl_coef=0.1, kl_loss_type=kind)
    compute_advantages_and_returns(args, shard)
    kl = kl_by_type(kind)
    assert_rows(shard["kl"], kl)
    # A_t = (group-centred reward) - kl_coef * kl_t, on every token, trained or not.
    assert_rows(shard["advantages"], [[r - 0.1 * k for k in row] for r, row in zip([1.0, -0.5], kl)])
    assert_rows(shard["returns"], shard["advantages"])


def test_low_var_kl_is_clamped_in_reward_shaping():
    shard = make_shard()
    shard["log_probs"][0] = torch.tensor([-20.0, -0.5, -2.0])  # r = -18.5: k3 would be e^18.5
    compute_advantages_and_returns(make_args(advantage_estimator="grpo", kl_coef=0.1, kl_loss_type="low_var_kl"),
                                   shard)
    assert shard["kl"][0][0].item() == 10.0


def test_without_kl_coef_the_kl_is_zero_and_needs_no_log_probs():
    shard = make_shard()
    del shard["log_probs"], shard["ref_log_probs"]  # the trainer skipped both passes
    compute_advantages_and_returns(make_args(advantage_estimator="reinforce_plus_plus_baseline"), shard)
    assert_rows(shard["kl"], [[0.0] * 3, [0.0] * 2])
    assert_rows(shard["advantages"], [[1.0] * 3, [-0.5] * 2])


def test_use_rollout_logprobs_shapes_with_the_engines_log_probs():
    shard = make_shard()
    args = make_args(advantage_estimator="reinforce_plus_plus_baseline", kl_coef=1.0, use_rollout_logprobs=True)
    compute_advantages_and_returns(args, shard)
    kl = [[-1.1 + 1.5, -0.4 + 0.5, -2.0 + 1.0], [-0.3 + 0.4, -3.0 + 2.0]]
    assert_rows(shard["kl"], kl, atol=1e-6)


def test_reinforce_plus_plus_returns_by_hand():
    shard = make_shard()
    args = make_args(advantage_estimator="reinforce_plus_plus", kl_coef=0.5, gamma=0.9)
    compute_advantages_and_returns(args, shard)
    # Token rewards: -0.5 * kl on trained tokens, the reward at the last trained token (index 1 of sample 0).
    r0 = [-0.5 * 0.5, -0.5 * 0.0 + 1.0, 0.0]
    r1 = [-0.5 * 0.2, -0.5 * -1.0 - 0.5]
    expected = [[r0[0] + 0.9 * r0[1] + 0.81 * r0[2], r0[1] + 0.9 * r0[2], r0[2]], [r1[0] + 0.9 * r1[1], r1[1]]]
    assert_rows(shard["returns"], expected)
    assert_rows(shard["advantages"], expected)


def test_ppo_gae_by_hand():
    shard = make_shard()
    gamma, lambd, kl_coef = 0.9, 0.8, 0.2
    compute_advantages_and_returns(make_args(advantage_estimator="ppo", kl_coef=kl_coef, gamma=gamma, lambd=lambd),
                                   shard)
    expected_adv, expected_ret = [], []
    for reward, kl, values in zip([1.0, -0.5], K1, [[0.3, 0.1, -0.2], [0.5, 0.0]]):
        # slime puts the reward on the last response token, trained or not.
        token_rewards = [-kl_coef * k for k in kl]
        token_rewards[-1] += reward
        advantages, running = [0.0] * len(values), 0.0
        for t in reversed(range(len(values))):
            next_value = values[t + 1] if t + 1 < len(values) else 0.0
            running = token_rewards[t] + gamma * next_value - values[t] + gamma * lambd * running
            advantages[t] = running
        expected_adv.append(advantages)
        expected_ret.append([a + v for a, v in zip(advantages, values)])
    assert_rows(shard["advantages"], expected_adv)
    assert_rows(shard["returns"], expected_ret)


def test_normalize_advantages_whitens_over_trained_tokens():
    shard = make_shard()
    compute_advantages_and_returns(make_args(advantage_estimator="grpo", normalize_advantages=True), shard)
    # Trained tokens: 1, 1 (sample 0) and -0.5, -0.5: mean 0.25, unbiased variance 0.75.
    scale = 1 / math.sqrt(0.75 + 1e-8)
    assert_rows(shard["advantages"], [[0.75 * scale] * 3, [-0.75 * scale] * 2], atol=1e-5)
    assert_rows(shard["returns"], [[1.0] * 3, [-0.5] * 2])  # returns are not whitened


def custom_advantages(args, rollout_data):
    """A --custom-advantage-function-path plugin (slime's contract: set both keys in place); it can read the KL."""
    rollout_data["advantages"] = [k * 2 + r for k, r in zip(rollout_data["kl"], rollout_data["rewards"])]
    rollout_data["returns"] = [torch.full_like(k, 7.0) for k in rollout_data["kl"]]


def custom_forgets_returns(args, rollout_data):
    rollout_data["advantages"] = [torch.zeros_like(k) for k in rollout_data["kl"]]


def custom_wrong_length(args, rollout_data):
    rollout_data["advantages"] = rollout_data["returns"] = [torch.zeros(1) for _ in rollout_data["kl"]]


def test_custom_advantage_function_then_normalisation():
    shard = make_shard()
    args = make_args(custom_advantage_function_path=f"{__name__}.custom_advantages", kl_coef=0.1)
    compute_advantages_and_returns(args, shard)
    assert_rows(shard["advantages"], [[r + 2 * k for k in row] for r, row in zip([1.0, -0.5], K1)])
    assert_rows(shard["returns"], [[7.0] * 3, [7.0] * 2])
    args.normalize_advantages = True
    compute_advantages_and_returns(args, shard)
    trained = torch.cat([a[m.bool()] for a, m in zip(shard["advantages"], shard["loss_masks"])])
    assert abs(trained.mean().item()) < 1e-6 and trained.std().item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("plugin, message", [
    ("custom_forgets_returns", r"must set rollout_data\['returns'\]"),
    ("custom_wrong_length", r"custom_wrong_length: advantages: expected 2 response-long tensors of lengths \[3, 2\]"),
])
def test_custom_advantage_function_mistakes_name_the_flag(plugin, message):
    args = make_args(custom_advantage_function_path=f"{__name__}.{plugin}")
    with pytest.raises(ValueError, match=message) as error:
        compute_advantages_and_returns(args, make_shard())
    assert "--custom-advantage-function-path" in str(error.value)


def test_unknown_estimator_is_named():
    args = make_args()
    args.advantage_estimator = "dpo"
    with pytest.raises(ValueError, match="unknown --advantage-estimator 'dpo'"):
        compute_advantages_and_returns(args, make_shard())


# --- whitening over a 2-rank data-parallel world ------------------------------------------------------------------

def rank_shard(rank: int) -> dict:
    generator = torch.Generator().manual_seed(rank)
    lengths = [4, 6, 3] if rank == 0 else [5, 2]
    return {
        "response_lengths": lengths,
        "total_lengths": [n + 2 for n in lengths],
        "loss_masks": [(torch.rand(n, generator=generator) > 0.3).int() for n in lengths],
        "rewards": torch.randn(len(lengths), generator=generator) + 3 * rank,  # ranks' statistics differ
    }


def test_normalisation_uses_the_statistics_of_every_data_parallel_rank(tmp_path):
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    outputs = [tmp_path / f"rank{r}.pt" for r in range(2)]
    processes = [subprocess.Popen([sys.executable, __file__, str(r), str(out)], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for r, out in enumerate(outputs)]
    for process in processes:
        log = process.communicate(timeout=300)[0]
        assert process.returncode == 0, log[-3000:]
    got = [torch.load(out) for out in outputs]
    # The reference: both ranks' tokens whitened together, by hand.
    shards = [rank_shard(0), rank_shard(1)]
    values = torch.cat([r.expand(n) for s in shards for r, n in zip(s["rewards"], s["response_lengths"])])
    mask = torch.cat([m for s in shards for m in s["loss_masks"]]).bool()
    mean, std = values[mask].mean(), values[mask].std()
    expected = (values - mean) / std
    assert torch.allclose(torch.cat(got[0] + got[1]), expected, atol=1e-5)
    # Each rank alone would have whitened with its own statistics: a different answer.
    alone = make_shard_whitened_alone(shards[0])
    assert not torch.allclose(torch.cat(alone), torch.cat(got[0]), atol=1e-2)


def make_shard_whitened_alone(shard):
    compute_advantages_and_returns(make_args(normalize_advantages=True), shard)
    return shard["advantages"]


def _rank_main(rank: int, out: str) -> None:
    import torch.distributed as dist
    from megatron.core import parallel_state

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    parallel_state.initialize_model_parallel()
    shard = rank_shard(rank)
    compute_advantages_and_returns(make_args(normalize_advantages=True), shard)
    torch.save(shard["advantages"], out)
    parallel_state.destroy_model_parallel()
    dist.destroy_process_group()


if __name__ == "__main__":
    _rank_main(int(sys.argv[1]), sys.argv[2])

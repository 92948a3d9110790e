"""The per-GPU memory estimate: parameter counts against real models, the optimizer-state arithmetic, and the
numbers for the seed's run (scripts/run-qwen3-4B-base-sft.sh) that docs/gpu_setup.md shows."""

from __future__ import annotations

import pytest
import torch

from slime.utils.memory_estimate import GB, estimate_memory, format_estimate, main, parameters_per_rank
from slime.utils.arguments import parse_args

from conftest import REPO_ROOT

SEED = REPO_ROOT / "scripts" / "run-qwen3-4B-base-sft.sh"
ARRAYS = ("MODEL_ARGS", "CKPT_ARGS", "SFT_ARGS", "PERF_ARGS", "OPTIMIZER_ARGS", "MISC_ARGS")


@pytest.fixture
def seed_flags(script_flags):
    # The arrays of the launch script plus the two flags it passes on the command line.
    return script_flags(SEED, *ARRAYS, source=REPO_ROOT / "scripts" / "models" / "qwen3-4B.sh") + [
        "--actor-num-nodes", "1", "--actor-num-gpus-per-node", "8"]


def test_parameter_count_equals_transformers_qwen3_4b(seed_flags):
    import transformers

    config = transformers.Qwen3Config(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                                      num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                                      tie_word_embeddings=True)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    reference = sum(p.numel() for p in model.parameters())  # tied embeddings counted once
    assert parameters_per_rank(parse_args(seed_flags)) == reference == 4_022_468_096


@pytest.mark.usefixtures("megatron_world")
@pytest.mark.parametrize("tied", [True, False])
def test_parameter_count_equals_the_megatron_model(tied):
    from slime.backends.megatron_utils.model_provider import build_gpt_model

    args = parse_args(["--rollout-batch-size", "1", "--num-rollout", "1", "--actor-num-gpus-per-node", "1",
                       "--debug-train-only",
                       "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
                       "--group-query-attention", "--num-query-groups", "2", "--kv-channels", "16",
                       "--ffn-hidden-size", "96", "--swiglu", "--use-rotary-position-embeddings",
                       "--disable-bias-linear", "--normalization", "RMSNorm", "--qk-layernorm", "--vocab-size", "300",
                       *([] if tied else ["--untie-embeddings-and-output-weights"])])
    model = build_gpt_model(args)
    assert parameters_per_rank(args) == sum(p.numel() for p in model.parameters())


def test_seed_run_with_and_without_the_distributed_optimizer(seed_flags, capsys):
    args = parse_args(seed_flags)
    assert args.use_distributed_optimizer and args.accumulate_allreduce_grads_in_fp32
    e = estimate_memory(args)
    p = e.parameters
    assert e.weights == 2 * p and e.gradients == 4 * p  # bf16 weights, fp32 gradient buffer
    assert e.optimizer_replicated == 12 * p  # fp32 master weights + Adam's two moments
    assert e.optimizer_distributed == e.optimizer == 12 * p / 8  # divided over DP 8
    assert e.micro_batch_tokens == 9216
    # The loss path: the micro-batch's bf16 logits and their gradient, plus the chunked loss's buffers.
    assert 5 * GB < e.loss_path < 6 * GB
    assert 1 * GB < e.activations < 6 * GB  # full recompute: layer inputs plus one layer recomputed
    assert e.total(True) < 45 * GB < 70 * GB < e.total(False) < 80 * GB
    main(seed_flags)
    table = capsys.readouterr().out
    assert "4.02B parameters per rank, DP 8" in table and "with the distributed optimizer" in table
    assert format_estimate(e, args).splitlines()[-1].split()[1:] == [f"{e.total(True) / GB:.1f}", "GiB",
                                                                      f"{e.total(False) / GB:.1f}", "GiB"]

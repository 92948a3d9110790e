"""The command line: the seed script's exact flags, slime's GRPO flags, derived values and user mistakes."""

from __future__ import annotations

import json

import pytest

from slime.utils.arguments import build_parser, compute_num_rollout, parse_args, role_args, validate_args
from slime.utils.flags.sglang import split_sglang_passthrough

from conftest import REPO_ROOT, SFT_FLAGS

SFT_SCRIPT = REPO_ROOT / "scripts" / "run-qwen3-4B-base-sft.sh"
QWEN3_4B = REPO_ROOT / "scripts" / "models" / "qwen3-4B.sh"

# Flags of slime's run-qwen3-4B.sh (GRPO) beyond those of the SFT script.
GRPO_FLAGS = """
--prompt-data /root/dapo-math-17k/dapo-math-17k.jsonl --input-key prompt --label-key label --apply-chat-template
--rollout-shuffle --rm-type deepscaler --num-rollout 3000 --rollout-batch-size 32 --n-samples-per-prompt 8
--rollout-max-response-len 8192 --rollout-temperature 1 --global-batch-size 256 --balance-data
--eval-interval 20 --eval-prompt-data aime /root/aime-2024/aime-2024.jsonl --n-samples-per-eval-prompt 16
--eval-max-response-len 16384 --eval-top-p 1
--tensor-model-parallel-size 2 --sequence-parallel --pipeline-model-parallel-size 1 --context-parallel-size 1
--expert-model-parallel-size 1 --expert-tensor-parallel-size 1
--recompute-granularity full --recompute-method uniform --recompute-num-layers 1
--use-dynamic-batch-size --max-tokens-per-gpu 9216
--advantage-estimator grpo --use-kl-loss --kl-loss-coef 0.00 --kl-loss-type low_var_kl --entropy-coef 0.00
--eps-clip 0.2 --eps-clip-high 0.28
--optimizer adam --lr 1e-6 --lr-decay-style constant --weight-decay 0.1 --adam-beta1 0.9 --adam-beta2 0.98
--rollout-num-gpus-per-engine 2 --sglang-mem-fraction-static 0.7 --colocate
--attention-dropout 0.0 --hidden-dropout 0.0 --accumulate-allreduce-grads-in-fp32 --attention-softmax-in-fp32
--attention-backend flash --actor-num-nodes 1 --actor-num-gpus-per-node 8
""".split()


def seed_argv(script_flags):
    arrays = ("MODEL_ARGS", "CKPT_ARGS", "SFT_ARGS", "OPTIMIZER_ARGS", "WANDB_ARGS", "PERF_ARGS", "MISC_ARGS")
    flags = script_flags(SFT_SCRIPT, *arrays, source=QWEN3_4B)
    return ["--actor-num-nodes", "1", "--actor-num-gpus-per-node", "8", *flags]


def test_seed_sft_script_parses_with_slime_semantics(script_flags):
    argv = seed_argv(script_flags)
    assert "--calculate-per-token-loss" in argv and "--qk-layernorm" in argv  # the arrays really were expanded
    args = parse_args(argv)
    assert args.rollout_function_path == "slime.rollout.sft_rollout.generate_rollout"
    assert args.loss_type == "sft_loss" and args.calculate_per_token_loss
    assert args.compute_advantages_and_returns is False and args.debug_train_only
    assert (args.rollout_batch_size, args.global_batch_size, args.num_epoch) == (128, 128, 3)
    assert args.use_dynamic_batch_size and args.max_tokens_per_gpu == 9216
    assert args.log_probs_max_tokens_per_gpu == 9216
    assert (args.lr, args.min_lr, args.lr_decay_style, args.lr_warmup_fraction) == (1e-5, 1e-6, "cosine", 0.1)
    assert (args.adam_beta2, args.weight_decay, args.clip_grad, args.seed) == (0.95, 0.1, 1.0, 1234)
    assert (args.num_layers, args.hidden_size, args.ffn_hidden_size, args.kv_channels) == (36, 2560, 9728, 128)
    assert (args.num_query_groups, args.rotary_base, args.norm_epsilon) == (8, 1e6, 1e-6)
    assert args.position_embedding_type == "rope" and args.add_bias_linear is False and args.qk_layernorm
    assert args.padded_vocab_size == 151936
    # TP=1 turns sequence parallelism off, as Megatron does; 8 devices give DP=8.
    assert args.sequence_parallel is False and args.data_parallel_size == 8
    assert (args.attention_dropout, args.hidden_dropout, args.attention_backend) == (0.0, 0.0, "flash")
    # First run: --load holds no checkpoint, so the actor starts from --ref-load as a finetune at rollout 0.
    assert args.load == "/root/Qwen3-4B-Base_torch_dist" and args.finetune and args.no_load_optim
    assert args.start_rollout_id == 0
    assert args.save == "/root/Qwen3-4B-Base_slime/" and args.save_interval == 1000


def test_slimes_grpo_script_runs_its_checks_with_nothing_refused(script_flags):
    """scripts/run-qwen3-4B.sh (slime's example) parses, nothing in it is refused, and it passes the run checks;
    its flags are the ones this file's GRPO_FLAGS spell out."""
    from slime.utils.arguments import validate_run

    arrays = ("ROLLOUT_ARGS", "EVAL_ARGS", "PERF_ARGS", "GRPO_ARGS", "OPTIMIZER_ARGS", "SGLANG_ARGS", "MISC_ARGS")
    flags = script_flags(REPO_ROOT / "scripts" / "run-qwen3-4B.sh", *arrays)
    cluster = ["--actor-num-nodes", "1", "--actor-num-gpus-per-node", "8", "--colocate"]
    assert sorted(flags + cluster) == sorted(GRPO_FLAGS)
    args = parse_args(flags + cluster + ["--ref-load", str(REPO_ROOT)])
    validate_run(args)
    assert args.loss_type == "policy_loss" and args.colocate and args.rollout_num_gpus == 8


def test_slime_validation_of_the_grpo_script():
    """slime's derived values for the RL flags; they apply once RL lifts the refusals."""
    args = build_parser().parse_args(GRPO_FLAGS + ["--ref-load", str(REPO_ROOT)])
    validate_args(args)
    assert args.n_samples_per_prompt == 8 and args.grpo_std_normalization
    assert args.eps_clip_high == 0.28 and args.kl_loss_type == "low_var_kl"
    assert args.eval_datasets == [{"name": "aime", "path": "/root/aime-2024/aime-2024.jsonl"}]
    assert args.sequence_parallel and args.data_parallel_size == 4
    assert args.colocate and args.offload_train and args.offload_rollout and args.rollout_num_gpus == 8
    assert args.eval_function_path == args.rollout_function_path


def test_num_rollout_derived_from_epochs_and_dataset_length(sft_args):
    args = sft_args("--num-epoch", "3")
    assert args.num_epoch is None  # --num-rollout given in SFT_FLAGS wins
    argv = [f for f in SFT_FLAGS]
    i = argv.index("--num-rollout")
    del argv[i : i + 2]
    args = parse_args(argv + ["--num-epoch", "3", "--prompt-data", "x.parquet"])
    assert compute_num_rollout(args, dataset_size=30) == 21  # (30 // 4) * 3
    assert args.num_rollout_per_epoch == 7


def test_training_length_must_be_given():
    argv = [f for f in SFT_FLAGS]
    i = argv.index("--num-rollout")
    del argv[i : i + 2]
    with pytest.raises(SystemExit):
        parse_args(argv)


def expect_error(capsys, argv, *fragments):
    with pytest.raises(SystemExit) as info:
        parse_args(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    for fragment in fragments:
        assert fragment in err, err
    return err


def test_dynamic_batch_size_needs_token_budget(capsys):
    expect_error(capsys, SFT_FLAGS + ["--use-dynamic-batch-size"], "--max-tokens-per-gpu")


def test_misspelled_flag_names_the_closest_flag(capsys):
    expect_error(capsys, SFT_FLAGS + ["--max-token-per-gpu", "9216"], "unknown flag --max-token-per-gpu",
                 "did you mean --max-tokens-per-gpu?")
    expect_error(capsys, SFT_FLAGS + ["--calculate-per-token-los"], "did you mean --calculate-per-token-loss?")


def test_abbreviations_are_not_accepted(capsys):
    expect_error(capsys, SFT_FLAGS + ["--rollout-max-context", "10"], "unknown flag --rollout-max-context")


def test_sglang_flags_reach_the_server_command():
    from slime.backends.sglang_utils.sglang_engine import _declared_flags, _passthrough_flags

    args = parse_args(SFT_FLAGS + ["--sglang-cuda-graph-max-bs", "512", "--sglang-enable-metrics",
                                   "--sglang-mem-fraction-static", "0.8"])
    assert _declared_flags(args) == ["--mem-fraction-static", "0.8"]  # the CPU engine honours these too
    assert _passthrough_flags(args) == ["--cuda-graph-max-bs", "512", "--enable-metrics"]


def test_sglang_pass_through_flags_are_split_from_argv():
    rest, passthrough = split_sglang_passthrough(
        ["--lr", "1", "--sglang-cuda-graph-max-bs", "512", "--sglang-enable-metrics", "--sglang-log-level=info"],
        {"--lr"})
    assert rest == ["--lr", "1"]
    assert passthrough == {"sglang_cuda_graph_max_bs": 512, "sglang_enable_metrics": True, "sglang_log_level": "info"}


def test_flags_at_harmless_values_are_accepted():
    args = parse_args(SFT_FLAGS + ["--pipeline-model-parallel-size", "1", "--context-parallel-size", "1",
                                   "--expert-tensor-parallel-size", "1", "--rollout-top-p", "1.0",
                                   "--train-backend", "megatron", "--ckpt-format", "torch_dist"])
    assert args.pipeline_model_parallel_size == 1 and args.context_parallel_size == 1


@pytest.mark.parametrize("flags, named", [
    (["--pipeline-model-parallel-size", "2"], "--pipeline-model-parallel-size 2"),
    (["--context-parallel-size", "2"], "--context-parallel-size 2"),
    (["--allgather-cp"], "--allgather-cp"),
    (["--num-layers-per-virtual-pipeline-stage", "1"], "--num-layers-per-virtual-pipeline-stage 1"),
])
def test_pipeline_and_context_parallelism_are_refused(capsys, flags, named):
    err = expect_error(capsys, SFT_FLAGS + ["--actor-num-gpus-per-node", "4", *flags])
    assert err.splitlines()[-1].endswith(f"error: not supported yet: {named} (pipeline and context parallelism are "
                                         "not verified on this trainer yet; use data and tensor parallelism)")


@pytest.mark.parametrize("flags, expected", [
    ([], True),
    (["--no-use-distributed-optimizer"], False),
    (["--use-distributed-optimizer"], True),
    (["--optimizer", "sgd"], False),  # Megatron's distributed optimizer is Adam-only
])
def test_distributed_optimizer_is_on_by_default_with_adam(flags, expected):
    assert parse_args(SFT_FLAGS + flags).use_distributed_optimizer is expected


def test_distributed_optimizer_with_sgd_is_an_error(capsys):
    expect_error(capsys, SFT_FLAGS + ["--optimizer", "sgd", "--use-distributed-optimizer"],
                 "--use-distributed-optimizer needs --optimizer adam")


def test_log_interval_must_be_positive(capsys):
    expect_error(capsys, SFT_FLAGS + ["--log-interval", "0"], "--log-interval must be >= 1, got 0")


def write_megatron_config(path, entries):
    import yaml

    path.write_text(yaml.safe_dump({"megatron": entries}))
    return ["--megatron-config-path", str(path)]


def test_megatron_config_overrides_the_actor_role(tmp_path):
    flags = write_megatron_config(tmp_path / "roles.yaml", [
        {"name": "default", "role": "actor", "overrides": {"lr": "5e-4", "clip_grad": 0.5, "num_gpus_per_node": 4}}])
    args = parse_args(SFT_FLAGS + ["--lr", "1e-5", *flags])
    actor = role_args(args, "actor")
    assert actor.lr == 5e-4 and isinstance(actor.lr, float) and actor.clip_grad == 0.5
    assert args.lr == 1e-5 and args.clip_grad == 1.0  # the command line itself is unchanged
    assert actor.num_gpus_per_node == 8  # devices follow the cluster flags, as in slime
    assert role_args(parse_args(SFT_FLAGS), "actor").lr == 1e-6


@pytest.mark.parametrize("overrides, message", [
    ({"lrr": 1}, "role actor overrides unknown flag 'lrr' (did you mean lr?)"),
    ({"tensor_model_parallel_size": 2}, "not supported yet: --megatron-config-path"),
    ({"keep_old_actor": True}, "not supported yet: --keep-old-actor (a second copy of the actor for the old policy "
                               "is not implemented) [--megatron-config-path, role actor]"),
    ({"lr": "fast"}, "lr: 'fast' is not a float"),
])
def test_megatron_config_mistakes(tmp_path, capsys, overrides, message):
    flags = write_megatron_config(tmp_path / "roles.yaml", [{"name": "x", "role": "actor", "overrides": overrides}])
    expect_error(capsys, SFT_FLAGS + flags, message)


def test_megatron_config_critic_role_overrides_the_critic_only(tmp_path):
    flags = write_megatron_config(tmp_path / "roles.yaml", [{"name": "c", "role": "critic", "overrides": {"lr": 3e-6}}])
    args = parse_args(SFT_FLAGS + flags)
    critic, actor = role_args(args, "critic"), role_args(args, "actor")
    assert critic.lr == 3e-6 and actor.lr == args.lr != 3e-6
    assert critic.loss_type == "value_loss" and critic.untie_embeddings_and_output_weights and critic.save_hf is None


def test_help_groups_flags():
    text = build_parser().format_help()
    for title in ("cluster:", "data:", "rollout:", "training:", "model:", "optimizer:", "checkpoint:", "logging:"):
        assert title in text
    assert "--calculate-per-token-loss" in text and "every trained token" in text


def test_resume_from_megatron_checkpoint_keeps_load(tmp_path):
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("7")
    args = parse_args(SFT_FLAGS + ["--load", str(tmp_path), "--ref-load", "/elsewhere", "--save", str(tmp_path)])
    assert args.load == str(tmp_path)
    assert not args.finetune and not args.no_load_optim
    assert args.start_rollout_id is None  # the actor derives it from the checkpoint's iteration


def test_explicit_start_rollout_id_is_kept():
    args = parse_args(SFT_FLAGS + ["--start-rollout-id", "5"])
    assert args.start_rollout_id == 5


def write_hf_config(directory, **overrides):
    config = {
        "model_type": "qwen3", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
        "num_hidden_layers": 2, "intermediate_size": 128, "head_dim": 16, "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0, "vocab_size": 1000, "tie_word_embeddings": True, "hidden_act": "silu",
    }
    config.update(overrides)
    (directory / "config.json").write_text(json.dumps(config))


def test_hf_checkpoint_loads_as_initial_weights(tmp_path):
    write_hf_config(tmp_path)
    args = parse_args(SFT_FLAGS + ["--hf-checkpoint", str(tmp_path), "--load", str(tmp_path)])
    assert args.load == str(tmp_path) and args.finetune  # an HF directory is loaded directly


def test_architecture_is_taken_from_hf_config_when_no_model_flags(tmp_path):
    write_hf_config(tmp_path)
    args = parse_args(SFT_FLAGS + ["--hf-checkpoint", str(tmp_path)])
    assert (args.num_layers, args.hidden_size, args.ffn_hidden_size) == (2, 64, 128)
    assert (args.num_attention_heads, args.num_query_groups, args.kv_channels) == (4, 2, 16)
    assert args.group_query_attention and args.qk_layernorm and args.swiglu
    assert args.untie_embeddings_and_output_weights is False and args.padded_vocab_size == 1024


def test_model_flags_disagreeing_with_hf_config_name_every_field(tmp_path, capsys):
    write_hf_config(tmp_path)
    model = ["--num-layers", "3", "--hidden-size", "64", "--num-attention-heads", "4", "--group-query-attention",
             "--num-query-groups", "2", "--kv-channels", "16", "--ffn-hidden-size", "128", "--norm-epsilon", "1e-5",
             "--rotary-base", "1000000", "--vocab-size", "1000", "--untie-embeddings-and-output-weights"]
    err = expect_error(capsys, SFT_FLAGS + ["--hf-checkpoint", str(tmp_path), *model],
                       "--num-layers=3 but config.json num_hidden_layers=2", "norm-epsilon",
                       "untie-embeddings-and-output-weights", "qk-layernorm")
    assert "hidden-size" not in err


def test_bad_json_flag_is_reported(capsys):
    expect_error(capsys, SFT_FLAGS + ["--apply-chat-template-kwargs", "{bad"], "not valid JSON")


def test_custom_arguments_are_added():
    def add(parser):
        parser.add_argument("--my-flag", type=int, default=3)

    args = parse_args(SFT_FLAGS + ["--my-flag", "9"], add_custom_arguments=add)
    assert args.my_flag == 9


RL_RUN = ["--prompt-data", "p.jsonl", "--num-rollout", "2", "--rollout-batch-size", "2", "--n-samples-per-prompt",
          "4", "--global-batch-size", "8", "--loss-type", "policy_loss", "--actor-num-gpus-per-node", "1"]


@pytest.mark.parametrize("extra, fragment", [
    ([], "give --rollout-num-gpus N"),
    (["--debug-train-only", "--rollout-num-gpus", "1"], "and drop --debug-train-only"),
    (["--rollout-num-gpus", "1", "--n-samples-per-prompt", "1", "--global-batch-size", "2"],
     "--n-samples-per-prompt of at least 2 (got 1)"),
    (["--rollout-num-gpus", "1", "--disable-compute-advantages-and-returns"],
     "drop --disable-compute-advantages-and-returns"),
])
def test_what_an_rl_run_needs_is_named(extra, fragment):
    from slime.utils.arguments import validate_run

    args = parse_args(RL_RUN + extra)
    with pytest.raises(Exception) as caught:
        validate_run(args)
    assert fragment in str(caught.value)


def test_runs_that_need_nothing_more_pass_and_sft_reader_needs_no_engines():
    from slime.utils.arguments import SFT_ROLLOUT, validate_run

    validate_run(parse_args(RL_RUN + ["--rollout-num-gpus", "2"]))  # GRPO with engines
    validate_run(parse_args(RL_RUN + ["--load-debug-rollout-data", "r_{rollout_id}.pt"]))  # replayed rollouts
    sft = ["--prompt-data", "p.parquet", "--num-rollout", "1", "--rollout-batch-size", "2", "--global-batch-size",
           "2", "--rollout-function-path", SFT_ROLLOUT, "--loss-type", "sft_loss",
           "--disable-compute-advantages-and-returns"]
    validate_run(parse_args(sft))  # SFT without --debug-train-only
    with pytest.raises(Exception, match="drop --rollout-num-gpus"):
        validate_run(parse_args(sft + ["--rollout-num-gpus", "1"]))

"""The command line: one parser for Megatron's, slime's and SGLang's flags, validation, and derived values.

`parse_args()` is what train.py and train_async.py call. Unlike Megatron (which silently ignores unknown flags) a
misspelled flag is an error naming the closest known flag.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import logging
import math
import os
import sys
from typing import Any, Callable

from slime.utils.errors import NotSupportedError, UserError
from slime.utils.flags import megatron, not_supported, sglang, slime_flags
# checkpoint.py still imports hf_model_type and is_megatron_checkpoint from here until it imports model_dirs.
from slime.utils.model_dirs import SUPPORTED_MODEL_TYPES, hf_model_type, is_megatron_checkpoint, load_hf_config

logger = logging.getLogger(__name__)

DESCRIPTION = """\
slime-style post-training: SFT and RL with a Megatron-core trainer behind a Ray driver.

SFT example (see scripts/run-qwen3-4B-base-sft.sh and docs/sft.md):
  python train_async.py --rollout-function-path slime.rollout.sft_rollout.generate_rollout \\
      --prompt-data data.parquet --input-key messages --rollout-batch-size 128 --global-batch-size 128 \\
      --loss-type sft_loss --calculate-per-token-loss --disable-compute-advantages-and-returns --debug-train-only ...
"""


class ArgumentValidationError(UserError, ValueError):
    """A combination of flags that cannot work; the message says which flags and why."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the description's layout and shows every flag's default."""


class SlimeArgumentParser(argparse.ArgumentParser):
    def known_option_strings(self) -> list[str]:
        return [s for action in self._actions for s in action.option_strings if s.startswith("--")]

    def unknown_flag_message(self, unknown: list[str]) -> str:
        known = self.known_option_strings()
        lines = []
        for i, token in enumerate(unknown):
            if not token.startswith("-"):
                if i == 0 or not unknown[i - 1].startswith("-"):  # not the value of an unknown flag
                    lines.append(f"unexpected value {token!r} (a flag given too many values, or a missing '--'?)")
                continue
            name = token.split("=", 1)[0]
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else ""
            lines.append(f"unknown flag {name}{hint}")
        return "; ".join(lines)


def build_parser(add_custom_arguments: Callable[[argparse.ArgumentParser], None] | None = None) -> SlimeArgumentParser:
    parser = SlimeArgumentParser(
        prog=os.path.basename(sys.argv[0]) or "slime",
        description=DESCRIPTION,
        # The full usage line of ~250 flags would bury the error message.
        usage="%(prog)s [flags]   (--help lists them by group)",
        formatter_class=HelpFormatter,
        allow_abbrev=False,
    )
    # User flags first, so that ours cannot silently replace them (a clash is an argparse error instead).
    if add_custom_arguments is not None:
        add_custom_arguments(parser)
    slime_flags.add_cluster_arguments(parser)
    slime_flags.add_data_arguments(parser)
    slime_flags.add_rollout_arguments(parser)
    megatron.add_parallel_and_training_arguments(parser)
    megatron.add_model_arguments(parser)
    megatron.add_optimizer_arguments(parser)
    megatron.add_checkpoint_arguments(parser)
    slime_flags.add_algorithm_arguments(parser)
    slime_flags.add_eval_arguments(parser)
    slime_flags.add_logging_arguments(parser)
    slime_flags.add_debug_arguments(parser)
    sglang.add_sglang_arguments(parser)
    return parser


def parse_args(
    argv: list[str] | None = None,
    add_custom_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.Namespace:
    """Parse, validate and derive. Exits with status 2 and a message naming the flags on a user mistake."""
    parser = build_parser(add_custom_arguments)
    argv = list(sys.argv[1:] if argv is None else argv)
    argv, passthrough = sglang.split_sglang_passthrough(argv, set(parser.known_option_strings()))
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.error(parser.unknown_flag_message(unknown))
    bad_sglang = sglang.check_passthrough_against_sglang(passthrough)
    if bad_sglang:
        parser.error("unknown SGLang flags: " + ", ".join(bad_sglang))
    for dest, value in passthrough.items():
        setattr(args, dest, value)
    args.sglang_passthrough = sorted(passthrough)
    try:
        _apply_custom_config(args)
        args.megatron_role_overrides = _read_megatron_config(args, {a.dest for a in parser._actions})
        _refuse_not_supported(args, parser)
        validate_args(args)
    except (UserError, FileNotFoundError) as exc:
        parser.error(str(exc))
    return args


def validate_args(args: argparse.Namespace) -> None:
    """slime's validation and derived values, then Megatron's, in the order slime applies them."""
    _validate_slime_args(args)
    _resolve_model_args_from_hf(args)
    _validate_megatron_args(args)


def _apply_custom_config(args: argparse.Namespace) -> None:
    if not args.custom_config_path:
        return
    import yaml

    with open(args.custom_config_path) as f:
        overrides = yaml.safe_load(f) or {}
    for key, value in overrides.items():
        logger.info("--custom-config-path overrides %s: %r -> %r", key, getattr(args, key, None), value)
        setattr(args, key, value)


# A role may not change the parallel layout: the rollout manager splits each rollout by the command line's layout.
_ROLE_FIXED_KEYS = ("tensor_model_parallel_size", "pipeline_model_parallel_size", "context_parallel_size",
                    "expert_model_parallel_size", "expert_tensor_parallel_size")
# slime lets the cluster flags decide devices and ignores these keys in a role's overrides.
_ROLE_IGNORED_KEYS = ("num_nodes", "num_gpus_per_node")


def _refuse_not_supported(args: argparse.Namespace, parser: SlimeArgumentParser) -> None:
    """Exit with every "not supported yet" flag at once: the command line's, then each role's overrides."""
    refused = not_supported.refusals(args, parser)
    defaults = {a.dest: parser.get_default(a.dest) for a in parser._actions}
    for role, overrides in args.megatron_role_overrides.items():
        # Defaults plus this role's overrides, so that only what the role itself sets is named.
        role_view = argparse.Namespace(**{**defaults, **overrides})
        refused += [f"{message} [--megatron-config-path, role {role}]"
                    for message in not_supported.refusals(role_view, parser)]
    if refused:
        parser.error("; ".join(refused))


def _read_megatron_config(args: argparse.Namespace, known: set[str]) -> dict[str, dict[str, Any]]:
    """slime's --megatron-config-path: `megatron: [{name, role: actor|critic, overrides: {flag: value}}]`, at most
    one entry per role. Returns {role: overrides}, values coerced to the flag's type as slime does."""
    if not args.megatron_config_path:
        return {}
    import yaml

    where = f"--megatron-config-path {args.megatron_config_path}"
    with open(args.megatron_config_path) as f:
        config = yaml.safe_load(f) or {}
    entries = config.get("megatron") if isinstance(config, dict) else None
    if not isinstance(entries, list):
        raise ArgumentValidationError(f"{where}: needs a top-level 'megatron' list, e.g. "
                                      "megatron: [{name: default, role: actor, overrides: {lr: 1e-6}}]")
    roles: dict[str, dict[str, Any]] = {}
    for entry in entries:
        role = entry.get("role") if isinstance(entry, dict) else None
        if role not in ("actor", "critic"):
            raise ArgumentValidationError(f"{where}: each entry needs role: actor or role: critic, got {entry!r}")
        if role in roles:
            raise ArgumentValidationError(f"{where}: more than one entry with role: {role}")
        overrides = {}
        for key, value in (entry.get("overrides") or entry.get("args") or {}).items():
            if key in _ROLE_IGNORED_KEYS:
                logger.info("%s: ignoring %s for role %s; devices follow the cluster flags", where, key, role)
                continue
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise ArgumentValidationError(f"{where}: role {role} overrides unknown flag {key!r}{hint}")
            if key in _ROLE_FIXED_KEYS:
                raise NotSupportedError(f"{where}: a role's {key}",
                                        "the rollout manager splits data by the command line's parallel layout")
            original = getattr(args, key)
            # YAML reads 1e-5 as a string; slime coerces a string to the flag's numeric type.
            if isinstance(value, str) and isinstance(original, (int, float)) and not isinstance(original, bool):
                try:
                    value = type(original)(value)
                except ValueError:
                    raise ArgumentValidationError(f"{where}: {key}: {value!r} is not a {type(original).__name__}")
            overrides[key] = value
        roles[role] = overrides
    return roles


def role_args(args: argparse.Namespace, role: str) -> argparse.Namespace:
    """The flags one trainer role runs with: the command line plus its --megatron-config-path overrides."""
    overrides = args.megatron_role_overrides.get(role, {})
    if overrides:
        logger.info("role %s overrides from --megatron-config-path: %s", role, overrides)
    result = copy.deepcopy(args)
    vars(result).update(overrides)
    result.role = role
    if role == "critic":
        _critic_view(result)
    return result


def _critic_view(args: argparse.Namespace) -> None:
    """The critic is the actor's network with a value head (so untied from the embedding), trained on value_loss,
    checkpointed beside the actor under {--save}/critic and resumed from {--load}/critic when that exists; it starts
    from --ref-load's weights like the actor and exports no HF model."""
    args.loss_type = "value_loss"
    args.untie_embeddings_and_output_weights = True
    args.save_hf = None
    args.save = os.path.join(args.save, "critic") if args.save else None
    own = os.path.join(args.load, "critic") if args.load else None
    if own is not None and is_megatron_checkpoint(own):
        args.load = own
    else:
        args.load, args.ckpt_step = args.ref_load, args.ref_ckpt_step
        args.finetune = args.no_load_optim = args.no_load_rng = True


def _resolve_eval_datasets(args: argparse.Namespace) -> None:
    args.eval_datasets = []
    if args.eval_config:
        import yaml

        with open(args.eval_config) as f:
            config = yaml.safe_load(f) or {}
        for entry in config.get("datasets", []):
            if "name" not in entry or "path" not in entry:
                raise ArgumentValidationError(f"--eval-config {args.eval_config}: each dataset needs name and path")
            args.eval_datasets.append({"name": entry["name"], "path": entry["path"], **entry})
        return
    data = args.eval_prompt_data
    if not data:
        return
    if len(data) == 1:
        # A bare path is named after its file, so its metrics read eval/<stem>/...
        stem = os.path.splitext(os.path.basename(data[0].split("@[")[0].rstrip("/")))[0] or "eval"
        data = [stem, data[0]]
    if len(data) % 2:
        raise ArgumentValidationError(f"--eval-prompt-data takes 'name path' pairs, got {len(data)} values: {data}")
    args.eval_datasets = [{"name": data[i], "path": data[i + 1]} for i in range(0, len(data), 2)]


def _resolve_load(args: argparse.Namespace) -> None:
    """slime's rule: --load resumes a Megatron checkpoint; otherwise the actor starts from --ref-load (finetune)."""
    if is_megatron_checkpoint(args.load):
        return
    args.no_load_optim = args.no_load_rng = args.finetune = True
    if hf_model_type(args.load) not in SUPPORTED_MODEL_TYPES:
        args.load = args.ref_load
        if args.ref_ckpt_step is not None:
            args.ckpt_step = args.ref_ckpt_step
    if args.start_rollout_id is None:
        args.start_rollout_id = 0


def _validate_slime_args(args: argparse.Namespace) -> None:
    _resolve_eval_datasets(args)
    if args.rollout_temperature <= 0:
        raise ArgumentValidationError(f"--rollout-temperature must be > 0, got {args.rollout_temperature}")
    if (args.kl_coef != 0 or args.use_kl_loss) and not (args.ref_load and os.path.exists(args.ref_load)):
        raise ArgumentValidationError(
            f"--kl-coef/--use-kl-loss need a reference model, but --ref-load {args.ref_load!r} does not exist"
        )
    _resolve_load(args)
    if args.eval_interval is not None and not args.eval_datasets:
        raise ArgumentValidationError("--eval-interval needs --eval-prompt-data or --eval-config")
    if args.save_interval is not None and not args.save:
        raise ArgumentValidationError("--save-interval needs --save (where would the checkpoints go?)")
    if args.kl_coef != 0 and args.kl_loss_coef != 0:
        raise ArgumentValidationError("use either --kl-coef (reward shaping) or --kl-loss-coef (loss term), not both")
    if args.advantage_estimator.startswith("reinforce_plus_plus") and not args.normalize_advantages:
        raise ArgumentValidationError(f"--advantage-estimator {args.advantage_estimator} needs --normalize-advantages")
    if args.use_rollout_logprobs and args.use_tis:
        raise ArgumentValidationError("--use-rollout-logprobs and --use-tis exclude each other")
    if args.get_mismatch_metrics and not args.custom_tis_function_path:
        raise ArgumentValidationError("--get-mismatch-metrics needs --custom-tis-function-path")
    if args.use_dynamic_batch_size and args.max_tokens_per_gpu is None:
        raise ArgumentValidationError("--use-dynamic-batch-size needs --max-tokens-per-gpu (the token budget)")
    if args.log_probs_max_tokens_per_gpu is None:
        args.log_probs_max_tokens_per_gpu = args.max_tokens_per_gpu
    if args.balance_by_flops:
        if not args.use_dynamic_batch_size:
            raise ArgumentValidationError("--balance-by-flops needs --use-dynamic-batch-size")
        args.balance_data = True
    if args.eps_clip_high is None:
        args.eps_clip_high = args.eps_clip
    if args.eval_reward_key is None:
        args.eval_reward_key = args.reward_key
    if args.dump_details:
        args.save_debug_rollout_data = os.path.join(args.dump_details, "rollout_data", "{rollout_id}.pt")
        args.save_debug_train_data = os.path.join(args.dump_details, "train_data", "{rollout_id}.pt")
    if args.save_debug_rollout_data and args.save_debug_rollout_data == args.load_debug_rollout_data:
        raise ArgumentValidationError("--save-debug-rollout-data and --load-debug-rollout-data must differ")
    if args.load_debug_rollout_data is not None:
        args.debug_train_only = True
    if args.debug_rollout_only and args.debug_train_only:
        raise ArgumentValidationError("--debug-rollout-only and --debug-train-only exclude each other")
    if args.debug_rollout_only and not (args.rollout_num_gpus or args.rollout_external_engine_addrs):
        raise ArgumentValidationError("--debug-rollout-only generates with inference engines: give --rollout-num-gpus "
                                      "(on a machine without GPUs, the number of CPU engine processes)")
    args.rollout_external = args.rollout_external_engine_addrs is not None
    args.use_critic = args.advantage_estimator == "ppo"
    if not args.use_critic and args.num_critic_only_steps:
        raise ArgumentValidationError("--num-critic-only-steps needs the critic of --advantage-estimator ppo")
    if args.offload:
        args.offload_train = args.offload_rollout = True
    del args.offload
    if args.colocate:
        if args.offload_train is None:
            args.offload_train = True
        if args.offload_rollout is None:
            args.offload_rollout = True
        if args.rollout_num_gpus is None:
            args.rollout_num_gpus = args.actor_num_nodes * args.actor_num_gpus_per_node
    else:
        args.offload_train = bool(args.offload_train)
        args.offload_rollout = bool(args.offload_rollout)
    if args.use_critic:
        args.offload_train = True
    if args.eval_function_path is None:
        args.eval_function_path = args.rollout_function_path
    if args.num_steps_per_rollout is not None:
        derived = args.rollout_batch_size * args.n_samples_per_prompt // args.num_steps_per_rollout
        if args.global_batch_size is not None and args.global_batch_size != derived:
            raise ArgumentValidationError(
                f"--num-steps-per-rollout {args.num_steps_per_rollout} implies --global-batch-size {derived}, "
                f"but {args.global_batch_size} was given"
            )
        args.global_batch_size = derived
    if args.n_samples_per_prompt == 1:
        args.grpo_std_normalization = False
    if args.over_sampling_batch_size is None:
        args.over_sampling_batch_size = args.rollout_batch_size
    if args.over_sampling_batch_size < args.rollout_batch_size:
        raise ArgumentValidationError("--over-sampling-batch-size must be >= --rollout-batch-size")
    if args.num_rollout is not None and args.num_epoch is not None:
        logger.info("--num-rollout %d given: ignoring --num-epoch %d", args.num_rollout, args.num_epoch)
        args.num_epoch = None
    elif args.num_rollout is None:
        if args.num_epoch is None:
            raise ArgumentValidationError("give --num-rollout or --num-epoch (how long to train)")
        if not args.rollout_global_dataset:
            raise ArgumentValidationError("--num-epoch needs the global dataset (--prompt-data without "
                                          "--disable-rollout-global-dataset); use --num-rollout instead")
    if args.rollout_global_dataset and args.num_epoch is not None and not args.prompt_data:
        raise ArgumentValidationError("--num-epoch needs --prompt-data (epochs of what?)")
    if args.rollout_max_context_len is not None:
        if args.rollout_max_prompt_len is None:
            args.rollout_max_prompt_len = args.rollout_max_context_len - 1
        if args.rollout_max_prompt_len > args.rollout_max_context_len:
            raise ArgumentValidationError("--rollout-max-prompt-len must be <= --rollout-max-context-len")
    if args.eval_max_context_len is None:
        args.eval_max_context_len = args.rollout_max_context_len
    if args.loss_type == "custom_loss" and not args.custom_loss_function_path:
        raise ArgumentValidationError("--loss-type custom_loss needs --custom-loss-function-path")
    if args.n_samples_per_prompt < 1 or args.rollout_batch_size < 1:
        raise ArgumentValidationError("--rollout-batch-size and --n-samples-per-prompt must be >= 1")


SFT_ROLLOUT = "slime.rollout.sft_rollout.generate_rollout"
GROUP_ESTIMATORS = ("grpo", "gspo", "cispo", "reinforce_plus_plus_baseline")


def validate_run(args: argparse.Namespace) -> None:
    """What a training run (train.py, train_async.py) needs beyond valid flags: RL needs generation (engines, or
    saved rollouts to replay) and groups to compare; the SFT reader needs no engines. --debug-train-only is a switch
    of its own, not what makes a run SFT. (Tests that build a trainer in-process parse RL flags without engines.)"""
    replays = bool(args.load_debug_rollout_data)
    if args.rollout_function_path == SFT_ROLLOUT and args.rollout_num_gpus and not args.debug_train_only:
        raise ArgumentValidationError(
            f"--rollout-function-path {SFT_ROLLOUT} reads its data and generates nothing: drop --rollout-num-gpus "
            "(no inference engines are needed for SFT)")
    if args.loss_type != "policy_loss":
        return
    if not args.compute_advantages_and_returns:
        raise ArgumentValidationError("--loss-type policy_loss trains on advantages: drop "
                                      "--disable-compute-advantages-and-returns")
    engines = bool(args.rollout_num_gpus or args.rollout_external_engine_addrs)
    if not args.debug_rollout_only and not replays and (args.debug_train_only or not engines):
        raise ArgumentValidationError(
            "RL (--loss-type policy_loss) generates its rollouts with inference engines: give --rollout-num-gpus N "
            "(on a machine without GPUs, N CPU engine processes), or --load-debug-rollout-data to replay saved "
            "rollouts" + (", and drop --debug-train-only" if args.debug_train_only else ""))
    if args.advantage_estimator in GROUP_ESTIMATORS and args.n_samples_per_prompt < 2:
        raise ArgumentValidationError(
            f"--advantage-estimator {args.advantage_estimator} compares the samples of a prompt's group: give "
            f"--n-samples-per-prompt of at least 2 (got {args.n_samples_per_prompt})")


# Megatron flag name -> (HF config key, how to read the HF value).
_HF_FIELDS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "num_layers": ("num_hidden_layers", int),
    "hidden_size": ("hidden_size", int),
    "ffn_hidden_size": ("intermediate_size", int),
    "num_attention_heads": ("num_attention_heads", int),
    "num_query_groups": ("num_key_value_heads", int),
    "kv_channels": ("head_dim", int),
    "norm_epsilon": ("rms_norm_eps", float),
    "rotary_base": ("rope_theta", float),
    "vocab_size": ("vocab_size", int),
    "untie_embeddings_and_output_weights": ("tie_word_embeddings", lambda tied: not tied),
}


def _resolve_model_args_from_hf(args: argparse.Namespace) -> None:
    """Fill the architecture from --hf-checkpoint when no model flags are given; otherwise check they agree."""
    config = load_hf_config(args.hf_checkpoint) if args.hf_checkpoint else None
    if config is None:
        return
    model_type = config.get("model_type")
    if args.num_layers is None:
        logger.info("no model flags given: taking the architecture from %s/config.json", args.hf_checkpoint)
        for flag, (key, read) in _HF_FIELDS.items():
            if config.get(key) is not None:
                setattr(args, flag, read(config[key]))
        args.group_query_attention = args.num_query_groups != args.num_attention_heads
        args.swiglu = config.get("hidden_act", "silu") == "silu"
        args.position_embedding_type = "rope"
        args.normalization = "RMSNorm"
        args.add_bias_linear = bool(config.get("mlp_bias", False))
        args.add_qkv_bias = model_type == "qwen2" or bool(config.get("attention_bias", False))
        args.qk_layernorm = model_type == "qwen3"
        return
    mismatches = []
    for flag, (key, read) in _HF_FIELDS.items():
        if config.get(key) is None:
            continue
        ours = getattr(args, flag)
        if flag == "num_query_groups" and not args.group_query_attention:
            ours = args.num_attention_heads
        if flag == "kv_channels" and ours is None and args.hidden_size and args.num_attention_heads:
            ours = args.hidden_size // args.num_attention_heads
        theirs = read(config[key])
        if ours is None or (isinstance(theirs, float) and not math.isclose(ours, theirs, rel_tol=1e-9)) or (
            not isinstance(theirs, float) and ours != theirs
        ):
            mismatches.append(f"--{flag.replace('_', '-')}={ours} but config.json {key}={config[key]}")
    if model_type == "qwen3" and not args.qk_layernorm:
        mismatches.append("qwen3 models need --qk-layernorm")
    if mismatches:
        raise ArgumentValidationError(
            f"model flags disagree with {args.hf_checkpoint}/config.json: " + "; ".join(mismatches)
        )


def _default_ffn_hidden_size(args: argparse.Namespace) -> int:
    if args.swiglu:
        # Megatron's SwiGLU default keeps the parameter count of a 4h MLP, rounded to a multiple of 64.
        return int((4 * args.hidden_size * 2 / 3) / 64) * 64
    return 4 * args.hidden_size


def _validate_megatron_args(args: argparse.Namespace) -> None:
    if args.use_rotary_position_embeddings:
        args.position_embedding_type = "rope"
    if args.fp16 and args.bf16:
        raise ArgumentValidationError("--fp16 and --bf16 exclude each other")
    # slime trains in bf16 unless fp16 is asked for; the device module falls back to fp32 on CPU.
    args.bf16 = not args.fp16
    tp, pp, cp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size, args.context_parallel_size
    args.world_size = args.actor_num_nodes * args.actor_num_gpus_per_node
    model_parallel = tp * pp * cp
    if args.world_size % model_parallel:
        raise ArgumentValidationError(
            f"{args.world_size} training devices (--actor-num-nodes x --actor-num-gpus-per-node) are not divisible by "
            f"TP x PP x CP = {tp} x {pp} x {cp}"
        )
    args.data_parallel_size = args.world_size // model_parallel
    if tp == 1:
        args.sequence_parallel = False
    if args.expert_tensor_parallel_size is None:
        args.expert_tensor_parallel_size = tp
    if args.global_batch_size is None:
        args.global_batch_size = args.micro_batch_size * args.data_parallel_size
    if args.recompute_granularity == "full" and args.recompute_method is None:
        raise ArgumentValidationError("--recompute-granularity full needs --recompute-method (uniform or block)")
    if args.use_distributed_optimizer is None:
        args.use_distributed_optimizer = args.optimizer == "adam"
    elif args.use_distributed_optimizer and args.optimizer != "adam":
        raise ArgumentValidationError(f"--use-distributed-optimizer needs --optimizer adam (Megatron's distributed "
                                      f"optimizer supports Adam only), got --optimizer {args.optimizer}")
    if args.log_interval < 1:
        raise ArgumentValidationError(f"--log-interval must be >= 1, got {args.log_interval}")
    if args.lr_warmup_fraction is not None and args.lr_warmup_iters:
        raise ArgumentValidationError("give --lr-warmup-fraction or --lr-warmup-iters, not both")
    if args.min_lr > args.lr:
        raise ArgumentValidationError(f"--min-lr {args.min_lr} is above --lr {args.lr}")
    if args.seq_length is None:
        args.seq_length = 4096
    if args.max_position_embeddings is None:
        args.max_position_embeddings = args.seq_length
    if args.hidden_size is not None and args.num_attention_heads is not None:
        if args.hidden_size % args.num_attention_heads and args.kv_channels is None:
            raise ArgumentValidationError("--hidden-size is not divisible by --num-attention-heads; set --kv-channels")
        if args.kv_channels is None:
            args.kv_channels = args.hidden_size // args.num_attention_heads
        if not args.group_query_attention:
            args.num_query_groups = args.num_attention_heads
        if args.num_attention_heads % args.num_query_groups:
            raise ArgumentValidationError("--num-attention-heads must be a multiple of --num-query-groups")
        if args.ffn_hidden_size is None:
            args.ffn_hidden_size = _default_ffn_hidden_size(args)
    if args.vocab_size is not None:
        multiple = args.make_vocab_size_divisible_by * tp
        args.padded_vocab_size = int(math.ceil(args.vocab_size / multiple) * multiple)


def compute_num_rollout(args: argparse.Namespace, dataset_size: int) -> int:
    """slime's epoch arithmetic: whole rollout batches per epoch times epochs, unless --num-rollout was given."""
    args.num_rollout_per_epoch = None
    if args.num_rollout is not None:
        return args.num_rollout
    per_epoch = dataset_size // args.rollout_batch_size
    if per_epoch == 0:
        raise ArgumentValidationError(
            f"the dataset has {dataset_size} usable rows, fewer than one --rollout-batch-size ({args.rollout_batch_size})"
        )
    args.num_rollout_per_epoch = per_epoch
    args.num_rollout = per_epoch * args.num_epoch
    return args.num_rollout

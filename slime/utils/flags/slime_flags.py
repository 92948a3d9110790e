"""slime's own flags: cluster layout, data, rollout, RL algorithm, evaluation, logging and debugging."""

from __future__ import annotations

import argparse
import json

LOSS_MASK_TYPES = ["qwen", "qwen3", "qwen3_5", "distill_qwen"]
ADVANTAGE_ESTIMATORS = ["grpo", "gspo", "cispo", "reinforce_plus_plus", "reinforce_plus_plus_baseline", "ppo"]
OVERLONG_POLICIES = ["truncate", "drop", "error"]


def json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {type(value).__name__}: {text!r}")
    return value


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("cluster", "Devices and processes. On a machine without GPUs a 'GPU' is a CPU worker.")
    g.add_argument("--actor-num-nodes", type=int, default=1, help="Nodes for the training actors.")
    g.add_argument(
        "--actor-num-gpus-per-node",
        type=int,
        default=8,
        help="Training actors per node: one per GPU, or one CPU worker each on a machine without GPUs.",
    )
    g.add_argument("--critic-num-nodes", type=int, default=None, help="Nodes for the PPO critic.")
    g.add_argument("--critic-num-gpus-per-node", type=int, default=None, help="Critic actors per node.")
    g.add_argument("--num-gpus-per-node", type=int, default=8, help="Devices per node of the cluster.")
    g.add_argument("--rollout-num-gpus", type=int, default=None, help="GPUs for inference engines in total.")
    g.add_argument("--rollout-num-gpus-per-engine", type=int, default=1, help="GPUs per SGLang engine (its TP).")
    g.add_argument("--colocate", action="store_true", help="Training and inference share the same GPUs.")
    g.add_argument("--offload", action="store_true", help="Shorthand for --offload-train --offload-rollout.")
    g.add_argument("--offload-train", action=argparse.BooleanOptionalAction, default=None, help="Put the trainers to sleep between rollouts: parameters and optimizer state to host memory, gradients freed, until they next train (GPU; a no-op on CPU). Default on with --colocate.")
    g.add_argument("--offload-rollout", action=argparse.BooleanOptionalAction, default=None, help="Put the engines to sleep (release_memory_occupation) while the trainers work (GPU; a no-op on CPU). Default on with --colocate.")
    g.add_argument("--train-backend", choices=["megatron", "fsdp"], default="megatron", help="Training backend.")
    g.add_argument(
        "--distributed-backend",
        choices=["nccl", "gloo"],
        default="nccl",
        help="torch.distributed backend on GPU (gloo is always used on CPU).",
    )
    g.add_argument("--distributed-timeout-minutes", type=int, default=10, help="Collective timeout.")
    g.add_argument(
        "--train-env-vars", type=json_object, default={}, help="JSON object of environment variables for trainers."
    )


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("data", "Prompt/chat data and how it is read.")
    g.add_argument(
        "--prompt-data",
        type=str,
        default=None,
        help="A .parquet or .jsonl file, a directory of shards, or a glob; 'path@[start:end]' takes a slice.",
    )
    g.add_argument("--input-key", type=str, default="input", help="Column with the prompt or the message list.")
    g.add_argument("--label-key", type=str, default=None, help="Column with the label (reference answer).")
    g.add_argument("--tool-key", type=str, default="tools", help="Column with tool schemas (list or JSON string).")
    g.add_argument("--metadata-key", type=str, default="metadata", help="Column with per-row metadata.")
    g.add_argument("--multimodal-keys", type=json_object, default=None, help="JSON map of media type to column.")
    g.add_argument(
        "--apply-chat-template",
        action="store_true",
        help="Render prompts through the tokenizer's chat template (RL prompts; SFT renders in the loss-mask step).",
    )
    g.add_argument("--apply-chat-template-kwargs", type=json_object, default={}, help="Extra template variables.")
    g.add_argument("--rollout-shuffle", action="store_true", help="Shuffle each epoch with seed rollout-seed+epoch.")
    g.add_argument("--rollout-seed", type=int, default=42, help="Seed of the data order and of sampling.")
    g.add_argument("--num-epoch", type=int, default=None, help="Derive --num-rollout from the dataset length.")
    g.add_argument(
        "--disable-rollout-global-dataset",
        action="store_false",
        dest="rollout_global_dataset",
        help="Do not read --prompt-data in the rollout manager (custom rollouts bring their own data).",
    )
    g.add_argument(
        "--data-source-path",
        type=str,
        default="slime.rollout.data_source.RolloutDataSourceWithBuffer",
        help="Dotted path of the data source class.",
    )
    g.add_argument("--start-rollout-id", type=int, default=None, help="Override the rollout to start from.")
    g.add_argument(
        "--loss-mask-type",
        choices=LOSS_MASK_TYPES,
        default="qwen",
        help="SFT loss-mask builder. qwen/qwen3/qwen3_5 all mask from one render of the whole conversation and work "
        "for any tokenizer with a chat template; distill_qwen trains the raw last message after a templated prompt.",
    )
    g.add_argument(
        "--sft-overlong-policy",
        choices=OVERLONG_POLICIES,
        default="drop",
        help="What the SFT reader does with a conversation longer than --rollout-max-context-len: "
        "drop it (replaced by the next one), truncate it, or stop with an error. Every case is counted.",
    )
    g.add_argument("--data-pad-size-multiplier", type=int, default=128, help="Pad packed streams to a multiple.")


def add_rollout_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("rollout", "How training data is produced each rollout step.")
    g.add_argument(
        "--rollout-function-path",
        type=str,
        default="slime.rollout.sglang_rollout.generate_rollout",
        help="Dotted path of generate_rollout(args, rollout_id, data_source, evaluation=False). "
        "SFT: slime.rollout.sft_rollout.generate_rollout.",
    )
    g.add_argument("--eval-function-path", type=str, default=None, help="Rollout function for eval (default: same).")
    g.add_argument("--rollout-batch-size", type=int, required=True, help="Prompts per rollout step (required).")
    g.add_argument("--n-samples-per-prompt", type=int, default=1, help="Samples per prompt (GRPO group size).")
    g.add_argument("--num-rollout", type=int, default=None, help="Rollout steps in total (wins over --num-epoch).")
    g.add_argument(
        "--rollout-max-context-len",
        type=int,
        default=None,
        help="Maximum tokens of prompt + response. For SFT, longer conversations follow --sft-overlong-policy.",
    )
    g.add_argument("--rollout-max-prompt-len", type=int, default=None, help="Drop longer prompts (string prompts).")
    g.add_argument("--rollout-max-response-len", type=int, default=None, help="Maximum new tokens per response.")
    g.add_argument("--rollout-temperature", type=float, default=1.0, help="Sampling temperature (> 0).")
    g.add_argument("--rollout-top-p", type=float, default=1.0, help="Nucleus sampling.")
    g.add_argument("--rollout-top-k", type=int, default=-1, help="Top-k sampling (-1: off).")
    g.add_argument("--rollout-stop", type=str, nargs="+", default=None, help="Stop strings.")
    g.add_argument("--rollout-stop-token-ids", type=int, nargs="+", default=None, help="Stop token ids.")
    g.add_argument("--rollout-skip-special-tokens", action="store_true", help="Strip special tokens from text.")
    g.add_argument("--over-sampling-batch-size", type=int, default=None, help="Prompts submitted per round.")
    g.add_argument("--dynamic-sampling-filter-path", type=str, default=None, help="Group filter (DAPO).")
    g.add_argument("--partial-rollout", action="store_true", help="Recycle aborted groups into the buffer.")
    g.add_argument("--mask-offpolicy-in-partial-rollout", action="store_true", help="Mask off-policy tokens.")
    g.add_argument("--custom-generate-function-path", type=str, default=None, help="Per-sample generate function.")
    g.add_argument("--rollout-sample-hook-path", action="append", default=None, help="Per-sample hook (repeatable).")
    g.add_argument("--buffer-filter-path", type=str, default=None, help="Buffer pop policy.")
    g.add_argument("--rollout-data-postprocess-path", type=str, default=None, help="Post-process train data.")
    g.add_argument("--rollout-sample-filter-path", type=str, default=None, help="Mark samples to remove.")
    g.add_argument("--rollout-all-samples-process-path", type=str, default=None, help="Process all groups.")
    g.add_argument("--custom-rollout-log-function-path", type=str, default=None, help="Custom rollout logging.")
    g.add_argument("--custom-eval-rollout-log-function-path", type=str, default=None, help="Custom eval logging.")
    g.add_argument(
        "--rollout-data-transport", choices=["object-store", "nixl"], default="object-store", help="Data transport."
    )
    g.add_argument("--update-weights-interval", type=int, default=1, help="Rollouts between weight syncs.")
    g.add_argument("--update-weight-mode", choices=["full", "delta"], default="full", help="Weight sync payload.")
    g.add_argument("--update-weight-transport", choices=["nccl", "disk"], default="nccl", help="Weight sync path.")
    g.add_argument("--update-weight-disk-dir", type=str, default=None, help="Directory for disk weight sync.")
    g.add_argument("--update-weight-buffer-size", type=int, default=512 * 1024**2, help="Bytes per sync bucket.")
    g.add_argument("--use-fault-tolerance", action="store_true", help="Health-check and restart engines.")
    g.add_argument("--rollout-health-check-interval", type=float, default=30.0, help="Seconds between checks.")
    g.add_argument("--rollout-health-check-timeout", type=float, default=30.0, help="Seconds before unhealthy.")
    g.add_argument(
        "--rollout-external-engine-addrs", type=str, nargs="+", default=None, help="Use running SGLang servers."
    )


def add_algorithm_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("algorithm", "Loss, rewards and advantages.")
    g.add_argument(
        "--loss-type",
        choices=["policy_loss", "sft_loss", "custom_loss"],
        default="policy_loss",
        help="Registered loss: policy_loss (RL), sft_loss (NLL of trained tokens), custom_loss.",
    )
    g.add_argument(
        "--custom-loss-function-path",
        type=str,
        default=None,
        help="fn(args, batch, logits, sum_of_sample_mean) -> (loss, metrics), with --loss-type custom_loss.",
    )
    g.add_argument(
        "--disable-compute-advantages-and-returns",
        action="store_false",
        dest="compute_advantages_and_returns",
        help="Skip reference/old log-prob forwards and advantages (SFT, custom losses).",
    )
    g.add_argument("--advantage-estimator", choices=ADVANTAGE_ESTIMATORS, default="grpo", help="Advantage estimator.")
    g.add_argument("--rm-type", type=str, default=None, help="Built-in reward model (rm_hub name).")
    g.add_argument("--rm-url", type=str, default=None, help="Remote reward model URL.")
    g.add_argument("--reward-key", type=str, default=None, help="Key of a dict reward to train on.")
    g.add_argument("--eval-reward-key", type=str, default=None, help="Key of a dict reward for eval.")
    g.add_argument("--group-rm", action="store_true", help="Score a prompt's samples together.")
    g.add_argument("--custom-rm-path", type=str, default=None, help="async fn(args, sample) -> reward.")
    g.add_argument("--custom-reward-post-process-path", type=str, default=None, help="(args, samples) -> rewards.")
    g.add_argument("--custom-convert-samples-to-train-data-path", type=str, default=None, help="Custom conversion.")
    g.add_argument("--custom-advantage-function-path", type=str, default=None,
                   help="fn(args, rollout_data) setting rollout_data['advantages'] and ['returns'] in place.")
    g.add_argument("--custom-tis-function-path", type=str, default=None,
                   help="fn(args, *, pg_loss, train_log_probs, rollout_log_probs, loss_masks, total_lengths, "
                   "response_lengths) -> (pg_loss, loss_masks, metrics), replacing --use-tis's clipped weights.")
    g.add_argument("--custom-pg-loss-reducer-function-path", type=str, default=None,
                   help="fn(total_lengths, response_lengths, loss_masks, calculate_per_token_loss) -> reducer of "
                   "the per-token policy-gradient loss (other metrics keep the default reduction).")
    g.add_argument("--kl-coef", type=float, default=0.0, help="KL penalty folded into the reward.")
    g.add_argument("--use-kl-loss", action="store_true", help="Add a KL(policy, reference) loss term.")
    g.add_argument("--kl-loss-coef", type=float, default=0.0, help="Weight of the KL loss.")
    g.add_argument("--kl-loss-type", choices=["k1", "k2", "k3", "low_var_kl"], default="k1", help="KL estimator.")
    g.add_argument("--use-unbiased-kl", action="store_true", help="Importance-weight the KL estimate.")
    g.add_argument("--entropy-coef", type=float, default=0.0, help="Entropy bonus.")
    g.add_argument("--eps-clip", type=float, default=0.2, help="PPO clip range.")
    g.add_argument("--eps-clip-high", type=float, default=None, help="Upper clip (default --eps-clip).")
    g.add_argument("--eps-clip-c", type=float, default=None, help="Dual-clip constant (> 1).")
    g.add_argument("--value-clip", type=float, default=0.2, help="Critic value clip.")
    g.add_argument("--gamma", type=float, default=1.0, help="Discount.")
    g.add_argument("--lambd", type=float, default=1.0, help="GAE lambda.")
    g.add_argument("--normalize-advantages", action="store_true", help="Whiten advantages over DP ranks.")
    g.add_argument(
        "--disable-grpo-std-normalization", action="store_false", dest="grpo_std_normalization", help="Mean only."
    )
    g.add_argument(
        "--disable-rewards-normalization", action="store_false", dest="rewards_normalization", help="Raw rewards."
    )
    g.add_argument("--use-tis", action="store_true", help="Truncated importance sampling.")
    g.add_argument("--tis-clip", type=float, default=2.0, help="TIS upper clip.")
    g.add_argument("--tis-clip-low", type=float, default=0.0, help="TIS lower clip.")
    g.add_argument("--get-mismatch-metrics", action="store_true", help="Log train/rollout log-prob mismatch.")
    g.add_argument("--use-opsm", action="store_true", help="Off-policy sequence masking: drop negative-advantage "
                   "tokens of sequences whose mean old-new log-prob gap exceeds --opsm-delta.")
    g.add_argument("--opsm-delta", type=float, default=1e-4, help="OPSM threshold on the sequence's mean KL.")
    g.add_argument("--use-rollout-logprobs", action="store_true", help="Use engine log-probs as old log-probs.")
    g.add_argument("--ref-update-interval", type=int, default=None, help="Refresh the reference every N rollouts.")
    g.add_argument("--keep-old-actor", action="store_true", help="Keep a copy of the previous actor.")
    g.add_argument("--num-critic-only-steps", type=int, default=0, help="Critic warm-up rollouts.")
    g.add_argument("--num-steps-per-rollout", type=int, default=None, help="Optimizer steps per rollout.")


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("evaluation", "Held-out evaluation (for SFT: validation loss).")
    g.add_argument("--eval-interval", type=int, default=None, help="Evaluate every N rollouts.")
    g.add_argument(
        "--eval-prompt-data", type=str, nargs="+", default=None, help="'name path' pairs, or a single path."
    )
    g.add_argument("--eval-config", type=str, default=None, help="YAML file of eval datasets.")
    g.add_argument("--n-samples-per-eval-prompt", type=int, default=1, help="Samples per eval prompt.")
    g.add_argument("--skip-eval-before-train", action="store_true", help="No eval at rollout 0.")
    g.add_argument("--eval-max-response-len", type=int, default=None, help="Default --rollout-max-response-len.")
    g.add_argument("--eval-max-context-len", type=int, default=None, help="Default --rollout-max-context-len.")
    g.add_argument("--eval-temperature", type=float, default=None, help="Default --rollout-temperature.")
    g.add_argument("--eval-top-p", type=float, default=None, help="Default --rollout-top-p.")
    g.add_argument("--eval-top-k", type=int, default=None, help="Default --rollout-top-k.")


def add_logging_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("logging", "Metrics sinks.")
    g.add_argument("--log-interval", type=int, default=1, help="Optimizer steps between log lines.")
    g.add_argument("--metrics-file", type=str, default=None, help="Append every metric as a JSON line to this file.")
    g.add_argument("--use-wandb", action="store_true", help="Log to Weights & Biases.")
    g.add_argument("--wandb-project", type=str, default=None, help="W&B project.")
    g.add_argument("--wandb-group", type=str, default=None, help="W&B group.")
    g.add_argument("--wandb-team", type=str, default=None, help="W&B entity.")
    g.add_argument("--wandb-key", type=str, default=None, help="W&B API key.")
    g.add_argument("--wandb-host", type=str, default=None, help="W&B server.")
    g.add_argument("--wandb-mode", choices=["online", "offline", "disabled"], default=None, help="W&B mode.")
    g.add_argument("--wandb-dir", type=str, default=None, help="W&B local directory.")
    g.add_argument("--wandb-run-id", type=str, default=None, help="Join this W&B run.")
    g.add_argument("--disable-wandb-random-suffix", action="store_true", help="No random group suffix.")
    g.add_argument("--wandb-always-use-train-step", action="store_true", help="Use train steps on every axis.")
    g.add_argument("--use-tensorboard", action="store_true", help="Log to TensorBoard.")
    g.add_argument("--tb-project-name", type=str, default=None, help="TensorBoard project directory.")
    g.add_argument("--tb-experiment-name", type=str, default=None, help="TensorBoard run directory.")
    g.add_argument("--log-passrate", action="store_true", help="Log pass@k.")
    g.add_argument("--log-multi-turn", action="store_true", help="Log multi-turn statistics.")
    g.add_argument("--log-correct-samples", action="store_true", help="Log statistics of correct samples.")
    g.add_argument("--log-reward-category", type=str, default=None, help="Metadata key to split rewards by.")


def add_debug_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("debug", "Run one side only; dump data.")
    g.add_argument("--debug-rollout-only", action="store_true", help="Generate only, no training.")
    g.add_argument("--debug-train-only", action="store_true", help="Train only; start no SGLang (SFT).")
    g.add_argument("--load-debug-rollout-data", type=str, default=None, help="Train on saved rollouts ({rollout_id}).")
    g.add_argument("--load-debug-rollout-data-subsample", type=float, default=None, help="Keep this fraction.")
    g.add_argument("--save-debug-rollout-data", type=str, default=None, help="Save rollouts ({rollout_id}).")
    g.add_argument("--save-debug-train-data", type=str, default=None, help="Save train data ({rollout_id}).")
    g.add_argument("--dump-details", type=str, default=None, help="Directory for all debug dumps.")
    g.add_argument("--check-weight-update-equal", action="store_true", help="Verify weight sync.")
    g.add_argument("--ci-test", action="store_true", help="Extra assertions used by CI.")
    g.add_argument("--custom-megatron-init-path", type=str, default=None, help="Hook fn(args) at trainer init.")
    g.add_argument("--custom-megatron-before-log-prob-hook-path", type=str, default=None, help="Hook.")
    g.add_argument("--custom-megatron-before-train-step-hook-path", type=str, default=None, help="Hook.")
    g.add_argument("--custom-model-provider-path", type=str, default=None, help="Custom Megatron model provider.")
    g.add_argument("--megatron-config-path", type=str, default=None, help="YAML of actor/critic overrides.")
    g.add_argument("--custom-config-path", type=str, default=None, help="YAML of argument overrides.")

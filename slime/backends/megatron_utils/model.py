"""Model, optimizer and schedule set-up, packed micro-batches, and the train / forward-only steps."""

from __future__ import annotations

import logging
import resource
import time
from argparse import Namespace
from functools import partial
from itertools import accumulate
from typing import Any, Callable, Iterator

import torch
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.transformer.module import Float16Module
from megatron.core.utils import get_model_config

from slime.backends.megatron_utils.attention import packed_sequences
from slime.backends.megatron_utils.cpu_bridges import cuda_literals_on_cpu
from slime.backends.megatron_utils.hf_weights import unwrap
from slime.backends.megatron_utils.loss import (
    compute_loss,
    get_log_probs_and_entropy,
    logit_spans,
    loss_function,
    report_step_metrics,
    response_positions,
)
from slime.backends.megatron_utils.model_provider import build_gpt_model, is_critic, use_transformer_engine
from slime.utils.device import device, has_gpu, params_dtype, peak_tflops, synchronize
from slime.utils.dp_schedule import first_fit_pack
from slime.utils.flops import training_flops
from slime.utils.memory_estimate import estimate_memory, format_estimate

logger = logging.getLogger(__name__)

# Per-sample keys that RL losses read, copied into a micro-batch when the rollout data has them.
OPTIONAL_KEYS = ("log_probs", "ref_log_probs", "advantages", "returns", "values", "rollout_log_probs")


def train_iters(args: Namespace) -> int:
    return args.num_rollout * args.rollout_batch_size * args.n_samples_per_prompt // args.global_batch_size


def setup_model_and_optimizer(args: Namespace) -> tuple[DistributedDataParallel, Any, OptimizerParamScheduler]:
    if has_gpu() and torch.distributed.get_rank() == 0:
        logger.info("%s", format_estimate(estimate_memory(args), args))
    model = build_gpt_model(args)
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=args.accumulate_allreduce_grads_in_fp32 or params_dtype(args) == torch.float32,
        overlap_grad_reduce=args.overlap_grad_reduce,
        overlap_param_gather=args.overlap_param_gather,
        use_distributed_optimizer=args.use_distributed_optimizer,
        check_for_nan_in_grad=True,
    )
    config = get_model_config(model)
    model = DistributedDataParallel(config=config, ddp_config=ddp_config, module=model)
    dtype = params_dtype(args)
    optimizer_config = OptimizerConfig(
        optimizer=args.optimizer,
        lr=args.lr,
        min_lr=args.min_lr,
        weight_decay=args.weight_decay,
        adam_beta1=args.adam_beta1,
        adam_beta2=args.adam_beta2,
        adam_eps=args.adam_eps,
        clip_grad=args.clip_grad,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        params_dtype=dtype,
        use_distributed_optimizer=args.use_distributed_optimizer,
    )
    with cuda_literals_on_cpu():
        optimizer = get_megatron_optimizer(optimizer_config, [model])
    _fuse_torch_adam(optimizer)
    config.grad_scale_func = optimizer.scale_loss
    config.no_sync_func = model.no_sync
    config.finalize_model_grads_func = finalize_model_grads
    return model, optimizer, build_scheduler(args, optimizer)


def _fuse_torch_adam(optimizer: Any) -> None:
    """Without Transformer Engine or Apex, Megatron falls back to torch's Adam, which on the CPU then updates
    parameter by parameter in about ten full passes over each; its fused kernel (CPU and CUDA alike) makes one, with
    the same formulas (results equal up to float rounding). Set before the first step, so a checkpoint saved from
    here records it and its step counters load on the parameters' device, as the fused kernel wants them."""
    for inner in getattr(optimizer, "chained_optimizers", [optimizer]):
        torch_optimizer = getattr(inner, "optimizer", None)
        if type(torch_optimizer) in (torch.optim.Adam, torch.optim.AdamW):
            for group in torch_optimizer.param_groups:
                group.update(fused=True, foreach=False)


def build_scheduler(args: Namespace, optimizer: Any) -> OptimizerParamScheduler:
    """Megatron's schedule, counted in samples as slime counts it (stepped by the global batch size)."""
    if args.lr_decay_style == "WSD":
        raise NotImplementedError("--lr-decay-style WSD is not supported yet")
    decay_steps = (args.lr_decay_iters or train_iters(args)) * args.global_batch_size
    if args.lr_warmup_fraction is not None:
        warmup_steps = int(args.lr_warmup_fraction * decay_steps)
    else:
        warmup_steps = args.lr_warmup_iters * args.global_batch_size
    return OptimizerParamScheduler(
        optimizer,
        init_lr=args.lr_warmup_init,
        max_lr=args.lr,
        min_lr=args.min_lr,
        lr_warmup_steps=warmup_steps,
        lr_decay_steps=max(decay_steps, 1),
        lr_decay_style=args.lr_decay_style,
        start_wd=args.weight_decay,
        end_wd=args.weight_decay,
        wd_incr_steps=max(decay_steps, 1),
        wd_incr_style="constant",
    )


def pad_length(args: Namespace, num_tokens: int) -> int:
    """Tokens appended to a packed micro-batch of `num_tokens` (to a multiple of TP x --data-pad-size-multiplier)."""
    return -num_tokens % (parallel_state.get_tensor_model_parallel_world_size() * args.data_pad_size_multiplier)


def get_batch(args: Namespace, shard: dict, indices: list[int]) -> dict:
    """One packed micro-batch: sequences concatenated into [1, T], padded with token 0 (as one extra sequence)
    to a multiple of TP x --data-pad-size-multiplier, with the sequence boundaries for attention.

    Host-to-device traffic is one copy per kind of data per micro-batch (tokens, loss masks, boundaries), and the
    boundaries are computed here once on the host instead of being read back from the device in every layer."""
    tokens = [shard["tokens"][i] for i in indices]
    lengths = [len(t) for t in tokens]
    pad = pad_length(args, sum(lengths))
    stream = torch.cat(tokens + ([torch.zeros(pad, dtype=torch.long)] if pad else []))
    bounds = list(accumulate(lengths + ([pad] if pad else []), initial=0))
    target = device()
    masks = [shard["loss_masks"][i] for i in indices]
    mask_flat = torch.cat(masks).to(target, non_blocking=True)
    batch = {
        "tokens": stream.unsqueeze(0).to(target, non_blocking=True),
        # Transformer Engine (attention, fused RoPE) reads cu_seqlens on the device; the local path on the host.
        "packed_seq_params": packed_sequences(bounds, target, cu_seqlens_on_device=use_transformer_engine(args)),
        "total_lengths": lengths,
        "response_lengths": [shard["response_lengths"][i] for i in indices],
        "loss_mask_flat": mask_flat,
        "loss_masks": list(mask_flat.split([len(m) for m in masks])),
        "rollout_mask_sums": shard["rollout_mask_sums"][indices].to(target, non_blocking=True),
        "unconcat_tokens": tokens,
    }
    batch["response_positions"] = response_positions(batch).to(target, non_blocking=True)
    for key in OPTIONAL_KEYS:
        if key in shard:
            batch[key] = [shard[key][i] for i in indices]
    return batch


def forward_logits(model: torch.nn.Module, batch: dict, responses_only: bool = False) -> torch.Tensor:
    """[1, T, vocab/TP] logits of a packed micro-batch, in the model's dtype: under bf16 Megatron's Float16Module
    would otherwise upcast the whole tokens-by-vocabulary tensor to fp32, which the chunked loss does per chunk.

    `responses_only`: [1, R, vocab/TP], the logits of the R positions that predict response tokens, in stream
    order (what the built-in losses and the log-prob and value passes read); prompts and padding skip the output
    layer, whose matmuls over the vocabulary, logits and logits' gradient dominate a small model's step. The batch
    records it (`logits_at_responses`) for the loss (`logit_spans`). A model whose output layer cannot select rows
    (sequence parallelism, a custom provider without one) returns every position."""
    inner = model.module if isinstance(model, DistributedDataParallel) else model
    kwargs = {"fp32_output": False} if isinstance(inner, Float16Module) else {}
    layer = _output_layer(model)
    selects = responses_only and hasattr(layer, "selected_rows")
    batch["logits_at_responses"] = selects
    if selects:
        layer.selected_rows = batch["response_positions"]
    try:
        return model(input_ids=batch["tokens"], position_ids=None, attention_mask=None,
                     packed_seq_params=batch["packed_seq_params"], **kwargs)
    finally:
        if selects:
            layer.selected_rows = None


def _output_layer(model: torch.nn.Module) -> torch.nn.Module | None:
    return getattr(unwrap(model), "output_layer", None)


def computes_response_logits_only(args: Namespace, model: torch.nn.Module) -> bool:
    """Whether a training step's output layer runs on the response positions only (`forward_logits`)."""
    return uses_response_logits_only(args) and hasattr(_output_layer(model), "selected_rows")


def uses_response_logits_only(args: Namespace) -> bool:
    """The built-in losses read the logits of response positions only; a custom loss gets every position."""
    return args.loss_type != "custom_loss"


def _forward_step(args: Namespace, num_microbatches: int, step_global_batch_size: int,
                  data_iterator: Iterator[dict], model: torch.nn.Module) -> tuple[torch.Tensor, Callable]:
    batch = next(data_iterator)
    logits = forward_logits(model, batch, uses_response_logits_only(args))
    return logits, partial(loss_function, args, batch, num_microbatches, step_global_batch_size)


def reset_optimizer_states(args: Namespace, optimizer: Any) -> None:
    """--reset-optimizer-states, as slime does at the start of every rollout's training: Adam's moments are zeroed
    and its step counter restarts (a group-level `step`, as fused Adam keeps it, and torch Adam's per-parameter
    `step`), so the next step is the first step of a fresh Adam from the current weights."""
    if not args.reset_optimizer_states:
        return
    for inner in getattr(optimizer, "chained_optimizers", [optimizer]):
        for group in inner.optimizer.param_groups:
            if "step" in group:
                group["step"] = 0
        for state in inner.optimizer.state.values():
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key].zero_()
            if "step" in state:
                state["step"] = torch.zeros_like(state["step"]) if torch.is_tensor(state["step"]) else 0


def train_one_step(args: Namespace, model, optimizer, scheduler, shard: dict, micro_batches: list[list[int]],
                   step_global_batch_size: int) -> dict[str, float]:
    model.train()
    model.zero_grad_buffer()
    optimizer.zero_grad()
    batches = (get_batch(args, shard, indices) for indices in micro_batches)
    step = partial(_forward_step, args, len(micro_batches), step_global_batch_size)
    lr = optimizer.param_groups[0]["lr"]  # the rate this step uses (the scheduler moves it after the step)
    synchronize()
    started = time.perf_counter()
    with cuda_literals_on_cpu():
        reports = get_forward_backward_func()(
            forward_step_func=step, data_iterator=batches, model=[model], num_microbatches=len(micro_batches),
            seq_length=max(sum(len(shard["tokens"][i]) for i in mb) for mb in micro_batches),
            micro_batch_size=1, forward_only=False,
        )
        update_successful, grad_norm, _ = optimizer.step()
    if update_successful:
        scheduler.step(increment=step_global_batch_size)
    synchronize()
    seconds = time.perf_counter() - started
    metrics = report_step_metrics(args, reports, step_global_batch_size)
    metrics.update(grad_norm=float(grad_norm) if grad_norm is not None else float("nan"),
                   lr=lr, step_time=seconds, update_successful=float(update_successful))
    metrics.update(throughput_metrics(args, shard, micro_batches, seconds,
                                      computes_response_logits_only(args, model)))
    return metrics


def throughput_metrics(args: Namespace, shard: dict, micro_batches: list[list[int]], seconds: float,
                       response_logits_only: bool) -> dict:
    """Tokens/s and TFLOP/s of this rank (FLOPs from the model shape and the real sequence lengths), MFU, the
    fraction of computed tokens that are padding, and the process's peak resident memory."""
    lengths = [len(shard["tokens"][i]) for mb in micro_batches for i in mb]
    padding = sum(pad_length(args, sum(len(shard["tokens"][i]) for i in mb)) for mb in micro_batches)
    # The output layer's work where it ran: the response positions when it selected them; one output for a
    # critic's value head.
    output_positions = sum(shard["response_lengths"][i] for mb in micro_batches for i in mb) \
        if response_logits_only else None
    # Each tensor-parallel rank does 1/TP of its data-parallel replica's work.
    flops = training_flops(args, lengths, output_positions, 1 if is_critic(args) else None) \
        / parallel_state.get_tensor_model_parallel_world_size()
    tflops = flops / max(seconds, 1e-9) / 1e12
    peak = peak_tflops(args)
    return {
        "tokens_per_s": sum(lengths) / max(seconds, 1e-9),
        "tflops": tflops,
        "mfu": tflops / peak if peak else float("nan"),
        "padding_fraction": padding / max(sum(lengths) + padding, 1),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        **({"peak_gpu_memory_gb": torch.cuda.max_memory_allocated() / 1024**3} if has_gpu() else {}),
    }


@torch.no_grad()
def forward_only_loss(args: Namespace, model, shard: dict, micro_batches: list[list[int]]) -> dict[str, float]:
    """The loss of a shard without training on it (validation), reduced over DP ranks like the training loss."""
    model.eval()
    reports = []
    for indices in micro_batches:
        batch = get_batch(args, shard, indices)
        reports.append(compute_loss(args, batch, forward_logits(model, batch, uses_response_logits_only(args)))[1])
    return report_step_metrics(args, reports, None, num_samples=sum(len(mb) for mb in micro_batches))


def log_prob_micro_batches(args: Namespace, shard: dict) -> list[list[int]]:
    """Micro-batches of a forward-only pass over the whole shard: packed up to --log-probs-max-tokens-per-gpu
    (default --max-tokens-per-gpu) with dynamic batch sizes, else --micro-batch-size samples each. No step structure:
    the pass has no optimizer step, so it packs across the training steps' boundaries."""
    indices = list(range(len(shard["tokens"])))
    if args.use_dynamic_batch_size:
        budget = args.log_probs_max_tokens_per_gpu or args.max_tokens_per_gpu
        return first_fit_pack([len(t) for t in shard["tokens"]], indices, budget)
    return [indices[i : i + args.micro_batch_size] for i in range(0, len(indices), args.micro_batch_size)]


@torch.no_grad()
def compute_log_probs(args: Namespace, model, shard: dict) -> list[torch.Tensor]:
    """Each sample's response log-probs under the model's current weights (fp32, on the host, in shard order), of
    the temperature-scaled distribution the engines sampled from; no gradient, eval mode."""
    model.eval()
    out: list[torch.Tensor | None] = [None] * len(shard["tokens"])
    for indices in log_prob_micro_batches(args, shard):
        batch = get_batch(args, shard, indices)
        log_probs, _ = get_log_probs_and_entropy(args, batch, forward_logits(model, batch, responses_only=True))
        for index, values in zip(indices, log_probs):
            out[index] = values.float().cpu()
    return out


@torch.no_grad()
def compute_values(args: Namespace, model, shard: dict) -> list[torch.Tensor]:
    """The critic's value of each response position (fp32, on the host, in shard order): the value head's output
    at the positions whose logits predict the response tokens, as value_loss reads them."""
    model.eval()
    out: list[torch.Tensor | None] = [None] * len(shard["tokens"])
    for indices in log_prob_micro_batches(args, shard):
        batch = get_batch(args, shard, indices)
        values = forward_logits(model, batch, responses_only=True)[0, :, 0]
        for index, (start, end) in zip(indices, logit_spans(batch)):
            out[index] = values[start:end].float().cpu()
    return out

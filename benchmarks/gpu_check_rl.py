"""The RL rows of the GPU readiness check (benchmarks/gpu_check.py), mixed into its `Check`:

- a GRPO rollout of two optimizer steps on the Qwen3-0.6B-shaped model in bf16, with --use-kl-loss against
  --ref-load's weights: the reference swapped in from host memory for its log-prob pass (the actor's weights
  bit-equal afterwards), the old-log-prob pass (two steps per rollout need it), the KL loss 0 and the PPO ratio 1
  on the first step, small afterwards;
- a PPO critic (the same network with a value head, from `role_args(args, "critic")`) regressing fixed rewards:
  its value loss falls, and its values cover every response token;
- --offload-train: a trainer asleep between two rollouts holds (almost) no device memory, a weight sync wakes only
  its parameters, and its second rollout trains exactly as a trainer that never slept;
- the weight-sync wire formats with device tensors: a flattened bucket of CUDA bf16 tensors pickled as CUDA IPC
  handles and opened by another process, a weight-update process group over NCCL (one rank: it forms and
  broadcasts; only several GPUs test the transfer itself), and a device tensor's checksum equal to its host copy's.

The same code runs on the CPU for --dry-run: tiny model in fp32, CPU tensors through shared memory, the group over
gloo (so the NCCL row says "skipped" there).
"""

from __future__ import annotations

import argparse
import base64
import math
import pickle
import time
from multiprocessing.reduction import ForkingPickler
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing

from slime.backends.megatron_utils.actor import MegatronTrainRayActor
from slime.backends.megatron_utils.hf_weights import unwrap
from slime.backends.megatron_utils.offload import TrainerMemory
from slime.backends.sglang_utils.weight_sync import (
    broadcast_bucket, deserialize_bucket, init_custom_process_group, serialize_bucket, tensor_checksum,
    unflatten_bucket)
from slime.utils.arguments import role_args
from slime.utils.device import device, has_gpu, synchronize
from slime.utils.misc import free_port
from slime.utils.train_data import convert_samples_to_train_data, post_process_rewards, split_train_data_by_dp
from slime.utils.types import Sample

RL_ROWS = ["RL step (GRPO, ref model, old log-probs)", "PPO critic step (value head)",
           "weight sync payloads on CUDA", "weight sync group (NCCL)", "trainer sleep (--offload-train)"]
# The KL to the reference and the PPO log-ratio on a rollout's first step compare the training forward with the
# forward-only passes at the same weights: 0 in fp32; in bf16 they may differ by rounding where the packing does.
FIRST_STEP_ATOL = {"cpu": 1e-6, "cuda": 1e-4}
# After one Adam step at lr 1e-5 the policy has barely moved; a PPO log-ratio this large means the old log-probs
# are not the policy's.
PPO_KL_SMALL = 0.05
CRITIC_LR = "1e-4"
CHILD_TIMEOUT_S = 180


def _params(actor: MegatronTrainRayActor) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in unwrap(actor.model).named_parameters()}


def _all_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[name], b[name]) for name in a)


def _receive_bucket(payload: str, replies: Any) -> None:
    """In a spawned process: open one `serialize_bucket` payload and send back each tensor's checksum and device.
    The CPU engine's `deserialize_bucket` opens shared-memory buckets and refuses CUDA IPC handles (its allow-list
    is for CPU tensors); those go to SGLang, which opens them with a plain unpickler, as done here."""
    try:
        refused = None
        try:
            named = deserialize_bucket(payload, "flattened_bucket")
        except pickle.UnpicklingError as exc:
            refused = str(exc)
            bucket = ForkingPickler.loads(base64.b64decode(payload))
            named = unflatten_bucket(bucket["flattened_tensor"], bucket["metadata"])
        replies.put({"checksums": {name: tensor_checksum(t) for name, t in named},
                     "devices": sorted({str(t.device) for _, t in named}), "refused": refused})
        del named
    except Exception as exc:  # noqa: BLE001 - reported by the parent as the row's error
        replies.put({"error": f"{type(exc).__name__}: {exc}"})


class RLChecks:
    """The RL rows; `Check` provides what they use."""

    dry_run: bool
    row: Callable[..., None]
    guarded: Callable[[str, Callable[[], None]], None]
    weights_dir: Callable[[], Path]
    small_flags: Callable[..., argparse.Namespace]

    def rl_rows(self) -> None:
        self.guarded(RL_ROWS[0], self.grpo_step)
        self.guarded(RL_ROWS[1], self.critic_step)
        self.guarded(RL_ROWS[2], self.weight_sync_payloads)
        self.guarded(RL_ROWS[3], self.weight_sync_group)
        self.guarded(RL_ROWS[4], self.trainer_sleep)

    def rl_flags(self, *extra: str) -> argparse.Namespace:
        """Two prompts of four samples each, two optimizer steps of four samples per rollout, the reference at the
        starting weights. Parsed as SFT, then switched to RL training: the parser's RL checks want inference
        engines, which an in-process trainer does not have."""
        args = self.small_flags("local", "--ref-load", str(self.weights_dir()), "--rollout-batch-size", "2",
                                "--n-samples-per-prompt", "4", "--global-batch-size", "4", *extra)
        args.loss_type, args.compute_advantages_and_returns = "policy_loss", True
        return args

    def rl_shard(self, args: argparse.Namespace, seed: int) -> dict:
        """One rollout: each prompt's responses of different lengths with random rewards, normalised within the
        prompt's group as the rollout manager does; the shard of the only data-parallel rank."""
        generator = torch.Generator().manual_seed(seed)
        prompt_len, shortest, longest = (8, 8, 24) if self.dry_run else (64, 64, 448)
        samples = []
        for group in range(args.rollout_batch_size):
            prompt = torch.randint(0, args.vocab_size, (prompt_len,), generator=generator).tolist()
            for _ in range(args.n_samples_per_prompt):
                length = int(torch.randint(shortest, longest + 1, (), generator=generator))
                response = torch.randint(0, args.vocab_size, (length,), generator=generator).tolist()
                samples.append(Sample(group_index=group, index=len(samples), tokens=prompt + response,
                                      response_length=length, loss_mask=[1] * length,
                                      reward=float(torch.randn((), generator=generator))))
        raw, rewards = post_process_rewards(args, samples)
        return split_train_data_by_dp(args, convert_samples_to_train_data(args, samples, rewards, raw), 1)[0]

    def grpo_step(self) -> None:
        args = self.rl_flags("--use-kl-loss", "--kl-loss-coef", "0.1", "--kl-loss-type", "low_var_kl")
        actor = MegatronTrainRayActor()
        actor.init(args)
        initial = _params(actor)
        shard = self.rl_shard(args, seed=0)
        tokens = sum(len(t) for t in shard["tokens"])
        steps = actor.train(0, shard)
        trained = _params(actor)
        started = time.perf_counter()
        with actor.reference.swapped_in(actor.model):
            synchronize()
            swap_s = time.perf_counter() - started
            inside = _params(actor)
        restored = _all_equal(_params(actor), trained)
        is_reference = _all_equal(inside, initial)
        moved = not _all_equal(trained, initial)
        first, second = steps[0], steps[-1]
        keys = ("loss", "pg_loss", "kl_loss", "entropy_loss", "ppo_kl", "grad_norm")
        finite = all(math.isfinite(step[key]) for step in steps for key in keys)
        atol = FIRST_STEP_ATOL[device().type]
        ok = (len(steps) == 2 and "log_probs_time" in first and "ref_log_probs_time" in first and finite
              and abs(first["kl_loss"]) <= atol and abs(first["ppo_kl"]) <= atol
              and abs(second["ppo_kl"]) < PPO_KL_SMALL and restored and is_reference and moved)
        dtype = next(actor.model.parameters()).dtype
        self.row(RL_ROWS[0], "ok" if ok else "FAIL",
                 f"{len(steps)} steps on {tokens} tokens, weights {dtype}: "
                 f"step 1 kl_loss {first['kl_loss']:.1e}, ppo_kl {first['ppo_kl']:.1e} (|.| <= {atol:g}); step 2 "
                 f"ppo_kl {second['ppo_kl']:.1e} (< {PPO_KL_SMALL:g}), kl_loss {second['kl_loss']:.1e}; losses "
                 f"{'finite' if finite else 'NOT FINITE'}; reference swapped in "
                 f"{'= initial weights' if is_reference else 'DIFFERS from the initial weights'}, actor "
                 f"{'bit-equal after' if restored else 'CHANGED by'} the swap{'' if moved else ' (but it never moved)'}"
                 f"; ref log-probs {first['ref_log_probs_time']:.2f} s (swap in {swap_s:.2f} s), old log-probs "
                 f"{first['log_probs_time']:.2f} s, steps {first['step_time']:.2f} + {second['step_time']:.2f} s",
                 kl_loss_step1=first["kl_loss"], ppo_kl_step1=first["ppo_kl"], ppo_kl_step2=second["ppo_kl"],
                 kl_loss_step2=second["kl_loss"], pg_loss_step1=first["pg_loss"],
                 ref_log_probs_s=first["ref_log_probs_time"], log_probs_s=first["log_probs_time"], swap_in_s=swap_s)

    def critic_step(self) -> None:
        """Fixed rewards and gamma = lambda = 1: the returns are the rewards whatever the values, a fixed target."""
        args = self.rl_flags("--advantage-estimator", "ppo", "--gamma", "1", "--lambd", "1", "--lr", CRITIC_LR)
        critic = MegatronTrainRayActor()
        critic.init(role_args(args, "critic"))
        head = unwrap(critic.model).output_layer.weight
        rollouts = 4
        losses = []
        lengths = self.rl_shard(args, seed=0)["response_lengths"]
        for rollout in range(rollouts):
            losses.append([step["value_loss"] for step in critic.train(rollout, self.rl_shard(args, seed=0))])
        values = critic.critic_values()
        covered = [v.shape[0] for v in values] == lengths
        finite = all(math.isfinite(x) for step in losses for x in step) and all(torch.isfinite(v).all() for v in values)
        # The same step's data in the first and the last rollout.
        first, last = losses[0][0], losses[-1][0]
        ok = finite and covered and last < first and tuple(head.shape) == (1, args.hidden_size)
        self.row(RL_ROWS[1], "ok" if ok else "FAIL",
                 f"value head {tuple(head.shape)} {head.dtype}; {rollouts} rollouts x {len(losses[0])} steps, Adam "
                 f"lr {CRITIC_LR}: value loss {first:.4f} -> {last:.4f} (x{last / first:.2f}); values "
                 f"{'cover every response token' if covered else 'DO NOT match the response lengths'}"
                 f"{'' if finite else '; NOT FINITE'}",
                 value_loss_first=first, value_loss_last=last)

    def weight_sync_payloads(self) -> None:
        """A colocated engine's input: a flattened bucket handed over by handle, opened by another process."""
        on = device()
        generator = torch.Generator(on).manual_seed(0)
        rows, cols = (64, 32) if self.dry_run else (2048, 1024)
        # An odd element count puts the next tensor at a byte offset that is no multiple of its row size.
        shapes = {"model.layers.0.self_attn.q_proj.weight": (rows, cols), "model.layers.0.input_layernorm.weight":
                  (cols + 1,), "model.layers.0.mlp.down_proj.weight": (cols, 3 * cols)}
        bucket = [(name, torch.randn(shape, generator=generator, device=on).to(torch.bfloat16))
                  for name, shape in shapes.items()]
        expected = {name: tensor_checksum(t) for name, t in bucket}
        host_equal = all(tensor_checksum(t.cpu()) == expected[name] for name, t in bucket)
        started = time.perf_counter()
        payload, keep_alive = serialize_bucket(bucket, "flattened_bucket")
        context = torch.multiprocessing.get_context("spawn")  # a CUDA context does not survive fork
        replies = context.Queue()
        receiver = context.Process(target=_receive_bucket, args=(payload, replies), daemon=True)
        receiver.start()
        try:
            reply = replies.get(timeout=CHILD_TIMEOUT_S)
        finally:
            receiver.join(timeout=60)
            if receiver.is_alive():
                receiver.kill()
        seconds = time.perf_counter() - started
        del keep_alive  # the receiver has closed its handles: the memory may go
        if "error" in reply:
            raise RuntimeError(f"the receiving process: {reply['error']}")
        equal = reply["checksums"] == expected
        same_device = reply["devices"] == [str(on)]
        nbytes = sum(t.numel() * t.element_size() for _, t in bucket)
        opened = ("deserialize_bucket" if reply["refused"] is None else
                  f"a plain unpickler as SGLang's (the CPU engine's deserialize_bucket refuses CUDA handles: "
                  f"{reply['refused']})")
        self.row(RL_ROWS[2], "ok" if equal and same_device and host_equal else "FAIL",
                 f"{len(bucket)} bf16 tensors, {nbytes / 2**20:.1f} MiB on {on}: the spawned process opened them on "
                 f"{', '.join(reply['devices'])} by {opened}; checksums {'equal' if equal else 'DIFFER'}; "
                 f"tensor_checksum on {on} {'=' if host_equal else '!='} on its host copy; {seconds:.1f} s with the "
                 f"process start", bytes=nbytes, seconds=seconds)

    def weight_sync_group(self) -> None:
        """The group of `init_custom_process_group` beside the trainer's own world, and a bucket broadcast over it."""
        backend = "nccl" if has_gpu() else "gloo"
        port = free_port()
        started = time.perf_counter()
        group = init_custom_process_group(backend=backend, init_method=f"tcp://127.0.0.1:{port}", world_size=1,
                                          rank=0, group_name=f"gpu-check-weights-{port}")
        try:
            generator = torch.Generator(device()).manual_seed(1)
            tensors = [torch.randn(shape, generator=generator, device=device()).to(torch.bfloat16)
                       for shape in ((1024, 1024), (4097,), (256, 3072))]
            before = [t.clone() for t in tensors]
            polls = []
            broadcast_bucket(tensors, group, poll=lambda: polls.append(None))
            synchronize()
            seconds = time.perf_counter() - started
            unchanged = all(torch.equal(a, b) for a, b in zip(tensors, before))
            size = dist.get_world_size(group)
        finally:
            dist.destroy_process_group(group)
        detail = (f"{backend} group of {size} rank beside the trainer's world (port {port}): formed, "
                  f"{len(tensors)} bf16 tensors broadcast from rank 0 {'unchanged' if unchanged else 'CHANGED'}, "
                  f"{seconds:.2f} s; one GPU cannot hold a second NCCL rank, so no transfer between ranks")
        if not has_gpu():
            self.row(RL_ROWS[3], "skipped", f"no GPU: NCCL not tried; the same code over gloo: {detail}")
            return
        self.row(RL_ROWS[3], "ok" if unchanged and size == 1 else "FAIL", detail, seconds=seconds)

    def trainer_sleep(self) -> None:
        """Two GRPO trainers on the same rollouts; one sleeps between them. On CPU (--dry-run) the trainer does not
        sleep (no-op), so the check puts it on the same mechanism with CPU storages."""
        args = self.rl_flags("--offload-train")
        plain, sleeper = MegatronTrainRayActor(), MegatronTrainRayActor()
        plain.init(args)
        sleeper.init(args)
        if sleeper.memory is None:
            sleeper.memory = TrainerMemory(sleeper.model, sleeper.optimizer, "cpu")
        expected = [plain.train(0, self.rl_shard(args, seed=0))]
        after_first = _params(plain)
        expected.append(plain.train(1, self.rl_shard(args, seed=1)))
        got = [sleeper.train(0, self.rl_shard(args, seed=0))]
        synchronize()
        awake = torch.cuda.memory_allocated() if has_gpu() else 0
        started = time.perf_counter()
        freed = sleeper.memory.sleep()
        sleep_s = time.perf_counter() - started
        asleep = torch.cuda.memory_allocated() if has_gpu() else 0
        with sleeper.memory.awake(parameters_only=True):  # what a weight sync reads
            synced_right = _all_equal(_params(sleeper), after_first)
        started = time.perf_counter()
        got.append(sleeper.train(1, self.rl_shard(args, seed=1)))
        wake_and_train_s = time.perf_counter() - started
        same = all([m["loss"] for m in a] == [m["loss"] for m in b] for a, b in zip(got, expected)) \
            and _all_equal(_params(sleeper), _params(plain))
        # On GPUs the allocator must really have handed the bytes back (not just our bookkeeping).
        released = awake - asleep >= 0.9 * freed if has_gpu() else True
        ok = same and synced_right and released and freed > 0
        where = (f"allocated {awake / 2**30:.2f} -> {asleep / 2**30:.2f} GiB" if has_gpu()
                 else "CPU storages, dry run")
        self.row(RL_ROWS[4], "ok" if ok else "FAIL",
                 f"{freed / 2**30:.3f} GiB freed in {sleep_s:.2f} s ({where}); woken parameters "
                 f"{'equal' if synced_right else 'DIFFER from'} the trained ones; the next rollout "
                 f"{'trains exactly as' if same else 'DIFFERS from'} a trainer that never slept (wake + train "
                 f"{wake_and_train_s:.2f} s)",
                 freed_bytes=freed, sleep_s=sleep_s, allocated_awake=awake, allocated_asleep=asleep)

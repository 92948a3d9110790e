"""Weight sync from the Megatron trainer to the inference engines (slime's `update_weights`).

`build_weight_updater(args, model, engine_urls)` picks the transport as slime picks its updater class:

* disk (`--update-weight-transport disk`): every rank takes part in writing an HF checkpoint (`save_hf_weights`,
  atomic) under `--update-weight-disk-dir`, and each engine reloads it (`/update_weights_from_disk`);
* tensor (`--colocate`): buckets of HF tensors are handed over in memory (`/update_weights_from_tensor`, a
  flattened bucket pickled as shared-memory handles on CPU, CUDA IPC handles on GPUs);
* distributed (the default, `--update-weight-transport nccl`): on the first sync trainer rank 0 and every engine
  rank form one process group (`/init_weights_update_group`; NCCL on GPUs, gloo on CPU), and each bucket is
  broadcast from rank 0 while every engine receives it (`/update_weights_from_distributed`).

Every rank calls `update(version)` at the same time: the first data-parallel replica gathers each parameter over
its tensor-parallel group (the converter's `gather_full`/`megatron_to_hf`) and only global rank 0 talks to the
engines. Buckets hold at most `--update-weight-buffer-size` bytes of parameters (a larger parameter goes alone).

A sync is all or nothing for what is served: rank 0 pauses generation on every engine and flushes its cache first,
sends the weight version with the last bucket only, and resumes generation only once every engine has taken the
whole version. A failure (an engine unreachable or refusing a request) raises an error naming the engine's URL and
leaves the engines paused, so the run stops without a mix of weights ever being served as new.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import shutil
import threading
import time
from argparse import Namespace
from typing import Any, Callable, Iterator

import requests
import torch
import torch.distributed as dist
from megatron.core import parallel_state

from slime.backends.megatron_utils.hf_weights import gather_full, megatron_to_hf, save_hf_weights, unwrap
from slime.backends.sglang_utils.sglang_engine import HTTP, flush_cache
from slime.backends.sglang_utils.weight_sync import (
    DEFAULT_GROUP_TIMEOUT, broadcast_bucket, init_custom_process_group, serialize_bucket, tensor_checksum)
from slime.utils.device import dist_backend
from slime.utils.errors import UserError
from slime.utils.misc import free_port

logger = logging.getLogger(__name__)

GROUP_NAME = "slime-pp_0"  # slime's name for the group of pipeline stage 0, the only stage here
CONNECT_TIMEOUT_S = 10.0
# A reply may wait for a whole bucket to arrive and load, or for a checkpoint to be read: as long as a collective.
REPLY_TIMEOUT_S = DEFAULT_GROUP_TIMEOUT.total_seconds()

NamedTensors = list[tuple[str, torch.Tensor]]


class WeightSyncError(UserError, RuntimeError):
    """A weight sync that could not complete; the message names the engine and what went wrong."""


def build_weight_updater(args: Namespace, model: torch.nn.Module, engine_urls: list[str]) -> WeightUpdater:
    """The updater for these engines' own server URLs (not the router's). Build it on every trainer rank."""
    if not engine_urls:
        raise ValueError("a weight updater needs the URLs of the inference engines; none were given")
    if args.update_weight_transport == "disk":
        if not args.update_weight_disk_dir:
            raise ValueError("--update-weight-transport disk needs --update-weight-disk-dir (a directory that the "
                             "trainer writes and every engine can read)")
        return DiskWeightUpdater(args, model, engine_urls)
    if args.colocate:
        return TensorWeightUpdater(args, model, engine_urls)
    return DistributedWeightUpdater(args, model, engine_urls)


def _spawn(fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future:
    """Run `fn` in a daemon thread: a request or rendezvous that never returns must not keep a failed run alive."""
    future: concurrent.futures.Future = concurrent.futures.Future()

    def run() -> None:
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the future
            future.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    return future


def _raise_if_failed(futures: list[concurrent.futures.Future]) -> None:
    for future in futures:
        if future.done() and future.exception() is not None:
            raise future.exception()


def _wait_all(futures: list[concurrent.futures.Future]) -> list[Any]:
    """Results in order; the first failure raises at once rather than after the others finish."""
    concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_EXCEPTION)
    _raise_if_failed(futures)
    return [future.result() for future in futures]


def _nbytes(named: NamedTensors) -> int:
    return sum(t.numel() * t.element_size() for _, t in named)


class WeightUpdater:
    """What every transport shares: the engines' pause and resume, buckets of gathered HF tensors, the check, the
    metrics. Subclasses move the bytes (`_transfer`)."""

    transport = ""

    def __init__(self, args: Namespace, model: torch.nn.Module, engine_urls: list[str]):
        self.args, self.model = args, model
        self.urls = [url.rstrip("/") for url in engine_urls]
        self.sender = dist.get_rank() == 0
        # Only the first data-parallel replica gathers (the others hold the same weights), as for an HF export.
        self.gathers = parallel_state.get_data_parallel_rank(with_context_parallel=True) == 0
        self._tp_sizes: list[int] | None = None

    # ---- the sync ------------------------------------------------------------------------------------------------
    def update(self, weight_version: int) -> dict[str, float]:
        """Push the trainer's weights to every engine as `weight_version`; collective over all trainer ranks. Rank
        0 returns the metrics (seconds, bytes, bytes/s); the other ranks return {}."""
        started = time.perf_counter()
        if self.args.use_distributed_optimizer and self.args.overlap_param_gather:
            # The last optimizer step's parameter all-gather is otherwise left for the next forward to finish.
            self.model.start_param_sync(force_sync=True)
        nbytes = self._transfer(weight_version)
        if self.args.check_weight_update_equal:
            self.verify()
        if not self.sender:
            return {}
        self._post_all("/continue_generation", {})
        seconds = time.perf_counter() - started
        logger.info("weight sync to version %d (%s, %d engines): %.1f MB in %.2f s, %.1f MB/s", weight_version,
                    self.transport, len(self.urls), nbytes / 1e6, seconds, nbytes / 1e6 / seconds)
        return {"perf/update_weights_time": seconds, "perf/update_weights_bytes": float(nbytes),
                "perf/update_weights_bytes_per_s": nbytes / seconds}

    def _transfer(self, weight_version: int) -> int:
        """Pause the engines (rank 0) and move the weights; returns the bytes moved (on rank 0)."""
        raise NotImplementedError

    def _pause(self) -> None:
        """slime's order before new weights: abort and hold generation, then flush each engine's cache."""
        # Every reachable engine is paused before an unreachable one's error propagates: none may go on serving
        # while the run stops over a failed sync.
        pauses = [_spawn(self._post, url, "/pause_generation", {}) for url in self.urls]
        concurrent.futures.wait(pauses)
        _raise_if_failed(pauses)
        _wait_all([_spawn(self._flush, url) for url in self.urls])

    def _flush(self, url: str) -> None:
        try:
            flush_cache(url)
        except (requests.RequestException, TimeoutError) as exc:
            raise WeightSyncError(f"engine {url} could not flush its cache before the weight sync: "
                                  f"{type(exc).__name__}: {_first_line(exc)}") from None

    def verify(self) -> None:
        """--check-weight-update-equal: every engine holds exactly the trainer's tensors. Collective like a sync
        (the tensors are gathered again); raises naming the engine and the first tensor that differs."""
        expected = {name: tensor_checksum(t) for bucket, _ in self._hf_buckets() for name, t in bucket}
        if not self.sender:
            return
        replies = _wait_all([_spawn(self._post, url, "/weights_checker", {"action": "checksum"})
                             for url in self.urls])
        for url, reply in zip(self.urls, replies):
            reported = (reply or {}).get("checksums") or {}
            for name, checksum in expected.items():
                if name not in reported:
                    raise WeightSyncError(f"--check-weight-update-equal: engine {url} reports no checksum for {name} "
                                          "(it must report per-tensor checksums under HF names, as the CPU engine "
                                          "does)")
                if reported[name] != checksum:
                    raise WeightSyncError(f"--check-weight-update-equal: engine {url} holds a different {name} "
                                          "than the trainer after the weight sync")
        logger.info("--check-weight-update-equal: %d engines hold the trainer's %d tensors", len(self.urls),
                    len(expected))

    # ---- tensors -------------------------------------------------------------------------------------------------
    def _plan(self) -> list[list[tuple[str, torch.nn.Parameter]]]:
        """Megatron parameters grouped so that each group's full (unsharded) size fits the buffer. Planned from
        shapes, so every rank agrees and the last bucket is known before anything is gathered."""
        tp_size = parallel_state.get_tensor_model_parallel_world_size()
        plan: list[list[tuple[str, torch.nn.Parameter]]] = [[]]
        filled = 0
        for name, param in unwrap(self.model).named_parameters():
            size = param.numel() * param.element_size() * (tp_size if getattr(param, "tensor_model_parallel", False)
                                                           else 1)
            if plan[-1] and filled + size > self.args.update_weight_buffer_size:
                plan.append([])
                filled = 0
            plan[-1].append((name, param))
            filled += size
        return plan

    @torch.no_grad()
    def _hf_buckets(self) -> Iterator[tuple[NamedTensors, bool]]:
        """(bucket of HF-named full tensors, is it the last) per planned group. Rank 0 gets the tensors; the other
        ranks of the first replica take part in the tensor-parallel gathers and get empty buckets; the other
        replicas iterate over nothing."""
        if not self.gathers:
            return
        plan = self._plan()
        for index, params in enumerate(plan):
            bucket: NamedTensors = []
            for name, param in params:
                full = gather_full(name, param, self.args, dst=0)
                if full is None:
                    continue
                # Tied output weights are the embedding's: sent once, under its name, as in an HF export.
                bucket += [(hf_name, tensor.contiguous()) for hf_name, tensor in megatron_to_hf(name, full, self.args)
                           if hf_name != "lm_head.weight" or self.args.untie_embeddings_and_output_weights]
            yield bucket, index == len(plan) - 1

    # ---- HTTP ----------------------------------------------------------------------------------------------------
    def _post(self, url: str, path: str, body: dict[str, Any]) -> Any:
        """POST to one engine; a refusal or an unreachable engine raises WeightSyncError naming it."""
        try:
            reply = HTTP.post(f"{url}{path}", json=body, timeout=(CONNECT_TIMEOUT_S, REPLY_TIMEOUT_S))
        except requests.RequestException as exc:
            raise WeightSyncError(f"engine {url} is unreachable during the weight sync ({path}: "
                                  f"{type(exc).__name__})") from None
        try:
            data = reply.json() if reply.content else None
        except ValueError:
            data = None
        if reply.status_code != 200 or (isinstance(data, dict) and data.get("success") is False):
            message = data.get("message") if isinstance(data, dict) else reply.text
            raise WeightSyncError(f"engine {url} refused {path} during the weight sync (HTTP {reply.status_code}): "
                                  f"{_first_line(message)}")
        return data

    def _post_all(self, path: str, body: dict[str, Any]) -> list[Any]:
        return _wait_all([_spawn(self._post, url, path, body) for url in self.urls])

    def _engine_tp_sizes(self) -> list[int]:
        """Ranks per engine (its tensor-parallel size, from /server_info: 1 for a CPU engine)."""
        if self._tp_sizes is None:
            sizes = []
            for url in self.urls:
                try:
                    reply = HTTP.get(f"{url}/server_info", timeout=(CONNECT_TIMEOUT_S, 60))
                    sizes.append(int(reply.json().get("tp_size", 1)))
                except (requests.RequestException, ValueError) as exc:
                    raise WeightSyncError(f"engine {url} is unreachable during the weight sync (/server_info: "
                                          f"{type(exc).__name__})") from None
            self._tp_sizes = sizes
        return self._tp_sizes

    def close(self) -> None:
        """Release what the transport holds between syncs (the distributed group); the engines keep their weights."""


def _first_line(value: Any) -> str:
    lines = str(value).strip().splitlines()
    return lines[0][:500] if lines else ""


def _version_field(weight_version: int, last: bool) -> dict[str, str]:
    # Only the last bucket names the version: an engine that took part of an update still reports the old one.
    return {"weight_version": str(weight_version)} if last else {}


class DistributedWeightUpdater(WeightUpdater):
    """Broadcast over a process group of trainer rank 0 and every engine rank, joined on the first sync."""

    transport = "distributed"

    def __init__(self, args: Namespace, model: torch.nn.Module, engine_urls: list[str]):
        super().__init__(args, model, engine_urls)
        self.group: dist.ProcessGroup | None = None

    def _connect(self) -> None:
        """Trainer rank 0 is rank 0 of the group; engine k's ranks follow those of the engines before it. The
        engines are asked to join first (their replies come once the group exists), then rank 0 hosts the
        rendezvous; an engine that cannot join fails the sync at once, not after the rendezvous timeout."""
        sizes = self._engine_tp_sizes()
        # MASTER_ADDR is rank 0's node address in a Ray run (the trainers' own rendezvous), loopback alone.
        address = os.environ.get("MASTER_ADDR", "127.0.0.1")
        port = free_port(address)
        for url in self.urls:  # a group left by an earlier trainer process under the same name
            try:
                self._post(url, "/destroy_weights_update_group", {"group_name": GROUP_NAME})
            except WeightSyncError:
                pass
        offsets = [1 + sum(sizes[:k]) for k in range(len(sizes))]
        joins = [_spawn(self._post, url, "/init_weights_update_group", {
            "master_address": address, "master_port": port, "rank_offset": offset, "world_size": 1 + sum(sizes),
            "group_name": GROUP_NAME, "backend": dist_backend(self.args)}) for url, offset in zip(self.urls, offsets)]
        group = _spawn(lambda: init_custom_process_group(
            backend=dist_backend(self.args), init_method=f"tcp://{address}:{port}", world_size=1 + sum(sizes), rank=0,
            group_name=GROUP_NAME))
        self.group = _wait_all([*joins, group])[-1]
        logger.info("weight-update group %s: trainer rank 0 and %d engine ranks at %s:%d", GROUP_NAME, sum(sizes),
                    address, port)

    def _transfer(self, weight_version: int) -> int:
        if self.sender:
            if self.group is None:
                self._connect()
            self._pause()
        nbytes = 0
        for bucket, last in self._hf_buckets():
            if not self.sender:
                continue
            body = {"names": [n for n, _ in bucket], "dtypes": [str(t.dtype).removeprefix("torch.") for _, t in bucket],
                    "shapes": [list(t.shape) for _, t in bucket], "group_name": GROUP_NAME, "flush_cache": False,
                    **_version_field(weight_version, last)}
            replies = [_spawn(self._post, url, "/update_weights_from_distributed", body) for url in self.urls]
            broadcast_bucket([t for _, t in bucket], self.group, poll=lambda: _raise_if_failed(replies))
            _wait_all(replies)
            nbytes += _nbytes(bucket)
        return nbytes

    def close(self) -> None:
        if self.group is None:
            return
        for url in self.urls:
            try:
                self._post(url, "/destroy_weights_update_group", {"group_name": GROUP_NAME})
            except WeightSyncError as exc:
                logger.warning("leaving the weight-update group: %s", exc)
        dist.destroy_process_group(self.group)
        self.group = None


class TensorWeightUpdater(WeightUpdater):
    """--colocate: each bucket is flattened and handed over in memory. The same payload goes to every rank of every
    engine (each SGLang TP rank loads the full tensors it needs); it is kept alive until all have replied."""

    transport = "tensor"

    def _transfer(self, weight_version: int) -> int:
        if self.sender:
            self._pause()
        nbytes = 0
        for bucket, last in self._hf_buckets():
            if not self.sender:
                continue
            payload, keep_alive = serialize_bucket(bucket, "flattened_bucket")
            _wait_all([_spawn(self._post, url, "/update_weights_from_tensor", {
                "serialized_named_tensors": [payload] * size, "load_format": "flattened_bucket", "flush_cache": False,
                **_version_field(weight_version, last)}) for url, size in zip(self.urls, self._engine_tp_sizes())])
            del keep_alive
            nbytes += _nbytes(bucket)
        return nbytes


class DiskWeightUpdater(WeightUpdater):
    """An HF checkpoint per version under --update-weight-disk-dir, reloaded by every engine; the previous
    version's directory is removed once the engines have moved on."""

    transport = "disk"

    def __init__(self, args: Namespace, model: torch.nn.Module, engine_urls: list[str]):
        super().__init__(args, model, engine_urls)
        self.previous: str | None = None

    def _transfer(self, weight_version: int) -> int:
        path = os.path.join(self.args.update_weight_disk_dir, f"weight_v{weight_version:06d}")
        save_hf_weights(self.model, self.args, path, origin_hf_dir=self.args.hf_checkpoint)
        if not self.sender:
            return 0
        self._pause()
        self._post_all("/update_weights_from_disk", {"model_path": path, "weight_version": str(weight_version)})
        if self.previous not in (None, path):
            shutil.rmtree(self.previous, ignore_errors=True)
        self.previous = path
        return sum(os.path.getsize(os.path.join(path, name)) for name in os.listdir(path)
                   if name.endswith(".safetensors"))

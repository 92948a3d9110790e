"""The rollout manager: a Ray actor that owns the data source and the rollout function, and turns each rollout's
samples into one training shard per data-parallel rank (each trainer receives only its own)."""

from __future__ import annotations

import logging
import math
import threading
import time
from argparse import Namespace
from dataclasses import dataclass
from typing import Any, Callable

import ray
import requests

from slime.backends.sglang_utils.sglang_engine import HTTP, Router, SGLangEngine, unregister_worker
from slime.ray.placement_group import Placement
from slime.rollout.base_types import call_rollout_fn, check_eval_output, check_train_output, dataset_checks
from slime.utils.logging_utils import configure_worker_process
from slime.utils.misc import load_function, load_tokenizer
from slime.utils.train_data import (
    REQUIRED_TRAIN_KEYS,
    convert_samples_to_train_data,
    load_debug_rollout_data,
    post_process_rewards,
    save_debug_rollout_data,
    split_eval_data_by_dp,
    split_train_data_by_dp,
    shard_arrays,
)
from slime.utils.types import Sample

logger = logging.getLogger(__name__)


@dataclass
class EvalResult:
    """What `RolloutManager.eval` returns: metrics to log (eval/<dataset>...) and, for an SFT eval function, the
    held-out shards per dataset (object refs, one per data-parallel rank) whose validation loss the trainers
    compute. Refs nested in a returned object stay refs: the driver hands each trainer its own."""

    metrics: dict[str, float]
    loss_shards: dict[str, list[ray.ObjectRef]]


def request_rollout(args: Namespace, rollout_manager: Any, rollout_id: int) -> tuple[ray.ObjectRef, list]:
    """Ask the rollout manager for rollout `rollout_id`, without waiting: refs to its metrics and to its shards, one
    per data-parallel rank. The shards are the task's own return values, so Ray moves each the cheapest way: a small
    one (under Ray's inline limit, 100 KiB by default) travels inline in the trainer's task, a larger one stays in
    the object store, where only its trainers fetch it; the driver never copies a large one."""
    metrics, *shards = rollout_manager.generate.options(num_returns=1 + args.data_parallel_size).remote(rollout_id)
    return metrics, shards


class EngineDiedError(RuntimeError):
    """An inference engine's server stopped during a run without --use-fault-tolerance."""


class RolloutManager:
    def __init__(self, args: Namespace, placement: Placement | None = None):
        configure_worker_process()  # as a Ray actor, it logs like the driver (rollout functions, rewards, data)
        self.args = args
        self.router: Router | None = None
        self.placement = placement
        # One slot per engine; a slot is None (actor and URL) between an engine's death and its restart.
        self.engines: list[Any] = []
        self.engine_url_list: list[str | None] = []
        self.slots_lock = threading.Lock()
        self.monitor: EngineMonitor | None = None
        if needs_engines(args) and args.rollout_external:
            self._attach_external_engines()
        elif needs_engines(args):
            self._start_engines()
            self.monitor = EngineMonitor(self)
        self.data_source = load_function(args.data_source_path)(args)
        self.generate_rollout = load_function(args.rollout_function_path)
        self.eval_generate_rollout = load_function(args.eval_function_path)
        # The cursor as of the end of each generated rollout: with train_async.py, rollout N+1 is already drawn
        # when rollout N is saved, and saving the live cursor would skip a batch on resume.
        self.cursor_after: dict[int, dict[str, Any]] = {}
        # The rollout functions (SFT's reader, SGLang's) load the tokenizer on their first call, which waits for
        # the trainers; loading it now overlaps that second or more with the trainers' start. A failure is left to
        # that first call, which reports it.
        self.tokenizer_loading = threading.Thread(target=_load_tokenizer_quietly, args=(args.hf_checkpoint,),
                                                  name="tokenizer-load", daemon=True)
        if args.hf_checkpoint:
            self.tokenizer_loading.start()

    def _new_engine(self, rank: int) -> Any:
        """An engine actor for slot `rank`, on that slot's devices of the rollout share of the placement group."""
        uses_gpus = bool(self.placement and self.placement.uses_gpus)
        # A fraction of the bundle, as slime asks, so that a trainer can share it (--debug-rollout-only); the
        # server process the actor starts is not counted by Ray either way.
        options: dict[str, Any] = {"num_cpus": 0.2 if uses_gpus else 0, "num_gpus": 0.2 if uses_gpus else 0}
        if self.placement is not None and self.placement.pg is not None:
            options["scheduling_strategy"] = self.placement.strategy(rank * self.args.rollout_num_gpus_per_engine)
        return ray.remote(SGLangEngine).options(**options).remote(self.args, rank, uses_gpus)

    def _start_engines(self) -> None:
        """The router, then one engine actor per `--rollout-num-gpus-per-engine` devices of the rollout share;
        the run's rollout function reaches them through the router's address in args."""
        args = self.args
        self.router = Router(args)
        num_engines = args.rollout_num_gpus // args.rollout_num_gpus_per_engine
        self.engines = [self._new_engine(rank) for rank in range(num_engines)]
        urls = ray.get([engine.init.remote() for engine in self.engines])
        self.engine_url_list = urls
        self.router.wait_for_workers(args, urls)
        logger.info("%d inference engines behind the router at %s:%s", num_engines, args.sglang_router_ip,
                    args.sglang_router_port)

    def _attach_external_engines(self) -> None:
        """--rollout-external-engine-addrs: servers someone else started and stops. Each must answer
        /server_info; they are registered with the router (started here unless --sglang-router-ip is given) and
        are neither health-checked nor restarted (their lifecycle is not this run's, as in slime)."""
        args = self.args
        urls = []
        for addr in args.rollout_external_engine_addrs:
            url = addr.rstrip("/") if "://" in addr else f"http://{addr.rstrip('/')}"
            problems = []
            for endpoint in ("/server_info", "/get_server_info"):  # older SGLang servers have only the second
                try:
                    HTTP.get(f"{url}{endpoint}", timeout=30).raise_for_status()
                    break
                except requests.RequestException as exc:
                    problems.append(f"{endpoint}: {exc}")
            else:
                raise ValueError(f"--rollout-external-engine-addrs {addr}: no SGLang server answers at {url} "
                                 f"({'; '.join(problems)})")
            urls.append(url)
        self.router = Router(args)
        for url in urls:
            HTTP.post(f"{router_base(args)}/workers", json={"url": url}, timeout=30).raise_for_status()
        self.router.wait_for_workers(args, urls)
        self.engine_url_list = urls
        logger.info("%d external inference engines behind the router at %s", len(urls), router_base(args))

    def engine_urls(self) -> list[str]:
        """The live engines' own server addresses (not the router's): weight updates go to each engine directly.
        After `recover_engines` restarted any, the list holds their new addresses."""
        with self.slots_lock:
            return [url for url in self.engine_url_list if url is not None]

    def retire_engine(self, rank: int, reason: str) -> None:
        """Take a failed engine out of service (--use-fault-tolerance): off the router first, so no new request
        reaches it, then its server and actor are stopped; its slot waits for `recover_engines`."""
        with self.slots_lock:
            engine, url = self.engines[rank], self.engine_url_list[rank]
            self.engines[rank] = self.engine_url_list[rank] = None
        if engine is None:
            return
        logger.error("inference engine %d at %s failed its health check (%s); stopping it", rank, url, reason)
        unregister_worker(router_base(self.args), url)
        try:
            ray.get(engine.shutdown.remote(), timeout=60)
        except Exception as exc:  # noqa: BLE001 - a hung or dead actor is killed below either way
            logger.warning("engine %d did not shut down cleanly: %s", rank, exc)
        ray.kill(engine)

    def recover_engines(self) -> int:
        """Start a new engine in every dead slot, on the same devices, and register it with the router. Returns
        how many were started: their weights are --hf-checkpoint's, so a run that trains must push the current
        weights to `engine_urls()` before they serve (slime recovers engines right before a weight update)."""
        with self.slots_lock:
            dead = [rank for rank, engine in enumerate(self.engines) if engine is None]
        if not dead:
            return 0
        started = {rank: self._new_engine(rank) for rank in dead}
        urls = dict(zip(dead, ray.get([engine.init.remote() for engine in started.values()])))
        self.router.wait_for_workers(self.args, list(urls.values()))
        with self.slots_lock:
            for rank in dead:
                self.engines[rank], self.engine_url_list[rank] = started[rank], urls[rank]
        for rank in dead:
            logger.info("inference engine %d restarted at %s and registered with the router", rank, urls[rank])
        if self.monitor is not None:
            self.monitor.restart_grace()
        return len(dead)

    def offload(self) -> None:
        """--offload-rollout: the engines give their device memory back while the trainers work. Health checks
        pause meanwhile (an engine without its weights cannot generate) and resume with the next rollout."""
        if self.monitor is not None:
            self.monitor.pause()
        ray.get([engine.offload.remote() for engine in self.engines if engine is not None])

    def onload(self, tags: list[str] | None = None) -> None:
        """Take the memory back (slime's tags: "weights" before a weight update, then "kv_cache", "cuda_graph")."""
        ray.get([engine.onload.remote(tags) for engine in self.engines if engine is not None])

    def _run_watched(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a rollout function while the monitor watches the engines. Without --use-fault-tolerance an engine
        that dies ends the call with its error (the run ends rather than hang or go on with fewer engines): the
        function then runs on a thread of its own while this one watches. With it, the engines are health-checked
        and a dead one is taken off the router; it is restarted here before the next rollout under
        --debug-rollout-only, and by the driver's `recover_engines` call before a weight update otherwise."""
        if self.tokenizer_loading.is_alive():
            self.tokenizer_loading.join()  # one load: the function's own call then finds it cached
        if self.monitor is None:
            return fn(*args, **kwargs)
        self.monitor.resume()
        if self.args.use_fault_tolerance:
            if self.args.debug_rollout_only:  # nothing pushes weights, so a restarted engine may serve at once
                self.recover_engines()
            return fn(*args, **kwargs)
        self.monitor.raise_failure()
        outcome: dict[str, Any] = {}
        finished = threading.Event()

        def target() -> None:
            try:
                outcome["value"] = fn(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread below
                outcome["error"] = exc
            finally:
                finished.set()

        # A daemon thread: if an engine dies, its requests may retry for a while; the run ends without them.
        threading.Thread(target=target, name="rollout-function", daemon=True).start()
        while not finished.wait(0.5):
            self.monitor.raise_failure()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]

    def dataset_size(self) -> int:
        return len(self.data_source)

    def generate(self, rollout_id: int) -> tuple[Any, ...]:
        """One rollout: samples from the rollout function (or a saved rollout), returned as (metrics, shard of DP
        rank 0, shard of rank 1, ...): called through `request_rollout`, which asks Ray for as many returns."""
        shards, metrics = self.train_shards(rollout_id)
        return (metrics, *shards)

    def train_shards(self, rollout_id: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """One rollout as per-DP-rank shards (`shard_arrays`) and its metrics (what `generate` returns; callable
        without Ray, e.g. by a benchmark that trains in process on the data a run would)."""
        started = time.perf_counter()
        samples, metrics = self._rollout_samples(rollout_id)
        if self.args.save_debug_rollout_data:
            save_debug_rollout_data(self.args.save_debug_rollout_data.format(rollout_id=rollout_id), rollout_id,
                                    samples)
        data = self._convert(samples)
        shards = split_train_data_by_dp(self.args, data, self.args.data_parallel_size)
        elapsed = time.perf_counter() - started
        custom = self.args.custom_rollout_log_function_path
        # slime's contract: a custom logger that returns True has logged this rollout itself.
        if custom and load_function(custom)(rollout_id, self.args, samples, metrics, elapsed):
            metrics = {}
        else:
            metrics.update(rollout_flag_metrics(self.args, samples))
            metrics.update({
                "rollout/samples": len(samples),
                "rollout/epoch": getattr(self.data_source, "epoch_id", 0),
                "perf/rollout_time": elapsed,
            })
        return [shard_arrays(shard) for shard in shards], metrics

    def _rollout_samples(self, rollout_id: int) -> tuple[list[Sample], dict[str, Any]]:
        if self.args.load_debug_rollout_data:
            path = self.args.load_debug_rollout_data.format(rollout_id=rollout_id)
            return load_debug_rollout_data(path, self.args.load_debug_rollout_data_subsample), {}
        output = self._run_watched(call_rollout_fn, self.generate_rollout, self.args, rollout_id, self.data_source,
                                   evaluation=False)
        if hasattr(self.data_source, "state_dict"):
            self.cursor_after[rollout_id] = self.data_source.state_dict()
        samples = check_train_output(output, self.args.rollout_function_path, self.args.n_samples_per_prompt)
        return samples, dict(output.metrics or {})

    def _convert(self, samples: list[Sample]) -> dict[str, Any]:
        if self.args.custom_convert_samples_to_train_data_path:
            path = self.args.custom_convert_samples_to_train_data_path
            data = load_function(path)(self.args, samples)
            missing = [key for key in REQUIRED_TRAIN_KEYS if key not in data]
            if missing:
                raise ValueError(f"--custom-convert-samples-to-train-data-path {path} returned no {missing}")
            return data
        raw_rewards, rewards = post_process_rewards(self.args, samples)
        return convert_samples_to_train_data(self.args, samples, rewards, raw_rewards)

    def eval(self, rollout_id: int) -> EvalResult:
        """Evaluate on every eval dataset. An eval function that declares SFT's dataset checks (assistant turns to
        train on) is read for a validation loss: its samples come back as shards for the trainers' forward-only
        loss. Any other generates, and its results become slime's eval metrics: eval/<name> (mean reward),
        eval/<name>-truncated_ratio, eval/<name>/response_len/*, and pass@k with --log-passrate."""
        args = self.args
        output = self._run_watched(call_rollout_fn, self.eval_generate_rollout, args, rollout_id, self.data_source,
                                   evaluation=True)
        check_eval_output(output, args.eval_function_path)
        if args.save_debug_rollout_data:
            # slime's name for an eval dump: the template's {rollout_id} becomes eval_<id>.
            save_debug_rollout_data(args.save_debug_rollout_data.format(rollout_id=f"eval_{rollout_id}"),
                                    rollout_id, [s for result in output.data.values() for s in result["samples"]])
        sft = dataset_checks(self.eval_generate_rollout, args).require_assistant_turn
        metrics = dict(output.metrics or {})
        custom = args.custom_eval_rollout_log_function_path
        if custom and load_function(custom)(rollout_id, args, output.data, metrics):
            metrics = {}
        elif not sft:
            metrics.update(eval_metrics(args, output.data))
        loss_shards = {}
        if sft:
            for name, result in output.data.items():
                data = convert_samples_to_train_data(args, result["samples"])
                shards = split_eval_data_by_dp(args, data, args.data_parallel_size)
                loss_shards[name] = [ray.put(shard_arrays(shard)) for shard in shards]
        return EvalResult({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}, loss_shards)

    def save(self, rollout_id: int) -> None:
        self.data_source.save(rollout_id, self.cursor_after.get(rollout_id))
        for old in [r for r in self.cursor_after if r <= rollout_id]:
            del self.cursor_after[old]

    def load(self, rollout_id: int | None) -> None:
        self.data_source.load(rollout_id)

    def dispose(self) -> None:
        """Stop the monitor, the engines this run started (their server processes) and the router; external
        engines keep running and are only taken off a router that outlives the run."""
        if self.monitor is not None:
            self.monitor.stop()
        live = [engine for engine in self.engines if engine is not None]
        if live:
            ray.get([engine.shutdown.remote() for engine in live])
        self.engines = []
        if self.args.rollout_external and self.router is not None and self.router.process is None:
            for url in self.engine_urls():
                unregister_worker(router_base(self.args), url)
        if self.router is not None:
            self.router.stop()
            self.router = None


class EngineMonitor:
    """Watches the engines this run started, from a thread of the rollout manager.

    Without --use-fault-tolerance it polls each engine's server process every second: one that has exited is
    recorded, and `raise_failure` (called while a rollout runs) ends the run with how it ended. With it, slime's
    health check: every --rollout-health-check-interval seconds (after --rollout-health-check-first-wait) each
    engine must answer GET /health_generate within --rollout-health-check-timeout seconds; one that does not is
    retired (`RolloutManager.retire_engine`) and its slot restarted by `recover_engines`.
    """

    def __init__(self, manager: RolloutManager):
        self.manager = manager
        args = manager.args
        self.fault_tolerant = args.use_fault_tolerance
        self.interval = args.rollout_health_check_interval if self.fault_tolerant else 1.0
        self.timeout = args.rollout_health_check_timeout
        self.first_wait = args.rollout_health_check_first_wait if self.fault_tolerant else 0.0
        self.failure: str | None = None
        self.grace_until = time.monotonic() + self.first_wait
        self.paused = threading.Event()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="engine-monitor", daemon=True)
        self.thread.start()

    def restart_grace(self) -> None:
        """New engines get the first wait again before their first check (slime waits after each resume)."""
        self.grace_until = time.monotonic() + self.first_wait

    def pause(self) -> None:
        self.paused.set()

    def resume(self) -> None:
        if self.paused.is_set():
            self.paused.clear()
            self.restart_grace()

    def raise_failure(self) -> None:
        if self.failure is not None:
            raise EngineDiedError(self.failure)

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=self.timeout + 5)

    def _loop(self) -> None:
        while not self.stopping.wait(self.interval):
            if self.paused.is_set() or time.monotonic() < self.grace_until:
                continue
            with self.manager.slots_lock:
                slots = [(rank, engine, url) for rank, (engine, url)
                         in enumerate(zip(self.manager.engines, self.manager.engine_url_list)) if engine is not None]
            for rank, engine, url in slots:
                if self.stopping.is_set() or self.paused.is_set():
                    break
                problem = self._health_problem(url) if self.fault_tolerant else self._exit_problem(engine)
                if problem is None:
                    continue
                if self.fault_tolerant:
                    self.manager.retire_engine(rank, problem)
                elif self.failure is None:
                    self.failure = (f"inference engine {rank} stopped: {problem} (with --use-fault-tolerance a dead "
                                    "engine is restarted instead)")
                    logger.error("%s", self.failure)

    def _health_problem(self, url: str) -> str | None:
        try:
            reply = HTTP.get(f"{url}/health_generate", timeout=self.timeout)
        except requests.RequestException as exc:
            return f"GET /health_generate: {type(exc).__name__}: {exc}"
        return None if reply.status_code == 200 else f"GET /health_generate answered {reply.status_code}"

    @staticmethod
    def _exit_problem(engine: Any) -> str | None:
        try:
            return ray.get(engine.exit_status.remote(), timeout=30)
        except ray.exceptions.GetTimeoutError:
            return None  # busy (starting, or stopping at the end of the run), not dead
        except ray.exceptions.RayError as exc:
            return f"its actor died ({type(exc).__name__}: {str(exc).splitlines()[0]})"


def _load_tokenizer_quietly(path: str) -> None:
    try:
        load_tokenizer(path)
    except Exception:  # noqa: BLE001 - reported by the rollout function's own load (see RolloutManager.__init__)
        pass


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _reward_numbers(rewards: list[Any], where: str, key_flag: str) -> list[float]:
    try:
        return [float(r) for r in rewards]
    except (TypeError, ValueError):
        raise ValueError(f"{where}: rewards such as {rewards[0]!r} are not numbers; name the entry to use with "
                         f"{key_flag}") from None


def pass_at_k(rewards: list[float], group_size: int) -> dict[str, float]:
    """slime's pass@k for k = 1, 2, 4, ... up to the group size: per group of `group_size` consecutive samples,
    with c of n rewards equal to 1, the unbiased estimate 1 - C(n-c, k) / C(n, k), averaged over groups."""
    if group_size <= 1:
        return {}
    if len(rewards) % group_size:
        raise ValueError(f"--log-passrate: {len(rewards)} rewards do not make groups of {group_size}")
    groups = [rewards[i:i + group_size] for i in range(0, len(rewards), group_size)]
    metrics = {}
    k = 1
    while k <= group_size:
        estimates = [1.0 - math.comb(group_size - c, k) / math.comb(group_size, k)
                     for c in (sum(r == 1 for r in group) for group in groups)]
        metrics[f"pass@{k}"] = _mean(estimates)
        k *= 2
    return metrics


def reward_category_metrics(args: Namespace, samples: list[Sample]) -> dict[str, float]:
    """--log-reward-category KEY: the share of samples per value of reward[KEY] (slime's error_cat/<value>)."""
    key = args.log_reward_category
    if key is None or not samples:
        return {}
    counts: dict[str, int] = {}
    for sample in samples:
        if not isinstance(sample.reward, dict) or key not in sample.reward:
            raise ValueError(f"--log-reward-category {key}: the reward of sample {sample.index} is "
                             f"{sample.reward!r}, not a dict with that key")
        counts[str(sample.reward[key])] = counts.get(str(sample.reward[key]), 0) + 1
    return {f"error_cat/{category}": count / len(samples) for category, count in counts.items()}


def multi_turn_metrics(args: Namespace, samples: list[Sample]) -> dict[str, float]:
    """--log-multi-turn: response lengths with and without the masked (tool/user) tokens, and rounds per sample
    (metadata["round_number"]), under slime's names. slime computes them per data-parallel rank and averages the
    ranks; here they are over the whole rollout."""
    raw = [s.response_length for s in samples]
    trained = [s.effective_response_length for s in samples]
    metrics = {
        "raw_response_length/response_length_mean": _mean(raw),
        "raw_response_length/response_length_max": max(raw),
        "raw_response_length/response_length_min": min(raw),
        "wo_obs_response_length/response_length_mean": _mean(trained),
        "wo_obs_response_length/response_length_max": max(trained),
        "wo_obs_response_length/response_length_min": min(trained),
    }
    if args.rollout_max_response_len:
        metrics["raw_response_length/response_length_clip_ratio"] = _mean(
            [float(n >= args.rollout_max_response_len) for n in raw])
    rounds = [s.metadata["round_number"] for s in samples if "round_number" in s.metadata]
    if rounds:
        metrics.update({"multi_turn_metric/round_number_mean": _mean(rounds),
                        "multi_turn_metric/round_number_max": max(rounds),
                        "multi_turn_metric/round_number_min": min(rounds)})
    return metrics


def _prefixed(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    return {f"{prefix}{key}": value for key, value in metrics.items()}


def rollout_flag_metrics(args: Namespace, samples: list[Sample]) -> dict[str, float]:
    """The per-rollout metrics the logging flags ask for: passrate/pass@k (--log-passrate, from the raw rewards of
    each prompt's group), rollout/error_cat/* (--log-reward-category) and multi_turn/* (--log-multi-turn)."""
    metrics = _prefixed(reward_category_metrics(args, samples), "rollout/")
    if args.log_passrate:
        raw = _reward_numbers([s.get_reward_value(args) for s in samples], "--log-passrate", "--reward-key")
        metrics.update(_prefixed(pass_at_k(raw, args.n_samples_per_prompt), "passrate/"))
    if args.log_multi_turn and samples:
        metrics.update(_prefixed(multi_turn_metrics(args, samples), "multi_turn/"))
    return metrics


def eval_metrics(args: Namespace, data: dict[str, dict[str, list[Any]]]) -> dict[str, float]:
    """slime's eval metrics per dataset: eval/<name> (mean reward), eval/<name>-truncated_ratio,
    eval/<name>/response_len/{mean,median,max,min} (trained tokens), eval/<name>/error_cat/*
    (--log-reward-category) and eval/<name>-pass@k (--log-passrate; groups of the dataset's samples per prompt)."""
    metrics = {}
    entries = {entry["name"]: entry for entry in args.eval_datasets}
    for name, result in data.items():
        rewards = _reward_numbers(result["rewards"], f"eval dataset {name}", "--eval-reward-key")
        metrics[f"eval/{name}"] = _mean(rewards)
        metrics[f"eval/{name}-truncated_ratio"] = _mean([float(t) for t in result["truncated"]])
        lengths = sorted(s.effective_response_length for s in result["samples"])
        if lengths:
            middle = len(lengths) // 2
            median = lengths[middle] if len(lengths) % 2 else (lengths[middle - 1] + lengths[middle]) / 2
            metrics.update({f"eval/{name}/response_len/mean": _mean(lengths),
                            f"eval/{name}/response_len/median": median,
                            f"eval/{name}/response_len/max": lengths[-1], f"eval/{name}/response_len/min": lengths[0]})
        metrics.update(_prefixed(reward_category_metrics(args, result["samples"]), f"eval/{name}/"))
        if args.log_passrate:
            group_size = entries.get(name, {}).get("n_samples_per_eval_prompt") or args.n_samples_per_eval_prompt
            metrics.update(_prefixed(pass_at_k(rewards, int(group_size)), f"eval/{name}-"))
    return metrics


def router_base(args: Namespace) -> str:
    return f"http://{args.sglang_router_ip}:{args.sglang_router_port}"


def needs_engines(args: Namespace) -> bool:
    """Engines serve generation; SFT (--debug-train-only) and replays of saved rollouts need none."""
    return not args.debug_train_only and not args.load_debug_rollout_data and bool(
        args.rollout_num_gpus or args.rollout_external)


def create_rollout_manager(args: Namespace, placement: Placement) -> Any:
    """The manager reserves a CPU on GPU clusters; on a CPU machine every core goes to the trainers and engines.
    Its engines go on `placement`, the rollout share of the placement group."""
    manager = ray.remote(RolloutManager).options(num_cpus=1 if placement.uses_gpus else 0, num_gpus=0)
    return manager.remote(args, placement)

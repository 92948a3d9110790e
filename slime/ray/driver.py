"""What train.py and train_async.py share: the entry point with its error reporting, the Ray session, building the
actors, saving, evaluating, progress."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import time
import traceback
from argparse import Namespace
from typing import Any, Callable, Iterator

import ray

from slime.ray.actor_group import RayTrainGroup, wait_all
from slime.ray.placement_group import Placement, placement_layout
from slime.ray.rollout import request_rollout
from slime.utils.arguments import compute_num_rollout, parse_args, role_args, validate_run
from slime.utils.errors import is_user_error
from slime.utils.logging_utils import configure_logging
from slime.utils.misc import process_start_time
from slime.utils.tracking import Tracker

logger = logging.getLogger(__name__)


class StartupClock:
    """When the run reached each start-up milestone, counted from the command (the process's start). Reported once,
    with the first step, as consecutive phases that add up to the time to the first step."""

    # Milestones in the order a run reaches them; `report` adds "first rollout" and "first step".
    MILESTONES = ("imports", "arguments", "ray", "rollout manager", "trainers")

    def __init__(self):
        self.started = process_start_time()
        self.reached: dict[str, float] = {}
        self.trainer: dict[str, float] = {}  # the slowest trainer's milestones (see TrainRayActor.startup)
        self.reported = False

    def mark(self, milestone: str) -> None:
        self.reached.setdefault(milestone, time.time())

    def report(self, first_rollout_s: float) -> dict[str, float]:
        """Seconds per phase (`startup/<phase>_s`), their total, and when the trainers' own milestones came
        (`startup/trainer_<milestone>_at_s`): their processes start while the rollout manager starts."""
        now = time.time()
        self.reported = True
        phases, last = {}, self.started
        for name in self.MILESTONES:
            if name in self.reached:
                phases[name], last = self.reached[name] - last, self.reached[name]
        # The first rollout is timed by the rollout manager; the step (and the transfer) is the rest.
        phases["first rollout"] = min(first_rollout_s, now - last)
        phases["first step"] = now - last - phases["first rollout"]
        metrics = {f"startup/{name.replace(' ', '_')}_s": seconds for name, seconds in phases.items()}
        metrics["startup/total_s"] = now - self.started
        metrics.update({f"startup/trainer_{name}_at_s": at - self.started for name, at in self.trainer.items()})
        logger.info("start-up: %.1f s to the first step (%s; slowest trainer: %s)", now - self.started,
                    ", ".join(f"{name} {seconds:.2f} s" for name, seconds in phases.items()),
                    ", ".join(f"{name.replace('_', ' ')} at {at - self.started:.1f} s"
                              for name, at in self.trainer.items()))
        return metrics


STARTUP = StartupClock()


def main(train: Callable[[Namespace], Any]) -> None:
    """`python train.py <flags>`: parse, train, and report a failure anywhere in the run (driver, rollout manager
    or trainer) as a user error (one line, exit status 2) or a crash (its traceback, exit status 1). Either way
    the full traceback, remote frames included, goes to a log file the message names (see write_error_log)."""
    STARTUP.mark("imports")
    configure_logging()
    args = parse_args()
    try:
        validate_run(args)
        STARTUP.mark("arguments")
        train(args)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - every failure ends the run; only its report differs
        sys.exit(report_failure(args, exc))


def remote_cause(exc: BaseException) -> BaseException:
    """The exception an actor raised, out of Ray's wrappers: a failed method arrives as RayTaskError (`.cause`),
    a failed actor __init__ as an ActorDiedError whose first argument is that RayTaskError."""
    if isinstance(exc, ray.exceptions.RayTaskError) and exc.cause is not None and exc.cause is not exc:
        return remote_cause(exc.cause)
    if isinstance(exc, ray.exceptions.RayActorError) and exc.args and isinstance(exc.args[0], ray.exceptions.RayError):
        return remote_cause(exc.args[0])
    return exc


def write_error_log(args: Namespace, text: str) -> str:
    """Write `text` to `{--save}/logs/error-<time>-<pid>.log`, or under the temporary directory without --save (or
    when --save cannot be written, which may be the very error being reported). Returns the file's path."""
    name = f"error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    for directory in filter(None, [args.save and os.path.join(args.save, "logs"),
                                   os.path.join(tempfile.gettempdir(), "slime-logs")]):
        try:
            os.makedirs(directory, exist_ok=True)
            with open(os.path.join(directory, name), "w") as f:
                f.write(text)
            return os.path.join(directory, name)
        except OSError:
            continue
    fd, path = tempfile.mkstemp(prefix="slime-error-", suffix=".log")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


def report_failure(args: Namespace, exc: BaseException) -> int:
    """Tell the user what ended the run, keep the full traceback in a log file, and return the exit status."""
    text = "".join(traceback.format_exception(exc))
    path = write_error_log(args, text)
    cause = remote_cause(exc)
    if is_user_error(cause):
        message = " ".join(str(cause).split())
        print(f"error: {message}; traceback in {path}", file=sys.stderr)
        return 2
    print(text, file=sys.stderr, end="")
    print(f"the run crashed; this traceback is also in {path}", file=sys.stderr)
    return 1


@contextlib.contextmanager
def ray_session(args: Namespace) -> Iterator[None]:
    """Join the cluster of `ray job submit` (RAY_ADDRESS), or start a local Ray on 127.0.0.1 and stop it at exit."""
    if ray.is_initialized():
        yield
        return
    # The first failed actor ends the run and is reported once; its peers' errors are not retrieved on purpose.
    os.environ.setdefault("RAY_IGNORE_UNHANDLED_ERRORS", "1")
    # Plugins given by path from the working directory import in every actor. Each actor sets its logging up when
    # it starts (configure_worker_process), so a local run needs no runtime environment: Ray runs the tasks and
    # actors of a job that has one in fresh worker processes only, never in those it started with the cluster,
    # which costs each of them a process start (2-5 s of a 2-core machine's start-up).
    python_path = os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], runtime_env={"env_vars": {"PYTHONPATH": python_path}})
    else:
        os.environ["PYTHONPATH"] = python_path  # the cluster's processes inherit the driver's environment
        needed, _ = placement_layout(args)
        # address="local": always a new cluster of our own, never one that another run left on this machine.
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, needed), _node_ip_address="127.0.0.1",
                 include_dashboard=False, logging_level=logging.WARNING)
    STARTUP.mark("ray")
    try:
        yield
    except KeyboardInterrupt:
        logger.warning("interrupted: stopping the trainers and Ray")
        raise
    finally:
        ray.shutdown()


def set_num_rollout(args: Namespace, rollout_manager: Any) -> int | None:
    """slime derives the run length from --num-epoch and the dataset length (before the trainers are built)."""
    size = ray.get(rollout_manager.dataset_size.remote())
    STARTUP.mark("rollout manager")
    compute_num_rollout(args, size)
    logger.info("%d rollouts to train (%s per epoch, %d usable rows)", args.num_rollout,
                args.num_rollout_per_epoch, size)
    return args.num_rollout_per_epoch


def create_training_models(args: Namespace, placement: Placement) -> tuple[RayTrainGroup, RayTrainGroup | None]:
    """The trainers' processes (and, for PPO, the critic's on the same devices), created first: they take the
    worker processes Ray started with the cluster, and import the trainer while the rollout manager starts;
    `init_training_models` builds them once the run length is known."""
    actor_model = RayTrainGroup(role_args(args, "actor"), placement)
    critic_model = RayTrainGroup(role_args(args, "critic"), placement) if args.use_critic else None
    return actor_model, critic_model


def init_training_models(args: Namespace, actor_model: RayTrainGroup, critic_model: RayTrainGroup | None,
                         rollout_manager: Any) -> None:
    """Build the trainers (after `set_num_rollout`: the LR schedule needs the run length), take their start
    rollout (from a checkpoint, or --start-rollout-id), and set the data cursor to match."""
    start = actor_model.init(role_args(args, "actor"))
    if critic_model is not None:
        critic_start = critic_model.init(role_args(args, "critic"))
        if args.start_rollout_id is None and critic_start != start:
            raise RuntimeError(f"the actor's checkpoint resumes at rollout {start}, the critic's at {critic_start}")
    if args.start_rollout_id is None:
        args.start_rollout_id = start
    _, engine_urls = wait_all([rollout_manager.load.remote(args.start_rollout_id - 1),
                               rollout_manager.engine_urls.remote()], "the data-source state and engine addresses")
    if engine_urls and not args.debug_rollout_only:
        actor_model.connect_engines(engine_urls)
    STARTUP.trainer = actor_model.startup
    STARTUP.mark("trainers")


def sync_weights(args: Namespace, rollout_manager: Any, actor_model: RayTrainGroup) -> dict[str, float]:
    """Push the trainer's weights to the engines, in slime's order: restart engines that died
    (--use-fault-tolerance; they come back with --hf-checkpoint's weights and new addresses), give the engines their
    weight memory back (--offload-rollout), push, then their KV cache."""
    if args.use_fault_tolerance and wait_all([rollout_manager.recover_engines.remote()], "engine recovery")[0]:
        actor_model.connect_engines(wait_all([rollout_manager.engine_urls.remote()], "the engines' addresses")[0])
    if args.offload_rollout:
        wait_all([rollout_manager.onload.remote(["weights"])], "the engines' weight memory")
    metrics = actor_model.update_weights()
    if args.offload_rollout:
        wait_all([rollout_manager.onload.remote(["kv_cache", "cuda_graph"])], "the engines' KV cache")
    return metrics


def generate(args: Namespace, rollout_manager: Any, rollout_id: int) -> tuple[dict[str, Any], list]:
    """Rollout `rollout_id`'s metrics and refs to its per-DP-rank shards (`request_rollout`'s order); with
    --offload-rollout the engines then release their memory for the trainers."""
    metrics_ref, shards = request_rollout(args, rollout_manager, rollout_id)
    metrics = wait_all([metrics_ref], f"rollout {rollout_id}")[0]
    if args.offload_rollout:
        wait_all([rollout_manager.offload.remote()], "the engines to release their memory")
    return metrics, shards


def start_train_step(args: Namespace, rollout_id: int, shards: list, actor_model: RayTrainGroup,
                     critic_model: RayTrainGroup | None) -> Callable[[], list[dict[str, float]]]:
    """`train_step` begun: the trainers are asked for their step now, and the returned call waits for its metrics.
    With a critic (whose step and values come first) the whole of `train_step` runs in that call."""
    if critic_model is not None:
        return lambda: train_step(args, rollout_id, shards, actor_model, critic_model)
    refs = actor_model.start_train(rollout_id, shards)
    return lambda: actor_model.finish_train(rollout_id, refs)


def train_step(args: Namespace, rollout_id: int, shards: list, actor_model: RayTrainGroup,
               critic_model: RayTrainGroup | None) -> list[dict[str, float]]:
    """slime's order: the critic trains first and hands the actor its values; the actor waits out
    --num-critic-only-steps. Returns the step metrics (the critic's under critic/)."""
    if critic_model is None:
        return actor_model.train(rollout_id, shards)
    critic_metrics = critic_model.train(rollout_id, shards)
    if args.offload_train:
        critic_model.sleep()  # the actor trains next on the same devices
    step_metrics = []
    if rollout_id >= args.num_critic_only_steps:
        step_metrics = actor_model.train(rollout_id, shards, critic_model.critic_values())
    for index, metrics in enumerate(critic_metrics):
        extra = {f"critic/{k}": v for k, v in metrics.items() if k not in ("rollout_id", "step")}
        if index < len(step_metrics):
            step_metrics[index].update(extra)
        else:
            step_metrics.append({**metrics, **extra})
    return step_metrics


def offload_train(args: Namespace, actor_model: RayTrainGroup, critic_model: RayTrainGroup | None) -> None:
    """--offload-train: the trainers give their device memory to the engines until they next train (a weight
    sync wakes only the parameters, for the push). CPU trainers keep theirs."""
    if args.offload_train:
        for model in (actor_model, critic_model):
            if model is not None:
                model.sleep()


def save(rollout_id: int, actor_model: RayTrainGroup, rollout_manager: Any,
         critic_model: RayTrainGroup | None = None) -> None:
    actor_model.save_model(rollout_id)
    if critic_model is not None:
        critic_model.save_model(rollout_id)
    wait_all([rollout_manager.save.remote(rollout_id)], "the data-source state to be saved")


def evaluate(args: Namespace, rollout_id: int, rollout_manager: Any, actor_model: RayTrainGroup,
             progress: "Progress") -> None:
    """Evaluate on every eval dataset: the rollout manager's metrics (RL: eval/<name> rewards from generation)
    and, for SFT, each dataset's validation loss, computed by the trainers without training on it."""
    result = wait_all([rollout_manager.eval.remote(rollout_id)], "the evaluation")[0]
    metrics = dict(result.metrics)
    for name, shards in result.loss_shards.items():
        metrics[f"eval/{name}/loss"] = actor_model.eval_loss(shards)["loss"]
    if metrics:
        progress.log_eval(rollout_id, metrics)


class Progress:
    """One log line per rollout (loss, lr, grad norm, tokens/s, ETA), a bar on a terminal, metric sinks, summary."""

    def __init__(self, args: Namespace):
        self.args = args
        self.start_rollout = args.start_rollout_id
        self.started = time.monotonic()
        self.first_loss: float | None = None
        self.last: dict[str, float] = {}
        self.tokens = 0.0
        self.train_seconds = 0.0
        self.tracker = Tracker(args)
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=args.num_rollout, initial=args.start_rollout_id, unit="rollout")

    def log(self, rollout_id: int, rollout_metrics: dict[str, Any], step_metrics: list[dict[str, float]]) -> None:
        startup = {}
        if not STARTUP.reported and "trainers" in STARTUP.reached:  # a run's first step (not a replay in a test)
            startup = STARTUP.report(float(rollout_metrics.get("perf/rollout_time", 0.0)))
        for metrics in step_metrics:
            if self.first_loss is None:
                self.first_loss = metrics.get("loss")
            self.tokens += metrics["tokens_per_s"] * metrics["step_time"] * self.args.data_parallel_size
            self.train_seconds += metrics["step_time"]
            self.tracker.log({f"train/{k}": v for k, v in metrics.items()}, step=int(metrics["step"]))
        self.last = step_metrics[-1] if step_metrics else self.last
        self.tracker.log({**{k: v for k, v in rollout_metrics.items() if isinstance(v, (int, float))}, **startup},
                         step=rollout_id)
        done = rollout_id + 1 - self.start_rollout
        remaining = self.args.num_rollout - rollout_id - 1
        eta = (time.monotonic() - self.started) / done * remaining
        logger.info(
            "rollout %d/%d (epoch %s) | loss %.4f | lr %.3g | grad norm %.3f | %.0f tokens/s | ETA %s",
            rollout_id + 1, self.args.num_rollout, rollout_metrics.get("rollout/epoch", "?"),
            self.last.get("loss", float("nan")), self.last.get("lr", float("nan")),
            self.last.get("grad_norm", float("nan")), self.last.get("tokens_per_s", 0.0) * self.args.data_parallel_size,
            _duration(eta),
        )
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{self.last.get('loss', float('nan')):.4f}")

    def log_sync(self, rollout_id: int, metrics: dict[str, float]) -> None:
        """The weight sync after training on `rollout_id` (time, bytes), on the rollout axis."""
        if metrics:
            self.tracker.log({f"perf/{k}" if "/" not in k else k: v for k, v in metrics.items()}, step=rollout_id)

    def log_eval(self, rollout_id: int, metrics: dict[str, float]) -> None:
        self.last.update(metrics)
        self.tracker.log(metrics, step=rollout_id)
        logger.info("eval after rollout %d: %s", rollout_id, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))

    def summary(self) -> dict[str, Any]:
        if self.bar is not None:
            self.bar.close()
        self.tracker.finish()
        summary = {
            "first_loss": self.first_loss,
            "last_loss": self.last.get("loss"),
            "tokens_per_s": self.tokens / self.train_seconds if self.train_seconds else None,
            "wall_time_s": time.monotonic() - self.started,
            **{k: v for k, v in self.last.items() if k.startswith("eval/")},
        }
        logger.info("done: %s", ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                          for k, v in summary.items()))
        return summary


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"

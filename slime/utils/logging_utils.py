"""Logging set-up for the driver, the tools and every Ray worker process (trainers, rollout manager).

Libraries announce what they do without (Megatron: "Apex is not installed", "Transformer Engine and Apex are not
installed"; the CPU path does without them on purpose), deprecations and internal notes the user cannot act on.
Those are silenced in every process of a run; our own log lines and warnings (warnings.warn from slime or a plugin)
stay visible.
"""

from __future__ import annotations

import logging
import warnings

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Megatron's import-time notes about optional extensions (Apex, Transformer Engine); matched from the start.
_LIBRARY_NOTES = r"(Transformer Engine and Apex|Apex is not installed|Transformer Engine is not installed)"
_NOISY_LOGGERS = ("megatron", "transformers", "torch.distributed", "httpx")
# Log lines of libraries that say nothing actionable, by the start of their message.
_LIBRARY_LOG_NOTES = (
    "Implicit initialization of Rerun State Machine",  # Megatron, once per trainer
    "RerunStateMachine initialized in mode",
)
# The CPU bridges run Megatron's CUDA RNG tracker on the CPU generator, which Megatron notes at every step.
_CPU_PATH_LOG_NOTES = ("CPU RNG state changed within GPU RNG context",)
# Ray's worker logs the traceback of an actor whose __init__ raised and forwards it to the driver's terminal; the
# driver reports that error itself (one line, the traceback in a log file).
_RAY_CREATION_TASK_REPORT = ("Exception raised in creation task",)


class _DropMessages(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


class _DropCpuPathNotes(_DropMessages):
    """Drops the CPU bridges' notes on machines without a GPU. Whether there is one is asked only when such a note
    arrives (by then the trainer has imported torch): importing torch here would cost every process of a run,
    the driver included, a second or more of start-up."""

    def filter(self, record: logging.LogRecord) -> bool:
        if super().filter(record):
            return True
        from slime.utils.device import has_gpu

        return has_gpu()


def configure_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format=LOG_FORMAT, force=True)
    silence_library_noise()


def silence_library_noise() -> None:
    warnings.filterwarnings("ignore", message=_LIBRARY_NOTES)
    # Megatron's own UserWarnings are about its internals (a deprecated default, a non-leaf .grad access).
    warnings.filterwarnings("ignore", category=UserWarning, module=r"megatron\.")
    # Deprecation and future warnings come from libraries' internals (or their stacklevel points at a caller that
    # the user does not control): the user can do nothing about them.
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category)
    # Library INFO lines (Megatron's set-up chatter) would bury the run's own log; their warnings still show.
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_DropMessages(_LIBRARY_LOG_NOTES))
        handler.addFilter(_DropCpuPathNotes(_CPU_PATH_LOG_NOTES))


def configure_worker_process() -> None:
    """Logging of a run's Ray worker process (trainer, rollout manager, engine), set up when it starts. Calling it
    again changes nothing; outside a Ray actor (the same classes built in process by tests and benchmarks) it leaves
    the process's logging alone."""
    import ray  # here: processes that never call this (engine servers, tools) do not pay for importing Ray

    if not ray.is_initialized() or ray.get_runtime_context().get_actor_id() is None:
        return
    configure_logging()
    # Ray's loggers write through the handlers of the "ray" logger, which does not propagate to the root.
    for handler in logging.getLogger("ray").handlers:
        if not any(isinstance(f, _DropMessages) for f in handler.filters):
            handler.addFilter(_DropMessages(_RAY_CREATION_TASK_REPORT))

"""The Megatron-core trainer backend.

Every module of this package imports Megatron, so this file runs first in any process that trains. Importing
Megatron eagerly loads two things that cost about 2 s of a trainer's start on a 2-core machine: torch's compiler
stack (Megatron decorates its fusion kernels with `torch.compile` at import, which imports `torch._dynamo` and
`torch._inductor` before anything is compiled) and wandb (for the logging of Megatron's own inference engine, which
slime never runs: its engines are SGLang's; and for `Timers.write`, which slime never calls). Here a Megatron kernel
is compiled at its first call, exactly as `torch.compile` would have done it, only its imports wait until then; and
Megatron's import does not see wandb (this process can still import it: the driver's `--use-wandb` logging is
untouched).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.abc
import sys
from typing import Any, Callable, Iterator

import torch


class _Unavailable(importlib.abc.MetaPathFinder):
    """An import finder under which some packages (and their submodules) look uninstalled."""

    def __init__(self, *names: str):
        self.names = names

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> None:
        # Raising (not returning None) stops the search: the real package is not found further down sys.meta_path.
        if fullname.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"{fullname} is not imported while Megatron imports", name=fullname)
        return None


@contextlib.contextmanager
def _megatron_import() -> Iterator[None]:
    """While Megatron imports: wandb looks uninstalled (unless already imported), and `torch.compile(function)`
    returns a function that compiles on its first call (modules and anything else go to torch.compile itself)."""
    compile_now, hide_wandb = torch.compile, _Unavailable("wandb")

    def compile_later(model: Any = None, **options: Any) -> Any:
        if model is None:  # used as @torch.compile(**options)
            return lambda function: compile_later(function, **options)
        if not callable(model) or isinstance(model, torch.nn.Module):
            return compile_now(model, **options)
        compiled: Callable | None = None

        @functools.wraps(model)
        def call(*args: Any, **kwargs: Any) -> Any:
            nonlocal compiled
            if compiled is None:
                compiled = compile_now(model, **options)
            return compiled(*args, **kwargs)

        return call

    torch.compile = compile_later
    sys.meta_path.insert(0, hide_wandb)
    try:
        yield
    finally:
        torch.compile = compile_now
        sys.meta_path.remove(hide_wandb)


if "megatron.core" not in sys.modules:
    with _megatron_import():
        import megatron.core  # noqa: F401

"""Importing the backend (slime/backends/megatron_utils/__init__.py) leaves torch's compiler stack and wandb out of
a trainer's start-up, and a kernel Megatron decorated with torch.compile still compiles when first called."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO_ROOT

PROBE = """
import json, sys, torch
import slime.backends.megatron_utils.actor
from slime.backends.megatron_utils import _megatron_import
from megatron.core.jit import jit_fuser
from megatron.core.inference.contexts import dynamic_context
report = {"after_import": sorted(m for m in ("torch._dynamo", "torch._inductor", "wandb") if m in sys.modules),
          "compile_restored": torch.compile.__module__ == "torch",
          "megatron_fuser_deferred": jit_fuser is not torch.compile and jit_fuser.__module__ != "torch",
          "megatron_kernel_wraps_its_function": jit_fuser(len).__wrapped__ is len,
          "megatron_sees_wandb": dynamic_context.HAVE_WANDB}
with _megatron_import():
    double = torch.compile(lambda x: 2 * x, backend="eager")
report["before_first_call"] = "torch._dynamo" in sys.modules
report["value"] = double(torch.arange(3.0)).tolist()
report["after_first_call"] = "torch._dynamo" in sys.modules
import wandb  # the process itself can still use it
report["wandb_importable"] = hasattr(wandb, "init")
print(json.dumps(report))
"""


def test_backend_import_defers_the_compiler_and_hides_wandb_from_megatron_only():
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"after_import": [], "compile_restored": True, "megatron_fuser_deferred": True,
                      "megatron_kernel_wraps_its_function": True, "megatron_sees_wandb": False,
                      "before_first_call": False, "value": [0.0, 2.0, 4.0], "after_first_call": True,
                      "wandb_importable": True}

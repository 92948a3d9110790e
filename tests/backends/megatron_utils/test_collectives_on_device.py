"""No torch.distributed collective in the trainer takes a freshly built CPU tensor.

On GPUs the process groups use NCCL, which serves only CUDA tensors: a CPU tensor in a collective fails the first
step at DP > 1, which a CPU run (gloo takes CPU tensors) can never show. Metric and count reductions go through
`slime.utils.device.reduce_on_device`; this scan of the trainer's source finds any other collective whose tensor is
built on the host (a constructor without `device=`, or `.cpu()`), directly or through a local variable.
"""

from __future__ import annotations

import ast
import textwrap

import pytest
import torch

from conftest import REPO_ROOT

TRAINER = REPO_ROOT / "slime" / "backends" / "megatron_utils"
COLLECTIVES = {"all_reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter", "reduce_scatter_tensor",
               "broadcast", "reduce", "gather", "scatter", "all_to_all", "all_to_all_single", "send", "recv",
               "isend", "irecv"}
CONSTRUCTORS = {"tensor", "as_tensor", "zeros", "ones", "empty", "full", "arange", "from_numpy", "randn", "rand"}


def _distributed_aliases(tree: ast.AST) -> tuple[set[str], set[str]]:
    """Names bound to the torch.distributed module, and collectives imported by name."""
    modules, functions = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "torch.distributed" and alias.asname:
                    modules.add(alias.asname)
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if node.module == "torch" and alias.name == "distributed":
                    modules.add(alias.asname or "distributed")
                elif node.module == "torch.distributed" and alias.name in COLLECTIVES:
                    functions.add(alias.asname or alias.name)
    return modules, functions


def _is_collective(call: ast.Call, modules: set[str], functions: set[str]) -> bool:
    func = call.func
    if isinstance(func, ast.Name):
        return func.id in functions
    if not isinstance(func, ast.Attribute) or func.attr not in COLLECTIVES:
        return False
    owner = func.value
    if isinstance(owner, ast.Name):
        return owner.id in modules
    return isinstance(owner, ast.Attribute) and owner.attr == "distributed" and isinstance(owner.value, ast.Name) \
        and owner.value.id == "torch"


def _builds_host_tensor(node: ast.AST) -> bool:
    if isinstance(node, (ast.List, ast.Tuple)):
        return any(_builds_host_tensor(e) for e in node.elts)
    if isinstance(node, ast.ListComp):
        return _builds_host_tensor(node.elt)
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    if isinstance(func, ast.Attribute) and func.attr == "cpu":
        return True
    if isinstance(func, ast.Attribute) and func.attr == "to" and node.args and isinstance(node.args[0], ast.Constant) \
            and node.args[0].value == "cpu":
        return True
    is_constructor = (isinstance(func, ast.Attribute) and func.attr in CONSTRUCTORS and isinstance(func.value, ast.Name)
                      and func.value.id == "torch")
    return is_constructor and not any(k.arg == "device" for k in node.keywords)


def host_tensor_collectives(source: str, filename: str = "<snippet>") -> list[str]:
    """`file:line` of each collective given a tensor built on the host, directly or via a name assigned one."""
    tree = ast.parse(source)
    modules, functions = _distributed_aliases(tree)
    found = []
    scopes = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))] + [tree]
    for scope in scopes:
        host_names = set()
        for node in ast.walk(scope):
            if isinstance(node, ast.Assign) and _builds_host_tensor(node.value):
                host_names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        for node in ast.walk(scope):
            if isinstance(node, ast.Call) and _is_collective(node, modules, functions):
                arguments = list(node.args) + [k.value for k in node.keywords]
                if any(_builds_host_tensor(a) or (isinstance(a, ast.Name) and a.id in host_names) for a in arguments):
                    found.append(f"{filename}:{node.lineno}")
    return sorted(set(found))


# What the trainer did before the fix (slime.backends.megatron_utils.loss / model): CPU tensors all-reduced over the
# data-parallel group, which is an NCCL group on GPUs.
BEFORE_THE_FIX = '''
import torch
import torch.distributed as dist

def report_step_metrics(args, reports, step_global_batch_size):
    totals = torch.tensor([[sum(float(r.get(k, 0.0)) for r in reports) for k in keys]], dtype=torch.float64)
    if world > 1:
        dist.all_reduce(totals, group=group)

def forward_only_loss(args, model, shard, micro_batches):
    counts = torch.tensor([num_samples], dtype=torch.float64)
    torch.distributed.all_reduce(counts, group=parallel_state.get_data_parallel_group())
'''


def test_the_scanner_finds_host_tensors_in_collectives():
    assert set(host_tensor_collectives(BEFORE_THE_FIX)) == {"<snippet>:8", "<snippet>:12"}
    more = textwrap.dedent('''
        from torch import distributed as d
        from torch.distributed import all_gather as gather_all
        import torch
        def f(x, g):
            d.broadcast(torch.zeros(3), src=0)
            out = [torch.empty(2) for _ in range(2)]
            gather_all(out, x)
            y = x.detach().cpu()
            d.all_reduce(y)
    ''')
    assert len(host_tensor_collectives(more)) == 3


def test_the_scanner_accepts_device_tensors():
    fine = textwrap.dedent('''
        import torch
        import torch.distributed as dist
        def f(x, group):
            t = torch.tensor([1.0], device=device())
            dist.all_reduce(t, group=group)
            m = x.max(dim=-1).values
            dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
            shards = [torch.empty_like(x) for _ in range(2)]
            dist.all_gather(shards, x, group=group)
    ''')
    assert host_tensor_collectives(fine) == []


def test_trainer_collectives_never_take_host_tensors():
    files = sorted(TRAINER.glob("*.py"))
    assert len(files) >= 8
    found = [hit for path in files for hit in host_tensor_collectives(path.read_text(), path.name)]
    assert found == [], f"collectives on host tensors (use slime.utils.device.reduce_on_device): {found}"


def test_reduce_on_device_places_the_tensor_on_the_device(monkeypatch):
    """The helper moves the values to `device()` before the collective and returns them on the host."""
    import slime.utils.device as device_module

    seen = []
    monkeypatch.setattr(device_module, "device", lambda: torch.device("meta"))
    monkeypatch.setattr(device_module.dist, "get_world_size", lambda group: 2)
    monkeypatch.setattr(device_module.dist, "all_reduce", lambda t, op, group: seen.append(t.device.type))
    with pytest.raises(NotImplementedError):  # a meta tensor cannot come back to the host
        device_module.reduce_on_device(torch.ones(3), group=object())
    assert seen == ["meta"]

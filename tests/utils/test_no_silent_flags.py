"""No silent flags: every flag the parser accepts is read by code that acts on it, or refused as not supported yet.

The walker reads the sources (slime/, train.py, train_async.py) with ast and finds every read of a flag's
destination (`args.x`, `self.args.x`, `getattr(args, "x")`). Reads that act on nothing do not count:
- a read inside a `raise`, an `assert`, or the arguments of a log/warning/print call (it only reports the value);
- a read in the condition of an `if` whose branches only raise (it only checks the value);
- a read that only feeds `args.y = ...` counts when `args.y` is itself read by code that acts on it (derived
  values, followed to a fixed point); so does the condition of an `if` whose branches only assign `args.y` (and
  log), except when `y` is another flag: one flag implying another (--load-debug-rollout-data sets
  --debug-train-only) is not the first flag's own behaviour. Shorthands, whose whole meaning is another flag's
  value, are listed in SHORTHANDS.
Deciding whether a line is logged is acting (that is what --log-interval does).
The flag modules (slime/utils/flags/), where flags are declared and refused, are not scanned.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

from slime.utils.arguments import build_parser
from slime.utils.flags.not_supported import NOT_SUPPORTED

from conftest import REPO_ROOT

SOURCES = sorted(p for p in (REPO_ROOT / "slime").rglob("*.py") if "flags" not in p.relative_to(REPO_ROOT).parts) \
    + [REPO_ROOT / "train.py", REPO_ROOT / "train_async.py"]
REPORTING_CALLS = {"debug", "info", "warning", "warn", "error", "exception", "critical", "print"}
SHORTHANDS = {"use_rotary_position_embeddings": "--position-embedding-type rope",
              "offload": "--offload-train --offload-rollout"}


def _is_args(node: ast.AST) -> bool:
    """`args`, `self.args`, `role_args`...: the receivers flags are read from."""
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
    return name.endswith("args")


def _flag_read(node: ast.AST) -> str | None:
    if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load) and _is_args(node.value):
        return node.attr
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"
            and len(node.args) >= 2 and _is_args(node.args[0]) and isinstance(node.args[1], ast.Constant)):
        return node.args[1].value
    return None


def _args_target(node: ast.AST) -> str | None:
    return node.attr if isinstance(node, ast.Attribute) and _is_args(node.value) else None


def _checks(statement: ast.stmt) -> bool:
    return isinstance(statement, (ast.Raise, ast.Assert, ast.Pass))


def _reports(statement: ast.stmt) -> bool:
    """A statement that only tells the user something: a check, or a log/warning/print call."""
    if _checks(statement):
        return True
    if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Call):
        func = statement.value.func
        return (func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")) in REPORTING_CALLS
    return False


def _derived_targets(statements: list[ast.stmt]) -> set[str] | None:
    """The `args.y` assigned by branches that do nothing else but report; None when they do anything else."""
    targets: set[str] = set()
    for statement in statements:
        if _reports(statement):
            continue
        if isinstance(statement, (ast.Assign, ast.AugAssign)):
            names = [_args_target(t) for t in (statement.targets if isinstance(statement, ast.Assign)
                                               else [statement.target])]
            if all(names):
                targets.update(names)
                continue
        if isinstance(statement, ast.If):
            inner = _derived_targets(statement.body + statement.orelse)
            if inner is not None:
                targets |= inner
                continue
        return None
    return targets


def _classify(statement: ast.stmt, in_test: bool) -> tuple[str, set[str]] | None:
    """What a read inside `statement` feeds: None = acts on something; ("computes" | "implies", {y}) = only sets
    these `args.y` (from the value read, or by a condition on it); ("computes", {}) = only reports or checks."""
    if isinstance(statement, (ast.If, ast.While)) and in_test:
        branches = statement.body + statement.orelse
        if all(_checks(s) for s in branches):
            return "computes", set()
        targets = _derived_targets(branches)
        return ("implies", targets) if targets else None  # empty: the branches only log, which is acting
    if _reports(statement):
        return "computes", set()
    if isinstance(statement, (ast.Assign, ast.AugAssign)) and not in_test:
        names = [_args_target(t) for t in (statement.targets if isinstance(statement, ast.Assign)
                                           else [statement.target])]
        if all(names):
            return "computes", set(names)
    return None


def _reads(path: Path):
    """(name, what the read feeds, as _classify) for every flag-like read in one source file."""
    tree = ast.parse(path.read_text(), str(path))
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    for node in ast.walk(tree):
        name = _flag_read(node)
        if name is None:
            continue
        child, parent = node, parents.get(node)
        while parent is not None and not isinstance(parent, ast.stmt):
            child, parent = parent, parents.get(parent)
        in_test = isinstance(parent, (ast.If, ast.While)) and child is parent.test
        yield name, _classify(parent, in_test) if parent is not None else None


def unread_flags(parser: argparse.ArgumentParser, sources: list[Path]) -> list[str]:
    """Option strings of the flags that no code acts on and the not-supported table does not name."""
    flags = {action.dest for action in parser._actions}
    acting: set[str] = set(SHORTHANDS)
    feeds: dict[str, set[str]] = {}
    for path in sources:
        for name, fed in _reads(path):
            if fed is None:
                acting.add(name)
                continue
            kind, targets = fed
            feeds.setdefault(name, set()).update(targets - flags if kind == "implies" else targets)
    changed = True
    while changed:  # a derivation acts when what it derives does
        changed = False
        for name, targets in feeds.items():
            if name not in acting and targets & acting:
                acting.add(name)
                changed = True
    missing = []
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        if action.dest not in acting and not set(action.option_strings) & set(NOT_SUPPORTED):
            missing.append(action.option_strings[0])
    return missing


def test_every_flag_acts_or_is_refused():
    assert unread_flags(build_parser(), SOURCES) == []


def test_the_walker_finds_unread_checked_and_dead_end_flags(tmp_path):
    parser = build_parser()
    for flag in ("--never-read", "--only-checked", "--only-logged", "--derives-nothing", "--derives-used",
                 "--really-used", "--gated", "--gates-a-log", "--implies-another"):
        parser.add_argument(flag, default=None)
    source = tmp_path / "synthetic.py"
    source.write_text(
        "import logging\n"
        "def validate(args):\n"
        "    if args.only_checked is not None and args.only_checked < 0:\n"
        "        raise ValueError(f'bad {args.only_checked}')\n"
        "    logging.info('value %s', args.only_logged)\n"
        "    assert args.only_checked != 3, args.never_read_in_a_message\n"
        "    args.unused_derived = args.derives_nothing\n"
        "    if args.derives_used:\n"
        "        args.used_derived = 2\n"
        "    if args.implies_another:\n"
        "        args.debug_train_only = True\n"
        "def train(args):\n"
        "    run(args.used_derived, args.really_used)\n"
        "    if not args.gated:\n"
        "        return\n"
        "    if args.gates_a_log:\n"
        "        logging.info('step')\n"
    )
    missing = unread_flags(parser, SOURCES + [source])
    assert {"--never-read", "--only-checked", "--only-logged", "--derives-nothing", "--implies-another"} <= set(missing)
    assert not {"--derives-used", "--really-used", "--gated", "--gates-a-log"} & set(missing)


def test_the_table_names_real_flags_with_reasons():
    known = {s for action in build_parser()._actions for s in action.option_strings}
    for flag, refusal in NOT_SUPPORTED.items():
        assert flag in known, flag
        assert refusal.why.strip(), flag


def test_fidelity_doc_lists_exactly_the_table():
    text = (REPO_ROOT / "docs" / "fidelity.md").read_text()
    section = text.split("<!-- not-supported table -->")[1]
    rows = {line.split("`")[1]: line for line in section.splitlines() if line.startswith("| `--")}
    assert set(rows) == set(NOT_SUPPORTED)
    for flag, refusal in NOT_SUPPORTED.items():
        assert rows[flag].endswith(f"| {refusal.why} |"), rows[flag]


def test_the_table_is_what_makes_rl_flags_pass(monkeypatch):
    assert "--keep-old-actor" not in unread_flags(build_parser(), SOURCES)
    monkeypatch.delitem(NOT_SUPPORTED, "--keep-old-actor")
    assert "--keep-old-actor" in unread_flags(build_parser(), SOURCES)

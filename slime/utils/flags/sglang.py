"""`--sglang-*` and `--router-*` flags.

slime registers every SGLang server flag with a `--sglang-` prefix by wrapping SGLang's own parser. SGLang only
installs on GPU machines, so the flags slime itself reads are declared here, and any other `--sglang-<name>` flag is
accepted as a pass-through and stored as `args.sglang_<name>` (value parsed as int, float, bool or string) so the
same script parses on a CPU machine. When SGLang is importable, pass-through names are checked against its
`ServerArgs` fields so a typo still fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib.util
from typing import Any

SGLANG_PREFIX = "--sglang-"


def add_sglang_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group(
        "sglang", "Inference engines and router. Other --sglang-<server-flag> flags pass through to SGLang."
    )
    g.add_argument("--sglang-router-ip", type=str, default=None, help="Use a running router at this address.")
    g.add_argument("--sglang-router-port", type=int, default=None, help="Port of a running router.")
    g.add_argument("--sglang-router-request-timeout-secs", type=int, default=14400, help="Router request timeout.")
    g.add_argument("--sglang-server-concurrency", type=int, default=512, help="In-flight requests per engine.")
    g.add_argument("--sglang-config", type=str, default=None, help="YAML of engine groups and overrides.")
    g.add_argument("--sglang-mem-fraction-static", type=float, default=None, help="KV-cache memory fraction.")
    g.add_argument("--sglang-context-length", type=int, default=None, help="Engine context length.")
    g.add_argument("--sglang-tensor-parallel-size", "--sglang-tp-size", type=int, default=None, dest="sglang_tp_size")
    g.add_argument("--sglang-data-parallel-size", "--sglang-dp-size", type=int, default=1, dest="sglang_dp_size")
    g.add_argument(
        "--sglang-pipeline-parallel-size", "--sglang-pp-size", type=int, default=1, dest="sglang_pp_size"
    )
    g.add_argument("--sglang-enable-dp-attention", action="store_true", help="DP attention.")
    g.add_argument("--sglang-enable-deterministic-inference", action="store_true",
                   help="Reproducible generation: each request carries sampling_seed = rollout_seed + its index in "
                        "the group, and the engines compute each request independently of its batch.")
    g.add_argument("--prefill-num-servers", type=int, default=None, help="Prefill servers (PD disaggregation).")
    # slime declares this with --use-fault-tolerance; it is here because this group holds the engines' flags.
    g.add_argument("--rollout-health-check-first-wait", type=float, default=0.0,
                   help="Seconds before the first engine health check (after start and after each restart).")
    g.add_argument("--router-policy", type=str, default=None, help="sglang-router policy (e.g. round_robin).")
    g.add_argument("--router-log-level", type=str, default="warn", help="sglang-router log level.")
    g.add_argument("--router-balance-abs-threshold", type=int, default=10, help="Router load-balance threshold.")
    g.add_argument("--router-balance-rel-threshold", type=float, default=1.2, help="Router load-balance ratio.")


def _parse_scalar(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def split_sglang_passthrough(
    argv: list[str], declared: set[str]
) -> tuple[list[str], dict[str, Any]]:
    """Take undeclared `--sglang-*` flags (and their values) out of argv.

    Returns the remaining argv and `{dest: value}`; a flag followed by another flag (or nothing) is a switch (True).
    """
    rest: list[str] = []
    passthrough: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        token = argv[i]
        name, eq, inline = token.partition("=")
        if name.startswith(SGLANG_PREFIX) and name not in declared:
            dest = name[2:].replace("-", "_")
            if eq:
                passthrough[dest] = _parse_scalar(inline)
                i += 1
                continue
            values = []
            while i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                values.append(_parse_scalar(argv[i + 1]))
                i += 1
            passthrough[dest] = True if not values else values[0] if len(values) == 1 else values
        else:
            rest.append(token)
        i += 1
    return rest, passthrough


def check_passthrough_against_sglang(passthrough: dict[str, Any]) -> list[str]:
    """Names of pass-through flags that SGLang (when installed) does not know, each with a suggestion."""
    if not passthrough or importlib.util.find_spec("sglang") is None:
        return []
    try:
        from sglang.srt.server_args import ServerArgs  # type: ignore[import-not-found]
    except Exception:  # noqa: BLE001 - a broken SGLang install must not stop CPU parsing
        return []
    known = {f.name for f in dataclasses.fields(ServerArgs)}
    problems = []
    for dest in passthrough:
        field_name = dest[len("sglang_") :]
        if field_name not in known:
            close = difflib.get_close_matches(field_name, known, n=1)
            hint = f" (did you mean --sglang-{close[0].replace('_', '-')}?)" if close else ""
            problems.append(f"--{dest.replace('_', '-')}{hint}")
    return problems

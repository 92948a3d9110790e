"""A real sglang-router for tests that bring their own (--sglang-router-ip/--sglang-router-port, or in-process
rollouts): slime's own `Router`, started as a run starts it (free ports, its flags' defaults)."""

from __future__ import annotations

from argparse import Namespace

from slime.backends.sglang_utils.sglang_engine import HTTP, Router
from slime.utils.arguments import build_parser


def launch_router() -> tuple[Router, Namespace]:
    """The router and the arguments that locate it (`sglang_router_ip`/`sglang_router_port`); `router.stop()` ends it."""
    args = build_parser().parse_args(["--rollout-batch-size", "1"])
    return Router(args), args


def register_workers(router: Router, args: Namespace, urls: list[str]) -> None:
    """POST /workers for each URL, then wait until the router lists them all (it registers in the background)."""
    for url in urls:
        HTTP.post(f"http://{args.sglang_router_ip}:{args.sglang_router_port}/workers", json={"url": url},
                  timeout=30).raise_for_status()
    router.wait_for_workers(args, urls)

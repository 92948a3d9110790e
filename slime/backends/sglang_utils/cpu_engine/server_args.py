"""Command line of the CPU engine: the `sglang.launch_server` flags a CPU engine can honour, with SGLang's names.

Flags that need more than one process or a GPU (tensor/data/pipeline/expert parallelism, several nodes, bf16) are
refused with "not supported yet: --flag value" rather than silently ignored. The checks that need no torch
(model directory, port) run first, so a bad start fails in well under a second with a one-line message.
"""

from __future__ import annotations

import argparse
import os
import socket
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class ServerArgs:
    model_path: str
    tokenizer_path: str
    host: str
    port: int
    random_seed: int
    mem_fraction_static: float
    max_total_tokens: int | None
    context_length: int | None
    max_running_requests: int
    max_prefill_tokens: int
    trust_remote_code: bool
    skip_server_warmup: bool
    enable_metrics: bool
    enable_memory_saver: bool
    enable_deterministic_inference: bool
    weight_version: str
    log_level: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m slime.backends.sglang_utils.cpu_engine",
        description="CPU stand-in for an SGLang server: SGLang's HTTP API over a transformers model (fp32).")
    p.add_argument("--model-path", required=True, help="HF checkpoint directory (config, weights, tokenizer)")
    p.add_argument("--tokenizer-path", default=None, help="tokenizer directory (default: --model-path)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=30000)
    p.add_argument("--random-seed", type=int, default=None,
                   help="seed of the sampler for requests without sampling_seed (default: random)")
    p.add_argument("--mem-fraction-static", type=float, default=0.8,
                   help="fraction of host memory for weights + KV cache; sets the KV token budget")
    p.add_argument("--max-total-tokens", type=int, default=None, help="KV token budget (overrides the fraction)")
    p.add_argument("--context-length", type=int, default=None,
                   help="longest prompt + completion (default: the config's max_position_embeddings)")
    p.add_argument("--max-running-requests", type=int, default=256, help="most requests decoded together")
    p.add_argument("--max-prefill-tokens", type=int, default=16384, help="most (padded) tokens in one prefill")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--skip-server-warmup", action="store_true", help="serve without a one-token warm-up request")
    p.add_argument("--enable-metrics", action="store_true", help="add SGLang's timing fields to meta_info")
    p.add_argument("--enable-memory-saver", action="store_true",
                   help="allow /release_memory_occupation (frees the weights until the next update)")
    p.add_argument("--enable-deterministic-inference", action="store_true",
                   help="batch-invariant results: requests run one at a time, so a request's logits (and, with "
                        "sampling_seed, its tokens) do not depend on what else the engine serves")
    p.add_argument("--weight-version", default="default", help="the weight_version reported before any update")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    # Accepted for command-line parity with sglang.launch_server, and refused unless they ask for what one CPU
    # process is: one tensor/data/pipeline/expert rank on one node, fp32.
    p.add_argument("--tp-size", "--tensor-parallel-size", dest="tp_size", type=int, default=1)
    p.add_argument("--dp-size", "--data-parallel-size", dest="dp_size", type=int, default=1)
    p.add_argument("--pp-size", "--pipeline-parallel-size", dest="pp_size", type=int, default=1)
    p.add_argument("--ep-size", "--expert-parallel-size", dest="ep_size", type=int, default=1)
    p.add_argument("--nnodes", type=int, default=1)
    p.add_argument("--node-rank", type=int, default=0)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device", default="cpu")
    return p


def _refuse_unsupported(p: argparse.ArgumentParser, ns: argparse.Namespace) -> None:
    for flag, value, ok in (
        ("--tp-size", ns.tp_size, 1), ("--dp-size", ns.dp_size, 1), ("--pp-size", ns.pp_size, 1),
        ("--ep-size", ns.ep_size, 1), ("--nnodes", ns.nnodes, 1), ("--node-rank", ns.node_rank, 0),
    ):
        if value != ok:
            p.error(f"not supported yet: {flag} {value} (a CPU engine is one process; start more engines instead)")
    if ns.dtype not in ("auto", "float32"):
        p.error(f"not supported yet: --dtype {ns.dtype} (the CPU engine runs fp32)")
    if ns.device != "cpu":
        p.error(f"not supported yet: --device {ns.device} (use real SGLang on GPUs)")
    for flag, value in (("--max-running-requests", ns.max_running_requests),
                        ("--max-prefill-tokens", ns.max_prefill_tokens)):
        if value < 1:
            p.error(f"{flag} must be at least 1, got {value}")
    if not 0.0 < ns.mem_fraction_static <= 1.0:
        p.error(f"--mem-fraction-static must be in (0, 1], got {ns.mem_fraction_static}")


def parse_server_args(argv: list[str] | None = None) -> ServerArgs:
    p = _parser()
    ns = p.parse_args(argv)
    _refuse_unsupported(p, ns)
    for flag, path in (("--model-path", ns.model_path), ("--tokenizer-path", ns.tokenizer_path)):
        if path is not None and not os.path.isfile(os.path.join(path, "config.json" if flag == "--model-path"
                                                                else "tokenizer_config.json")):
            what = "directory does not exist" if not os.path.isdir(path) else "is not an HF checkpoint directory"
            p.error(f"{flag} {path}: {what}")
    seed = ns.random_seed if ns.random_seed is not None else int.from_bytes(os.urandom(4), "little")
    return ServerArgs(
        model_path=ns.model_path, tokenizer_path=ns.tokenizer_path or ns.model_path, host=ns.host, port=ns.port,
        random_seed=seed, mem_fraction_static=ns.mem_fraction_static, max_total_tokens=ns.max_total_tokens,
        context_length=ns.context_length,
        # A batch's matmuls and padded attention round a row differently with its companions (about 1e-6 in a
        # log-prob), which is enough to flip a sampled token now and then; a batch of one is always the same.
        max_running_requests=1 if ns.enable_deterministic_inference else ns.max_running_requests,
        max_prefill_tokens=ns.max_prefill_tokens, trust_remote_code=ns.trust_remote_code,
        skip_server_warmup=ns.skip_server_warmup, enable_metrics=ns.enable_metrics,
        enable_memory_saver=ns.enable_memory_saver, enable_deterministic_inference=ns.enable_deterministic_inference,
        weight_version=ns.weight_version, log_level=ns.log_level,
    )


def bind_socket(host: str, port: int) -> socket.socket:
    """Take the port before loading the model, so a port in use is reported at once (and not taken meanwhile)."""
    # proto=IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY only on accepted sockets whose proto says TCP,
    # and without it every reply with a body waits ~40 ms (Nagle's algorithm against the client's delayed ACK).
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SystemExit(f"cpu_engine: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock

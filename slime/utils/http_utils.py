"""Async HTTP to the router and engines: one shared client per event loop, bounded retries on transient errors.

A transient error (connection refused or reset, timeout, 5xx) is retried `HTTP_RETRIES` times, one second apart,
and logged; a 4xx is the caller's mistake and raises at once with the server's message.
"""

from __future__ import annotations

import asyncio
import logging
from argparse import Namespace
from typing import Any

import httpx

logger = logging.getLogger(__name__)

HTTP_RETRIES = 60
RETRY_SLEEP_S = 1.0
_clients: dict[int, httpx.AsyncClient] = {}


class HTTPRequestError(RuntimeError):
    """A request that failed for good: the message names the URL and the server's answer."""


def router_url(args: Namespace, path: str) -> str:
    if not args.sglang_router_ip or not args.sglang_router_port:
        raise RuntimeError("no router address (--sglang-router-ip/--sglang-router-port): the engines are not up")
    return f"http://{args.sglang_router_ip}:{args.sglang_router_port}{path}"


def _client() -> httpx.AsyncClient:
    loop_id = id(asyncio.get_running_loop())
    if loop_id not in _clients:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        # trust_env=False: the router is on the cluster's network, never behind the environment's HTTP proxy.
        _clients[loop_id] = httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(None, connect=30.0),
                                              trust_env=False)
    return _clients[loop_id]


async def _request(method: str, url: str, payload: Any = None, headers: dict[str, str] | None = None,
                   retries: int = HTTP_RETRIES) -> Any:
    for attempt in range(1, retries + 1):
        try:
            response = await _client().request(method, url, json=payload, headers=headers)
        except (httpx.TransportError, httpx.TimeoutException) as exc:
            problem = f"{type(exc).__name__}: {exc}"
        else:
            if response.status_code < 400:
                return response.json() if response.content else None
            if response.status_code < 500:
                raise HTTPRequestError(f"{method} {url} -> {response.status_code}: {response.text[:500]}")
            problem = f"HTTP {response.status_code}: {response.text[:200]}"
        if attempt == retries:
            raise HTTPRequestError(f"{method} {url} failed {retries} times; last: {problem}")
        logger.warning("%s %s failed (%s); retry %d/%d", method, url, problem, attempt, retries)
        await asyncio.sleep(RETRY_SLEEP_S)


async def post(url: str, payload: Any = None, headers: dict[str, str] | None = None,
               retries: int = HTTP_RETRIES) -> Any:
    return await _request("POST", url, payload, headers, retries)


async def get(url: str, retries: int = HTTP_RETRIES) -> Any:
    return await _request("GET", url, retries=retries)

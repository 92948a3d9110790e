"""`python -m slime.backends.sglang_utils.cpu_engine --model-path DIR --port P [sglang.launch_server flags]`."""

from __future__ import annotations

import logging
import sys


def main(argv: list[str] | None = None) -> None:
    # Arguments, the model directory and the port are checked before torch is imported, so a bad start is
    # reported at once as one line on stderr (the launcher relays it).
    from slime.backends.sglang_utils.cpu_engine.server_args import bind_socket, parse_server_args

    args = parse_server_args(argv)
    sock = bind_socket(args.host, args.port)

    import uvicorn

    from slime.backends.sglang_utils.cpu_engine.engine import Engine
    from slime.backends.sglang_utils.cpu_engine.http_server import create_app
    from slime.utils.logging_utils import configure_logging

    configure_logging(getattr(logging, args.log_level.upper()))
    try:
        engine = Engine(args)
    except Exception as exc:  # noqa: BLE001 - a model that does not load ends the process with one line
        sys.exit(f"cpu_engine: cannot load the model from {args.model_path}: {type(exc).__name__}: {exc}")
    logging.getLogger(__name__).info(
        "CPU engine for %s on %s:%d (context %d, KV budget %d tokens)",
        args.model_path, args.host, args.port, engine.context_len, engine.max_total_tokens)
    config = uvicorn.Config(create_app(engine), log_level=args.log_level, access_log=False,
                            timeout_graceful_shutdown=5, timeout_keep_alive=60)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()

"""Run the serving API: ``python -m pipeline.api --config <stack.yaml>``.

One uvicorn worker on <network.bind>:<api.port>. uvicorn turns SIGTERM/SIGINT into
a graceful shutdown: in-flight requests finish, then the application's
lifespan stops the Kafka consumer thread (its current batch is stored and
committed first) and closes the database; the process then exits 0. Exit
status 1 or 3: start-up failed (port taken, unusable database).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import uvicorn

from pipeline.api.app import create_app
from pipeline.config import ConfigError, load_config


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.api", description="Weather predictions serving API."
    )
    parser.add_argument(
        "--config", type=Path, default=None, help="stack YAML (default include/stack/local.yaml)"
    )
    parser.add_argument(
        "--host", default=None, help="bind address (default: network.bind of the configuration)"
    )
    parser.add_argument(
        "--port", type=int, default=None, help="port (default: api.port of the configuration)"
    )
    parser.add_argument(
        "--no-consumer", action="store_true", help="serve the existing database without consuming Kafka"
    )
    parser.add_argument("--log-level", default="info")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        logging.getLogger("pipeline.api").error("%s", exc)
        return 2
    port = args.port if args.port is not None else config.api.port
    app = create_app(config, start_consumer=not args.no_consumer)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=args.host or config.network.bind,
            port=port,
            workers=1,
            log_level=args.log_level.lower(),
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=10,
        )
    )
    stop_signals: list[int] = []

    def note_stop(signum: int, _frame: object) -> None:
        stop_signals.append(signum)

    # uvicorn handles SIGTERM/SIGINT itself (graceful shutdown), then restores the
    # previous handlers and re-raises the signal. With the default handlers that
    # re-raise would end a clean stop with status 143; these make it a no-op.
    signal.signal(signal.SIGTERM, note_stop)
    signal.signal(signal.SIGINT, note_stop)
    server.run()
    if not server.started:
        return 1
    logging.getLogger("pipeline.api").info("serving API stopped cleanly (signals %s)", stop_signals or "none")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``chargeback proxy``: run the accounting proxy."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Coroutine
from typing import Any

from exporter.cliutil import add_config_flag, add_log_flag, config_from_args, setup_logging


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "proxy",
        help="run the OpenAI-compatible accounting proxy",
        description="OpenAI-compatible proxy that attributes requests to users/teams, counts tokens "
        "(Prometheus, separate listener) and writes the request ledger.",
    )
    add_config_flag(p)
    add_log_flag(p)
    p.add_argument(
        "--web.listen-address",
        dest="listen",
        action="append",
        metavar="HOST:PORT",
        help="API address (repeatable; overrides proxy.listen)",
    )
    p.add_argument(
        "--web.metrics-address",
        dest="metrics_listen",
        metavar="HOST:PORT",
        help="metrics address (overrides proxy.metrics_listen)",
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    cfg = config_from_args(args)
    from exporter.proxy.server import serve

    return run_loop(serve(cfg, tuple(args.listen) if args.listen else None, args.metrics_listen))


def run_loop(coro: Coroutine[Any, Any, int]) -> int:
    """asyncio.run, on uvloop when it is installed (a faster event loop: less proxy overhead)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)

"""``chargeback proxy``: run the accounting proxy."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Coroutine
from typing import Any

from exporter.cliutil import add_server_flags, config_from_args, setup_logging


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "proxy",
        help="run the OpenAI-compatible accounting proxy",
        description="OpenAI-compatible proxy that attributes requests to users/teams, counts tokens "
        "(Prometheus, separate listener) and writes the request ledger.",
    )
    add_server_flags(p, "API address (repeatable; overrides proxy.listen)", repeatable_listen=True)
    p.add_argument(
        "--web.metrics-address",
        dest="metrics_listen",
        metavar="HOST:PORT",
        help="metrics address (overrides proxy.metrics_listen)",
    )
    p.add_argument(
        "--web.config.file",
        dest="web_config_file",
        metavar="PATH",
        help="TLS for the API and metrics listeners, basic auth for the metrics listener "
        "(exporter-toolkit web config: tls_server_config, basic_auth_users)",
    )
    p.add_argument(
        "--web.metrics-config.file",
        dest="metrics_web_config_file",
        metavar="PATH",
        help="web config for the metrics listener only (default: --web.config.file)",
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    cfg = config_from_args(args)
    from exporter.proxy.server import serve
    from exporter.webconfig import WebConfigError, load_web_config

    try:
        web_cfg = load_web_config(args.web_config_file)
        metrics_web_cfg = (
            load_web_config(args.metrics_web_config_file) if args.metrics_web_config_file else web_cfg
        )
    except WebConfigError as exc:
        print(f"chargeback proxy: web config error: {exc}", file=sys.stderr)
        return 2
    return run_loop(
        serve(
            cfg,
            tuple(args.listen) if args.listen else None,
            args.metrics_listen,
            web_config=web_cfg,
            metrics_web_config=metrics_web_cfg,
        )
    )


def run_loop(coro: Coroutine[Any, Any, int]) -> int:
    """asyncio.run, on uvloop when it is installed (a faster event loop: less proxy overhead)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)

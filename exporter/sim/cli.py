"""``chargeback simulate-upstream`` (an OpenAI-compatible simulator) and ``chargeback traffic``."""

from __future__ import annotations

import argparse
import asyncio
import json

from exporter.cliutil import add_server_flags, setup_logging


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "simulate-upstream",
        help="run a simulated OpenAI-compatible inference server (tests, demo, benchmarks)",
        description="Deterministic OpenAI-compatible upstream. Faults: header X-Sim-Fault: "
        "500|429|503|drop|no-usage|slow, or POST /sim/fault. Counters: GET /sim/stats.",
    )
    add_server_flags(
        p,
        "address to listen on (repeatable; default 127.0.0.1:8000)",
        repeatable_listen=True,
        reads_config=False,
    )
    p.add_argument(
        "--tokens-per-second", type=float, default=0.0, help="streaming speed per request (0: unlimited)"
    )
    p.add_argument("--latency-ms", type=float, default=0.0, help="delay before the first token")
    p.add_argument("--models", default="sim-small,sim-large", help="comma-separated model names it serves")
    p.add_argument(
        "--api-key", default=None, help="require this bearer token (tests that the proxy swaps credentials)"
    )
    p.add_argument("--strict-models", action="store_true", help="404 for models not in --models")
    p.set_defaults(func=_simulate)

    t = subparsers.add_parser(
        "traffic",
        help="send simulated user traffic through the proxy with the openai SDK",
    )
    t.add_argument("--base-url", required=True, help="proxy URL, e.g. http://127.0.0.1:8080")
    t.add_argument(
        "--key", action="append", required=True, metavar="USER=TOKEN", help="a user's token (repeatable)"
    )
    t.add_argument("--models", required=True, help="comma-separated model names")
    t.add_argument("--requests-per-user", type=int, default=10)
    t.add_argument("--stream-ratio", type=float, default=0.5)
    t.add_argument("--seed", type=int, default=1)
    t.add_argument("--concurrency", type=int, default=8)
    t.set_defaults(func=_traffic)


def _simulate(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    from exporter.sim.upstream import SimOptions, serve_sim

    opts = SimOptions(
        models=tuple(m.strip() for m in args.models.split(",") if m.strip()),
        tokens_per_second=args.tokens_per_second,
        latency_ms=args.latency_ms,
        api_key=args.api_key,
        strict_models=args.strict_models,
    )
    from exporter.proxy.cli import run_loop

    return run_loop(serve_sim(opts, tuple(args.listen or ["127.0.0.1:8000"])))


def _traffic(args: argparse.Namespace) -> int:
    from exporter.sim.traffic import run_traffic

    tokens = {}
    for item in args.key:
        user, sep, token = item.partition("=")
        if not sep:
            raise SystemExit(f"chargeback traffic: --key expects USER=TOKEN, got {item!r}")
        tokens[user] = token
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    result = asyncio.run(
        run_traffic(
            args.base_url,
            tokens,
            models,
            args.requests_per_user,
            args.stream_ratio,
            args.seed,
            concurrency=args.concurrency,
        )
    )
    print(json.dumps(result.as_dict(), indent=2))
    return 0 if not result.errors else 1

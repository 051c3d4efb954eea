"""``chargeback usage --user EMAIL``: one person's usage this billing month and their limits.

It reads the same counters the proxies act on: the shared Redis store when ``limits.store.url`` is
set, otherwise the month to date from the ledger (what a single in-process proxy starts from).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from datetime import datetime
from typing import Any

from exporter.cliutil import add_config_flag, config_from_args


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("usage", help="one user's usage this billing month and the limits that apply")
    add_config_flag(p)
    p.add_argument("--user", required=True, metavar="EMAIL", help="whose usage to show")
    p.add_argument("--team", metavar="TEAM", help="their team (default: the user's team in the config)")
    p.add_argument("--now", metavar="ISO", help="act as if it were this time (which billing month)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    team = args.team or cfg.team_of(args.user)
    if team is None:
        print(f"chargeback: --team is required ({args.user} has no team in {cfg.path})", file=sys.stderr)
        return 2
    if cfg.limits is None:  # no limits: section: the teams' budgets, alert only, counted from the ledger
        from exporter.limits.settings import LimitsConfig
        from exporter.sections import validate

        context = {"pools": cfg.pools, "teams": cfg.teams, "users": cfg.users, "models": cfg.models}
        limits = validate(LimitsConfig, {}, "limits", cfg.path, context)
        cfg = dataclasses.replace(cfg, limits=limits)
    clock = None
    if args.now:
        try:
            when = datetime.fromisoformat(args.now.replace("Z", "+00:00"))
        except ValueError:
            print(f"chargeback: --now {args.now!r} is not an ISO date-time", file=sys.stderr)
            return 2
        if when.tzinfo is None:
            when = when.replace(tzinfo=cfg.tz)
        ts = when.timestamp()
        clock = lambda: ts  # noqa: E731
    doc = asyncio.run(_usage(cfg, args.user, team, clock))
    print(json.dumps(doc, indent=2))
    return 0 if doc["limit_store"]["up"] else 1


async def _usage(cfg: Any, user: str, team: str, clock: Any) -> dict[str, Any]:
    import time

    from exporter.limits.limiter import Limiter
    from exporter.limits.usage import seed_memory_store

    limiter = Limiter(cfg, clock=clock or time.time)
    try:
        if limiter.store.backend == "memory":
            await asyncio.to_thread(seed_memory_store, limiter, cfg.ledger.url)
        return await limiter.usage(user, team)
    finally:
        await limiter.close()

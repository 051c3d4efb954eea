"""What a limit check adds to a request: ``Limiter.check`` (one Lua script on a local Redis) plus the
synchronous part of ``Limiter.record`` (the usage is sent without waiting), against the same loop
with no limit configured for the caller (the check returns before touching any store), and against
a bare Redis PING on the same connection (the floor: the loopback round trip itself).

Measured in-process on one event loop (uvloop, like the proxy), one request at a time, so the
figure is the latency a single request sees; the proxy's HTTP work is the same with or without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import statistics
import time
from collections.abc import Awaitable, Callable

from exporter.config import parse_config
from exporter.limits.limiter import Limiter
from exporter.limits.store import MemoryStore, RedisStore

REDIS_URL = "redis://127.0.0.1:6379/0"
CONFIG = """
pools: {p: {gpu_hourly_cost: 3.6, gpus: 1, capacity_tokens_per_second: 1000}}
models: {m: {upstream: "http://127.0.0.1:1/v1", pool: p}}
teams: {research: {budget: 1000000}, free: {}}
users: {"alice@corp.example": research, "bob@corp.example": free}
limits:
  store: {url: %s, namespace: %s}
  teams:
    research: {enforce: block, monthly_tokens: 1000000000000, requests_per_minute: 100000000, tokens_per_minute: 100000000000}
  users:
    alice@corp.example: {enforce: block, requests_per_minute: 100000000}
"""


async def _interleaved(n: int, paths: dict[str, Callable[[], Awaitable[object]]]) -> dict[str, list[float]]:
    """Each path once per round, in turn: load on a shared machine hits all paths alike."""
    for fn in paths.values():  # warm up (connection, script cache)
        for _ in range(min(200, n)):
            await fn()
    out: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(n):
        for name, fn in paths.items():
            t = time.perf_counter()
            await fn()
            out[name].append(time.perf_counter() - t)
    return out


def _us(values: list[float], q: float | None = None) -> float:
    if q is None:
        return statistics.median(values) * 1e6
    return sorted(values)[min(len(values) - 1, int(q * len(values)))] * 1e6


async def _measure(n: int) -> dict[str, list[float]]:
    ns = f"bench-{secrets.token_hex(4)}"
    cfg = parse_config(CONFIG % (REDIS_URL, ns))
    redis = RedisStore(REDIS_URL, ns, 1.0)
    limiter = Limiter(cfg, store=redis)
    memory = Limiter(parse_config(CONFIG % ("null", ns)), store=MemoryStore())
    model = cfg.models["m"]

    async def check_and_record(lim: Limiter) -> None:
        await lim.check("alice@corp.example", "research")
        lim.record("alice@corp.example", "research", model, 100, 20)

    try:
        results = await _interleaved(
            n,
            {
                "no limit for the caller (baseline)": lambda: limiter.check("bob@corp.example", "free"),
                "Redis PING (round-trip floor)": redis.ping,
                "check + record, Redis": lambda: check_and_record(limiter),
                "check + record, in-process": lambda: check_and_record(memory),
            },
        )
        await asyncio.sleep(0.2)  # let the last records land before the keys are removed
        keys = await redis.client.execute("KEYS", f"{ns}:*")
        if keys:
            await redis.client.execute("DEL", *keys)
        return results
    finally:
        await limiter.close()
        await memory.close()


def run(quick: bool) -> str:
    import uvloop

    n = 2000 if quick else 20000
    results = uvloop.run(_measure(n))
    base = statistics.median(results["no limit for the caller (baseline)"])
    lines = [
        "## limits",
        "",
        f"What a limit check adds to one request (bench/bench_limits.py, {n} sequential requests, uvloop,"
        " Redis on 127.0.0.1). The check is one Lua script (read the team's and the user's counters,"
        " decide, count the request); the record after the response is sent without waiting.",
        "",
        "| path | median µs | p99 µs | added vs baseline (median µs) |",
        "|---|---|---|---|",
    ]
    for name, values in results.items():
        added = statistics.median(values) - base
        lines.append(f"| {name} | {_us(values):.1f} | {_us(values, 0.99):.1f} | {added * 1e6:.1f} |")
    added = (statistics.median(results["check + record, Redis"]) - base) * 1e6
    floor = _us(results["Redis PING (round-trip floor)"])
    own = added - floor
    load = ""
    with contextlib.suppress(OSError):
        load = f" Load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs."
    lines += [
        "",
        f"Target: ≤ 100 µs median added by a limit check with a local Redis; measured {added:.1f} µs"
        f" ({'met' if added <= 100 else 'NOT met'}), of which {floor:.1f} µs is the loopback round trip"
        f" itself (PING on the same connection) and {own:.1f} µs the limiter's own work (keys, script,"
        f" reply, the record's encoding).{load}",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    print(run("--quick" in sys.argv))

"""What a limit check adds to a request, measured twice in the same run:

1. End to end: two proxy processes in front of one simulator, the same config except that one has
   a ``limits:`` section (team quota and rates, user rate, all blocking, Redis on 127.0.0.1, far
   from the limits) and the other none. One client sends one request at a time, alternating blocks
   of requests between the two; the added latency is the difference of the medians, and the CPU per
   request is each proxy process's CPU time (/proc) divided by its requests.
2. In-process, per call: ``Limiter.check`` plus the synchronous part of ``Limiter.record`` on one
   event loop (uvloop, like the proxy), interleaved with a caller that has no limit (the baseline),
   a bare Redis PING (the loopback round trip) and the exact path: the one Lua script every request
   took before leases, and the one requests take near a limit (no lease granted).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from bench_proxy import BODY, cpu_seconds, pin, placement  # noqa: E402

from exporter.config import parse_config  # noqa: E402
from exporter.limits.limiter import Limiter  # noqa: E402
from exporter.limits.store import MemoryStore, RedisStore  # noqa: E402
from exporter.sim.harness import (  # noqa: E402
    create_keys,
    proxy_config,
    start_proxy,
    start_simulator,
    write_config,
)

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


async def _interleaved(
    n: int, paths: dict[str, Callable[[], Awaitable[object]]], settle: Callable[[], Awaitable[object]]
) -> dict[str, list[float]]:
    """Each path once per round, in turn: load on a shared machine hits all paths alike. After each
    call, untimed, ``settle`` waits until Redis has run what the call sent without waiting (the
    record): otherwise that work would be timed as part of the next path's call."""
    for fn in paths.values():  # warm up (connection, script cache)
        for _ in range(min(200, n)):
            await fn()
            await settle()
    out: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(n):
        for name, fn in paths.items():
            t = time.perf_counter()
            await fn()
            out[name].append(time.perf_counter() - t)
            await settle()
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
    # never granted a lease (a grant would have to cover 10^12 average requests): every check is
    # the exact one, as near a limit; its own namespace so that it does not see the other's leases
    exact = Limiter(
        parse_config(CONFIG % (REDIS_URL, ns + "x")),
        store=RedisStore(REDIS_URL, ns + "x", 1.0),
        lease_min_requests=10**12,
    )
    memory = Limiter(parse_config(CONFIG % ("null", ns)), store=MemoryStore())
    model = cfg.models["m"]

    async def settle() -> None:
        await asyncio.sleep(0)  # the records' write is scheduled for the next loop turn
        await redis.ping()  # each connection answers in order: the record ran before this
        assert isinstance(exact.store, RedisStore)
        await exact.store.ping()

    async def check_and_record(lim: Limiter) -> None:
        await lim.check("alice@corp.example", "research")
        lim.record("alice@corp.example", "research", model, 100, 20)

    try:
        results = await _interleaved(
            n,
            {
                "no limit for the caller (baseline)": lambda: limiter.check("bob@corp.example", "free"),
                "Redis PING (round-trip floor)": redis.ping,
                "check + record, Redis, far from the limit (lease)": lambda: check_and_record(limiter),
                "check + record, Redis, exact path (near the limit)": lambda: check_and_record(exact),
                "check + record, in-process": lambda: check_and_record(memory),
            },
            settle,
        )
        await asyncio.sleep(0.2)  # let the last records land before the keys are removed
        results["_local"] = [limiter.local_admissions / (n + min(200, n))]
        return results
    finally:
        await limiter.close()
        await exact.close()
        await memory.close()
        keys = await redis.client.execute("KEYS", f"{ns}*")
        if keys:
            await redis.client.execute("DEL", *keys)
        await redis.close()


# --------------------------------------------------------------------------- end to end


def _proxy_limits(ns: str) -> dict[str, object]:
    huge = 10**12
    return {
        "store": {"url": REDIS_URL, "namespace": ns},
        "teams": {
            "research": {
                "enforce": "block",
                "monthly_tokens": huge,
                "requests_per_minute": huge,
                "tokens_per_minute": huge,
            }
        },
        "users": {"alice@corp.example": {"enforce": "block", "requests_per_minute": huge}},
    }


async def _alternate(
    targets: list[tuple[str, str, int]], n: int, warmup: int
) -> tuple[list[list[float]], list[float]]:
    """One client, one request at a time, alternating between the proxies request by request (so
    that load from other jobs on a shared machine hits both alike). Returns each proxy's latencies
    and the CPU seconds its process used for the ``n`` timed requests."""
    import aiohttp

    body = json.dumps(BODY).encode()
    async with aiohttp.ClientSession() as session:

        async def one(url: str, token: str) -> float:
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            t = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"{url}: HTTP {resp.status}")
            return time.perf_counter() - t

        for _ in range(warmup):
            for url, token, _ in targets:
                await one(url, token)
        lats: list[list[float]] = [[] for _ in targets]
        cpu = [cpu_seconds(pid) for _, _, pid in targets]
        for i in range(n):
            for j in range(len(targets)) if i % 2 == 0 else reversed(range(len(targets))):
                lats[j].append(await one(*targets[j][:2]))
        return lats, [cpu_seconds(pid) - c for (_, _, pid), c in zip(targets, cpu, strict=True)]


def _end_to_end(requests: int) -> dict[str, tuple[list[float], float, int]]:
    """name → (latencies, proxy CPU seconds, requests) for both proxies."""
    where = placement()
    ns = f"bench-e2e-{secrets.token_hex(4)}"
    out: dict[str, tuple[list[float], float, int]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-limits-") as tmp:
        work = Path(tmp)
        sim = start_simulator(work, models=["bench-a"])
        procs: list[object] = [sim]
        try:
            pin(sim.proc.pid, where.sim)
            proxies = {}
            users = {"alice@corp.example": "research"}
            for name, limits in (("without limits", None), ("with limits", _proxy_limits(ns))):
                d = work / name.replace(" ", "-")
                d.mkdir()
                doc = proxy_config(
                    upstreams={"bench-a": [f"{sim.url}/v1"]},
                    workdir=d,
                    users=users,
                    ledger={"batch_size": 1000, "flush_interval_seconds": 0.5, "retry_seconds": 2.0},
                    proxy={"upstream_timeout_seconds": 60, "key_refresh_seconds": 2.0},
                    extra={"limits": limits} if limits else None,
                )
                cfg = write_config(d / "chargeback.yaml", doc)
                token = create_keys(doc["ledger"]["url"], users)["alice@corp.example"]
                proc = start_proxy(d, cfg, name="proxy")
                procs.append(proc)
                pin(proc.process.proc.pid, where.proxy)
                proxies[name] = (proc, token)
                out[name] = ([], 0.0, 0)
            targets = [
                (f"{proc.url}/v1/chat/completions", token, proc.process.proc.pid)
                for proc, token in proxies.values()
            ]
            before = os.sched_getaffinity(0)
            if where.loadgen:
                os.sched_setaffinity(0, where.loadgen)
            try:
                lats, cpus = asyncio.run(_alternate(targets, requests, warmup=200))
            finally:
                os.sched_setaffinity(0, before)
            for name, lat, cpu in zip(proxies, lats, cpus, strict=True):
                out[name] = (lat, cpu, requests)
        finally:
            for p in reversed(procs):
                p.stop()  # type: ignore[attr-defined]
    with contextlib.suppress(OSError, ConnectionError, RuntimeError):
        asyncio.run(_delete(ns))
    return out


async def _delete(ns: str) -> None:
    store = RedisStore(REDIS_URL, ns, 1.0)
    try:
        keys = await store.client.execute("KEYS", f"{ns}*")
        if keys:
            await store.client.execute("DEL", *keys)
    finally:
        await store.close()


def run(quick: bool) -> str:
    import uvloop

    requests = 1000 if quick else 5000
    e2e = _end_to_end(requests)
    n = 2000 if quick else 20000
    results = uvloop.run(_measure(n))
    local_share = results.pop("_local")[0]
    load = ""
    with contextlib.suppress(OSError):
        load = f" Load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs."

    base_lat, base_cpu, base_n = e2e["without limits"]
    lim_lat, lim_cpu, lim_n = e2e["with limits"]
    e2e_added = (statistics.median(lim_lat) - statistics.median(base_lat)) * 1e6
    cpu_added = (lim_cpu / lim_n - base_cpu / base_n) * 1e6
    lines = [
        "## Limit checks (`bench/bench_limits.py`, issue 15)",
        "",
        f"### End to end: a proxy with limits vs the same proxy without ({requests} sequential requests"
        " to each, one client alternating between them request by request, after 200 warm-up;"
        " non-streaming, aiohttp client, zero-latency simulator)",
        "",
        "The limits: the team's monthly quota, requests and tokens per minute, and the user's requests"
        " per minute, all `enforce: block`, Redis on 127.0.0.1, far from every limit.",
        "",
        "| proxy | median µs | p99 µs | proxy CPU µs/request |",
        "|---|---|---|---|",
    ]
    for name, (lat, cpu, count) in e2e.items():
        lines.append(f"| {name} | {_us(lat):.0f} | {_us(lat, 0.99):.0f} | {cpu / count * 1e6:.0f} |")
    lines += [
        "",
        f"Added by the limits: **{e2e_added:.0f} µs median latency** and **{cpu_added:.0f} µs CPU per"
        f" request** (target ≤ 100 µs median: {'met' if e2e_added <= 100 else 'NOT met'}).{load}",
        "",
        f"### In-process, per call ({n} calls per path, interleaved, uvloop, Redis on 127.0.0.1)",
        "",
        "| path | median µs | p99 µs | added vs baseline (median µs) |",
        "|---|---|---|---|",
    ]
    base = statistics.median(results["no limit for the caller (baseline)"])
    for name, values in results.items():
        added = statistics.median(values) - base
        lines.append(f"| {name} | {_us(values):.1f} | {_us(values, 0.99):.1f} | {added * 1e6:.1f} |")
    far = (statistics.median(results["check + record, Redis, far from the limit (lease)"]) - base) * 1e6
    exact = (statistics.median(results["check + record, Redis, exact path (near the limit)"]) - base) * 1e6
    floor = _us(results["Redis PING (round-trip floor)"])
    lines += [
        "",
        f"Far from the limit {local_share:.1%} of the checks were admitted on a lease (no round trip;"
        " the rest: the first request of each minute window and each top-up's exact check), adding"
        f" {far:.1f} µs median. The exact path, which every request near a limit takes, adds"
        f" {exact:.1f} µs, of which {floor:.1f} µs is the loopback round trip itself (PING on the same"
        " connection).",
        "",
        READING,
    ]
    return "\n".join(lines)


READING = """Reading the figures: this machine has 2 CPUs shared with other jobs, so end-to-end medians move by
hundreds of microseconds from run to run; the client therefore alternates between the two proxies
request by request, and the difference of the medians is the figure. Before leases, every request
with a blocking limit waited for one Lua script on Redis (+196–224 µs median in earlier runs here,
when the machine was busier and a bare round trip took 100–170 µs); the "exact path" row is that
design's cost today, round trip included. Now, far from a limit:

- a request is admitted on this replica's leases (exporter/limits/leases.py, docs/operations.md
  "Limits that act"): no await, a few microseconds for the decision; the record after the response
  is summed with others of the same team, user, model and minute and sent every 20 ms, so its Redis
  write, script and reply are shared by many requests;
- what remains per request is the decision, the usage arithmetic (Decimal prices) and the lease
  bookkeeping: the in-process "far from the limit" row, about the cost of the in-process store.

Near a limit (less than 128 average requests left beyond what other replicas hold) every request
takes the exact path again: one Redis round trip plus the script, which also frees expired leases,
ends the caller's own and tries a grant (the "exact path" row). That is the price of the exact "a
quota of N lets exactly as many requests through as fit" rule where it matters; alert-only limits
and callers without a blocking limit cost nothing (the baseline row)."""


if __name__ == "__main__":
    import sys

    print(run("--quick" in sys.argv))

"""Series and scrape size of the proxy's ``/metrics`` in both ``proxy.metrics_labels`` modes, and
scrapes with and without gzip (issue 17).

The proxy's own ``ProxyMetrics`` holds users × models of usage (as real requests would leave it;
``record`` is what the request path calls), served by the real ``/metrics`` handler
(exporter/exposition.py) over HTTP on 127.0.0.1. Series are counted from the exposition itself, so
the per-user × model figure is what Prometheus would ingest. Users are in teams of ten, with two
status codes per team × model (200 and 502).

    .venv/bin/python bench/bench_series.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter.config import parse_config
from exporter.exposition import GZIP_LEVEL, metrics_response
from exporter.proxy.metrics import ProxyMetrics

MODELS = 4
USERS_PER_TEAM = 10
SCRAPES = 5


def _config(teams: int, mode: str) -> str:
    lines = ["pools:", "  p: {gpu_hourly_cost: 2}", "models:"]
    lines += [f"  m{i}: {{upstreams: [http://127.0.0.1:1/v1], pool: p}}" for i in range(MODELS)]
    lines += ["teams:"] + [f"  t{t:04d}: {{budget: 100}}" for t in range(teams)]
    lines += ["proxy:", f"  metrics_labels: {mode}"]
    return "\n".join(lines) + "\n"


def filled(users: int, mode: str) -> ProxyMetrics:
    teams = max(1, users // USERS_PER_TEAM)
    m = ProxyMetrics(parse_config(_config(teams, mode), "bench.yaml"))
    for u in range(users):
        for i in range(MODELS):
            m.usage.record(
                f"u{u:06d}@corp.example", f"t{u % teams:04d}", f"m{i}", 200, 900, 120, 50, 1.25, False
            )
        if u < teams:  # one error answer per team × model
            for i in range(MODELS):
                m.usage.record(
                    f"u{u:06d}@corp.example", f"t{u % teams:04d}", f"m{i}", 502, 10, 0, 0, 0.5, True
                )
    return m


def count_series(body: bytes) -> Counter[str]:
    """Samples per metric family name (counter samples, histogram buckets, gauges)."""
    out: Counter[str] = Counter()
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            out[line.split("{", 1)[0].split(" ", 1)[0]] += 1
    return out


async def _scrapes(m: ProxyMetrics, accept: str) -> tuple[float, int]:
    """Median seconds of a GET /metrics over HTTP (render, encode, transfer) and the body's size."""

    async def handler(request: web.Request) -> web.Response:
        return await metrics_response(request, m.render)

    app = web.Application()
    app.router.add_get("/metrics", handler)
    times, size = [], 0
    async with TestClient(TestServer(app)) as client:
        for _ in range(SCRAPES):
            t0 = time.perf_counter()
            resp = await client.get("/metrics", headers={"Accept-Encoding": accept}, auto_decompress=False)
            body = await resp.read()
            times.append(time.perf_counter() - t0)
            size = len(body)
    return statistics.median(times), size


def run(quick: bool = False) -> str:
    users = 5_000 if quick else 20_000
    out = [
        "## Series and scrapes at scale (`proxy.metrics_labels`, gzip)",
        "",
        f"One proxy's `/metrics` after {users:,} users (teams of {USERS_PER_TEAM}) × {MODELS} models sent requests, "
        "counted from the exposition itself (bench/bench_series.py). Per user × model the usage families are "
        "requests, prompt, completion, cached tokens, request seconds and estimated requests; status codes are on "
        "`chargeback_requests_by_code_total{team, model, code}` in both modes.",
        "",
        "| mode | usage series | by-code series | all series | per user × model | body | gzip body | scrape | gzip scrape |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = count_series(filled(0, "user").render())
    for mode in ("user", "team"):
        m = filled(users, mode)
        counts = count_series(m.render())
        usage = sum(n for name, n in counts.items() if name.startswith("chargeback_") and name not in base)
        by_code = counts["chargeback_requests_by_code_total"]
        usage -= by_code
        total = sum(counts.values())
        per_pair = usage / (users * MODELS)
        plain_s, plain_size = asyncio.run(_scrapes(m, "identity"))
        gz_s, gz_size = asyncio.run(_scrapes(m, "gzip"))
        out.append(
            f"| {mode} | {usage:,} | {by_code:,} | {total:,} | {per_pair:.3f} | {plain_size / 1e6:.1f} MB | "
            f"{gz_size / 1e6:.2f} MB | {plain_s * 1000:.0f} ms | {gz_s * 1000:.0f} ms |"
        )
    body = filled(users, "user").render()
    out += [
        "",
        f"gzip levels on the {len(body) / 1e6:.1f} MB user-mode body (exporter/exposition.py uses {GZIP_LEVEL}):",
        "",
    ]
    for level in (1, 6, 9):
        t0 = time.perf_counter()
        n = len(gzip.compress(body, compresslevel=level))
        ms = (time.perf_counter() - t0) * 1000
        out.append(f"- level {level}: {n / 1e6:.2f} MB ({len(body) / n:.0f}× smaller) in {ms:.0f} ms")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="5,000 users instead of 20,000")
    print(run(ap.parse_args().quick))

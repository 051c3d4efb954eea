"""Proxy overhead benchmark: the proxy vs calling the simulated upstream directly, in the same run.

A zero-latency simulator (tokens as fast as it can write them) and the proxy run as real processes;
an aiohttp client in this process drives both at 1, 16 and 64 concurrent clients, non-streaming and
streaming. Then 5,000 users × 4 models of series are created through real requests and ``/metrics``
scrape time and proxy RSS are measured.

    .venv/bin/python bench/bench_proxy.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter.sim.harness import UPSTREAM_API_KEY, metric, proxy_stack, read_metrics
from exporter.sim.upstream import expected_usage

MODELS = ("bench-a", "bench-b", "bench-c", "bench-d")
BODY = {"model": "bench-a", "messages": [{"role": "user", "content": "benchmark the accounting proxy please"}],
        "max_tokens": 32}
STREAM_BODY = {**BODY, "max_tokens": 64, "stream": True, "stream_options": {"include_usage": True}}


@dataclass
class Result:
    latencies: list[float]
    ttfts: list[float]
    seconds: float
    tokens: int

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


async def drive(url: str, headers: dict[str, str], body: dict, concurrency: int, total: int) -> Result:
    stream = bool(body.get("stream"))
    tokens_each = expected_usage("chat/completions", body)["completion_tokens"]
    latencies: list[float] = []
    ttfts: list[float] = []
    remaining = total
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                t0 = time.perf_counter()
                async with session.post(url, json=body, headers=headers) as resp:
                    if resp.status != 200:
                        raise RuntimeError(f"{url}: HTTP {resp.status}: {await resp.text()}")
                    if stream:
                        first = True
                        async for _ in resp.content.iter_any():
                            if first:
                                ttfts.append(time.perf_counter() - t0)
                                first = False
                    else:
                        await resp.read()
                latencies.append(time.perf_counter() - t0)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    return Result(latencies, ttfts, seconds, tokens_each * len(latencies))


def ms(v: float) -> str:
    return f"{v * 1000:.2f}"


async def populate(api_url: str, tokens: dict[str, str], concurrency: int = 64) -> float:
    """One request per user × model: creates the per-user series through the real request path."""
    jobs = [(t, m) for t in tokens.values() for m in MODELS]
    started = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def worker() -> None:
            while jobs:
                token, model = jobs.pop()
                body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
                async with session.post(f"{api_url}/v1/chat/completions", json=body,
                                        headers={"Authorization": f"Bearer {token}"}) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"populate: HTTP {resp.status}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def bench(quick: bool) -> str:
    n_users = 5000
    counts = {1: 150, 16: 600, 64: 1200} if quick else {1: 500, 16: 3000, 64: 6000}
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-proxy-") as tmp:
        users = {f"bench{i:05d}@corp.example": ("research", "support")[i % 2] for i in range(n_users)}
        t0 = time.perf_counter()
        with proxy_stack(Path(tmp), users=users, models=MODELS, proxy={"upstream_timeout_seconds": 60},
                         ledger={"batch_size": 1000}) as stack:
            setup = time.perf_counter() - t0
            token = next(iter(stack.tokens.values()))
            proxy_h = {"Authorization": f"Bearer {token}"}
            direct_h = {"Authorization": f"Bearer {UPSTREAM_API_KEY}"}
            direct_url = f"{stack.sim_url}/v1/chat/completions"
            proxy_url = f"{stack.api_url}/v1/chat/completions"
            await drive(proxy_url, proxy_h, BODY, 8, 200)  # warm-up (connections, caches)
            await drive(direct_url, direct_h, BODY, 8, 200)
            rows_ns, rows_s = [], []
            added: dict[str, dict[int, tuple[float, float]]] = {"ns": {}, "s": {}}
            ratios: dict[str, dict[int, float]] = {"ns": {}, "s": {}}
            for conc, total in counts.items():
                d = await drive(direct_url, direct_h, BODY, conc, total)
                p = await drive(proxy_url, proxy_h, BODY, conc, total)
                dm, pm = statistics.median(d.latencies), statistics.median(p.latencies)
                d99, p99 = pct(d.latencies, 0.99), pct(p.latencies, 0.99)
                added["ns"][conc] = (pm - dm, p99 - d99)
                ratios["ns"][conc] = p.rps / d.rps
                rows_ns.append(f"| {conc} | {total} | {ms(dm)} / {ms(d99)} | {ms(pm)} / {ms(p99)} | "
                               f"{ms(pm - dm)} / {ms(p99 - d99)} | {d.rps:.0f} | {p.rps:.0f} | {p.rps / d.rps:.2f} |")
                d = await drive(direct_url, direct_h, STREAM_BODY, conc, total // 2)
                p = await drive(proxy_url, proxy_h, STREAM_BODY, conc, total // 2)
                dt, pt = statistics.median(d.ttfts), statistics.median(p.ttfts)
                added["s"][conc] = (pt - dt, pct(p.ttfts, 0.99) - pct(d.ttfts, 0.99))
                ratios["s"][conc] = p.tokens_per_second / d.tokens_per_second
                rows_s.append(f"| {conc} | {total // 2} | {ms(dt)} / {ms(pct(d.ttfts, 0.99))} | "
                              f"{ms(pt)} / {ms(pct(p.ttfts, 0.99))} | {d.tokens_per_second:.0f} | "
                              f"{p.tokens_per_second:.0f} | {p.tokens_per_second / d.tokens_per_second:.2f} |")

            # 5,000 users × 4 models of series, created by real requests
            fill = await populate(stack.api_url, stack.tokens)
            pid = stack.proxy.process.proc.pid if stack.proxy.process.proc else os.getpid()
            scrapes, size = [], 0
            for _ in range(5):
                s0 = time.perf_counter()
                text = await asyncio.to_thread(lambda: requests.get(f"{stack.metrics_url}/metrics", timeout=60).text)
                scrapes.append(time.perf_counter() - s0)
                size = len(text)
            series = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
            rss = rss_mb(pid)
            scrape = statistics.median(scrapes)
            # latency with all those series present (the hot path must not depend on cardinality),
            # once the ledger writer has caught up with the 20,000 population rows
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                m = await asyncio.to_thread(read_metrics, stack.metrics_url)
                if metric(m, "chargeback_ledger_queue_rows") == 0:
                    break
                await asyncio.sleep(0.2)
            d16 = await drive(direct_url, direct_h, BODY, 16, counts[16])
            p16 = await drive(proxy_url, proxy_h, BODY, 16, counts[16])
            after = statistics.median(p16.latencies) - statistics.median(d16.latencies)

    add_med, add_p99 = added["ns"][16]
    checks = [
        ("added median latency at 16 concurrent ≤ 1 ms", add_med <= 0.001, f"{ms(add_med)} ms"),
        ("added p99 latency at 16 concurrent ≤ 5 ms", add_p99 <= 0.005, f"{ms(add_p99)} ms"),
        ("non-streaming throughput ≥ 0.8× direct (16 concurrent)", ratios["ns"][16] >= 0.8, f"{ratios['ns'][16]:.2f}×"),
        ("streaming token throughput ≥ 0.9× direct (16 concurrent)", ratios["s"][16] >= 0.9, f"{ratios['s'][16]:.2f}×"),
        ("/metrics scrape with 5,000 users × 4 models ≤ 1 s", scrape <= 1.0, f"{scrape:.3f} s"),
    ]
    lines += [
        "## Proxy overhead" + (" (quick run)" if quick else ""),
        "",
        f"Simulator with zero latency (tokens as fast as it can write them) and the proxy as separate processes, "
        f"driven by an aiohttp client in the benchmark process, all on this machine ({os.cpu_count()} CPUs): "
        "the client, the proxy and the simulator compete for the same cores, so the figures are an upper "
        f"bound on the overhead. Non-streaming: {BODY['max_tokens']} max tokens; streaming: "
        f"{STREAM_BODY['max_tokens']} max tokens, one SSE event per token. Stack start-up with {n_users} keys: {setup:.1f} s.",
        "",
        "### Non-streaming (median / p99 latency in ms, throughput in requests/s)",
        "",
        "| concurrency | requests | direct | proxy | added | direct req/s | proxy req/s | ratio |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows_ns,
        "",
        "### Streaming (time to first token median / p99 in ms, completion tokens/s)",
        "",
        "| concurrency | requests | direct TTFT | proxy TTFT | direct tok/s | proxy tok/s | ratio |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        *rows_s,
        "",
        "### /metrics with 5,000 users × 4 models",
        "",
        f"- {n_users * len(MODELS):,} user×model combinations created by {n_users * len(MODELS):,} real requests "
        f"in {fill:.1f} s; exposition: {series:,} samples, {size / 1e6:.1f} MB.",
        f"- scrape time (median of 5): {scrape * 1000:.0f} ms (formatted in a worker thread, the event loop keeps serving).",
        f"- proxy RSS after population: {rss:.0f} MB.",
        f"- added median latency at 16 concurrent with those series present: {ms(after)} ms.",
        "",
        "### Targets",
        "",
        "| target | measured | met |",
        "|---|---:|:---:|",
        *[f"| {name} | {value} | {'yes' if ok else 'no'} |" for name, ok, value in checks],
        "",
        "What limits it: the proxy is one Python process (one uvloop event loop on one core). Each request costs "
        "a JSON parse and re-serialisation of the body, an HTTP round trip to the upstream (a second HTTP "
        "parse and write), the accounting, and, for streams, splitting and scanning every SSE event (JSON is "
        "parsed only for the usage event); the ledger writer thread shares the interpreter lock. With a zero-latency upstream on a machine with few cores this CPU cost, "
        "not network time, decides throughput. Real inference servers take tens of milliseconds to seconds "
        "per request, so the relative overhead there is far smaller; run several replicas behind a load "
        "balancer for more throughput (the counters sum across replicas).",
        "",
    ]
    return "\n".join(lines)


def run(quick: bool) -> str:
    return asyncio.run(bench(quick))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    print(run(parser.parse_args().quick))

"""Proxy overhead benchmark: the proxy vs calling the simulated upstream directly, in the same run.

Two scenarios, each with the simulator and the proxy as real processes:

- **realistic**: the simulator answers like a busy inference server (50 ms before the first token,
  then 50 tokens/s per request). The GPU, not the proxy, is the bottleneck, as in production: this is
  where the latency and throughput targets are evaluated.
- **overhead**: a zero-latency simulator (tokens as fast as it can write them). Nothing hides the
  proxy's own cost here: it gives the proxy's CPU time per request and the most one proxy process can
  forward. Ratios against a zero-cost upstream say how fast the proxy is compared with the simulator,
  not how much slower users are served.

Fairness on a small machine: load comes from ``bench/loadgen.py``, a minimal HTTP client in its own
process (about a third of the CPU per request of aiohttp's client). With two or more CPUs every
process is pinned: the proxy (all its threads) gets a CPU of its own, as a sidecar would; the
simulator and the load generator share the other(s) in both the direct and the proxied runs, so
they get the same CPU in both and only the proxy's own CPU differs. Then 5,000 users × 4 models of
series are created through real requests and ``/metrics`` scrape time and proxy RSS are measured.

    .venv/bin/python bench/bench_proxy.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter.sim.harness import UPSTREAM_API_KEY, Stack, metric, proxy_stack, read_metrics
from exporter.sim.upstream import expected_usage

LOADGEN = Path(__file__).resolve().parent / "loadgen.py"
MODELS = ("bench-a", "bench-b", "bench-c", "bench-d")
PROMPT = [{"role": "user", "content": "benchmark the accounting proxy please"}]
BODY = {"model": "bench-a", "messages": PROMPT, "max_tokens": 32}
STREAM_BODY = {**BODY, "max_tokens": 64, "stream": True, "stream_options": {"include_usage": True}}
# realistic scenario: a request takes 50 ms + tokens / 50 s; shorter answers keep the run short
REAL_LATENCY_MS, REAL_TOKENS_PER_SECOND = 50.0, 50.0
REAL_BODY = {**BODY, "max_tokens": 16}
REAL_STREAM_BODY = {**STREAM_BODY, "max_tokens": 32}
# rounds of each realistic configuration (quick run, full run): its targets are judged on added
# latencies of about a millisecond, which one short run on a shared machine cannot tell apart
REAL_ROUNDS = {True: 1, False: 3}


def completion_tokens(body: dict) -> int:
    """What the simulator answers ``body`` with: ``min(max_tokens, 8 + crc32(prompt) % 40)``, so the
    prompt, not ``max_tokens``, decides the count for the benches' prompt (24)."""
    return expected_usage("chat/completions", body)["completion_tokens"]


CONCURRENCY = (1, 16, 64)
TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    latencies: list[float]
    ttfts: list[float]
    seconds: float
    tokens: int
    cpu_seconds: float  # CPU the proxy process used during the run (0 for direct runs)

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds

    @property
    def median(self) -> float:
        return statistics.median(self.latencies)

    @property
    def p99(self) -> float:
        return pct(self.latencies, 0.99)


def pooled(results: list[Result]) -> Result:
    """Several runs of one configuration as one: their requests together, their times summed."""
    return Result(
        [x for r in results for x in r.latencies],
        [x for r in results for x in r.ttfts],
        sum(r.seconds for r in results),
        sum(r.tokens for r in results),
        sum(r.cpu_seconds for r in results),
    )


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def ms(v: float) -> str:
    return f"{v * 1000:.2f}"


# --------------------------------------------------------------------------- CPU placement


@dataclass
class Placement:
    proxy: set[int] | None
    sim: set[int] | None
    loadgen: set[int] | None

    def describe(self) -> str:
        if self.proxy is None:
            return "one CPU: no pinning, everything shares it"
        return (
            f"proxy on CPU {_cpus(self.proxy)}, simulator on CPU {_cpus(self.sim)}, "
            f"load generator on CPU {_cpus(self.loadgen)}"
        )


def _cpus(cpus: set[int] | None) -> str:
    return ",".join(map(str, sorted(cpus or ())))


def placement() -> Placement:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return Placement(None, None, None)
    if len(cpus) == 2:
        return Placement({cpus[0]}, {cpus[1]}, {cpus[1]})
    return Placement({cpus[0]}, {cpus[1]}, set(cpus[2:]))


def pin(pid: int, cpus: set[int] | None) -> None:
    """Pin every thread of a process (threads started later inherit it from the main thread)."""
    if cpus is None:
        return
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that just ended
            os.sched_setaffinity(int(task.name), cpus)


class Child:
    """A helper process from bench/ (the relay, the paced upstream) that prints its port and runs
    until its stdin closes."""

    def __init__(self, argv: list[str], cpus: set[int] | None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())
        pin(self.proc.pid, cpus)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def main_for(run: Callable[[bool], str], doc: str | None) -> None:
    """The command line of a bench module: ``[--quick]``, its section on stdout, the time on stderr."""
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--quick", action="store_true", help="smaller runs (for a smoke test)")
    started = time.monotonic()
    print(run(parser.parse_args().quick))
    print(f"({time.monotonic() - started:.0f} s)", file=sys.stderr)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


# --------------------------------------------------------------------------- load


@dataclass(frozen=True)
class Load:
    """What the load generator sends: ``concurrency`` connections, ``warmup`` + ``total`` requests
    with ``body`` to ``url``; ``options``: more of its flags."""

    url: str
    token: str
    body: dict
    concurrency: int
    total: int
    warmup: int = 200
    stagger: float = 0.0
    options: tuple[str, ...] = ()


def run_loadgen(load: Load, cpus: set[int] | None, pid: int | None) -> tuple[dict, float]:
    """Run the load generator (its own process, pinned to ``cpus``). Returns its JSON result and the
    CPU seconds process ``pid`` used meanwhile, warm-up included; every one of the requests must have
    been answered."""
    argv = [
        sys.executable,
        str(LOADGEN),
        "--url",
        load.url,
        "--token",
        load.token,
        "--body",
        json.dumps(load.body),
        "--concurrency",
        str(load.concurrency),
        "--requests",
        str(load.total),
        "--warmup",
        str(load.warmup),
        "--stagger",
        str(load.stagger),
        *load.options,
    ]
    before = cpu_seconds(pid) if pid else 0.0
    out = subprocess.run(
        argv,
        capture_output=True,
        timeout=600,
        check=False,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
    )
    used = cpu_seconds(pid) - before if pid else 0.0
    if out.returncode != 0:
        raise RuntimeError(f"loadgen failed ({out.returncode}): {out.stderr.decode()[-2000:]}")
    data = json.loads(out.stdout)
    if data["errors"] or len(data["latencies"]) != load.total:
        raise RuntimeError(
            f"{load.url}: {len(data['latencies'])}/{load.total} answers, statuses {data['statuses']}"
        )
    return data, used


def drive(
    url: str,
    token: str,
    body: dict,
    concurrency: int,
    total: int,
    cpus: set[int] | None,
    proxy_pid: int | None = None,
    warmup: int = 200,
    stagger: float = 0.0,
) -> Result:
    """Run the load generator and collect its measurements. ``cpu_seconds`` covers the warm-up
    requests too."""
    data, used = run_loadgen(Load(url, token, body, concurrency, total, warmup, stagger), cpus, proxy_pid)
    tokens_each = completion_tokens(body)
    return Result(data["latencies"], data["ttfts"], data["seconds"], tokens_each * total, used)


@dataclass
class Scenario:
    name: str
    ns_rows: list[str]
    s_rows: list[str]
    ns: dict[int, tuple[Result, Result]]
    s: dict[int, tuple[Result, Result]]


def compare(
    stack: Stack,
    where: Placement,
    counts: Callable[[int, bool], int],
    body: dict,
    stream_body: dict,
    name: str,
    warmup: int,
    stagger: Callable[[bool], float] = lambda stream: 0.0,
    rounds: int = 1,
) -> Scenario:
    """Each configuration directly and through the proxy, ``rounds`` times in turn (direct, proxy,
    direct, ...: the machine's noise falls on both alike), the rounds' requests pooled."""
    token = next(iter(stack.tokens.values()))
    proxy_pid = stack.proxy.process.proc.pid  # type: ignore[union-attr]
    direct = (f"{stack.sim_url}/v1/chat/completions", UPSTREAM_API_KEY)
    proxied = (f"{stack.api_url}/v1/chat/completions", token)
    sc = Scenario(name, [], [], {}, {})
    for conc in CONCURRENCY:
        for stream, b in ((False, body), (True, stream_body)):
            n = counts(conc, stream)
            ds, ps = [], []
            for _ in range(rounds):
                ds.append(drive(*direct, b, conc, n, where.loadgen, warmup=warmup, stagger=stagger(stream)))
                ps.append(
                    drive(
                        *proxied, b, conc, n, where.loadgen, proxy_pid, warmup=warmup, stagger=stagger(stream)
                    )
                )
            d, p = pooled(ds), pooled(ps)
            n *= rounds
            cpu_us = p.cpu_seconds / (n + rounds * warmup) * 1e6
            if not stream:
                sc.ns[conc] = (d, p)
                sc.ns_rows.append(
                    f"| {conc} | {n} | {ms(d.median)} / {ms(d.p99)} | {ms(p.median)} / {ms(p.p99)} | "
                    f"{ms(p.median - d.median)} / {ms(p.p99 - d.p99)} | {d.rps:.0f} | {p.rps:.0f} | "
                    f"{p.rps / d.rps:.2f} | {cpu_us:.0f} |"
                )
            else:
                sc.s[conc] = (d, p)
                dt, pt = statistics.median(d.ttfts), statistics.median(p.ttfts)
                sc.s_rows.append(
                    f"| {conc} | {n} | {ms(dt)} / {ms(pct(d.ttfts, 0.99))} | {ms(pt)} / {ms(pct(p.ttfts, 0.99))} | "
                    f"{ms(pt - dt)} | {d.tokens_per_second:.0f} | {p.tokens_per_second:.0f} | "
                    f"{p.tokens_per_second / d.tokens_per_second:.2f} | {cpu_us:.0f} |"
                )
    return sc


def tables(sc: Scenario) -> list[str]:
    return [
        f"#### Non-streaming ({sc.name}; median / p99 latency in ms, throughput in requests/s)",
        "",
        "| concurrency | requests | direct | proxy | added | direct req/s | proxy req/s | ratio | proxy CPU µs/req |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *sc.ns_rows,
        "",
        f"#### Streaming ({sc.name}; time to first token median / p99 in ms, completion tokens/s)",
        "",
        "| concurrency | requests | direct TTFT | proxy TTFT | added TTFT | direct tok/s | proxy tok/s | ratio "
        "| proxy CPU µs/req |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *sc.s_rows,
        "",
    ]


def start(tmp: Path, name: str, users: dict[str, str], where: Placement, **sim: Any):  # type: ignore[no-untyped-def]
    # key refresh and ledger flush at their production defaults (the test harness polls far more often)
    cm = proxy_stack(
        tmp / name,
        users=users,
        models=MODELS,
        ledger={"batch_size": 1000, "flush_interval_seconds": 0.5, "retry_seconds": 2.0},
        proxy={"upstream_timeout_seconds": 60, "key_refresh_seconds": 2.0},
        **sim,
    )
    stack = cm.__enter__()
    pin(stack.proxy.process.proc.pid, where.proxy)
    pin(stack.sim.proc.pid, where.sim)
    return cm, stack


# --------------------------------------------------------------------------- /metrics with many series


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
                async with session.post(
                    f"{api_url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {token}"}
                ) as resp:
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


def wait_ledger_idle(stack: Stack, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metric(read_metrics(stack.metrics_url), "chargeback_ledger_queue_rows") == 0:
            return
        time.sleep(0.2)


# --------------------------------------------------------------------------- the run


def run(quick: bool) -> str:
    n_users = 5000
    where = placement()
    load = os.getloadavg()[0]

    def overhead_counts(conc: int, stream: bool) -> int:
        n = {1: 300, 16: 2000, 64: 3000}[conc] if quick else {1: 1500, 16: 10000, 64: 12000}[conc]
        return n // 2 if stream else n

    def real_seconds(stream: bool) -> float:
        """How long one request takes on the realistic simulator."""
        body = REAL_STREAM_BODY if stream else REAL_BODY
        return REAL_LATENCY_MS / 1000 + completion_tokens(body) / REAL_TOKENS_PER_SECOND

    def real_counts(conc: int, stream: bool) -> int:
        # about 4 s (quick: 1.5 s) of load per run
        return max(conc * 2, round(conc * (1.5 if quick else 4.0) / real_seconds(stream)))

    users = {f"bench{i:05d}@corp.example": ("research", "support")[i % 2] for i in range(n_users)}
    with tempfile.TemporaryDirectory(prefix="bench-proxy-") as tmpdir:
        tmp = Path(tmpdir)
        cm, stack = start(
            tmp,
            "real",
            dict(list(users.items())[:10]),
            where,
            latency_ms=REAL_LATENCY_MS,
            tokens_per_second=REAL_TOKENS_PER_SECOND,
        )
        try:
            real = compare(
                stack,
                where,
                real_counts,
                REAL_BODY,
                REAL_STREAM_BODY,
                "realistic",
                warmup=8,
                stagger=real_seconds,
                rounds=REAL_ROUNDS[quick],
            )
        finally:
            cm.__exit__(None, None, None)

        t0 = time.perf_counter()
        cm, stack = start(tmp, "overhead", users, where)
        try:
            setup = time.perf_counter() - t0
            over = compare(stack, where, overhead_counts, BODY, STREAM_BODY, "overhead", warmup=200)

            # 5,000 users × 4 models of series, created by real requests
            fill = asyncio.run(populate(stack.api_url, stack.tokens))
            pid = stack.proxy.process.proc.pid  # type: ignore[union-attr]
            scrapes, size, text = [], 0, ""
            for _ in range(5):
                s0 = time.perf_counter()
                text = requests.get(f"{stack.metrics_url}/metrics", timeout=60).text
                scrapes.append(time.perf_counter() - s0)
                size = len(text)
            series = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
            rss = rss_mb(pid)
            scrape = statistics.median(scrapes)
            # latency with all those series present (the hot path must not depend on cardinality),
            # once the ledger writer has caught up with the 20,000 population rows
            wait_ledger_idle(stack)
            token = next(iter(stack.tokens.values()))
            n16 = overhead_counts(16, False)
            d16 = drive(
                f"{stack.sim_url}/v1/chat/completions", UPSTREAM_API_KEY, BODY, 16, n16, where.loadgen
            )
            p16 = drive(f"{stack.api_url}/v1/chat/completions", token, BODY, 16, n16, where.loadgen, pid)
            after = p16.median - d16.median
            after_cpu = p16.cpu_seconds / (n16 + 200) * 1e6
        finally:
            cm.__exit__(None, None, None)

    def targets(sc: Scenario) -> list[tuple[str, bool, str]]:
        d, p = sc.ns[16]
        ds, ps = sc.s[16]
        add_med, add_p99 = p.median - d.median, p.p99 - d.p99
        ns_ratio, s_ratio = p.rps / d.rps, ps.tokens_per_second / ds.tokens_per_second
        return [
            ("added median latency at 16 concurrent ≤ 1 ms", add_med <= 0.001, f"{ms(add_med)} ms"),
            ("added p99 latency at 16 concurrent ≤ 5 ms", add_p99 <= 0.005, f"{ms(add_p99)} ms"),
            ("non-streaming throughput ≥ 0.8× direct (16 concurrent)", ns_ratio >= 0.8, f"{ns_ratio:.2f}×"),
            ("streaming token throughput ≥ 0.9× direct (16 concurrent)", s_ratio >= 0.9, f"{s_ratio:.2f}×"),
        ]

    rows = []
    for sc in (real, over):
        rows += [
            f"| {name} | {sc.name} | {value} | {'yes' if ok else 'no'} |" for name, ok, value in targets(sc)
        ]
    rows.append(
        f"| /metrics scrape with 5,000 users × 4 models ≤ 1 s | overhead | {scrape:.3f} s | "
        f"{'yes' if scrape <= 1.0 else 'no'} |"
    )
    over_cpu = over.ns[16][1].cpu_seconds / (overhead_counts(16, False) + 200) * 1e6
    lines = [
        "## Proxy overhead" + (" (quick run)" if quick else ""),
        "",
        "Method: the proxy and the OpenAI-compatible simulator run as separate processes; the load comes from "
        "`bench/loadgen.py`, a minimal keep-alive HTTP/1.1 client in a process of its own (closed loop: each "
        "of N connections sends the next request when the previous answer is complete; latency is measured "
        "from the request's write to the answer's last byte, TTFT to its first body byte; in the realistic "
        "scenario the connections start staggered over one request's duration, like independent users — "
        "otherwise a fixed-latency upstream answers all of them at the same instant and the proxy sees "
        "bursts of N simultaneous answers that no real server produces). Every "
        "configuration is measured directly against the simulator and through the proxy, in the same run. "
        f"CPU placement ({os.cpu_count()} CPUs): {where.describe()} — in the direct and the proxied runs alike, "
        "so the simulator and the load generator get the same CPU either way and the proxy runs on a CPU "
        "of its own, like a sidecar. `proxy CPU µs/req` is the proxy process's CPU time (all threads, "
        "ledger writer included) divided by the requests it served (in the realistic runs, where the proxy "
        "idles, it includes the background ticks of the ledger writer and the key refresh). "
        f"Load average at start: {load:.2f} (other work on the machine adds noise, mostly to p99).",
        "",
        f"- **realistic**: the simulator waits {REAL_LATENCY_MS:.0f} ms before the first token and then sends "
        f"{REAL_TOKENS_PER_SECOND:.0f} tokens/s per request ({completion_tokens(REAL_BODY)} completion tokens non-streaming, "
        f"{completion_tokens(REAL_STREAM_BODY)} streaming): the upstream, not the proxy, limits throughput, as with a "
        "real inference server. The targets are evaluated here. Each configuration runs "
        f"{REAL_ROUNDS[quick]} time{'s' if REAL_ROUNDS[quick] > 1 else ''}, in turn with its direct run, and "
        "the rounds' requests are pooled.",
        f"- **overhead**: a zero-latency simulator ({completion_tokens(BODY)} completion tokens non-streaming, "
        f"{completion_tokens(STREAM_BODY)} streaming, one SSE event per token, written as fast as it can): this "
        "measures the proxy's own cost. The direct baseline is a simulator that costs about as little per "
        "request as the proxy itself, so the ratios here compare two programs' speeds, not what users of a "
        "GPU-bound server would see (streaming ratios above 1 there are a placement effect: the proxy passes "
        "events on in fewer, larger chunks than the simulator writes, so the load generator, sharing a CPU "
        "with the simulator, leaves it more time). Stack start-up with "
        f"{n_users} keys: {setup:.1f} s.",
        "",
        "### Realistic upstream",
        "",
        *tables(real),
        "### Zero-latency upstream (the proxy's own cost)",
        "",
        *tables(over),
        "### /metrics with 5,000 users × 4 models",
        "",
        f"- {n_users * len(MODELS):,} user×model combinations created by {n_users * len(MODELS):,} real requests "
        f"in {fill:.1f} s; exposition: {series:,} samples, {size / 1e6:.1f} MB.",
        f"- scrape time (median of 5): {scrape * 1000:.0f} ms (formatted in a worker thread, the event loop keeps "
        "serving).",
        f"- proxy RSS after population: {rss:.0f} MB.",
        f"- with those series present (zero-latency upstream, 16 concurrent): added median latency {ms(after)} ms, "
        f"proxy CPU {after_cpu:.0f} µs/request.",
        "",
        "### Targets",
        "",
        "| target | scenario | measured | met |",
        "|---|---|---:|:---:|",
        *rows,
        "",
        "What limits it: one proxy process is one Python event loop (uvloop) on one core, and every request "
        f"costs it about {over_cpu:.0f} µs of CPU here (see `proxy CPU µs/req`): the aiohttp server and client "
        "(two HTTP parses and two socket writes per request, plus one write per streamed chunk), the body's "
        "JSON parse (it is forwarded as sent unless `stream_options` or the model name must change), reading "
        "the usage, the counters, and the ledger row (batched by a writer thread that shares the "
        "interpreter lock). On a busy inference server that is a fraction of a per cent of each request's "
        "time, which is why the realistic scenario meets the targets; against a zero-cost upstream the proxy "
        "saturates its core at roughly 1 / (CPU per request) requests/s and queueing then adds latency. "
        "For more throughput run several replicas behind a load balancer (the counters sum across "
        "replicas); a single replica's ceiling is in the zero-latency table.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    print(run(parser.parse_args().quick))

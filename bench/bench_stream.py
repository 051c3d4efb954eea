"""Streaming relay benchmark: the proxy's CPU per relayed SSE event against a bare TCP relay's, on the
same paced traffic in the same run.

A real inference server sends each token as its own SSE event, tens of milliseconds apart, over
hundreds of concurrent streams: every event reaches the proxy on its own and costs it a wake-up, a
read and a write. This measures that per-event cost on 256 concurrent paced streams from
``bench/paced_upstream.py`` (the simulator's events and usage, paced per token, from a raw protocol
cheap enough that it and the load generator keep pace on one shared core at 12,800 events/s), three
ways, one after the other:

- **direct**: the load generator talks to the upstream (the gaps between events as sent);
- **bare relay**: through ``bench/bare_relay.py`` (exporter/sim/relay.py on uvloop: one read and one
  write per TCP segment, no HTTP parsing) — the floor for anything that passes bytes on;
- **proxy**: through the chargeback proxy (authentication, usage accounting, ledger row per request).

CPU is each relaying process's CPU time (utime + stime from /proc, all threads) over the run,
divided by the SSE events the clients received (warm-up included, counted by the load generator).
Inter-event gaps are measured at the client, in its own process; the proxy's added gap is its p99
minus the direct run's p99. After the run every proxied answer must be in the proxy's ledger with
exactly the upstream's usage, or the bench fails.

    .venv/bin/python bench/bench_stream.py [--quick]
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from bench_proxy import Child, Load, Placement, main_for, pct, placement, run_loadgen, start, wait_ledger_idle  # noqa: E402

from exporter.sim.harness import UPSTREAM_API_KEY  # noqa: E402
from exporter.sim.upstream import expected_usage  # noqa: E402

RELAY = BENCH / "bare_relay.py"
UPSTREAM = BENCH / "paced_upstream.py"
STREAMS = 256
# 24 tokens (one SSE event each) after the role event, then the finish chunk, the usage chunk and
# [DONE]: 28 events per answer. The prompt is chosen so that the answer (the simulator's rule) is max_tokens long.
BODY = {
    "model": "bench-paced",  # served by bench/paced_upstream.py
    "messages": [{"role": "user", "content": "benchmark the accounting proxy please"}],
    "max_tokens": 24,
    "stream": True,
    "stream_options": {"include_usage": True},
}
# (label, events per second per stream)
WARMUP = 16  # answers before the measured phase
EVENTS = 28  # SSE events per answer
# the split into a cost per event and a cost per answer: answers of 8 and of 47 tokens (the most the
# simulator's rule gives; seed 57 reaches it for this prompt), SPLIT_ANSWERS per connection
BODIES = {
    "main": BODY,
    "short": {**BODY, "max_tokens": 8},
    "long": {**BODY, "max_tokens": 200, "seed": 57},
}
SPLIT_ANSWERS = 3
PACES = (("50 ms between events", 20.0), ("20 ms between events", 50.0))


@dataclass
class Run:
    events: int  # SSE events received, warm-up included
    gaps: list[float]  # seconds between consecutive events of one answer (measured phase)
    seconds: float  # measured phase
    cpu: float  # CPU seconds of the relaying process over the whole load-generator run
    answers: int  # answers in the measured phase
    steady: float  # events/s received while every stream was running (see ``drive``)

    @property
    def us_per_event(self) -> float:
        return self.cpu / self.events * 1e6

    @property
    def events_per_core_second(self) -> float:
        return self.events / self.cpu if self.cpu else float("inf")

    @property
    def p99_gap(self) -> float:
        return pct(self.gaps, 0.99)


def drive(url: str, token: str, rate: float, requests: int, cpus: set[int] | None, pid: int | None) -> Run:
    answer_seconds = BODY["max_tokens"] / rate
    options = ("--header", f"X-Sim-Tokens-Per-Second: {rate}", "--events")
    load = Load(url, token, BODY, STREAMS, requests, warmup=WARMUP, stagger=answer_seconds, options=options)
    data, used = run_loadgen(load, cpus, pid)
    # Connection i starts i/STREAMS of an answer late and runs requests/STREAMS answers: all of them
    # run from one answer's time after the start until the first one finishes. The rate in that
    # window (less a tenth of an answer at each end) is what the full load gets through.
    slot = 0.01  # loadgen's BUCKET_SECONDS
    first, last = 1.1 * answer_seconds, (requests / STREAMS - 0.1) * answer_seconds
    window = data["buckets"][int(first / slot) : int(last / slot)]
    steady = sum(window) / (len(window) * slot) if window else float("nan")
    return Run(data["events"], data["gaps"], data["seconds"], used, requests, steady)


def check_ledger(ledger_url: str, expected: dict[str, int]) -> None:
    """A bench must not report figures from a broken run: every proxied answer is in the ledger, with
    exactly the upstream's usage (raises otherwise). ``expected``: answers per body (``BODIES`` key)."""
    want = []
    for key, n in expected.items():
        usage = expected_usage("chat/completions", BODIES[key])
        want.append((200, usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"], 0, 1, n))
    path = ledger_url.removeprefix("sqlite:///")
    with contextlib.closing(sqlite3.connect(path)) as db:
        rows = db.execute(
            "SELECT status_code, prompt_tokens, completion_tokens, total_tokens, estimated, stream, COUNT(*) "
            "FROM http_analytics GROUP BY 1, 2, 3, 4, 5, 6 ORDER BY 3"
        ).fetchall()
    if rows != sorted(want, key=lambda r: r[2]):
        raise RuntimeError(f"ledger rows {rows}, expected {want}")


def split(
    urls: dict[str, tuple[str, str, int]], rounds: int, cpus: set[int] | None
) -> dict[str, tuple[float, float]]:
    """(marginal µs per event, fixed µs per answer) per relaying process: short and long answers at
    20 ms pacing, interleaved over ``rounds``; the line through the two medians of CPU per answer
    against events per answer."""
    rate = 50.0
    per: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for _ in range(rounds):
        for name, (url, token, pid) in urls.items():
            for key in ("short", "long"):
                body = BODIES[key]
                tokens = expected_usage("chat/completions", body)["completion_tokens"]
                options = ("--header", f"X-Sim-Tokens-Per-Second: {rate}", "--events")
                answers = STREAMS * SPLIT_ANSWERS
                load = Load(
                    url, token, body, STREAMS, answers, WARMUP, stagger=tokens / rate, options=options
                )
                data, used = run_loadgen(load, cpus, pid)
                per.setdefault((name, key), []).append(
                    (used / (answers + WARMUP), data["events"] / (answers + WARMUP))
                )
    out = {}
    for name in urls:
        (cs, es), (cl, el) = (
            (statistics.median(c for c, _ in per[(name, k)]), per[(name, k)][0][1]) for k in ("short", "long")
        )
        slope = (cl - cs) / (el - es)
        out[name] = (slope * 1e6, (cs - slope * es) * 1e6)
    return out


def bench(quick: bool) -> tuple[str, dict[str, list[dict[str, Run]]]]:
    where: Placement = placement()
    load = os.getloadavg()[0]
    per_stream = 2 if quick else 4  # answers per connection
    rounds = 1 if quick else 3  # interleaved rounds; the figures are their medians
    requests = STREAMS * per_stream
    results: dict[str, list[dict[str, Run]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-stream-") as tmpdir:
        upstream = Child([str(UPSTREAM)], where.sim)  # the simulator's seat
        relay = None
        cm = None
        try:
            base = f"http://127.0.0.1:{upstream.port}"
            cm, stack = start(
                Path(tmpdir),
                "stream",
                {"bench00000@corp.example": "research"},
                where,
                extra_upstreams={BODY["model"]: [f"{base}/v1"]},
            )
            token = next(iter(stack.tokens.values()))
            proxy_pid = stack.proxy.process.proc.pid  # type: ignore[union-attr]
            # the relay gets the proxy's CPU: the same seat
            relay = Child([str(RELAY), "--target", f"127.0.0.1:{upstream.port}"], where.proxy)
            relay_url = f"http://127.0.0.1:{relay.port}/v1/chat/completions"
            for _ in range(rounds):  # interleaved: the machine's noise falls on all three alike
                for label, rate in PACES:
                    results.setdefault(label, []).append(
                        {
                            "direct": drive(
                                f"{base}/v1/chat/completions",
                                UPSTREAM_API_KEY,
                                rate,
                                requests,
                                where.loadgen,
                                None,
                            ),
                            "relay": drive(
                                relay_url, UPSTREAM_API_KEY, rate, requests, where.loadgen, relay.proc.pid
                            ),
                            "proxy": drive(
                                f"{stack.api_url}/v1/chat/completions",
                                token,
                                rate,
                                requests,
                                where.loadgen,
                                proxy_pid,
                            ),
                        }
                    )
            parts = split(
                {
                    "relay": (relay_url, UPSTREAM_API_KEY, relay.proc.pid),
                    "proxy": (f"{stack.api_url}/v1/chat/completions", token, proxy_pid),
                },
                rounds,
                where.loadgen,
            )
            wait_ledger_idle(stack)
            n = rounds * (STREAMS * SPLIT_ANSWERS + WARMUP)
            check_ledger(
                stack.ledger_url, {"main": rounds * len(PACES) * (requests + WARMUP), "short": n, "long": n}
            )
        finally:
            if relay is not None:
                relay.close()
            if cm is not None:
                cm.__exit__(None, None, None)
            upstream.close()

    rows = []
    for label, rate in PACES:
        runs = results[label]

        def med(f: Callable[[dict[str, Run]], float], runs: list[dict[str, Run]] = runs) -> float:
            return statistics.median(f(r) for r in runs)

        relay_us = med(lambda r: r["relay"].us_per_event)
        proxy_us = med(lambda r: r["proxy"].us_per_event)
        added = [(r["proxy"].p99_gap - r["direct"].p99_gap) * 1000 for r in runs]
        rows.append(
            f"| {label} | {STREAMS * rate:,.0f} / {STREAMS * EVENTS * rate / BODY['max_tokens']:,.0f} | "
            f"{relay_us:.1f} | {proxy_us:.1f} | {med(lambda r: r['proxy'].us_per_event / r['relay'].us_per_event):.2f} | "
            f"{1e6 / relay_us:,.0f} | {1e6 / proxy_us:,.0f} | "
            f"{med(lambda r: r['direct'].steady):,.0f} / {med(lambda r: r['proxy'].steady):,.0f} | "
            f"{med(lambda r: r['direct'].p99_gap) * 1000:.2f} | {med(lambda r: r['relay'].p99_gap) * 1000:.2f} | "
            f"{med(lambda r: r['proxy'].p99_gap) * 1000:.2f} | {statistics.median(added):.2f} "
            f"({', '.join(f'{a:.2f}' for a in added)}) |"
        )
    lines = [
        "## Streaming relay: proxy vs bare TCP relay" + (" (quick run)" if quick else ""),
        "",
        f"Method: `bench/bench_stream.py`. {STREAMS} concurrent streams from `bench/loadgen.py` (its own process), "
        f"each answer {BODY['max_tokens']} tokens paced by `bench/paced_upstream.py` (the simulator's events and "
        "usage from a raw uvloop protocol, one `call_at` per token: one SSE event per token, plus the role, "
        "finish, usage and [DONE] events: 28 events per answer; cheap enough that it and the load generator "
        "keep pace on their shared CPU), "
        f"{per_stream} answers per connection, connections started staggered over one answer's duration. "
        "The same traffic goes direct to the upstream, through a bare TCP relay (exporter/sim/relay.py "
        "on uvloop, `bench/bare_relay.py`: the floor for anything that passes bytes on) and through the "
        f"proxy, in this order, in the same run. CPU placement: {where.describe()}; the relay sits on the "
        "proxy's CPU. `µs/event` is the relaying process's CPU time (utime + stime of all its threads; the "
        "proxy's includes authentication, the counters and the ledger row of each request) divided by the "
        "SSE events the client received; `events/s per core` is its inverse. `events/s with all streams running` "
        "counts the events the client received while every one of the streams was running (from one answer's "
        "time after the start until the first connection finished, less a tenth of an answer at each end). Gaps are the times between "
        "consecutive events of one answer at the client; `added p99 gap` is the proxy's p99 minus the "
        f"direct run's, per round (in brackets) and their median. Every figure is the median of {rounds} "
        f"interleaved round(s) (direct, relay, proxy in turn). Load average at start: {load:.2f} (the machine "
        "is shared: CPU per event is the "
        "robust figure, gaps are noisier). Every proxied answer was checked in the ledger afterwards: status "
        "200, the upstream's exact usage, none estimated.",
        "",
        "| pacing | offered: tokens/s / events/s | relay µs/event | proxy µs/event | proxy / relay | relay events/s per core "
        "| proxy events/s per core | events/s with all streams running: direct / proxy | direct p99 gap ms | relay p99 gap ms "
        "| proxy p99 gap ms | added p99 gap ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "Per event and per answer: the same two relays on answers of "
        f"{expected_usage('chat/completions', BODIES['short'])['completion_tokens']} and "
        f"{expected_usage('chat/completions', BODIES['long'])['completion_tokens']} tokens (20 ms apart, "
        f"{STREAMS} streams, {SPLIT_ANSWERS} answers per connection, interleaved over {rounds} round(s)); the "
        "line through the two medians of CPU per answer against events per answer splits the cost into a part "
        "per event (its slope) and a part per answer (where it meets zero events).",
        "",
        "| | relay | proxy | proxy / relay |",
        "|---|---:|---:|---:|",
        f"| µs per event (marginal) | {parts['relay'][0]:.1f} | {parts['proxy'][0]:.1f} | "
        f"{parts['proxy'][0] / parts['relay'][0]:.2f} |",
        f"| µs per answer (fixed) | {parts['relay'][1]:.0f} | {parts['proxy'][1]:.0f} | |",
        "",
    ]
    return "\n".join(lines), results


def run(quick: bool) -> str:
    return bench(quick)[0]


if __name__ == "__main__":
    main_for(run, __doc__)

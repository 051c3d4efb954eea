"""Where the proxy's CPU per request goes: the same non-streaming traffic through a ladder of
relays, each adding one layer, in the same run.

1. **bare TCP relay** (``bench/bare_relay.py``: exporter/sim/relay.py on uvloop): one read and one
   write per segment, no HTTP: the floor for passing bytes on in Python;
2. **HTTP pass-through** (``bench/passthrough.py``): aiohttp's web server on the client side and the
   proxy's own keep-alive client on the upstream side, forwarding the body and the answer, with no
   authentication, usage, counters or ledger: the floor of the framework the proxy is built on;
3. **the proxy**: authentication, the body's checks, usage read from the answer, the counters and a
   ledger row per request (journaled and written to SQLite by its writer threads).

Each rung runs ``ROUNDS`` times, interleaved with the others, with 16 concurrent connections from
``bench/loadgen.py``: against the zero-latency simulator for the relaying process's CPU time (all
threads) per request, and against the realistic simulator (as in bench_proxy.py) for the latency each
rung adds to the direct median. Figures are medians of the rounds. The ladder shows which part of the
proxy's cost is the framework's and which its own work.

    .venv/bin/python bench/bench_floor.py [--quick]
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from bench_proxy import BODY, Child, Placement, completion_tokens, drive, main_for, placement, start  # noqa: E402

from exporter.sim.harness import UPSTREAM_API_KEY  # noqa: E402

CONCURRENCY = 16
ROUNDS = 3
WARMUP = 200
# one realistic answer: 50 ms to the first token, then the answer's tokens at 50 tokens/s
ANSWER_SECONDS = 0.05 + completion_tokens(BODY) / 50.0


REALISTIC = {"latency_ms": 50.0, "tokens_per_second": 50.0}  # as bench_proxy's realistic scenario


def _ladder(tmp: Path, where: Placement, requests: int, realistic: bool) -> dict[str, list[float]]:
    """Per rung and round: CPU µs per request (zero-latency upstream) or added median latency in ms
    against direct (realistic upstream, connections staggered over one answer like independent users)."""
    sim_opts = REALISTIC if realistic else {}
    out: dict[str, list[float]] = {"relay": [], "passthrough": [], "proxy": []}
    cm, stack = start(
        tmp,
        "realistic" if realistic else "overhead",
        {"bench00000@corp.example": "research"},
        where,
        **sim_opts,
    )
    relays: list[Child] = []
    try:
        token = next(iter(stack.tokens.values()))
        sim = stack.sim_url.removeprefix("http://")
        relay = Child([str(BENCH / "bare_relay.py"), "--target", sim], where.proxy)
        relays.append(relay)
        passthrough = Child([str(BENCH / "passthrough.py"), "--target", sim], where.proxy)
        relays.append(passthrough)
        path = "/v1/chat/completions"
        rungs = {
            "relay": (f"http://127.0.0.1:{relay.port}{path}", UPSTREAM_API_KEY, relay.proc.pid),
            "passthrough": (
                f"http://127.0.0.1:{passthrough.port}{path}",
                UPSTREAM_API_KEY,
                passthrough.proc.pid,
            ),
            "proxy": (f"{stack.api_url}{path}", token, stack.proxy.process.proc.pid),  # type: ignore[union-attr]
        }
        warmup = 16 if realistic else WARMUP
        stagger = ANSWER_SECONDS if realistic else 0.0
        for _ in range(ROUNDS):
            direct = None
            if realistic:
                direct = drive(
                    f"{stack.sim_url}{path}",
                    UPSTREAM_API_KEY,
                    BODY,
                    CONCURRENCY,
                    requests,
                    where.loadgen,
                    warmup=warmup,
                    stagger=stagger,
                )
            for name, (url, tok, pid) in rungs.items():
                r = drive(
                    url, tok, BODY, CONCURRENCY, requests, where.loadgen, pid, warmup=warmup, stagger=stagger
                )
                if direct is not None:
                    out[name].append((r.median - direct.median) * 1000)
                else:
                    out[name].append(r.cpu_seconds / (requests + warmup) * 1e6)
    finally:
        for r in relays:
            r.close()
        cm.__exit__(None, None, None)
    return out


def bench(quick: bool) -> tuple[str, dict[str, dict[str, list[float]]]]:
    where: Placement = placement()
    load = os.getloadavg()[0]
    requests = 1500 if quick else 5000
    realistic_requests = 100 if quick else 300
    with tempfile.TemporaryDirectory(prefix="bench-floor-") as tmpdir:
        cpu = _ladder(Path(tmpdir), where, requests, realistic=False)
        added = _ladder(Path(tmpdir), where, realistic_requests, realistic=True)

    labels = {
        "relay": "bare TCP relay (no HTTP)",
        "passthrough": "HTTP pass-through: aiohttp server + the proxy's upstream client",
        "proxy": "the proxy (auth, usage, counters, ledger row)",
    }
    rows = []
    previous = 0.0
    for name in ("relay", "passthrough", "proxy"):
        med = statistics.median(cpu[name])
        lat = statistics.median(added[name])
        runs = ", ".join(f"{v:.0f}" for v in cpu[name])
        lat_runs = ", ".join(f"{v:.2f}" for v in added[name])
        rows.append(
            f"| {labels[name]} | {med:.0f} | {med - previous:+.0f} | {runs} | {lat:.2f} | {lat_runs} |"
        )
        previous = med
    lines = [
        "## Where the CPU per request goes (`bench/bench_floor.py`)" + (" (quick run)" if quick else ""),
        "",
        f"Method: the same non-streaming requests ({completion_tokens(BODY)}-token answers, {CONCURRENCY} concurrent "
        "connections from `bench/loadgen.py`) through three relays, each adding one layer, interleaved over "
        f"{ROUNDS} rounds in one run. CPU: against the zero-latency simulator, {requests:,} requests after "
        f"{WARMUP} warm-up, the relaying process's CPU time (all threads) per request. Added latency: against the "
        f"realistic simulator (50 ms to the first token, then 50 tokens/s), {realistic_requests} requests, "
        "connections staggered over one answer, each rung's median minus the direct median measured just before "
        f"it. Figures are medians of the rounds. Placement: {where.describe()}; every relay sits on the proxy's "
        f"CPU. Load average at start: {load:.2f}.",
        "",
        "| rung | CPU µs/request | added by this layer | rounds | added median latency ms (realistic, 16 concurrent) | rounds |",
        "|---|---:|---:|---|---:|---|",
        *rows,
        "",
    ]
    return "\n".join(lines), {"cpu": cpu, "added": added}


def run(quick: bool) -> str:
    return bench(quick)[0]


if __name__ == "__main__":
    main_for(run, __doc__)

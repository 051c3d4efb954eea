"""Where the proxy's CPU per request goes: the same non-streaming traffic through a ladder of
relays, each adding one layer, in the same run.

1. **bare TCP relay** (``bench/bare_relay.py``: exporter/sim/relay.py on uvloop): one read and one
   write per segment, no HTTP: the floor for passing bytes on in Python;
2. **HTTP pass-through** (``bench/passthrough.py``): aiohttp's web server on the client side and the
   proxy's own keep-alive client on the upstream side, forwarding the body and the answer, with no
   authentication, usage, counters or ledger: the floor of the framework the proxy is built on;
3. **the proxy**: authentication, the body's checks, usage read from the answer, the counters and a
   ledger row per request (journaled and written to SQLite by its writer threads).

Each rung runs ``ROUNDS`` times, interleaved with the others, against the zero-latency simulator
with 16 concurrent connections from ``bench/loadgen.py``; the figure is the median of the relaying
process's CPU time (all threads) per request.

    .venv/bin/python bench/bench_floor.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from bench_proxy import BODY, Placement, completion_tokens, drive, pin, placement, start  # noqa: E402

from exporter.sim.harness import UPSTREAM_API_KEY  # noqa: E402

CONCURRENCY = 16
ROUNDS = 3
WARMUP = 200


class Relay:
    """A relaying process started from ``script`` with ``--target``; it prints its port."""

    def __init__(self, script: str, target: str, cpus: set[int] | None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(BENCH / script), "--target", target],
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


def bench(quick: bool) -> tuple[str, dict[str, list[float]]]:
    where: Placement = placement()
    load = os.getloadavg()[0]
    requests = 1500 if quick else 5000
    cpu: dict[str, list[float]] = {"relay": [], "passthrough": [], "proxy": []}
    with tempfile.TemporaryDirectory(prefix="bench-floor-") as tmpdir:
        cm, stack = start(Path(tmpdir), "floor", {"bench00000@corp.example": "research"}, where)
        relays: list[Relay] = []
        try:
            token = next(iter(stack.tokens.values()))
            sim = stack.sim_url.removeprefix("http://")
            relay = Relay("bare_relay.py", sim, where.proxy)
            relays.append(relay)
            passthrough = Relay("passthrough.py", sim, where.proxy)
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
            for _ in range(ROUNDS):
                for name, (url, tok, pid) in rungs.items():
                    r = drive(url, tok, BODY, CONCURRENCY, requests, where.loadgen, pid, warmup=WARMUP)
                    cpu[name].append(r.cpu_seconds / (requests + WARMUP) * 1e6)
        finally:
            for r in relays:
                r.close()
            cm.__exit__(None, None, None)

    med = {k: statistics.median(v) for k, v in cpu.items()}
    labels = {
        "relay": "bare TCP relay (no HTTP)",
        "passthrough": "HTTP pass-through: aiohttp server + the proxy's upstream client",
        "proxy": "the proxy (auth, usage, counters, ledger row)",
    }
    rows = []
    previous = 0.0
    for name in ("relay", "passthrough", "proxy"):
        runs = ", ".join(f"{v:.0f}" for v in cpu[name])
        rows.append(f"| {labels[name]} | {med[name]:.0f} | {med[name] - previous:+.0f} | {runs} |")
        previous = med[name]
    lines = [
        "## Where the CPU per request goes (`bench/bench_floor.py`)" + (" (quick run)" if quick else ""),
        "",
        f"Method: the same non-streaming requests ({completion_tokens(BODY)}-token answers from the zero-latency "
        f"simulator, {CONCURRENCY} concurrent connections from `bench/loadgen.py`, {requests:,} requests after "
        f"{WARMUP} warm-up) through three relays, each adding one layer, interleaved over {ROUNDS} rounds in one "
        f"run; CPU is the relaying process's (all threads) per request, median of the rounds. Placement: "
        f"{where.describe()}; every relay sits on the proxy's CPU. Load average at start: {load:.2f}.",
        "",
        "| rung | CPU µs/request | added by this layer | rounds |",
        "|---|---:|---:|---|",
        *rows,
        "",
    ]
    return "\n".join(lines), cpu


def run(quick: bool) -> str:
    return bench(quick)[0]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    started = time.monotonic()
    print(run(parser.parse_args().quick))
    print(f"({time.monotonic() - started:.0f} s)", file=sys.stderr)

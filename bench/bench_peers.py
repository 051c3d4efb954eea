"""Peers benchmark: LiteLLM's proxy and this proxy side by side, in front of the same simulator, in
the same run (``make bench-peers``; not part of ``make bench`` or ``make test``).

LiteLLM runs from its own virtual environment (``.venv-peers``, made by ``make bench-peers``) as
installed by default: one worker, a minimal config.yaml routing the models to the simulator as an
OpenAI-compatible backend, a master key, no database. This proxy runs as in ``bench/bench_proxy.py``
(SQLite ledger, a row per request). Both sit on the same CPU; the simulator and the load generator
share the other one, exactly as in the other proxy benches, whose helpers this module uses.

Three workloads, each sent direct to the simulator, then through this proxy, then through LiteLLM:

- non-streaming requests against a zero-latency simulator (CPU per request, added latency);
- streams (24 tokens, one SSE event each) against a zero-latency simulator (CPU per stream, added
  time to first token);
- paced streams: 50 ms before the first token, then one token (one SSE event) every 50 ms, as an
  inference server sends them (CPU per stream, added TTFT and total time).

CPU is the proxy's process tree (every process and thread, from /proc, reaped children included)
over the load generator's run, warm-up included, divided by the requests sent. The section written
to docs/performance.md sits between two markers and is replaced on every run.

    .venv/bin/python bench/bench_peers.py --litellm .venv-peers/bin/litellm [--out docs/performance.md]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import yaml

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

from bench_proxy import (  # noqa: E402
    BODY,
    STREAM_BODY,
    TICK,
    Placement,
    Result,
    completion_tokens,
    drive,
    pct,
    pin,
    placement,
    rss_mb,
    start,
)

from exporter.sim.harness import UPSTREAM_API_KEY, start_simulator  # noqa: E402
from exporter.stack import ManagedProcess, free_port  # noqa: E402

BEGIN = "<!-- bench-peers:begin (written by `make bench-peers`; replaced on every run) -->"
END = "<!-- bench-peers:end -->"
MASTER_KEY = "sk-bench-peers-master"
PACED_MODEL = "bench-paced"
PACED_LATENCY_MS, PACED_TOKENS_PER_SECOND = 50.0, 20.0
PACED_BODY = {**STREAM_BODY, "model": PACED_MODEL}
# the simulator's answer length follows from the prompt (capped by max_tokens): tokens actually sent
PLAIN_TOKENS = completion_tokens(BODY)
STREAM_TOKENS = completion_tokens(STREAM_BODY)
# Why this LiteLLM version (the pin is LITELLM_VERSION in the Makefile): keep the two in step.
INSTALL_NOTE = (
    "Which LiteLLM: the newest `litellm[proxy]` that installed from PyPI on 2026-12-04, from wheels only "
    "(no build tools needed; about 750 MB in `.venv-peers`). The newer releases tried do not install: the "
    "`proxy` extra of 1.110.0 and 1.110.2 requires `litellm-proxy` of the same version, and that of 1.108.8, "
    "1.108.10, 1.108.13, 1.108.14 and 1.109.3 requires `litellm-enterprise` or `litellm-proxy-extras` "
    "releases (0.1.79.post2, 0.4.110.post1, 0.4.113) that the index did not serve: pip stops with "
    '"No matching distribution found".'
)


# --------------------------------------------------------------------------- process trees


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (LiteLLM may run workers as child processes)."""
    pids, i = [pid], 0
    while i < len(pids):
        for children in Path(f"/proc/{pids[i]}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                pids += [int(c) for c in children.read_text().split()]
        i += 1
    return pids


def tree_cpu(pid: int) -> float:
    """CPU seconds of the process tree: utime + stime of each process, plus cutime + cstime (the
    children it has already reaped)."""
    total = 0
    for p in tree(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(f) for f in fields[11:15])
    return total / TICK


def tree_rss_mb(pid: int) -> float:
    return sum(rss_mb(p) for p in tree(pid))


def pin_tree(pid: int, cpus: set[int] | None) -> None:
    for p in tree(pid):
        with contextlib.suppress(OSError):
            pin(p, cpus)


# --------------------------------------------------------------------------- LiteLLM


def litellm_config(path: Path, routes: dict[str, str]) -> Path:
    """A minimal LiteLLM config: each model routed to an OpenAI-compatible base URL; a master key."""
    doc = {
        "model_list": [
            {
                "model_name": name,
                "litellm_params": {"model": f"openai/{name}", "api_base": base, "api_key": UPSTREAM_API_KEY},
            }
            for name, base in routes.items()
        ],
        "general_settings": {"master_key": MASTER_KEY},
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def start_litellm(litellm: Path, config: Path, workdir: Path, name: str) -> tuple[ManagedProcess, float]:
    port = free_port()
    proc = ManagedProcess(
        name,
        [
            str(litellm),
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            "1",
        ],
        workdir,
        url=f"http://127.0.0.1:{port}",
        ready_path="/health/liveliness",
        # No internet here: without this, start-up waits for three failed fetches of the remote model
        # price list before falling back to the copy inside the package.
        env={"LITELLM_LOCAL_MODEL_COST_MAP": "True"},
    )
    t0 = time.perf_counter()
    proc.start(timeout=300)
    return proc, time.perf_counter() - t0


def python_eval(python: Path, expression: str) -> str:
    """``expression`` evaluated by another interpreter (the peers venv's)."""
    out = subprocess.run(
        [str(python), "-c", f"import importlib.metadata, platform; print({expression})"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return out.stdout.strip()


def chargeback_version() -> str:
    version = importlib.metadata.version("llm-chargeback")
    git = ["git", "-C", str(ROOT)]
    commit = subprocess.run(
        [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run([*git, "diff", "--quiet", "HEAD", "--", "exporter"], check=False).returncode != 0
    return f"{version} ({commit or 'no git'}{', exporter/ modified' if dirty else ''})"


# --------------------------------------------------------------------------- measurements


@dataclass
class Load:
    result: Result
    sent: int  # requests sent, warm-up included (CPU is divided by this)

    @property
    def cpu_per_1000(self) -> float:
        return self.result.cpu_seconds / self.sent * 1000

    @property
    def ttft(self) -> float:
        return statistics.median(self.result.ttfts)


@dataclass
class Target:
    """One way to reach the simulator: direct, this proxy or LiteLLM."""

    name: str
    version: str
    url: str
    token: str
    pid: int | None = None
    python: str = platform.python_version()
    startup: float = float("nan")
    rss_idle: float = float("nan")
    rss_after: float = float("nan")
    loads: dict[str, Load] = field(default_factory=dict)


@dataclass
class Workload:
    key: str
    body: dict
    concurrency: int
    requests: int
    warmup: int
    stagger: float = 0.0


def measure(target: Target, w: Workload, loadgen_cpus: set[int] | None, url: str | None = None) -> None:
    """Run workload ``w`` against ``target`` (at ``url`` instead of its own, if given)."""
    before = tree_cpu(target.pid) if target.pid else 0.0
    r = drive(
        f"{url or target.url}/v1/chat/completions",
        target.token,
        w.body,
        w.concurrency,
        w.requests,
        loadgen_cpus,
        warmup=w.warmup,
        stagger=w.stagger,
    )
    r.cpu_seconds = tree_cpu(target.pid) - before if target.pid else 0.0
    target.loads[w.key] = Load(r, w.requests + w.warmup)


# --------------------------------------------------------------------------- rendering


def _ms(v: float) -> str:
    return f"{v * 1000:.1f}"


def _ratio(ours: float, peer: float) -> str:
    return f"{peer / ours:.1f}×" if ours > 0 else "—"


def table(direct: Target, ours: Target, peer: Target, loads: dict[str, Workload]) -> list[str]:
    """Rows: measures; columns: this proxy, LiteLLM, LiteLLM / this proxy."""

    def row(measure: str, a: str, b: str, ratio: str = "") -> str:
        return f"| {measure} | {a} | {b} | {ratio} |"

    def compare(label: str, get: Callable[[Target], float], fmt: str) -> str:
        """One measure of both proxies (``fmt`` formats it), with LiteLLM's ratio to ours."""
        o, p = get(ours), get(peer)
        return row(label, fmt.format(o), fmt.format(p), _ratio(o, p))

    def cpu(key: str, label: str) -> str:
        return compare(label, lambda t: t.loads[key].cpu_per_1000, "{:.2f} s")

    def added(key: str, label: str, q: float | None) -> str:
        def get(t: Target) -> float:
            lat = t.loads[key].result.latencies
            return statistics.median(lat) if q is None else pct(lat, q)

        d = get(direct)
        return row(label, f"{_ms(get(ours) - d)} ms", f"{_ms(get(peer) - d)} ms", f"(direct {_ms(d)} ms)")

    def ttft(key: str, label: str) -> str:
        d = direct.loads[key].ttft
        o, p = ours.loads[key].ttft - d, peer.loads[key].ttft - d
        return row(label, f"{_ms(o)} ms", f"{_ms(p)} ms", f"(direct {_ms(d)} ms)")

    ns, zs, ps = loads["plain"], loads["stream"], loads["paced"]
    d_rps = direct.loads["plain"].result.rps
    return [
        f"| measure | llm-chargeback {ours.version} | LiteLLM {peer.version} | LiteLLM / llm-chargeback |",
        "|---|---:|---:|---:|",
        cpu(
            "plain",
            f"CPU per 1,000 non-streaming requests (zero-latency upstream, {ns.concurrency} concurrent)",
        ),
        cpu(
            "stream",
            f"CPU per 1,000 streams of {STREAM_TOKENS} tokens (zero-latency upstream, {zs.concurrency} concurrent)",
        ),
        cpu("paced", f"CPU per 1,000 paced streams of {STREAM_TOKENS} tokens ({ps.concurrency} concurrent)"),
        compare(
            "CPU per streamed token, paced streams",
            lambda t: t.loads["paced"].cpu_per_1000 / STREAM_TOKENS * 1000,
            "{:.0f} µs",
        ),
        added("plain", "added median latency, non-streaming (zero-latency upstream)", None),
        added("plain", "added p99 latency, non-streaming (zero-latency upstream)", 0.99),
        row(
            "non-streaming requests/s (zero-latency upstream)",
            f"{ours.loads['plain'].result.rps:.0f}",
            f"{peer.loads['plain'].result.rps:.0f}",
            f"(direct {d_rps:.0f})",
        ),
        ttft("stream", "added median TTFT, streams (zero-latency upstream)"),
        ttft("paced", "added median TTFT, paced streams"),
        added("paced", "added median stream duration, paced streams", None),
        added("paced", "added p99 stream duration, paced streams", 0.99),
        compare("RSS after start-up (whole process tree)", lambda t: t.rss_idle, "{:.0f} MB"),
        compare("RSS after the runs (whole process tree)", lambda t: t.rss_after, "{:.0f} MB"),
        compare("start-up time (process start to first healthy answer)", lambda t: t.startup, "{:.1f} s"),
    ]


def section(
    direct: Target,
    ours: Target,
    peer: Target,
    loads: dict[str, Workload],
    where: Placement,
    load_avg: float,
) -> str:
    ns, zs, ps = loads["plain"], loads["stream"], loads["paced"]
    lines = [
        BEGIN,
        "## Side by side with LiteLLM (`make bench-peers`)",
        "",
        f"Run {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} by `bench/bench_peers.py`, optional and not part "
        "of `make bench` (it installs LiteLLM's proxy from PyPI into `.venv-peers`). Both proxies sit in front of "
        "the same simulator (`chargeback simulate-upstream`) in the same run, one after the other, on the same "
        f"CPU ({where.describe()}), with the same load generator (`bench/loadgen.py`). "
        + (
            f"Python {ours.python} for both. "
            if ours.python == peer.python
            else f"Python {ours.python} (llm-chargeback), {peer.python} (LiteLLM). "
        )
        + "LiteLLM: default install of `litellm[proxy]`, one worker "
        "(uvicorn, its default), a minimal config.yaml routing each model to the simulator as an "
        "OpenAI-compatible backend, a master key, no database, its default logging (uvicorn's access-log "
        "line per request, here to a file), "
        "`LITELLM_LOCAL_MODEL_COST_MAP=True` (this machine has no internet; otherwise start-up waits for the "
        "remote price list to fail). llm-chargeback: as in the proxy overhead bench, with its accounting on "
        "(a ledger row per request in SQLite, the counters); LiteLLM without a database keeps no spend log.",
        "",
        f"- non-streaming: {ns.requests:,} requests ({PLAIN_TOKENS} completion tokens each) at {ns.concurrency} "
        f"concurrent after {ns.warmup} warm-up requests, zero-latency simulator;",
        f"- streams: {zs.requests:,} streams of {STREAM_TOKENS} tokens (one SSE event each, plus the role, finish, "
        f"usage and [DONE] events) at {zs.concurrency} concurrent after {zs.warmup} warm-up, zero-latency simulator;",
        f"- paced streams: {ps.requests:,} streams of {STREAM_TOKENS} tokens at {ps.concurrency} "
        f"concurrent, the simulator waiting {PACED_LATENCY_MS:.0f} ms before the first token and then sending "
        f"one every {1000 / PACED_TOKENS_PER_SECOND:.0f} ms, connections staggered over one stream's duration.",
        "",
        "CPU is the proxy's whole process tree (utime + stime of every process and thread, reaped children "
        "included, from /proc) over each run, warm-up included, per request sent; it includes whatever the "
        "proxy does in the background meanwhile (llm-chargeback: the ledger writer's and the key refresh's "
        "periodic work). Added latency and TTFT are "
        "the proxy's median (or p99) minus the direct run's, measured at the client. RSS is the sum over the "
        "process tree. Start-up is the second start of each proxy (file cache warm), from process start to "
        "the first healthy answer (`/healthz`; LiteLLM `/health/liveliness`).",
        "",
        *table(direct, ours, peer, loads),
        "",
        f"Machine: {os.cpu_count()} cores, load average {load_avg:.2f} at start"
        + (
            ": shared with other work, so absolute CPU figures are inflated by contention and latencies are "
            "noisy (an added value below zero is noise); both proxies ran under the same conditions minutes apart, so the ratios are the robust "
            "figures."
            if load_avg >= 1.0
            else "."
        )
        + " On a zero-latency upstream a proxy that needs more CPU per request than the load offers "
        "saturates its core, and its added latency is then mostly queueing.",
        "",
        INSTALL_NOTE,
        END,
    ]
    return "\n".join(lines)


def replace_section(doc: str, new: str) -> str:
    """``doc`` with the text between the markers (markers included) replaced by ``new``; appended when
    the markers are missing."""
    start, end = doc.find(BEGIN), doc.find(END)
    if start < 0 or end < start:
        return doc.rstrip("\n") + "\n\n" + new.strip("\n") + "\n"
    return doc[:start] + new.strip("\n") + doc[end + len(END) :]


def extract_section(doc: str) -> str | None:
    """The marked section of ``doc`` (markers included), or None."""
    start, end = doc.find(BEGIN), doc.find(END)
    return doc[start : end + len(END)] if 0 <= start < end else None


# --------------------------------------------------------------------------- the run


def bench(args: argparse.Namespace) -> str:
    litellm = Path(args.litellm).resolve()
    where = placement()
    load_avg = os.getloadavg()[0]
    answer_seconds = PACED_LATENCY_MS / 1000 + STREAM_TOKENS / PACED_TOKENS_PER_SECOND
    loads = {
        "plain": Workload("plain", BODY, args.concurrency, args.requests, 200),
        "stream": Workload("stream", STREAM_BODY, args.concurrency, args.streams, 50),
        "paced": Workload("paced", PACED_BODY, args.paced_concurrency, args.paced_streams, 8, answer_seconds),
    }
    peer_version = python_eval(litellm.parent / "python", "importlib.metadata.version('litellm')")
    peer_python = python_eval(litellm.parent / "python", "platform.python_version()")
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmpdir:
        tmp = Path(tmpdir)
        paced = start_simulator(
            tmp,
            tokens_per_second=PACED_TOKENS_PER_SECOND,
            latency_ms=PACED_LATENCY_MS,
            models=[PACED_MODEL],
            name="sim-paced",
        )
        with paced:
            pin(paced.proc.pid, where.sim)  # type: ignore[union-attr]
            paced_base = f"{paced.url}/v1"
            cm, stack = start(
                tmp,
                "ours",
                {"bench00000@corp.example": "research"},
                where,
                extra_upstreams={PACED_MODEL: [paced_base]},
            )
            try:
                # the second start of each proxy is the one timed (file cache warm)
                stack.proxy.stop()
                t0 = time.perf_counter()
                stack.restart_proxy()
                ours_pid = stack.proxy.process.proc.pid  # type: ignore[union-attr]
                ours = Target(
                    "llm-chargeback",
                    chargeback_version(),
                    stack.api_url,
                    next(iter(stack.tokens.values())),
                    ours_pid,
                    startup=time.perf_counter() - t0,
                )
                pin_tree(ours_pid, where.proxy)

                config = litellm_config(
                    tmp / "litellm.yaml", {"bench-a": f"{stack.sim_url}/v1", PACED_MODEL: paced_base}
                )
                first, _ = start_litellm(litellm, config, tmp, "litellm-first")
                first.stop()
                proc, startup = start_litellm(litellm, config, tmp, "litellm")
                with proc:
                    assert proc.url is not None and proc.proc is not None
                    peer = Target(
                        "LiteLLM",
                        peer_version,
                        proc.url,
                        MASTER_KEY,
                        proc.proc.pid,
                        peer_python,
                        startup=startup,
                    )
                    pin_tree(peer.pid, where.proxy)  # type: ignore[arg-type]
                    direct = Target("direct", "", stack.sim_url, UPSTREAM_API_KEY)
                    time.sleep(2)  # let both settle before the idle RSS
                    for t in (ours, peer):
                        t.rss_idle = tree_rss_mb(t.pid)  # type: ignore[arg-type]
                    for w in loads.values():
                        for t in (direct, ours, peer):
                            print(f"== {w.key}: {t.name}", file=sys.stderr, flush=True)
                            # the proxies route the paced model to the paced simulator; direct goes there too
                            measure(
                                t, w, where.loadgen, paced.url if t is direct and w.key == "paced" else None
                            )
                    for t in (ours, peer):
                        t.rss_after = tree_rss_mb(t.pid)  # type: ignore[arg-type]
            finally:
                cm.__exit__(None, None, None)
    return section(direct, ours, peer, loads, where, load_avg)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--litellm", default=str(ROOT / ".venv-peers" / "bin" / "litellm"))
    parser.add_argument("--out", default=str(ROOT / "docs" / "performance.md"), help="'-' prints instead")
    parser.add_argument("--requests", type=int, default=2000, help="non-streaming requests")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--streams", type=int, default=500, help="zero-latency streams")
    parser.add_argument("--paced-streams", type=int, default=200)
    parser.add_argument("--paced-concurrency", type=int, default=16)
    args = parser.parse_args()
    started = time.monotonic()
    text = bench(args)
    if args.out == "-":
        print(text)
    else:
        out = Path(args.out)
        out.write_text(replace_section(out.read_text() if out.exists() else "# Performance\n", text))
        print(f"wrote {out}")
    print(f"({time.monotonic() - started:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

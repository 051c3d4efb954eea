#!/usr/bin/env python3
"""What the month-to-date recording rules cost a Prometheus, against the 5m spend-rate rule.

A billing month (31 days, 1-minute scrapes) of usage counters for USERS users × 2 models and 4
GPUs is backfilled into a real Prometheus; then the month-to-date rule
(``team:chargeback_spend:month_to_date``, every recorded series it reads inlined, i.e. the whole
``chargeback-month-to-date`` group's work) and the real-time rate rule
(``team:chargeback_spend_per_hour:rate5m``, inlined the same way) are queried at the month's end,
REPEAT times each. Prints the median query time of both and their ratio.

    python bench/bench_mtd_rules.py [--users 25] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from rules_inline import inline, recording_rules
from support.prom_history import backfill, ts

from exporter import contract
from exporter.billing_calendar import month_bounds_unix
from exporter.stack import start_prometheus

START, END = ts("2026-12-01T00:00"), ts("2027-01-01T00:00")  # a UTC billing month
STEP = 60


def write_month(path: Path, users: int) -> int:
    """OpenMetrics for the month; returns the number of samples."""
    proxy = 'job="chargeback-proxy",instance="p1"'
    gpu = 'job="chargeback-gpu-exporter",instance="n1"'
    n = 0
    grid = range(START - 3600, END + 1, STEP)
    start, end = month_bounds_unix(ZoneInfo("UTC"), START)
    with path.open("w") as f:
        for metric, per_min in ((contract.PROMPT_TOKENS_TOTAL, 300), (contract.COMPLETION_TOKENS_TOTAL, 60)):
            for u in range(users):
                for model in ("m-big", "m-small"):
                    labels = f'{proxy},user="u{u}",team="t{u % 5}",model="{model}"'
                    for i, t in enumerate(grid):
                        f.write(f"{metric}{{{labels}}} {i * per_min * (1 + u % 3)} {t}\n")
                        n += 1
        for g in range(4):
            for i, t in enumerate(grid):
                f.write(f'{contract.GPU_OBSERVED_SECONDS_TOTAL}{{{gpu},uuid="g{g}"}} {i * STEP} {t}\n')
                n += 1
        gauges = [
            (contract.GPU_HOURLY_COST, f'{gpu},uuid="g{g}",pool="{"big" if g < 2 else "small"}"', 2)
            for g in range(4)
        ]
        gauges += [(contract.MODEL_INFO, f'{proxy},model="m-big",pool="big"', 1)]
        gauges += [(contract.MODEL_INFO, f'{proxy},model="m-small",pool="small"', 1)]
        gauges += [
            (contract.TEAM_INFO, f'{proxy},team="t{t}",business_unit="b",cost_center="c"', 1)
            for t in range(5)
        ]
        gauges += [(contract.BILLING_MONTH_START, f'{proxy},timezone="UTC"', start)]
        gauges += [(contract.BILLING_MONTH_END, f'{proxy},timezone="UTC"', end)]
        by_metric: dict[str, list[tuple[str, float]]] = {}
        for metric, labels, value in gauges:
            by_metric.setdefault(metric, []).append((labels, value))
        for metric, rows in by_metric.items():
            for labels, value in rows:
                for t in grid:
                    f.write(f"{metric}{{{labels}}} {value} {t}\n")
                    n += 1
        f.write("# EOF\n")
    return n


def timed(url: str, query: str, at: int, repeat: int) -> float:
    """Median seconds of ``repeat`` instant queries at ``at``."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        r = requests.post(f"{url}/api/v1/query", data={"query": query, "time": at}, timeout=600)
        times.append(time.perf_counter() - t0)
        assert r.json()["status"] == "success", r.text[:500]
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=25)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        n = write_month(work / "month.om", args.users)
        backfill(work / "month.om", work / "tsdb", block_hours=24 * 31)
        prom = start_prometheus(work, storage_dir=work / "tsdb", retention="10y")
        try:
            rules = recording_rules()
            mtd = timed(
                prom.url or "", inline("team:chargeback_spend:month_to_date", rules), END, args.repeat
            )
            rate = timed(
                prom.url or "", inline("team:chargeback_spend_per_hour:rate5m", rules), END, args.repeat
            )
        finally:
            prom.stop()
    series = args.users * 2 * 2
    print(f"month of 1-minute samples: {series} token counter series + 4 GPUs, {n} samples backfilled")
    print(f"month-to-date rule: {mtd * 1000:.0f} ms")
    print(f"5m spend-rate rule (baseline): {rate * 1000:.1f} ms")
    print(f"ratio: {mtd / rate:.0f}x; per token counter series: {mtd * 1000 / series:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())

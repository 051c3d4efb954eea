"""Reporter benchmark: time from ``chargeback report`` start to statements written.

A month (September 2026, 30 days, UTC) of proxy counters for N users in T teams on 4 models
(every user on 2 models, users spread over 2 proxy replicas; replica 0 restarts mid-month so
half the series carry a counter reset) plus 16 GPUs in 4 pools, backfilled into a real
Prometheus with ``promtool tsdb create-blocks-from openmetrics``. Samples are spaced
``interval`` apart (coarser than a real 15 s scrape, to keep generation and backfill short on a
small machine; the reporter's query count does not depend on it, the server's scan time does).

    .venv/bin/python bench/bench_report.py [--quick]
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from exporter import contract  # noqa: E402
from exporter.report.testdata import backfill, ts  # noqa: E402
from exporter.stack import chargeback_argv, start_prometheus  # noqa: E402

MODELS = ("m0", "m1", "m2", "m3")


def generate(path: Path, users: int, teams: int, interval: int, seed: int = 7) -> tuple[int, int]:
    """Write the OpenMetrics file; returns (series, samples)."""
    rng = random.Random(seed)
    t0, t1 = ts("2026-08-31T00:00"), ts("2026-10-01T00:00")
    times = list(range(t0, t1 + 1, interval))
    restart = ts("2026-09-15T12:00")
    restart_index = next(i for i, t in enumerate(times) if t >= restart)
    tstr = [f" {t}\n" for t in times]
    series = samples = 0
    metrics = (
        (contract.PROMPT_TOKENS_TOTAL, 2000),
        (contract.COMPLETION_TOKENS_TOTAL, 600),
        (contract.CACHED_PROMPT_TOKENS_TOTAL, 300),
        (contract.REQUEST_SECONDS_TOTAL, 5),
        (contract.REQUESTS_TOTAL, 3),
    )
    with path.open("w") as f:
        for metric, scale in metrics:
            for u in range(users):
                replica = u % 2
                for model in (MODELS[u % 4], MODELS[(u + 1) % 4]):
                    code = ',code="200"' if metric == contract.REQUESTS_TOTAL else ""
                    lab = (
                        f'{metric}{{user="user{u:05d}@corp.example",team="team{u % teams:03d}",model="{model}",'
                        f'instance="proxy-{replica}",job="chargeback-proxy"{code}}} '
                    )
                    value = 0
                    rate = rng.randint(1, 10) * scale
                    out = []
                    for i, tail in enumerate(tstr):
                        if replica == 0 and i == restart_index:
                            value = 0
                        value += rng.randint(0, rate)
                        out.append(f"{lab}{value}{tail}")
                    f.writelines(out)
                    series += 1
                    samples += len(out)
        gpu_metrics = (contract.GPU_BUSY_SECONDS_TOTAL, contract.GPU_IDLE_SECONDS_TOTAL, contract.GPU_OBSERVED_SECONDS_TOTAL, contract.GPU_HOURLY_COST)
        for metric in gpu_metrics:
            for g in range(16):
                pool = f"pool{g // 4}"
                extra = f',pool="{pool}"' if metric == contract.GPU_HOURLY_COST else ""
                lab = f'{metric}{{uuid="GPU-{g:04d}",instance="gpu-{g // 4}",job="chargeback-gpu-exporter"{extra}}} '
                for i, tail in enumerate(tstr):
                    if metric == contract.GPU_HOURLY_COST:
                        v = "2.5"
                    elif metric == contract.GPU_OBSERVED_SECONDS_TOTAL:
                        v = str(i * interval)
                    else:
                        busy = i * interval * (g % 4 + 1) // 5
                        v = str(busy if metric == contract.GPU_BUSY_SECONDS_TOTAL else i * interval - busy)
                    f.write(f"{lab}{v}{tail}")
                series += 1
                samples += len(tstr)
        for m in range(4):
            for t in tstr:
                f.write(f'{contract.MODEL_INFO}{{model="m{m}",pool="pool{m}",instance="proxy-0",job="chargeback-proxy"}} 1{t}')
        f.write("# EOF\n")
    return series, samples


def config(prom_url: str, teams: int, out: Path) -> str:
    lines = [
        "currency: EUR",
        "timezone: UTC",
        "pools:",
        *[f"  pool{p}: {{gpu_hourly_cost: 2.5, gpus: 4, capacity_tokens_per_second: 5000}}" for p in range(4)],
        "models:",
        *[f"  m{m}: {{upstreams: [http://127.0.0.1:1/v1], pool: pool{m}, token_weights: {{prompt: 1, completion: 3}}}}" for m in range(4)],
        "teams:",
        *[f"  team{t:03d}: {{budget: 1000, billing_contacts: [lead{t:03d}@corp.example]}}" for t in range(teams)],
        f"prometheus: {{url: '{prom_url}', timeout_seconds: 120}}",
        f"report: {{method: token-share, output_dir: '{out}', finance_recipients: [finops@corp.example]}}",
    ]
    return "\n".join(lines) + "\n"


def run(quick: bool) -> str:
    users, teams, interval = (500, 20, 6 * 3600) if quick else (5000, 200, 3600)
    work = Path(tempfile.mkdtemp(prefix="bench-report-"))
    prom = None
    try:
        t = time.monotonic()
        series, samples = generate(work / "data.om", users, teams, interval)
        gen_s = time.monotonic() - t
        t = time.monotonic()
        backfill(work / "data.om", work / "tsdb", timeout=1800)
        backfill_s = time.monotonic() - t
        (work / "data.om").unlink()
        prom = start_prometheus(work, storage_dir=work / "tsdb", retention="10y")
        cfg = work / "chargeback.yaml"
        cfg.write_text(config(prom.url or "", teams, work / "statements"))
        times = []
        stdout = ""
        for i in range(2):
            t = time.monotonic()
            r = subprocess.run(
                chargeback_argv("report", "--config.file", str(cfg), "--period", "2026-09", "--out", str(work / f"s{i}")),
                capture_output=True, text=True, timeout=600, check=False,
            )  # fmt: skip
            times.append(time.monotonic() - t)
            if r.returncode != 0:
                raise RuntimeError(f"chargeback report failed ({r.returncode}): {r.stderr[-2000:]}")
            stdout = r.stdout
        files = sum(1 for p in (work / "s0").rglob("*") if p.is_file())
        same = all(
            (work / "s0" / p.relative_to(work / "s0")).read_bytes() == (work / "s1" / p.relative_to(work / "s0")).read_bytes()
            for p in (work / "s0").rglob("*")
            if p.is_file()
        )
        lines = sum(1 for _ in (work / "s0/2026-09/token-share/lines.csv").open()) - 1
    finally:
        if prom is not None:
            prom.stop()
        shutil.rmtree(work, ignore_errors=True)
    wrote = next((line for line in stdout.splitlines() if line.startswith("wrote")), "")
    return "\n".join(
        [
            "## Reporter (`chargeback report`)" + (" — quick run" if quick else ""),
            "",
            f"{users:,} users in {teams} teams on 4 models (2 each), 2 proxy replicas (one restarts mid-month: "
            f"half the series have a counter reset), 16 GPUs in 4 pools; September 2026 (30 days). "
            f"{series:,} series, {samples:,} samples {interval // 60} min apart, backfilled into Prometheus "
            f"2.42 with promtool. Method token-share, all four formats.",
            "",
            "| measure | value |",
            "|---|---:|",
            f"| data generation (OpenMetrics) | {gen_s:.1f} s |",
            f"| promtool backfill | {backfill_s:.1f} s |",
            f"| `chargeback report`, command start → statements written (first run) | {times[0]:.2f} s |",
            f"| same, second run | {times[1]:.2f} s |",
            f"| statement lines | {lines:,} |",
            f"| files written | {files} |",
            f"| the two runs' files byte-identical | {'yes' if same else 'NO'} |",
            "",
            f"Target: ≤ 10 s on 2 cores. Reporter's own line: `{wrote}`.",
            "",
        ]
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    print(run(parser.parse_args().quick))

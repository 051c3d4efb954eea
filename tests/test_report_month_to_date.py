"""Month-to-date against a real Prometheus when the GPU exporter was only installed this month.

Backfilled (Europe/Berlin billing, report run at 2026-12-03T15:56:30Z = 16:56:30 in Berlin):

- the GPU exporter starts on 2026-12-02 at 08:00Z; one sample a minute;
- pool p: GPU-p0 present from then on without a gap: 31 h 56 min = 114,960 s up to 15:56Z on the 3rd;
- pool q: GPU-q0 likewise, but its node was off from 12:00Z to 14:00Z (no samples, the observed
  seconds do not grow): 114,960 − 7,200 = 107,760 s;
- both GPUs cost 3.60 per hour; alice (team t) sends 1,000 prompt tokens a minute to model m on p.

The month-to-date period is 2026-12-01T00:00 to 16:56 on the 3rd in Berlin (64.93 h). Before, both
pools got a note comparing their GPU-hours with 64.93 expected; now the expected time starts at
the first sample, so only q's real two-hour gap is reported.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from support.prom_history import Series, grid, prometheus_with, ts

from exporter import contract
from exporter.config import parse_config
from exporter.report.inputs import gather_prometheus
from exporter.report.period import parse_period
from exporter.report.promql import PromClient
from exporter.stack import ManagedProcess, chargeback_argv

NOW = "2026-12-03T15:56:30Z"
FIRST = ts("2026-12-02T08:00")
LAST = ts("2026-12-03T16:30")  # samples after the report's end exist; the queries must not see them
GAP = (ts("2026-12-02T12:00"), ts("2026-12-02T14:00"))
STEP = 60

CONFIG = """
currency: EUR
timezone: Europe/Berlin
pools:
  p: {{gpu_hourly_cost: 3.60, gpus: 1}}
  q: {{gpu_hourly_cost: 3.60, gpus: 1}}
models:
  m: {{upstreams: [http://127.0.0.1:1/v1], pool: p}}
teams:
  t: {{budget: 100, billing_contacts: [t-lead@corp.test]}}
users:
  alice@corp.test: t
prometheus:
  url: {url}
report:
  output_dir: {out}
"""


def series() -> list[Series]:
    out: list[Series] = []
    for uuid, pool, gap in (("GPU-p0", "p", None), ("GPU-q0", "q", GAP)):
        labels = {"uuid": uuid, "instance": f"node-{pool}", "job": "chargeback-gpu-exporter"}
        observed, busy = [], []
        for t in grid(FIRST, LAST, STEP):
            if gap and gap[0] < t < gap[1]:
                continue
            seconds = t - FIRST - (min(max(t - gap[0], 0), gap[1] - gap[0]) if gap else 0)
            observed.append((t, seconds))
            busy.append((t, seconds // 2))
        out += [
            Series(contract.GPU_OBSERVED_SECONDS_TOTAL, labels, observed),
            Series(contract.GPU_BUSY_SECONDS_TOTAL, labels, busy),
            Series(contract.GPU_IDLE_SECONDS_TOTAL, labels, [(t, 0) for t, _ in busy]),
            Series(contract.GPU_HOURLY_COST, {**labels, "pool": pool}, [(t, "3.6") for t, _ in busy]),
            Series(
                contract.GPU_INFO,
                {**labels, "pool": pool, "index": "0", "name": "L4"},
                [(t, 1) for t, _ in busy],
            ),
        ]
    proxy = {
        "user": "alice@corp.test",
        "team": "t",
        "model": "m",
        "instance": "proxy",
        "job": "chargeback-proxy",
    }
    minutes = list(grid(FIRST, LAST, STEP))
    out.append(Series(contract.PROMPT_TOKENS_TOTAL, proxy, [(t, 1000 * i) for i, t in enumerate(minutes)]))
    out.append(
        Series(contract.REQUESTS_TOTAL, {**proxy, "code": "200"}, [(t, i) for i, t in enumerate(minutes)])
    )
    return out


@pytest.fixture(scope="module")
def prom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    work = tmp_path_factory.mktemp("mtd-prom")
    with prometheus_with(work, series(), "mtd") as p:
        yield p


def test_exporter_started_this_month_is_no_gap(prom: ManagedProcess, tmp_path: Path) -> None:
    cfg = parse_config(CONFIG.format(url=prom.url, out=tmp_path), "chargeback.yaml")
    now = datetime.fromisoformat(NOW)
    period = parse_period("month-to-date", cfg.timezone, now=now.astimezone(UTC))
    assert (period.label, period.title) == (
        "2026-12-01_2026-12-03T1656",
        "2026-12 (1–3 Dec, to 16:56 Europe/Berlin)",
    )
    inputs = gather_prometheus(cfg, PromClient(prom.url or ""), period)
    p, q = inputs.pools["p"], inputs.pools["q"]
    assert (p.gpu_seconds, q.gpu_seconds) == (Decimal(114_960), Decimal(107_760))
    # 3.60/h: p 31.9333… h → 114.96, q 29.9333… h → 107.76
    assert (p.cost, q.cost) == (Decimal("114.96"), Decimal("107.76"))
    gaps = [n for n in inputs.notes if "GPU-hours" in n]
    assert gaps == [
        "pool 'q': GPUs observed 29.93 GPU-hours of 31.93 expected since the first sample at "
        "2026-12-02T08:00:00Z (exporter gaps or fewer GPUs than configured)"
    ]


def test_month_to_date_files_and_titles(prom: ManagedProcess, tmp_path: Path) -> None:
    cfg = tmp_path / "chargeback.yaml"
    cfg.write_text(CONFIG.format(url=prom.url, out=tmp_path / "st"))
    r = subprocess.run(
        chargeback_argv("report", "--period", "month-to-date", "--now", NOW, "--config.file", str(cfg)),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    target = tmp_path / "st/2026-12-01_2026-12-03T1656/token-share"
    assert sorted(p.name for p in target.iterdir()) == [
        "lines.csv", "pools.csv", "statement.json", "summary.html", "summary.md", "teams", "teams.csv",
    ]  # fmt: skip
    md = (target / "summary.md").read_text()
    assert (
        "- Period: 2026-12 (1–3 Dec, to 16:56 Europe/Berlin) — 2026-12-01T00:00:00+01:00 to 2026-12-03T16:56:00+01:00"
        in md
    )
    assert "- Issue date: 2026-12-03" in md
    # the previous period (1–3 Nov to 16:56) has neither usage nor GPU data: nothing to compare with
    assert (
        "no figures for the previous period (2026-11 (1–3 Nov, to 16:56 Europe/Berlin)) to compare with" in md
    )
    # alice pays pool p (114.96); nobody used q: central IT keeps its 107.76
    assert "**Total: €114.96**" in (target / "teams/t.md").read_text()

    def report(*extra: str) -> subprocess.CompletedProcess[str]:
        argv = chargeback_argv(
            "report", "--period", "month-to-date", "--now", NOW, "--config.file", str(cfg), *extra
        )
        return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)

    r = report("--issue-date", "2026-12-07", "--format", "md", "--out", str(tmp_path / "later"))
    assert r.returncode == 0, r.stderr
    later = tmp_path / "later/2026-12-01_2026-12-03T1656/token-share/summary.md"
    assert "- Issue date: 2026-12-07" in later.read_text()
    r = report("--issue-date", "7 Dec")
    assert r.returncode == 2 and "expected a date YYYY-MM-DD, got '7 Dec'" in r.stderr

"""Real-time month-to-date (the recording rules) against the statement (the reporter), on the same
data in a real Prometheus: one billing day in Europe/Berlin with idle hours.

The day (1 December 2026, Berlin = 2026-11-30T23:00Z .. 2026-12-01T23:00Z) is backfilled at a 1-minute
scrape interval. Pool big (2 GPUs at 2.00/h) serves only from 08:00 to 22:00 Berlin and idles the
other 10 hours; pool small (1 GPU at 1.00/h) idles from 02:00 to 06:00. Who uses a pool changes over
the day, so a rate-based figure (spend per hour integrated while tokens flow) would leave the idle
hours to nobody; the rules carry them to the month's shares, as token-share with
``idle_handling: spread`` does on the statement.

The rules are evaluated as they are written: the expression of ``team:chargeback_spend:month_to_date``
with every recorded series it reads replaced by that series' own expression, queried at the day's
end (so ``@ end()`` and ``time()`` are that instant, as in a rule evaluation).
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest
import report_scenario as sc
from rules_inline import inline, recording_rules
from support.prom_history import (
    Counter,
    Series,
    grid,
    prometheus_with,
    ts,
)

from exporter import contract
from exporter.billing_calendar import month_bounds_unix
from exporter.config import parse_config
from exporter.report.inputs import gather_prometheus
from exporter.report.methods import allocate
from exporter.report.period import parse_period
from exporter.report.promql import PromClient
from exporter.report.statement import build_statement
from exporter.stack import ManagedProcess, find_binary, prom_query

pytestmark = pytest.mark.slow

START = ts("2026-11-30T23:00")  # 1 Dec 00:00 Berlin
END = ts("2026-12-01T23:00")  # 2 Dec 00:00 Berlin
T0, T1 = ts("2026-11-30T21:00"), ts("2026-12-02T00:00")
STEP = 60
GRID = grid(T0, T1, STEP)
PROXY = {"job": "chargeback-proxy", "instance": "proxy-a"}
GPU = {"job": "chargeback-gpu-exporter", "instance": "node-1"}
GPUS = {"b0": ("big", Decimal("2.00")), "b1": ("big", Decimal("2.00")), "s0": ("small", Decimal("1.00"))}


def berlin_hour(t: int) -> int:
    return ((t + 3600) // 3600) % 24  # CET (UTC+1) all December


# (user, team, model) → Berlin hours with traffic, prompt and completion tokens per minute
TRAFFIC = {
    ("ann@corp.test", "alpha", "m-big"): (range(8, 18), 3000, 500),
    ("bob@corp.test", "beta", "m-big"): (range(12, 22), 1000, 800),
    ("al@corp.test", "alpha", "m-small"): ([*range(0, 2), *range(6, 24)], 200, 100),
    ("bob@corp.test", "beta", "m-small"): (range(9, 12), 900, 50),
}
IDLE_HOURS = {"big": set(range(0, 8)) | {22, 23}, "small": set(range(2, 6))}


def _series() -> list[Series]:
    out: list[Series] = []
    for (user, team, model), (hours, prompt, completion) in TRAFFIC.items():
        p, c = Counter(), Counter()
        for t in GRID[1:]:
            if berlin_hour(t - STEP) in hours:  # the minute that ends at t
                p.add(t, prompt)
                c.add(t, completion)
        labels = {**PROXY, "user": user, "team": team, "model": model}
        out.append(Series(contract.PROMPT_TOKENS_TOTAL, labels, p.samples(GRID)))
        out.append(Series(contract.COMPLETION_TOKENS_TOTAL, labels, c.samples(GRID)))
    for uuid, (pool, cost) in GPUS.items():
        busy, idle, observed = Counter(), Counter(), Counter()
        for t in GRID[1:]:
            idle_s = 60 if berlin_hour(t - STEP) in IDLE_HOURS[pool] else 15
            idle.add(t, idle_s)
            busy.add(t, 60 - idle_s)
            observed.add(t, 60)
        lab = {**GPU, "uuid": uuid}
        out.append(Series(contract.GPU_BUSY_SECONDS_TOTAL, lab, busy.samples(GRID)))
        out.append(Series(contract.GPU_IDLE_SECONDS_TOTAL, lab, idle.samples(GRID)))
        out.append(Series(contract.GPU_OBSERVED_SECONDS_TOTAL, lab, observed.samples(GRID)))
        out.append(Series(contract.GPU_HOURLY_COST, {**lab, "pool": pool}, [(t, cost) for t in GRID]))
        info = {**lab, "pool": pool, "index": uuid[1], "name": "H100", "driver_version": "550"}
        out.append(Series(contract.GPU_INFO, info, [(t, 1) for t in GRID]))

    def gauge(metric: str, labels: dict[str, str], value: object) -> None:
        out.append(
            Series(metric, {**PROXY, **labels}, [(t, value(t) if callable(value) else value) for t in GRID])
        )  # type: ignore[misc]

    from zoneinfo import ZoneInfo

    berlin = ZoneInfo("Europe/Berlin")
    tz = {"timezone": "Europe/Berlin"}
    gauge(contract.BILLING_MONTH_START, tz, lambda t: month_bounds_unix(berlin, t)[0])
    gauge(contract.BILLING_MONTH_END, tz, lambda t: month_bounds_unix(berlin, t)[1])
    for model, pool, wc in (("m-big", "big", 3), ("m-small", "small", 1)):
        gauge(contract.MODEL_INFO, {"model": model, "pool": pool}, 1)
        gauge(contract.MODEL_PROMPT_TOKEN_WEIGHT, {"model": model}, 1)
        gauge(contract.MODEL_COMPLETION_TOKEN_WEIGHT, {"model": model}, wc)
    for team in ("alpha", "beta", "gamma"):
        gauge(contract.TEAM_INFO, {"team": team, "business_unit": "BU", "cost_center": "CC"}, 1)
    gauge(contract.REALTIME_METHOD_INFO, {"method": "token-share"}, 1)
    out.append(Series("process_start_time_seconds", PROXY, [(t, T0 - 600) for t in GRID]))
    return out


@pytest.fixture(scope="module")
def prom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    try:
        find_binary("prometheus")
    except Exception as exc:
        pytest.skip(str(exc))
    work = tmp_path_factory.mktemp("rules-vs-statement")
    with prometheus_with(work, _series(), "day") as p:
        yield p


def test_month_to_date_agrees_with_the_statement_within_one_percent(prom: ManagedProcess) -> None:
    url = prom.url or ""
    rules = recording_rules()
    realtime = {
        r["metric"]["team"]: Decimal(r["value"][1])
        for r in prom_query(url, inline("team:chargeback_spend:month_to_date", rules), END)
    }
    cfg = parse_config(sc.config_text(url), "chargeback.yaml")
    period = parse_period(None, cfg.timezone, start="2026-12-01T00:00", end="2026-12-02T00:00")
    assert (period.start_ts, period.end_ts) == (START, END)
    assert set(realtime) == {"alpha", "beta", "gamma"}
    # Two HA replicas evaluate at different instants of the same minute, and nothing depends on
    # earlier evaluations: they record exactly the same figure.
    other_replica = {
        r["metric"]["team"]: Decimal(r["value"][1])
        for r in prom_query(url, inline("team:chargeback_spend:month_to_date", rules), END + 37)
    }
    assert other_replica == realtime
    inputs = gather_prometheus(cfg, PromClient(url), period)
    st = build_statement(cfg, inputs, allocate(inputs, cfg))
    statement = {t.team: t.total for t in st.teams}

    # The day's pool cost is the statement's: 2 × 2.00 × 24 + 1.00 × 24 = 120.00, all recovered.
    assert st.total_pool_cost == Decimal("120.00")
    pools = {p.name: p for p in st.pools}
    assert pools["big"].idle_cost > Decimal("40")  # 10 idle hours + a quarter of the other 14 (of 96.00)
    assert realtime["gamma"] == 0 and statement.get("gamma", Decimal(0)) == 0
    for team in ("alpha", "beta"):
        assert abs(realtime[team] - statement[team]) <= Decimal("0.01") * statement[team], (
            team,
            realtime[team],
            statement[team],
        )
    assert abs(sum(realtime.values()) - Decimal(120)) <= Decimal("1.20")

    # The rate-based figure leaves idle hours out: Σ over the day of the 5m spend rate × 1/60 h.
    spend_rate = inline("team:chargeback_spend_per_hour:rate5m", rules)
    rate_based = {
        r["metric"]["team"]: Decimal(r["value"][1])
        for r in prom_query(url, f"sum_over_time(({spend_rate})[1d:1m]) / 60", END)
    }
    print(f"statement {statement}, rules {realtime}, rate-based {rate_based}")
    assert sum(rate_based.values()) < Decimal("0.85") * sum(statement.values())


def test_within_one_percent_in_the_middle_of_an_hour(prom: ManagedProcess) -> None:
    """At 23:43 Berlin the unfinished hour comes from 5-minute tiles (up to 23:40)."""
    url = prom.url or ""
    at = END - 17 * 60
    realtime = {
        r["metric"]["team"]: Decimal(r["value"][1])
        for r in prom_query(url, inline("team:chargeback_spend:month_to_date", recording_rules()), at)
    }
    cfg = parse_config(sc.config_text(url), "chargeback.yaml")
    period = parse_period(None, cfg.timezone, start="2026-12-01T00:00", end="2026-12-01T23:43")
    assert period.end_ts == at
    inputs = gather_prometheus(cfg, PromClient(url), period)
    st = build_statement(cfg, inputs, allocate(inputs, cfg))
    for t in st.teams:
        assert abs(realtime[t.team] - t.total) <= Decimal("0.01") * t.total, (
            t.team,
            realtime[t.team],
            t.total,
        )

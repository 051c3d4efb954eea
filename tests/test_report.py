"""Reporter against a real Prometheus holding a backfilled month of known data (report_scenario).

Every expected amount below was worked out by hand from the scenario's docstring; the arithmetic
is in the comments. Money is compared as exact strings.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import pytest
import report_scenario as sc

from exporter import contract
from exporter.config import ConfigError, parse_config
from exporter.report.inputs import gather_prometheus
from exporter.report.methods import MethodError, allocate
from exporter.report.period import parse_period
from exporter.report.promql import PromClient, Restart, delta_from_samples, exact_deltas
from exporter.report.statement import Statement, build_statement
from exporter.stack import ManagedProcess


@pytest.fixture(scope="module")
def prom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    work = tmp_path_factory.mktemp("report-prom")
    with sc.scenario_prometheus(work) as p:
        yield p


def make_cfg(prom: ManagedProcess, **kw: str):  # type: ignore[no-untyped-def]
    return parse_config(sc.config_text(prom.url or "", **kw), "chargeback.yaml")


@pytest.fixture(scope="module")
def inputs(prom: ManagedProcess):  # type: ignore[no-untyped-def]
    cfg = make_cfg(prom)
    period = parse_period("2026-10", cfg.timezone)
    return gather_prometheus(cfg, PromClient(prom.url or ""), period)


def statement(prom: ManagedProcess, inputs, method: str, idle: str = "spread") -> Statement:  # type: ignore[no-untyped-def]
    cfg = make_cfg(prom, method=method, idle=idle)
    return build_statement(cfg, inputs, allocate(inputs, cfg))


def charges(st: Statement) -> dict[tuple[str, str, str, str], str]:
    """(team, kind, user|pool, model) → charge text, for every line of every statement."""
    out = {}
    for t in [*st.teams, st.central]:
        for line in t.lines:
            out[(t.team, line.kind, line.user or line.pool, line.model)] = st.money(line.charge)
    return out


def totals(st: Statement) -> dict[str, str]:
    return {t.team: st.money(t.total) for t in [*st.teams, st.central]}


def assert_reconciles(st: Statement) -> None:
    """Lines sum to team totals; team totals + central IT sum to the total pool cost."""
    for t in [*st.teams, st.central]:
        assert sum((line.charge for line in t.lines), Decimal(0)) == t.total, t.team
    assert sum((t.total for t in st.teams), Decimal(0)) + st.central.total == st.total_pool_cost
    assert st.total_pool_cost == sum((p.cost for p in st.pools), Decimal(0))
    for t in [*st.teams, st.central]:
        for line in t.lines:
            assert line.charge == line.charge.quantize(Decimal("0.01"))
    # per pool too: what the teams pay on a pool is its recovered amount, and under a method that
    # recovers everything that is the pool's cost, to the cent
    for p in st.pools:
        on_pool = [line.charge for t in st.teams for line in t.lines if line.pool == p.name]
        assert sum(on_pool, Decimal(0)) == p.recovered, p.name
        if st.unrecovered == 0 and not st.central.lines:
            assert p.recovered == p.cost, p.name
    # methods that share out pool cost (every line names its pool): recovered + central IT = cost
    if all(line.pool for t in [*st.teams, st.central] for line in t.lines):
        for p in st.pools:
            central = sum((line.charge for line in st.central.lines if line.pool == p.name), Decimal(0))
            assert p.recovered + central == p.cost, p.name


# --------------------------------------------------------------------------- inputs


def test_period_boundaries_in_berlin() -> None:
    p = parse_period("2026-10", "Europe/Berlin")
    assert p.start_ts == sc.PERIOD_START  # 2026-09-30T22:00Z (CEST, UTC+2)
    assert p.end_ts == sc.PERIOD_END  # 2026-10-31T23:00Z (CET, UTC+1 after 25 October)
    assert p.seconds == 2_682_000  # 31 × 86400 + 3600
    # relative periods take the instant they are relative to; never the test machine's date
    assert (
        parse_period("last-month", "Europe/Berlin", now=datetime(2026, 11, 29, tzinfo=UTC)).label == "2026-10"
    )
    # 00:30 on 1 November in Berlin is still 31 October in UTC: the billing zone decides
    assert (
        parse_period("last-month", "Europe/Berlin", now=datetime(2026, 10, 31, 23, 30, tzinfo=UTC)).label
        == "2026-10"
    )


def test_exact_quantities_replicas_resets_gaps_and_unknown_team(inputs) -> None:  # type: ignore[no-untyped-def]
    got = sc.usage_figures(inputs.usage)
    assert got == sc.EXPECTED_USAGE
    zed = next(u for u in inputs.usage if u.user == "zed@corp.test")
    assert zed.source_teams == ("ghost",)
    assert any("'ghost'" in n and "unassigned" in n for n in inputs.notes)
    # proxy-a's restart shows as resets (prompt/completion/seconds/requests of ann-a, al, bob-big ...)
    assert inputs.stats["series_with_resets"] > 0
    # bob's m-small series on proxy-b had a 4 h scrape gap across the start: its baseline (70,000
    # prompt tokens from September) came from the long lookback, not from 0.
    assert inputs.stats["series_with_old_baseline"] >= 4


def test_pool_costs_from_gpu_exporter_and_config_fallback(inputs) -> None:  # type: ignore[no-untyped-def]
    big, small = inputs.pools["big"], inputs.pools["small"]
    # 2 GPUs × 745 h present at the exported 2.00/h = 2980. Priced on busy + idle instead it would
    # be 2.00 × (558.75 h + 447 h) = 2011.50: GPU-b0 runs at 50 % and GPU-b1 at 20 % half the time.
    #   GPU-b0: Δobserved 2,682,000 s (exact, across nothing: no restart)
    #   GPU-b1: observed only since its exporter's upgrade on 10-20 (Δ 1,034,100 s = 287.25 h would
    #           give 574.50); estimated as 2980 busy-counter samples in (start, end] × 900 s
    assert (big.cost_source, big.cost, big.gpu_seconds) == (
        "prometheus",
        Decimal("2980"),
        Decimal(2 * 2_682_000),
    )
    # idle: 450 of every 900 s on each GPU = 1,341,000 s each; cost 2.00 × (372.5 h + 372.5 h) = 1490.00
    assert (big.idle_seconds, big.idle_cost, big.busy_cost) == (
        Decimal(2_682_000),
        Decimal(1490),
        Decimal(1490),
    )
    # busy: GPU-b0 225/900 × 2,682,000 = 670,500 s; GPU-b1 90/900 × 2,682,000 = 268,200 s
    assert big.busy_seconds == Decimal(938_700)
    assert any("GPU-b1: presence estimated from 2980 samples × 900" in n for n in inputs.notes)
    assert not any("GPU-b0" in n for n in inputs.notes)
    # no GPU exporter data: 1 GPU × 1.00 × 745 h from the config
    assert (small.cost_source, small.cost, small.idle_known) == ("config", Decimal("745"), False)


def test_utc_month_differs_from_berlin_month(prom) -> None:  # type: ignore[no-untyped-def]
    cfg = make_cfg(prom, timezone="UTC")
    period = parse_period("2026-10", cfg.timezone)
    assert (period.start_ts, period.seconds) == (sc.ts("2026-10-01T00:00"), 744 * 3600)
    got = gather_prometheus(cfg, PromClient(prom.url or ""), period)
    ann = next(u for u in got.usage if u.user == "ann@corp.test")
    # UTC October: proxy-a 500k (10-15) + 200k (10-31T22:45) + 400k (10-31T23:15) + proxy-b 400k
    assert ann.prompt_tokens == 1_500_000
    assert ann.weighted_tokens == Decimal(1_500_000 + 3 * 300_000)
    # 2 GPUs × 744 h × 2.00
    assert got.pools["big"].cost == Decimal("2976")


def test_exact_delta_function_and_counter_reset() -> None:
    # baseline 10, then 15, 20, restart → 3, 8: (15-10)+(20-15)+3+(8-3) = 18
    samples = [(1.0, Decimal(15)), (2.0, Decimal(20)), (3.0, Decimal(3)), (4.0, Decimal(8))]
    assert delta_from_samples(Decimal(10), samples) == (Decimal(18), 1)


def test_exact_deltas_per_replica(prom) -> None:  # type: ignore[no-untyped-def]
    client = PromClient(prom.url or "")
    d = exact_deltas(client, contract.PROMPT_TOKENS_TOTAL, sc.PERIOD_START, sc.PERIOD_END, "user")
    per = {(dict(k)["user"], dict(k)["instance"], dict(k)["model"]): v for k, v in d.items()}
    assert per[("ann@corp.test", "proxy-a", "m-big")] == 1_000_000  # across the restart
    assert per[("ann@corp.test", "proxy-b", "m-big")] == 400_000
    assert per[("bob@corp.test", "proxy-a", "m-big")] == 2_000_000  # series born in the period
    assert per[("bob@corp.test", "proxy-b", "m-small")] == 150_000  # gap over the start


@pytest.mark.parametrize(
    "start,end",
    [(sc.PERIOD_START, sc.PERIOD_END), (sc.ts("2026-10-01T00:00"), sc.ts("2026-11-01T00:00"))],
    ids=["berlin", "utc"],
)
def test_exact_deltas_awkward_resets(prom, start: int, end: int) -> None:  # type: ignore[no-untyped-def]
    from exporter.report.promql import DeltaStats

    stats = DeltaStats()
    got = {
        dict(k)["user"]: v
        for k, v in exact_deltas(
            PromClient(prom.url or ""), sc.TEST_COUNTER, start, end, "user", stats=stats
        ).items()
    }
    expected = {case: sc.reference_delta(c, start, end) for case, c in sc.tricky_counters().items()}
    assert got == expected
    # hand check of two cases (Berlin): two-resets = 1000 + 500 + 300; many = Σ_{i=0..29} (10 + i) = 735
    if start == sc.PERIOD_START:
        assert (got["two-resets"], got["many"], got["pre-window"], got["gap-restart"]) == (1800, 735, 20, 30)
    assert stats.splits > 0  # "ambiguous" and "many" needed splitting
    assert stats.raw_fetched <= 2  # almost nothing fetched sample by sample


@pytest.mark.parametrize(
    "start,end",
    [(sc.PERIOD_START, sc.PERIOD_END), (sc.ts("2026-10-01T00:00"), sc.ts("2026-11-01T00:00"))],
    ids=["berlin", "utc"],
)
def test_exact_deltas_awkward_resets_from_process_restarts(prom, start: int, end: int) -> None:  # type: ignore[no-untyped-def]
    """The same awkward counters, each on a target exporting process_start_time_seconds: resets
    are located from the process restarts instead of scanning the counters."""
    from exporter.report.promql import DeltaStats

    stats = DeltaStats()
    deltas = exact_deltas(PromClient(prom.url or ""), sc.TEST_COUNTER_P, start, end, "user", stats=stats)
    got = {dict(k)["user"]: v for k, v in deltas.items()}
    # a restart after which the counter is at once higher than before it: 100 + 500, not 500 − 100
    assert got.pop("rise") == 600
    assert got == {case: sc.reference_delta(c, start, end) for case, c in sc.tricky_counters().items()}
    if start == sc.PERIOD_START:
        assert (got["two-resets"], got["many"], got["pre-window"], got["gap-restart"]) == (1800, 735, 20, 30)
    # gap-restart has no sample in the hour before the start: scanned; the other seven need no scan
    assert (stats.by_restarts, stats.scanned, stats.splits, stats.raw_fetched) == (7, 1, 0, 0)


def test_exact_deltas_use_process_restarts_for_the_proxies(prom) -> None:  # type: ignore[no-untyped-def]
    from exporter.report.promql import DeltaStats, process_restarts

    a = sc.PERIOD_START * 1000 - 7_200_000
    targets = process_restarts(PromClient(prom.url or ""), ["proxy-a", "proxy-b"], a, sc.PERIOD_END * 1000)
    restart = sc.RESTART_A * 1000
    assert targets == {
        (("instance", "proxy-a"), ("job", "chargeback-proxy")): [Restart(restart - 900_000, restart)],
        (("instance", "proxy-b"), ("job", "chargeback-proxy")): [],
    }
    stats = DeltaStats()
    d = exact_deltas(
        PromClient(prom.url or ""),
        contract.PROMPT_TOKENS_TOTAL,
        sc.PERIOD_START,
        sc.PERIOD_END,
        "user",
        stats=stats,
    )
    assert sum(d.values()) == 1_400_000 + 600_000 + 2_000_000 + 150_000 + 100_000
    # bob's m-small series on proxy-b (gap across the start) is scanned; the other five are not:
    # four on the restarted proxy-a (ann, al, bob's m-big, zed) and ann's on proxy-b.
    # zed's series stopped on 10-14 (not in the period's last hour): looked up over the period.
    assert (stats.by_restarts, stats.restarted, stats.scanned, stats.stopped) == (5, 4, 1, 1)


# --------------------------------------------------------------------------- the six methods


def test_token_share(prom, inputs) -> None:  # type: ignore[no-untyped-def]
    st = statement(prom, inputs, "token-share")
    # big 2980 by weighted tokens (ann 2.3M, bob 3.5M of 5.8M); small 745 (al 750k, bob 250k, zed 100k of 1.1M)
    #   ann   2980 × 2.3/5.8   = 1181.724137…   bob-big   2980 × 3.5/5.8 = 1798.275862…
    #   al    745 × 750/1100   =  507.954545…   bob-small 745 × 250/1100 =  169.318181…
    #   zed   745 × 100/1100   =   67.727272…
    # teams: alpha 1689.678683…, beta 1967.594043…, unassigned 67.727272…  (sum 3725)
    # floors 1689.67 + 1967.59 + 67.72 = 3724.98 → 2 cents to the largest remainders: alpha (.868), unassigned (.727)
    assert totals(st) == {
        "alpha": "1689.68",
        "beta": "1967.59",
        "gamma": "0.00",
        "unassigned": "67.73",
        "central-it": "0.00",
    }
    # Lines are rounded by pool and by team at once. Remainders in cents:
    #   big:   ann .41, bob .59; floors 2979.99 → 1 cent     small: al .45, bob .82, zed .73; floors 744.98 → 2
    #   teams: alpha 1 cent, beta 1, unassigned 1 (the totals above)
    # big's cent goes to bob (.59 > .41); beta has its cent then, so small's two go to the largest
    # remainders whose teams still need one: zed (.73) and al (.45).
    # Before per-pool rounding (per team only) beta's lines were 1798.27 + 169.32 and the pools
    # recovered 2979.99 (big) and 745.01 (small) of their costs 2980.00 and 745.00.
    assert charges(st) == {
        ("alpha", "usage", "al@corp.test", "m-small"): "507.96",
        ("alpha", "usage", "ann@corp.test", "m-big"): "1181.72",
        ("beta", "usage", "bob@corp.test", "m-big"): "1798.28",
        ("beta", "usage", "bob@corp.test", "m-small"): "169.31",
        ("unassigned", "usage", "zed@corp.test", "m-small"): "67.73",
    }
    assert {p.name: (st.money(p.cost), st.money(p.recovered)) for p in st.pools} == {
        "big": ("2980.00", "2980.00"),
        "small": ("745.00", "745.00"),
    }
    assert_reconciles(st)
    assert (st.money(st.total_pool_cost), st.money(st.recovered), st.money(st.unrecovered)) == (
        "3725.00",
        "3725.00",
        "0.00",
    )
    # spread: alpha's idle share = 1490.00 × 2.3/5.8 = 590.862068… → 590.86
    assert st.money(st.team("alpha").idle_share) == "590.86"
    # budgets: alpha 1689.68 / 3000 = 56.3 %, beta 1967.59 / 1000 = 196.8 %
    assert (str(st.team("alpha").budget_used_percent), str(st.team("beta").budget_used_percent)) == (
        "56.3",
        "196.8",
    )


TEAMS = ("alpha", "beta", "gamma", "unassigned", "central-it")


@dataclass(frozen=True)
class MethodCase:
    """One method's statement of the scenario month: every team's total and chosen lines."""

    method: str
    totals: tuple[str, str, str, str, str]  # in TEAMS order
    lines: dict[tuple[str, str, str, str], str]  # (team, kind, user|pool, model) → charge
    idle: str = "spread"


METHOD_CASES = {
    "token-share, idle absorbed": MethodCase(
        # big busy cost 2980 − 1490 = 1490 by tokens: ann 1490 × 2.3/5.8 = 590.862068…, bob 1490 × 3.5/5.8 = 899.137931…
        # small unchanged (idle unknown): al 507.954545…, bob 169.318181…, zed 67.727272…
        # alpha 1098.816613…, beta 1068.456112…, unassigned 67.727272… (sum 2235.00 = 1490 + 745)
        # floors 1098.81 + 1068.45 + 67.72 = 2234.98 → 2 cents to unassigned (.727) and alpha (.661) before beta (.611)
        "token-share",
        ("1098.82", "1068.45", "0.00", "67.73", "1490.00"),
        {("central-it", "idle-absorbed", "big", ""): "1490.00"},
        idle="absorb",
    ),
    "token-share, idle even": MethodCase(
        # idle 1490.00 split between the two teams using pool big: 745.00 each
        # alpha 1098.816613 + 745 = 1843.816613…, beta 1068.456112 + 745 = 1813.456112…, unassigned 67.727272…
        # floors 1843.81 + 1813.45 + 67.72 = 3724.98 → 2 cents to unassigned (.727) and alpha (.661)
        "token-share",
        ("1843.82", "1813.45", "0.00", "67.73", "0.00"),
        {("alpha", "idle-share", "big", ""): "745.00"},
        idle="even",
    ),
    "time-based": MethodCase(
        # big by request seconds (ann 1500, bob 3000 of 4500): ann 993.333…, bob 1986.666…
        # small (al 1500, bob 250, zed 250 of 2000): al 558.75, bob 93.125, zed 93.125
        # alpha 1552.083…, beta 2079.791…, unassigned 93.125; floors 1552.08+2079.79+93.12 = 3724.99
        # → 1 cent to unassigned (.5 > .333 > .166)
        "time-based",
        ("1552.08", "2079.79", "0.00", "93.13", "0.00"),
        # beta lines: floors 1986.66 + 93.12 = 2079.78 → 1 cent to bob-m-big (.666 > .5)
        {
            ("beta", "usage", "bob@corp.test", "m-big"): "1986.67",
            ("beta", "usage", "bob@corp.test", "m-small"): "93.12",
        },
    ),
    "proxy-price-per-token": MethodCase(
        # price_big = 2980 / (4 tok/s × 2,682,000 s) = 1/3600 per token; price_small = 745 / (1 × 2,682,000) = 1/3600
        # alpha (2.3M + 0.75M)/3600 = 847.222…, beta 3.75M/3600 = 1041.666…, unassigned 0.1M/3600 = 27.777…
        # recovered exact 6.9M/3600 = 1916.666… → 1916.67: floors 847.22+1041.66+27.77 = 1916.65,
        # 2 cents to unassigned (.777) and beta (.666)
        "proxy-price-per-token",
        ("847.22", "1041.67", "0.00", "27.78", "1808.33"),
        # unrecovered: big 2980 − 5.8M/3600 = 1368.888…, small 745 − 1.1M/3600 = 439.444… (sum 1808.33)
        {
            ("central-it", "unrecovered", "big", ""): "1368.89",
            ("central-it", "unrecovered", "small", ""): "439.44",
        },
    ),
    "hybrid": MethodCase(
        # weights: token_share 0.5, fixed_share 0.3 (alpha 0.6, beta 0.4), equal_split 0.2
        # token half:   ann 590.862068…, al 253.977272…, bob-big 899.137931…, bob-small 84.659090…, zed 33.863636…
        # fixed 0.3:    big 894 → alpha 536.40, beta 357.60;  small 223.5 → alpha 134.10, beta 89.40
        # equal 0.2:    big 596 / 2 teams = 298 each; small 149 / 3 teams = 49.666… each
        # alpha = 590.862068 + 253.977272 + 536.40 + 134.10 + 298 + 49.666666 = 1863.006008…
        # beta  = 899.137931 + 84.659090 + 357.60 + 89.40 + 298 + 49.666666 = 1778.463688…
        # unassigned = 33.863636 + 49.666666 = 83.530303…  (sum 3725.00)
        # floors 1863.00 + 1778.46 + 83.53 = 3724.99 → 1 cent to the largest remainder in cents:
        # alpha 0.60 (…3.0060) > beta 0.37 (…8.4637) > unassigned 0.03 (…3.5303)
        "hybrid",
        ("1863.01", "1778.46", "0.00", "83.53", "0.00"),
        {("alpha", "fixed-share", "big", ""): "536.40", ("beta", "equal-split", "big", ""): "298.00"},
    ),
    "tiered": MethodCase(
        # tiers: ≤1M at 100/M, ≤3M at 50/M, beyond at 20/M (marginal)
        # alpha 3.05M: 1M×100 + 2M×50 + 0.05M×20 = 100 + 100 + 1 = 201.00
        #   lines by tokens: ann 201 × 2.3/3.05 = 151.573770…, al 201 × 0.75/3.05 = 49.426229…
        # beta 3.75M: 100 + 100 + 0.75M×20 = 215.00; bob-big 215 × 3.5/3.75 = 200.666…, bob-small 14.333…
        # unassigned 0.1M × 100 = 10.00; central: 3725 − 426 = 3299.00
        "tiered",
        ("201.00", "215.00", "0.00", "10.00", "3299.00"),
        {
            ("alpha", "usage", "ann@corp.test", "m-big"): "151.57",
            ("alpha", "usage", "al@corp.test", "m-small"): "49.43",
            ("beta", "usage", "bob@corp.test", "m-big"): "200.67",
            ("beta", "usage", "bob@corp.test", "m-small"): "14.33",
        },
    ),
    "flat-fee-with-overages": MethodCase(
        # alpha: own plan 500 incl. 5M; 3.05M used → 500.00, no overage
        # beta: default 100 incl. 1M; 3.75M → overage 2.75M × 10/M = 27.50 → 127.50
        #   overage by tokens: bob-big 27.5 × 3.5/3.75 = 25.666…, bob-small 1.833…
        # gamma: no usage, still pays its fee: 100.00; unassigned (default plan): 100.00 (0.1M < 1M)
        # central: 3725 − 827.50 = 2897.50
        "flat-fee-with-overages",
        ("500.00", "127.50", "100.00", "100.00", "2897.50"),
        {
            ("beta", "usage", "bob@corp.test", "m-big"): "25.67",
            ("beta", "usage", "bob@corp.test", "m-small"): "1.83",
            ("alpha", "monthly-fee", "", ""): "500.00",
        },
    ),
}


@pytest.mark.parametrize("case", list(METHOD_CASES))
def test_method_statement(prom, inputs, case: str) -> None:  # type: ignore[no-untyped-def]
    m = METHOD_CASES[case]
    st = statement(prom, inputs, m.method, idle=m.idle)
    assert totals(st) == dict(zip(TEAMS, m.totals, strict=True))
    c = charges(st)
    assert {k: c[k] for k in m.lines} == m.lines
    assert_reconciles(st)


def test_proxy_price_per_token_price(prom, inputs) -> None:  # type: ignore[no-untyped-def]
    st = statement(prom, inputs, "proxy-price-per-token")
    # price_big = 2980 / (4 tok/s × 2,682,000 s) = 1/3600 per token
    assert st.params["prices"]["big"]["price_per_million_tokens"].startswith("277.7777")


# --------------------------------------------------------------------------- faults and config


def test_empty_period_gives_zero_line_statements(prom) -> None:  # type: ignore[no-untyped-def]
    cfg = make_cfg(prom)
    period = parse_period(None, cfg.timezone, start="2026-06-01", end="2026-06-02")  # before any data
    got = gather_prometheus(cfg, PromClient(prom.url or ""), period)
    assert got.usage == []
    st = build_statement(cfg, got, allocate(got, cfg))
    assert all(t.lines == [] and t.total == 0 for t in st.teams)
    # nobody used the pools: their (config) cost stays with central IT: big 2 × 2.50 × 24 h, small 24 h × 1.00
    assert totals(st)["central-it"] == "144.00"
    assert_reconciles(st)


def test_bad_method_parameters_are_config_errors(prom) -> None:  # type: ignore[no-untyped-def]
    text = sc.config_text(prom.url or "")
    with pytest.raises(ConfigError, match=r"report.hybrid.weights: weights must sum to 1"):
        parse_config(text.replace("equal_split: 0.2", "equal_split: 0.3"), "chargeback.yaml")
    with pytest.raises(ConfigError, match=r"report.tiers\[1\].up_to_tokens: tiers out of order"):
        parse_config(text.replace("up_to_tokens: 3000000", "up_to_tokens: 500000"), "chargeback.yaml")


def test_method_without_its_required_key(prom, inputs) -> None:  # type: ignore[no-untyped-def]
    # --method can name a method whose key the config lacks (the config only checks report.method)
    text = sc.config_text(prom.url or "")
    start, end = text.index("  tiers:\n"), text.index("  flat_fee:\n")
    cfg = parse_config(text[:start] + text[end:], "chargeback.yaml")
    with pytest.raises(MethodError, match=r"^chargeback.yaml: report.tiers: required by method tiered$"):
        allocate(inputs, cfg, "tiered")
    start, end = text.index("  flat_fee:\n"), text.index("smtp:\n")
    cfg = parse_config(text[:start] + text[end:], "chargeback.yaml")
    with pytest.raises(
        MethodError, match=r"^chargeback.yaml: report.flat_fee: required by method flat-fee-with-overages$"
    ):
        allocate(inputs, cfg, "flat-fee-with-overages")


def test_same_inputs_byte_identical(prom, inputs) -> None:  # type: ignore[no-untyped-def]
    from exporter.report.render_json import render_json

    a = render_json(statement(prom, inputs, "hybrid"))
    cfg = make_cfg(prom)
    again = gather_prometheus(cfg, PromClient(prom.url or ""), parse_period("2026-10", cfg.timezone))
    b = render_json(statement(prom, again, "hybrid"))
    assert a == b
    assert json.loads(a)["summary"]["total_pool_cost"] == "3725.00"

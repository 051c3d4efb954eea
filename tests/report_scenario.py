"""A month of known usage for the reporter's tests (October 2026, billed in Europe/Berlin).

Billing period (Europe/Berlin): 2026-09-30T22:00Z .. 2026-10-31T23:00Z = 31 days + 1 hour
(daylight saving time ends on 25 October) = 2,682,000 s = 745 h.

Samples every 15 minutes from 2026-09-29T00:00Z to 2026-11-02T00:00Z. Proxy replica "proxy-a"
restarts at 2026-10-15T12:15Z (every counter it exports drops to 0); replica "proxy-b" has a scrape
gap across the period start (2026-09-30T20:15Z .. 2026-10-01T02:00Z).

Billed quantities in the Berlin October (per user × model, replicas summed):

  user  team   model    requests  prompt     completion  cached   seconds  weighted
  ann   alpha  m-big    155       1,400,000  300,000     100,000  1500     2,300,000  (1/3 weights)
  al    alpha  m-small   80         600,000  150,000           0  1500       750,000
  bob   beta   m-big    200       2,000,000  500,000           0  3000     3,500,000
  bob   beta   m-small   20         150,000  100,000           0   250       250,000
  zed   ghost  m-small   10         100,000        0           0   250       100,000  (ghost → unassigned)

Pools: big = 2 GPUs exported at 2.00/h (config says 2.50/h: Prometheus wins) present all 745 h.
Cost is priced on seconds present, not busy + idle:
  GPU-b0: Δobserved = 2,682,000 s (745 h) → 1490.00   (busy 225 + idle 450 of every 900 s:
          busy + idle = 558.75 h would give 1117.50)
  GPU-b1: observed counter only from its exporter's restart on 10-20 (Δ would be 287.25 h), so
          presence = 2980 busy-counter samples in (start, end] × 900 s step = 745 h → 1490.00
          (busy 90 + idle 450 of 900 s: busy + idle = 447 h would give 894.00)
→ C_big = 2980.00. Idle: each GPU 450 of every 900 s = 372.5 h → idle cost 2.00 × 745 h = 1490.00,
busy cost 1490.00; busy seconds 670,500 + 268,200 = 938,700. small = no GPU exporter data →
config: 1 GPU × 1.00/h × 745 h = 745.00. Total pool cost 3725.00.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path

from support.prom_history import Counter, Series, grid, prometheus_with, ts

from exporter import contract
from exporter.report.inputs import Usage
from exporter.stack import ManagedProcess, chargeback_argv

T0 = ts("2026-09-29T00:00")
T1 = ts("2026-11-02T00:00")
STEP = 900
GRID = grid(T0, T1, STEP)
RESTART_A = ts("2026-10-15T12:15")
IDLE_PER_STEP = 450  # both GPUs: seconds at 0 % utilisation in every 900 s step
GAP_B = (ts("2026-09-30T20:15"), ts("2026-10-01T02:00"))

PERIOD_START = ts("2026-09-30T22:00")
PERIOD_END = ts("2026-10-31T23:00")

CONFIG = """
currency: EUR
currency_minor_units: 2
timezone: {timezone}
pools:
  big: {{gpu_hourly_cost: 2.50, gpus: 2, capacity_tokens_per_second: 4}}
  small: {{gpu_hourly_cost: 1.00, gpus: 1, capacity_tokens_per_second: 1}}
models:
  m-big: {{upstreams: [http://127.0.0.1:1/v1], pool: big, token_weights: {{prompt: 1, completion: 3}}}}
  m-small: {{upstreams: [http://127.0.0.1:1/v1], pool: small}}
teams:
  alpha: {{business_unit: R&D, cost_center: CC-1, budget: 3000, billing_contacts: [alpha-lead@corp.test]}}
  beta: {{business_unit: Ops, cost_center: CC-2, budget: 1000, billing_contacts: [b1@corp.test, b2@corp.test]}}
  gamma: {{business_unit: Sales, cost_center: CC-3, billing_contacts: [gamma@corp.test]}}
users:
  ann@corp.test: alpha
  al@corp.test: alpha
  bob@corp.test: beta
prometheus:
  url: {prom_url}
  timeout_seconds: 20
report:
  method: {method}
  idle_handling: {idle}
  output_dir: {out}
  finance_recipients: [finops@corp.test]
  hybrid:
    weights: {{token_share: 0.5, fixed_share: 0.3, equal_split: 0.2}}
    fixed_shares: {{alpha: 0.6, beta: 0.4}}
  tiers:
    - {{up_to_tokens: 1000000, price_per_million: 100}}
    - {{up_to_tokens: 3000000, price_per_million: 50}}
    - {{price_per_million: 20}}
  flat_fee:
    default: {{monthly_fee: 100, included_tokens: 1000000, overage_per_million: 10}}
    teams:
      alpha: {{monthly_fee: 500, included_tokens: 5000000, overage_per_million: 5}}
smtp:
  host: 127.0.0.1
  port: {smtp_port}
  from: chargeback@corp.test
ledger:
  url: {ledger_url}
"""


def config_text(
    prom_url: str,
    method: str = "token-share",
    idle: str = "spread",
    timezone: str = "Europe/Berlin",
    out: str = "statements",
    smtp_port: int = 25,
    ledger_url: str = "sqlite:///ledger.db",
) -> str:
    return CONFIG.format(
        prom_url=prom_url,
        method=method,
        idle=idle,
        timezone=timezone,
        out=out,
        smtp_port=smtp_port,
        ledger_url=ledger_url,
    )


def _proxy(user: str, team: str, model: str, instance: str) -> dict[str, str]:
    return {"user": user, "team": team, "model": model, "instance": instance, "job": "chargeback-proxy"}


def usage_counters() -> list[tuple[dict[str, str], str, Counter]]:
    """(labels, metric, counter) for every proxy series."""
    out: list[tuple[dict[str, str], str, Counter]] = []

    def series(labels: dict[str, str], **metrics: Counter) -> None:
        restarts = [RESTART_A] if labels["instance"] == "proxy-a" else []
        names = {
            "prompt": contract.PROMPT_TOKENS_TOTAL,
            "completion": contract.COMPLETION_TOKENS_TOTAL,
            "cached": contract.CACHED_PROMPT_TOKENS_TOTAL,
            "seconds": contract.REQUEST_SECONDS_TOTAL,
        }
        for key, counter in metrics.items():
            counter.restarts = restarts
            # requests by code on the per-user counter: the shape before chargeback_requests_by_code_total,
            # which a month spanning an upgrade still holds; the reporter adds the codes up
            if key.startswith("requests_"):
                out.append(
                    ({**labels, "code": key.removeprefix("requests_")}, contract.REQUESTS_TOTAL, counter)
                )
            else:
                out.append((labels, names[key], counter))

    # ann @ proxy-a: prompt 1,000,000 in the Berlin October (300k + 500k + 200k). The 500k on
    # 09-30T21:45Z is September in Berlin; the 400k on 10-31T23:15Z is November in Berlin
    # (but October in UTC, where the 300k on 09-30T22:15Z is September).
    a = _proxy("ann@corp.test", "alpha", "m-big", "proxy-a")
    series(
        a,
        prompt=Counter()
        .add(ts("2026-09-30T21:45"), 500_000)
        .add(ts("2026-09-30T22:15"), 300_000)
        .add(ts("2026-10-15T06:00"), 500_000)
        .add(ts("2026-10-31T22:45"), 200_000)
        .add(ts("2026-10-31T23:15"), 400_000),
        completion=Counter().add(ts("2026-10-02T10:00"), 150_000).add(ts("2026-10-20T10:00"), 50_000),
        cached=Counter().add(ts("2026-10-02T10:00"), 100_000),
        seconds=Counter().add(ts("2026-10-02T10:00"), "600.5").add(ts("2026-10-20T10:00"), "399.5"),
        requests_200=Counter().add(ts("2026-10-02T10:00"), 60).add(ts("2026-10-20T10:00"), 40),
        requests_500=Counter().add(ts("2026-10-05T00:00"), 5),
    )
    # ann @ proxy-b (second replica)
    b = _proxy("ann@corp.test", "alpha", "m-big", "proxy-b")
    series(
        b,
        prompt=Counter().add(ts("2026-10-10T10:00"), 400_000),
        completion=Counter().add(ts("2026-10-10T10:00"), 100_000),
        seconds=Counter().add(ts("2026-10-10T10:00"), 500),
        requests_200=Counter().add(ts("2026-10-10T10:00"), 50),
    )
    # al @ proxy-a: 400k before the restart, 200k after → 600k
    series(
        _proxy("al@corp.test", "alpha", "m-small", "proxy-a"),
        prompt=Counter().add(ts("2026-10-05T00:00"), 400_000).add(ts("2026-10-25T00:00"), 200_000),
        completion=Counter().add(ts("2026-10-05T00:00"), 100_000).add(ts("2026-10-25T00:00"), 50_000),
        seconds=Counter().add(ts("2026-10-05T00:00"), 1000).add(ts("2026-10-25T00:00"), 500),
        requests_200=Counter().add(ts("2026-10-05T00:00"), 50).add(ts("2026-10-25T00:00"), 30),
    )
    # bob @ proxy-a on m-big: a series created inside the period (first sample already 100k)
    first = ts("2026-10-10T00:00")
    series(
        _proxy("bob@corp.test", "beta", "m-big", "proxy-a"),
        prompt=Counter(first=first).add(first, 100_000).add(ts("2026-10-12T00:00"), 1_900_000),
        completion=Counter(first=first).add(ts("2026-10-12T00:00"), 500_000),
        seconds=Counter(first=first).add(ts("2026-10-12T00:00"), 3000),
        requests_200=Counter(first=first).add(first, 10).add(ts("2026-10-12T00:00"), 190),
    )
    # bob @ proxy-b on m-small: September usage, then a scrape gap across the period start
    gap = [GAP_B]
    series(
        _proxy("bob@corp.test", "beta", "m-small", "proxy-b"),
        prompt=Counter(gaps=gap).add(ts("2026-09-29T12:00"), 70_000).add(ts("2026-10-03T00:00"), 150_000),
        completion=Counter(gaps=gap).add(ts("2026-09-29T12:00"), 30_000).add(ts("2026-10-03T00:00"), 100_000),
        seconds=Counter(gaps=gap).add(ts("2026-09-29T12:00"), 100).add(ts("2026-10-03T00:00"), 250),
        requests_200=Counter(gaps=gap).add(ts("2026-09-29T12:00"), 7).add(ts("2026-10-03T00:00"), 20),
    )
    # zed of team "ghost" (not in the config) @ proxy-a; the series stops on 10-14
    last = ts("2026-10-14T00:00")
    series(
        _proxy("zed@corp.test", "ghost", "m-small", "proxy-a"),
        prompt=Counter(last=last).add(ts("2026-10-08T00:00"), 100_000),
        seconds=Counter(last=last).add(ts("2026-10-08T00:00"), 250),
        requests_200=Counter(last=last).add(ts("2026-10-08T00:00"), 10),
    )
    return out


def gpu_series() -> list[Series]:
    """Pool big, two GPUs present all month (observed 900 s of every 900 s step):

    - GPU-b0: per step 450 s at 0 % (idle) and 450 s at 50 % → busy 225 s, idle 450 s: busy + idle
      is 675 s of the 900 s it was present, so pricing busy + idle would under-state its cost;
    - GPU-b1: per step 450 s idle and 450 s at 20 % → busy 90 s, idle 450 s. Its exporter restarts
      on 10-20 as a new version: only from then on does it export the observed-seconds counter
      (an exporter predating it before), so its presence is estimated from its sample count.
    """
    out: list[Series] = []
    restart = ts("2026-10-20T00:00")
    for uuid, busy_per_step, restarts, observed_from in (
        ("GPU-b0", 225, [], T0),
        ("GPU-b1", 90, [restart], restart),
    ):
        labels = {"uuid": uuid, "instance": "gpu-node", "job": "chargeback-gpu-exporter"}
        busy, idle, observed = [], [], []
        for t in GRID:
            # A restarted exporter counts from 0 again, including the interval since its last scrape.
            since = max([r for r in restarts if r <= t], default=T0 + STEP)
            steps = (t - since) // STEP + 1
            busy.append((t, busy_per_step * steps))
            idle.append((t, IDLE_PER_STEP * steps))
            if t >= observed_from:
                observed.append((t, STEP * steps))
        out.append(Series(contract.GPU_BUSY_SECONDS_TOTAL, labels, busy))
        out.append(Series(contract.GPU_IDLE_SECONDS_TOTAL, labels, idle))
        out.append(Series(contract.GPU_OBSERVED_SECONDS_TOTAL, labels, observed))
        out.append(Series(contract.GPU_HOURLY_COST, {**labels, "pool": "big"}, [(t, "2") for t in GRID]))
        out.append(
            Series(
                contract.GPU_INFO,
                {**labels, "pool": "big", "index": uuid[-1], "name": "NVIDIA H100"},
                [(t, 1) for t in GRID],
            )
        )
    return out


TEST_COUNTER = "test_counter_total"


def tricky_counters() -> dict[str, Counter]:
    """Counters with awkward resets for the exact-delta algorithm (metric test_counter_total,
    label user=<case>); the expected deltas come from a sample-by-sample reference."""
    t = ts
    every_two_days = [t("2026-10-02T00:00") + i * 2 * 86400 for i in range(15)]
    many = Counter(restarts=every_two_days)
    for i in range(30):
        many.add(t("2026-10-01T06:00") + i * 86400, 10 + i)
    return {
        # two restarts in the month
        "two-resets": Counter(restarts=[t("2026-10-05T00:00"), t("2026-10-20T00:00")])
        .add(t("2026-09-29T00:00"), 50).add(t("2026-10-03T00:00"), 1000).add(t("2026-10-06T00:00"), 500)
        .add(t("2026-10-21T00:00"), 300),
        # after the restart the counter grows past its old value within the hour: max == last
        "ambiguous": Counter(restarts=[t("2026-10-10T00:00")]).add(t("2026-09-29T00:00"), 100)
        .add(t("2026-10-10T01:00"), 5000),
        # the first sample of the period is already lower than the last one before it
        "boundary": Counter(restarts=[t("2026-09-30T22:15")]).add(t("2026-09-30T12:00"), 700)
        .add(t("2026-10-02T00:00"), 40),
        # a restart just before the period (inside the 1 h baseline window) must not count
        "pre-window": Counter(restarts=[t("2026-09-30T21:30")]).add(t("2026-09-30T10:00"), 900)
        .add(t("2026-09-30T21:45"), 10).add(t("2026-10-05T00:00"), 20),
        # scrape gap across the start with a restart inside the gap
        "gap-restart": Counter(restarts=[t("2026-09-30T23:00")], gaps=[(t("2026-09-30T18:00"), t("2026-10-01T03:00"))])
        .add(t("2026-09-29T00:00"), 800).add(t("2026-10-01T03:00"), 30),
        # a restart every two days
        "many": many,
        # the restart lands exactly on the period end
        "end-restart": Counter(restarts=[t("2026-10-31T23:00")]).add(t("2026-10-30T00:00"), 77),
    }  # fmt: skip


TEST_COUNTER_P = "test_counter_proc_total"
PROCESS_START = "process_start_time_seconds"
FIRST_PROCESS = ts("2026-09-01T00:00")


def process_start(restarts: list[int], gaps: list[tuple[int, int]] = (), **labels: str) -> Series:  # type: ignore[assignment]
    """A scrape target's ``process_start_time_seconds``: a process started on 09-01, then one started
    5 s before each restart (the sample at the restart time is the new process's first scrape)."""
    samples = []
    for t in GRID:
        if any(a <= t < b for a, b in gaps):
            continue
        since = [r for r in restarts if r <= t]
        samples.append((t, since[-1] - 5 if since else FIRST_PROCESS))
    return Series(PROCESS_START, labels, samples)


def reference_delta(counter: Counter, start: int, end: int) -> Decimal:
    """Sample by sample: from the last sample at or before start (0 if none) to the end."""
    from exporter.report.promql import delta_from_samples

    samples = counter.samples(GRID)
    before = [v for t, v in samples if t <= start]
    return delta_from_samples(
        before[-1] if before else Decimal(0), [(t, v) for t, v in samples if start < t <= end]
    )[0]


def all_series(per_user: bool = True) -> list[Series]:
    """``per_user=False``: the proxies ran with ``proxy.metrics_labels: team`` (no user label; each
    team × model × replica of this scenario has one user, so no two series merge)."""
    series = [
        Series(
            metric,
            labels if per_user else {k: v for k, v in labels.items() if k != "user"},
            counter.samples(GRID),
        )
        for labels, metric, counter in usage_counters()
    ]
    series += [
        Series(TEST_COUNTER, {"user": case, "instance": "x"}, c.samples(GRID))
        for case, c in tricky_counters().items()
    ]
    # The same counters, each scraped from its own target that exports its process start time.
    for case, c in tricky_counters().items():
        series.append(Series(TEST_COUNTER_P, {"user": case, "instance": f"p-{case}"}, c.samples(GRID)))
        series.append(process_start(c.restarts, c.gaps, instance=f"p-{case}"))
    # A restart that no sample shows: 100 before it, already 500 at the new process's first scrape.
    # Its true increase is 100 + 500 = 600; comparing samples (100 → 500) would see only 400.
    rise = (
        Counter(restarts=[ts("2026-10-10T00:00")])
        .add(ts("2026-10-05T00:00"), 100)
        .add(ts("2026-10-10T00:00"), 500)
    )
    series.append(Series(TEST_COUNTER_P, {"user": "rise", "instance": "p-rise"}, rise.samples(GRID)))
    series.append(process_start(rise.restarts, instance="p-rise"))
    series.append(process_start([RESTART_A], instance="proxy-a", job="chargeback-proxy"))
    series.append(process_start([], instance="proxy-b", job="chargeback-proxy"))
    for model, pool in (("m-big", "big"), ("m-small", "small")):
        for inst in ("proxy-a", "proxy-b"):
            labels = {"model": model, "pool": pool, "instance": inst, "job": "chargeback-proxy"}
            series.append(Series(contract.MODEL_INFO, labels, [(t, 1) for t in GRID]))
    return series + gpu_series()


def scenario_prometheus(
    workdir: Path, per_user: bool = True
) -> contextlib.AbstractContextManager[ManagedProcess]:
    """A real Prometheus holding the scenario month (``per_user=False``: as proxies with
    ``metrics_labels: team`` would have written it)."""
    return prometheus_with(workdir, all_series(per_user), "scenario")


# `chargeback report` for the scenario's month from the ledger's quantities
LEDGER_REPORT = ("report", "--period", "2026-10", "--source", "ledger")


def run(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real ``chargeback`` command with ``--config.file config``."""
    return subprocess.run(
        chargeback_argv(*args, "--config.file", str(config)),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def usage_figures(usage: Iterable[Usage]) -> dict[tuple[str, str, str], tuple[object, ...]]:
    """The reporter's usage lines in the shape of EXPECTED_USAGE."""
    return {
        u.key: (
            u.requests,
            u.prompt_tokens,
            u.completion_tokens,
            u.cached_tokens,
            u.request_seconds,
            u.weighted_tokens,
        )
        for u in usage
    }


EXPECTED_USAGE = {
    # (team, user, model): (requests, prompt, completion, cached, seconds, weighted)
    ("alpha", "ann@corp.test", "m-big"): (
        155,
        1_400_000,
        300_000,
        100_000,
        Decimal("1500.000"),
        Decimal(2_300_000),
    ),
    ("alpha", "al@corp.test", "m-small"): (80, 600_000, 150_000, 0, Decimal("1500.000"), Decimal(750_000)),
    ("beta", "bob@corp.test", "m-big"): (200, 2_000_000, 500_000, 0, Decimal("3000.000"), Decimal(3_500_000)),
    ("beta", "bob@corp.test", "m-small"): (20, 150_000, 100_000, 0, Decimal("250.000"), Decimal(250_000)),
    ("unassigned", "zed@corp.test", "m-small"): (10, 100_000, 0, 0, Decimal("250.000"), Decimal(100_000)),
}

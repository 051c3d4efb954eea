"""End to end: the demo stack in test mode, with assertions.

Simulator → proxy (SQLite ledger) → Prometheus with the project's rules (remote-writing to
VictoriaMetrics) → Alertmanager → SMTP sink, plus the GPU exporter with four simulated GPUs.
Ten users in four teams send traffic through the openai SDK; then:

- statement token counts equal what the clients received, the ledger and Prometheus, per user × model;
- amounts equal the token-share formula computed here independently, to the cent;
- research's budget alert went Prometheus → Alertmanager → SMTP to finance;
- the reporter against VictoriaMetrics writes the same statement as against Prometheus.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_FLOOR, ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import pytest

from exporter.demo import (
    BUDGET_ALERT,
    FINANCE,
    MODELS,
    USERS,
    DemoStack,
    demo_stack,
    drive_traffic,
    wait_for_budget_email,
)
from exporter.gpu.simulated import simulated_uuid
from exporter.sim.harness import ledger_rows
from exporter.stack import ManagedProcess, chargeback_argv, prom_query, start_victoria_metrics, wait_for

CENT = Decimal("0.01")
# pool → (GPU indexes, price per GPU-hour). The test runs for seconds, not a month: prices 1000×
# the demo's make every team's share worth several euros, so a wrong cent would show.
POOLS = {"h100": ((0, 1), Decimal("2800")), "l40s": ((2, 3), Decimal("950"))}


@dataclass
class E2E:
    stack: DemoStack
    vm: ManagedProcess
    start: datetime
    end: datetime
    out: Path


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _prom_total(url: str, query: str) -> float:
    res = prom_query(url, query)
    return float(res[0]["value"][1]) if res else -1.0


@pytest.fixture(scope="module")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2E]:
    workdir = tmp_path_factory.mktemp("e2e")
    vm = start_victoria_metrics(workdir / "vm")
    try:
        start = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=5)
        assert vm.url
        with demo_stack(
            workdir / "stack",
            remote_write_url=vm.url + "/api/v1/write",
            budgets={"research": "10"},
            gpu_hourly_costs={p: str(price) for p, (_, price) in POOLS.items()},
        ) as stack:
            drive_traffic(stack, seconds=12)
            assert not stack.traffic.errors, stack.traffic.errors[:5]
            want = stack.traffic.total_for().prompt_tokens
            # every request is scraped (1 s interval) and remote-written before the period ends
            for url in (stack.prometheus_url, vm.url):
                wait_for(
                    lambda u=url: _prom_total(u, "sum(chargeback_prompt_tokens_total)") == want,
                    timeout=60,
                    what=f"all prompt tokens in {url}",
                )
            wait_for_budget_email(stack, timeout=120)
            time.sleep(2)
            end = datetime.now(UTC).replace(microsecond=0)
            time.sleep(3)  # the samples up to `end` reach VictoriaMetrics
            yield E2E(stack, vm, start, end, workdir / "statements")
    finally:
        vm.stop()


def report(e: E2E, url: str, out: Path, *extra: str) -> dict[str, Any]:
    proc = subprocess.run(
        chargeback_argv(
            "report",
            "--config.file",
            str(e.stack.config_path),
            "--from",
            _iso(e.start),
            "--to",
            _iso(e.end),
            "--prometheus.url",
            url,
            "--method",
            "token-share",
            "--format",
            "json,csv,html",
            "--out",
            str(out),
            *extra,
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    files = list(out.glob("*/token-share/statement.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text())


def lines_by_user_model(statement: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for team in statement["teams"]:
        for line in team["lines"]:
            if line["kind"] == "usage":
                out[(line["user"], line["model"])] = line
    return out


def test_statement_tokens_equal_traffic_ledger_and_prometheus(e2e: E2E) -> None:
    st = report(e2e, e2e.stack.prometheus_url, e2e.out / "prom")
    lines = lines_by_user_model(st)
    traffic = e2e.stack.traffic
    assert set(lines) == set(traffic.totals)
    ledger = ledger_rows(e2e.stack.config["ledger"]["url"])
    prom_prompt = {
        (r["metric"]["user"], r["metric"]["model"]): int(float(r["value"][1]))
        for r in prom_query(e2e.stack.prometheus_url, "sum by (user, model) (chargeback_prompt_tokens_total)")
    }
    for (user, model), t in traffic.totals.items():
        line = lines[(user, model)]
        assert (line["requests"], line["prompt_tokens"], line["completion_tokens"]) == (
            t.requests,
            t.prompt_tokens,
            t.completion_tokens,
        ), (user, model)
        rows = [r for r in ledger if r["user_email"] == user and r["model"] == model]
        assert len(rows) == t.requests
        assert sum(r["prompt_tokens"] for r in rows) == t.prompt_tokens
        assert sum(r["completion_tokens"] for r in rows) == t.completion_tokens
        assert prom_prompt[(user, model)] == t.prompt_tokens
        _pool, wp, wc = MODELS[model]
        assert Decimal(line["weighted_tokens"]) == t.prompt_tokens * wp + t.completion_tokens * wc
        assert line["team"] == USERS[user]
    assert sum(len(t["lines"]) for t in st["teams"]) >= len(traffic.totals)


def _delta_from_samples(url: str, metric: str, start: datetime, end: datetime) -> dict[str, Decimal]:
    """Exact per-uuid counter delta over [start, end] from the raw samples (no resets expected)."""
    seconds = int((end - start).total_seconds()) + 1
    res = prom_query(url, f"{metric}[{seconds}s]", at=end.timestamp())
    out = {}
    for series in res:
        values = [Decimal(v) for _, v in series["values"]]  # type: ignore[index]
        assert values == sorted(values), "unexpected counter reset"
        # the series started inside the period: from 0; seconds to the millisecond (docs/reporter.md)
        out[series["metric"]["uuid"]] = values[-1].quantize(Decimal("0.001"))
    return out


def _largest_remainder(amounts: dict[str, Decimal]) -> dict[str, Decimal]:
    target = sum(amounts.values(), Decimal(0)).quantize(CENT, rounding=ROUND_HALF_EVEN)
    floors = {k: v.quantize(CENT, rounding=ROUND_FLOOR) for k, v in amounts.items()}
    extra = int((target - sum(floors.values(), Decimal(0))) / CENT)
    for k in sorted(amounts, key=lambda k: (-(amounts[k] - floors[k]), k))[:extra]:
        floors[k] += CENT
    return floors


def test_amounts_follow_token_share_formula(e2e: E2E) -> None:
    st = report(e2e, e2e.stack.prometheus_url, e2e.out / "prom")
    observed = _delta_from_samples(
        e2e.stack.prometheus_url, "chargeback_gpu_observed_seconds_total", e2e.start, e2e.end
    )
    cost = {
        pool: sum((price * observed[simulated_uuid(i)] / 3600 for i in indexes), Decimal(0))
        for pool, (indexes, price) in POOLS.items()
    }
    weighted: dict[tuple[str, str], Decimal] = {}
    for (user, model), t in e2e.stack.traffic.totals.items():
        pool, wp, wc = MODELS[model]
        key = (USERS[user], pool)
        weighted[key] = weighted.get(key, Decimal(0)) + t.prompt_tokens * wp + t.completion_tokens * wc
    pool_tokens = {p: sum((v for (_, pp), v in weighted.items() if pp == p), Decimal(0)) for p in POOLS}
    exact = {
        team: sum((cost[p] * weighted.get((team, p), Decimal(0)) / pool_tokens[p] for p in POOLS), Decimal(0))
        for team in sorted(set(USERS.values()))
    }
    expected = _largest_remainder(exact)
    got = {t["team"]: Decimal(t["total"]) for t in st["teams"]}
    assert got == expected
    # lines add up to the team totals; team totals to the recovered pool cost
    for t in st["teams"]:
        assert sum(Decimal(line["charge"]) for line in t["lines"]) == Decimal(t["total"])
    assert {p["pool"]: Decimal(p["cost"]) for p in st["pools"]} == _largest_remainder(cost)
    assert Decimal(st["summary"]["recovered"]) + Decimal(st["summary"]["unrecovered"]) == Decimal(
        st["summary"]["total_pool_cost"]
    )
    assert abs(Decimal(st["summary"]["unrecovered"])) <= CENT  # token share recovers everything


def test_budget_alert_delivered_through_alertmanager(e2e: E2E) -> None:
    messages = e2e.stack.smtp.find(BUDGET_ALERT)
    assert messages, [m["Subject"] for m in e2e.stack.smtp.messages]
    msg = messages[0]
    assert msg["To"] == FINANCE
    assert "research" in msg["Subject"]
    firing = prom_query(
        e2e.stack.prometheus_url, f'ALERTS{{alertname="{BUDGET_ALERT}", alertstate="firing"}}'
    )
    assert {r["metric"]["team"] for r in firing} == {"research"}  # the other teams are well inside budget


def test_victoriametrics_gives_the_same_statement(e2e: E2E) -> None:
    prom = report(e2e, e2e.stack.prometheus_url, e2e.out / "prom-again")
    assert e2e.vm.url
    vm = report(e2e, e2e.vm.url, e2e.out / "vm")
    assert vm == prom
    prom_csv = next((e2e.out / "prom-again").glob("*/token-share/lines.csv")).read_bytes()
    vm_csv = next((e2e.out / "vm").glob("*/token-share/lines.csv")).read_bytes()
    assert vm_csv == prom_csv

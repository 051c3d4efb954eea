"""The reporter when the proxies ran with ``proxy.metrics_labels: team``: the report_scenario month
backfilled without the user label into a real Prometheus. Team figures must equal the per-user
scenario's (tests/test_report.py), usage lines carry no user and say so, and the reconciliation
compares per team × model."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import report_scenario as sc

from exporter.config import Config, parse_config
from exporter.report.inputs import NO_USER_LABEL_NOTE, RawUsage, gather_prometheus, statement_team
from exporter.report.methods import allocate
from exporter.report.period import parse_period
from exporter.report.promql import PromClient
from exporter.report.reconcile import reconcile, team_line
from exporter.report.statement import build_statement
from exporter.stack import ManagedProcess, chargeback_argv


@pytest.fixture(scope="module")
def prom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    work = tmp_path_factory.mktemp("report-prom-team")
    with sc.scenario_prometheus(work, per_user=False) as p:
        yield p


def team_cfg_text(prom: ManagedProcess, out: str = "statements") -> str:
    return sc.config_text(prom.url or "", out=out) + "proxy:\n  metrics_labels: team\n"


def team_cfg(prom: ManagedProcess) -> Config:
    return parse_config(team_cfg_text(prom), "chargeback.yaml")


def test_team_mode_statement_has_the_per_user_scenarios_team_totals(prom: ManagedProcess) -> None:
    cfg = team_cfg(prom)
    inputs = gather_prometheus(cfg, PromClient(prom.url or ""), parse_period("2026-10", cfg.timezone))
    got = sc.usage_figures(inputs.usage)
    # the scenario has one user per team × model: the same figures, without the user
    assert got == {(team, "", model): v for (team, _user, model), v in sc.EXPECTED_USAGE.items()}
    assert NO_USER_LABEL_NOTE in inputs.notes
    st = build_statement(cfg, inputs, allocate(inputs, cfg, "token-share"))
    # as in tests/test_report.py::test_token_share
    assert {t.team: st.money(t.total) for t in [*st.teams, st.central]} == {
        "alpha": "1689.68",
        "beta": "1967.59",
        "gamma": "0.00",
        "unassigned": "67.73",
        "central-it": "0.00",
    }
    assert NO_USER_LABEL_NOTE in st.notes
    assert {line.user for t in st.teams for line in t.lines if line.kind == "usage"} == {""}


def test_team_mode_reconciles_per_team_and_model(prom: ManagedProcess) -> None:
    cfg = team_cfg(prom)
    inputs = gather_prometheus(cfg, PromClient(prom.url or ""), parse_period("2026-10", cfg.timezone))
    # what the ledger holds for the month: per user, with the team label the proxy saw
    ledger: dict[tuple[str, str, str], RawUsage] = {}
    for (team, user, model), (requests, prompt, completion, cached, seconds, _w) in sc.EXPECTED_USAGE.items():
        label = "ghost" if team == "unassigned" else team
        ledger[(label, user, model)] = RawUsage(requests, prompt, completion, cached, seconds)
    rec = reconcile(inputs, ledger, lambda t: statement_team(cfg, t))
    assert rec.ok and rec.compared == 5
    assert rec.seconds_prometheus == rec.seconds_ledger == Decimal("6500.000")
    # compared per user, every line would differ: Prometheus has no user
    per_user = reconcile(inputs, ledger)
    assert len(per_user.drifts) == 7  # 5 ledger users + 2 user-less Prometheus lines (one per model)
    assert {d.cause for d in per_user.drifts} == {"only_ledger", "only_prometheus"}
    assert team_line("alpha") == "(all users of team alpha)"


def test_cli_report_from_prometheus_says_lines_are_per_team(prom: ManagedProcess, tmp_path: Path) -> None:
    """`chargeback report` as a command: the statement is written, and stderr says up front that
    Prometheus has no per-user figures in team mode and that --source ledger has them."""
    config = tmp_path / "chargeback.yaml"
    config.write_text(team_cfg_text(prom, str(tmp_path / "out")))
    res = subprocess.run(
        chargeback_argv("report", "--period", "2026-10", "--format", "csv", "--config.file", str(config)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert f"chargeback: warning: {NO_USER_LABEL_NOTE}" in res.stderr
    assert "--source ledger" in res.stderr
    assert f"note: {NO_USER_LABEL_NOTE}" in res.stdout
    assert "alpha 1689.68" in res.stdout

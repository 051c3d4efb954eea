"""The Prometheus rules under rules/: generated file is current, promtool accepts them, and every
recording rule and alert is covered by the promtool unit tests in rules/tests/."""

from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from exporter.stack import find_binary, rule_files

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "rules"
UNIT_TESTS = sorted((RULES / "tests").glob("*.yaml"))

# The names the dashboards and the reporter build on (rules/README.md); more may exist.
CONTRACT_SERIES = [
    "team_model:chargeback_prompt_tokens:rate5m",
    "team_model:chargeback_completion_tokens:rate5m",
    "team_model:chargeback_weighted_tokens:rate5m",
    "user_team_model:chargeback_prompt_tokens:rate5m",
    "user_team_model:chargeback_completion_tokens:rate5m",
    "user_team_model:chargeback_weighted_tokens:rate5m",
    "team_model_code:chargeback_requests:rate5m",
    "team_pool:chargeback_weighted_tokens:rate5m",
    "user_team_pool:chargeback_weighted_tokens:rate5m",
    "pool:chargeback_weighted_tokens:rate5m",
    "team_pool:chargeback_token_share:ratio5m",
    "user_team_pool:chargeback_token_share:ratio5m",
    "pool:chargeback_gpu_hourly_cost:sum",
    "pool:chargeback_gpu_busy:ratio5m",
    "pool:chargeback_gpu_idle:ratio5m",
    "pool:chargeback_idle_cost_per_hour:rate5m",
    "pool:chargeback_price_per_token:ratio",
    "pool:chargeback_capacity_utilization:ratio5m",
    "pool:chargeback_unrecovered_cost_per_hour:rate5m",
    "pool:chargeback_cost_per_million_tokens:ratio5m",
    "team_pool:chargeback_spend_per_hour:rate5m",
    "team:chargeback_spend_per_hour:rate5m",
    "team_pool:chargeback_weighted_tokens:month_to_date",
    "pool:chargeback_weighted_tokens:month_to_date",
    "pool:chargeback_gpu_cost:month_to_date",
    "team_pool:chargeback_token_share:month_to_date",
    "team_pool:chargeback_spend:month_to_date",
    "team:chargeback_spend:month_to_date",
    "team:chargeback_spend_per_hour:month_projection",
    "team:chargeback_spend:month_forecast",
    "team:chargeback_budget_consumption:ratio",
    "team:chargeback_budget_forecast_consumption:ratio",
    "model:chargeback_upstream_errors:ratio5m",
]

ALERTS = [
    "ChargebackTeamBudgetExceeded",
    "ChargebackTeamBudgetForecastExceeded",
    "ChargebackGPUIdleCostHigh",
    "ChargebackProxyDown",
    "ChargebackGPUExporterDown",
    "ChargebackNVMLDown",
    "ChargebackUsageEstimated",
    "ChargebackUpstreamErrorRateHigh",
    "ChargebackLedgerBacklog",
    "ChargebackLedgerDeadLetters",
    "ChargebackLedgerJournalBacklog",
    "ChargebackGPUsUnmapped",
    "ChargebackRuleEvaluationFailures",
    "ChargebackTeamBlocked",
    "ChargebackTeamQuotaExceeded",
    "ChargebackLimitStoreUnreachable",
]


def _generate_module():
    spec = importlib.util.spec_from_file_location("rules_generate", RULES / "generate.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([find_binary("promtool"), *args], capture_output=True, text=True, timeout=240)


def _rules() -> list[dict]:
    out = []
    for path in rule_files():
        for group in yaml.safe_load(path.read_text())["groups"]:
            out.extend(group["rules"])
    return out


def _records() -> list[str]:
    return [r["record"] for r in _rules() if "record" in r]


def _alerts() -> list[dict]:
    return [r for r in _rules() if "alert" in r]


def test_rule_files_are_the_generated_ones():
    gen = _generate_module()
    rendered = gen.render()
    assert sorted(rendered) == sorted(p.name for p in rule_files()), (
        "rules/*.yaml must be exactly the generated files"
    )
    for name, text in rendered.items():
        assert (RULES / name).read_text() == text, f"rules/{name} is stale: run python rules/generate.py"


def test_promtool_check_rules():
    res = _promtool("check", "rules", *map(str, rule_files()))
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("test_file", UNIT_TESTS, ids=lambda p: p.name)
def test_promtool_unit_tests(test_file: Path):
    res = _promtool("test", "rules", str(test_file))
    assert res.returncode == 0, res.stdout + res.stderr


def test_contract_series_are_recorded():
    missing = sorted(set(CONTRACT_SERIES) - set(_records()))
    assert not missing, f"recording rules missing for: {missing}"


def test_record_names_follow_level_metric_operations():
    for name in _records():
        assert re.fullmatch(r"[a-z_]+:[a-z_]+:[a-z0-9_]+", name), name
    assert len(set(_records())) == len(_records()), "a series is recorded twice"


def test_every_recorded_series_has_a_unit_test():
    tested = " ".join(
        t["expr"]
        for f in UNIT_TESTS
        for case in yaml.safe_load(f.read_text())["tests"]
        for t in case.get("promql_expr_test", [])
    )
    untested = [r for r in _records() if not re.search(re.escape(r) + r"(?![\w:])", tested)]
    assert not untested, f"no promql_expr_test for: {untested}"


def test_every_alert_fires_and_stays_quiet_in_a_unit_test():
    firing: set[str] = set()
    quiet: set[str] = set()
    for f in UNIT_TESTS:
        for case in yaml.safe_load(f.read_text())["tests"]:
            for t in case.get("alert_rule_test", []):
                (firing if t.get("exp_alerts") else quiet).add(t["alertname"])
    names = [a["alert"] for a in _alerts()]
    assert sorted(names) == sorted(ALERTS)
    assert not set(names) - firing, f"no firing test for {set(names) - firing}"
    assert not set(names) - quiet, f"no non-firing test for {set(names) - quiet}"


def test_alerts_carry_severity_annotations_and_runbook_anchors():
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    headings = {m.group(1).lower() for m in re.finditer(r"^## (\w+)\s*$", runbook, re.M)}
    for a in _alerts():
        assert a["labels"]["severity"] in ("critical", "warning", "info"), a["alert"]
        ann = a["annotations"]
        assert ann["summary"] and "{{" in ann["description"], a["alert"]
        url = ann["runbook_url"]
        assert url.endswith("docs/runbook.md#" + a["alert"].lower()), url
        assert a["alert"].lower() in headings, f"docs/runbook.md has no '## {a['alert']}' section"
    budget = [a for a in _alerts() if a["alert"].startswith("ChargebackTeamBudget")]
    assert budget and all("team" in a["expr"] for a in budget)
    # a finance notice, not a page; links to the team's dashboard; money as money, not SI prefixes
    for a in budget:
        assert a["labels"]["severity"] in ("warning", "info"), a["alert"]
        assert a["annotations"]["dashboard_url"].endswith("/d/chargeback-team?var-team={{ $labels.team }}")
        assert "humanize" not in a["annotations"]["description"], a["alert"]


def test_alert_links_and_currency_are_configurable(tmp_path: Path):
    gen = _generate_module()
    args = ["--output-dir", str(tmp_path), "--runbook-url", "https://wiki.corp.example/chargeback/runbook"]
    args += ["--dashboard-url", "https://grafana.corp.example/", "--currency", "CHF"]
    assert gen.main(args) == 0
    alerts = yaml.safe_load((tmp_path / "chargeback-alerts.yaml").read_text())
    rules = {r["alert"]: r for g in alerts["groups"] for r in g["rules"]}
    exceeded = rules["ChargebackTeamBudgetExceeded"]["annotations"]
    assert (
        exceeded["runbook_url"] == "https://wiki.corp.example/chargeback/runbook#chargebackteambudgetexceeded"
    )
    assert (
        exceeded["dashboard_url"]
        == "https://grafana.corp.example/d/chargeback-team?var-team={{ $labels.team }}"
    )
    assert "CHF" in exceeded["description"] and "EUR" not in exceeded["description"]
    assert "github.com" not in (tmp_path / "chargeback-alerts.yaml").read_text()


def test_every_recorded_series_is_documented():
    readme = (RULES / "README.md").read_text()
    metrics = (ROOT / "docs" / "metrics.md").read_text()
    for name in _records():
        assert f"`{name}`" in readme, f"rules/README.md does not document {name}"
        assert f"`{name}`" in metrics, f"docs/metrics.md does not document {name}"


def test_every_contract_metric_is_documented():
    from exporter import contract

    metrics = (ROOT / "docs" / "metrics.md").read_text()
    names = [
        v
        for k, v in vars(contract).items()
        if k.isupper() and isinstance(v, str) and v.startswith("chargeback_")
    ]
    missing = [n for n in names if f"`{n}`" not in metrics]
    assert not missing, f"docs/metrics.md does not document {missing}"


def test_selectors_can_be_changed_in_one_place(tmp_path: Path):
    gen = _generate_module()
    assert (
        gen.main(
            [
                "--output-dir",
                str(tmp_path),
                "--proxy-selector",
                'namespace="llm", job="proxy"',
                "--gpu-selector",
                'job="gpu-cost"',
            ]
        )
        == 0
    )
    files = sorted(tmp_path.glob("*.yaml"))
    text = "".join(p.read_text() for p in files)
    assert "chargeback-proxy" not in text and "chargeback-gpu-exporter" not in text
    assert 'chargeback_prompt_tokens_total{namespace="llm", job="proxy"}' in text
    assert 'chargeback_gpu_hourly_cost{job="gpu-cost"}' in text
    res = _promtool("check", "rules", *map(str, files))
    assert res.returncode == 0, res.stdout + res.stderr
    assert gen.main(["--output-dir", str(tmp_path), "--check", "--proxy-selector", 'job="x"']) == 1

"""``chargeback alertmanager-config``: budget routes generated from the config, checked with amtool,
and the inhibit rules checked in a real Alertmanager."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from exporter.stack import ManagedProcess, find_binary, free_port

REPO = Path(__file__).resolve().parent.parent
PROM = REPO / "deploy" / "prometheus"
EXAMPLE = REPO / "deploy" / "chargeback.example.yaml"

CONFIG = """
pools: {p: {gpu_hourly_cost: 1, gpus: 1}}
models: {m: {upstreams: ["http://127.0.0.1:1/v1"], pool: p}}
teams:
  data.lake/eu: {budget: 10, billing_contacts: [lake@corp.test]}
  ml: {budget: 10, billing_contacts: [ml-lead@corp.test, ml-fin@corp.test]}
  quiet: {budget: 10}
report:
  finance_recipients: [fin@corp.test]
"""


def _generate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter.cli", "alertmanager-config", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _amtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [find_binary("amtool"), *args], capture_output=True, text=True, timeout=60, check=False
    )


def _route(config: Path, *labels: str) -> str:
    out = _amtool("config", "routes", "test", f"--config.file={config}", *labels)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_committed_alertmanager_yml_is_generated_from_the_example_config() -> None:
    res = _generate(
        "--config.file", str(EXAMPLE), "--base", str(PROM / "alertmanager.base.yml"), "--output",
        str(PROM / "alertmanager.yml"), "--check",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr


def test_routes_follow_the_config(tmp_path: Path) -> None:
    cfg = tmp_path / "chargeback.yaml"
    cfg.write_text(CONFIG)
    out = tmp_path / "alertmanager.yml"
    res = _generate("--config.file", str(cfg), "--base", str(PROM / "alertmanager.base.yml"), "-o", str(out))
    assert res.returncode == 0, res.stderr
    check = _amtool("check-config", str(out))
    assert check.returncode == 0, check.stdout + check.stderr
    doc = yaml.safe_load(out.read_text())
    to = {r["name"]: r.get("email_configs", [{}])[0].get("to") for r in doc["receivers"]}
    budget = ["alertname=ChargebackTeamBudgetExceeded", "severity=warning"]
    assert _route(out, *budget, "team=ml") == "chargeback-billing-ml"
    assert to["chargeback-billing-ml"] == "ml-lead@corp.test, ml-fin@corp.test, fin@corp.test"
    # a label value with dots and slashes is matched exactly
    assert _route(out, *budget, "team=data.lake/eu") == "chargeback-billing-data.lake/eu"
    assert to["chargeback-billing-data.lake/eu"] == "lake@corp.test, fin@corp.test"
    # no contacts, or a team the config does not know: finance
    assert _route(out, *budget, "team=quiet") == "chargeback-finance"
    assert _route(out, "alertname=ChargebackTeamBudgetForecastExceeded", "severity=info", "team=x") == (
        "chargeback-finance"
    )
    assert to["chargeback-finance"] == "fin@corp.test"
    # the site's routes stay: pages for critical alerts, SRE for the rest
    assert _route(out, "alertname=ChargebackProxyDown", "severity=critical") == "sre-pager"
    assert _route(out, "alertname=ChargebackGPUIdleCostHigh", "severity=warning", "pool=p") == "sre"
    # regenerating from its own output changes nothing
    again = tmp_path / "again.yml"
    assert _generate("--config.file", str(cfg), "--base", str(out), "-o", str(again)).returncode == 0
    assert yaml.safe_load(again.read_text()) == doc


def test_without_finance_recipients_or_base(tmp_path: Path) -> None:
    cfg = tmp_path / "chargeback.yaml"
    cfg.write_text(CONFIG.replace("  finance_recipients: [fin@corp.test]\n", ""))
    out = tmp_path / "alertmanager.yml"
    assert _generate("--config.file", str(cfg), "-o", str(out)).returncode == 0
    assert _amtool("check-config", str(out)).returncode == 0
    assert _route(out, "alertname=ChargebackTeamBudgetExceeded", "team=quiet") == "default"
    assert _route(out, "alertname=ChargebackTeamBudgetExceeded", "team=ml") == "chargeback-billing-ml"
    assert _route(out, "alertname=ChargebackTeamBlocked", "team=ml") == "chargeback-billing-ml"


def test_bad_base_is_a_clear_error(tmp_path: Path) -> None:
    base = tmp_path / "base.yml"
    base.write_text("route: {group_by: [alertname]}\n")
    res = _generate("--config.file", str(EXAMPLE), "--base", str(base))
    assert res.returncode == 2
    assert "no route.receiver" in res.stderr and str(base) in res.stderr


@pytest.fixture
def alertmanager(tmp_path: Path):  # type: ignore[no-untyped-def]
    try:
        binary = find_binary("alertmanager")
    except Exception as exc:
        pytest.skip(str(exc))
    port, cluster = free_port(), free_port()
    argv = [
        binary,
        f"--config.file={PROM / 'alertmanager.yml'}",
        f"--storage.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        f"--cluster.listen-address=127.0.0.1:{cluster}",
        "--log.level=warn",
    ]
    am = ManagedProcess("alertmanager", argv, tmp_path, f"http://127.0.0.1:{port}", "/-/ready").start()
    yield am
    am.stop()


def _inhibited(url: str, alerts: list[dict[str, str]], target: str) -> bool:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time()))
    body = [{"labels": labels, "startsAt": now} for labels in alerts]
    requests.post(f"{url}/api/v2/alerts", json=body, timeout=10).raise_for_status()
    for a in requests.get(f"{url}/api/v2/alerts", timeout=10).json():
        if a["labels"]["alertname"] == target:
            return bool(a["status"]["inhibitedBy"])
    raise AssertionError(f"{target} not in Alertmanager")


def test_one_proxy_down_does_not_mute_upstream_errors(alertmanager: ManagedProcess) -> None:
    url = alertmanager.url or ""
    errors = {"alertname": "ChargebackUpstreamErrorRateHigh", "model": "m", "severity": "warning"}
    one_down = {
        "alertname": "ChargebackProxyDown",
        "job": "chargeback-proxy",
        "instance": "p1",
        "severity": "critical",
    }
    assert not _inhibited(url, [one_down, errors], "ChargebackUpstreamErrorRateHigh")
    # every proxy gone (the absent() form, no instance label): the derived alert is muted
    all_gone = {"alertname": "ChargebackProxyDown", "job": "chargeback-proxy", "severity": "critical"}
    assert _inhibited(url, [all_gone], "ChargebackUpstreamErrorRateHigh")


def test_demo_alertmanager_links_to_where_it_listens(tmp_path: Path) -> None:
    try:
        find_binary("alertmanager")
    except Exception as exc:
        pytest.skip(str(exc))
    from exporter.stack import start_alertmanager

    am = start_alertmanager(tmp_path, smtp_smarthost=f"127.0.0.1:{free_port()}")
    try:
        assert f"--web.external-url={am.url}" in am.argv
        # the UI and API answer under that URL (the route prefix follows the external URL's path)
        assert requests.get(f"{am.url}/api/v2/status", timeout=10).status_code == 200
    finally:
        am.stop()

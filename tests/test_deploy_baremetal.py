"""Offline checks of the bare-metal deployment: deploy/prometheus/ with promtool and amtool (including
where each of the project's alerts is routed), deploy/systemd/ with systemd-analyze (or a parser
where it is missing), and deploy/Dockerfile (read, never built: there is no Docker engine in CI).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from exporter.config import load_config
from exporter.stack import find_binary

REPO = Path(__file__).resolve().parent.parent
PROM = REPO / "deploy" / "prometheus"
SYSTEMD = REPO / "deploy" / "systemd"
EXAMPLE_CONFIG = REPO / "deploy" / "chargeback.example.yaml"
JOBS = {"chargeback-proxy": 9841, "chargeback-gpu-exporter": 9842}
# Units the reporter's issue (5) adds next to ours; the tests need them to exist at the end.
REPORTER_UNITS = ("chargeback-report.service", "chargeback-report.timer")


def _rule_files() -> list[Path]:
    files = sorted((REPO / "rules").glob("*.yaml"))
    if not files:
        pytest.fail("rules/*.yaml: no rule files yet (issue 4)")
    return files


def _run(argv: list[str], **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, **kw)


# --------------------------------------------------------------------------- Prometheus


def test_prometheus_config_passes_promtool_with_the_project_rules(tmp_path):
    # rule_files are relative to the config file: lay it out as it is installed (/etc/prometheus).
    shutil.copy(PROM / "prometheus.yml", tmp_path / "prometheus.yml")
    (tmp_path / "rules").mkdir()
    rules = _rule_files()
    for f in rules:
        shutil.copy(f, tmp_path / "rules" / f.name)
    out = _run([find_binary("promtool"), "check", "config", "prometheus.yml"], cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout + out.stderr
    assert f"SUCCESS: {len(rules)} rule files found" in text, text
    for f in rules:
        assert re.search(rf"Checking rules/{re.escape(f.name)}\s+SUCCESS: \d+ rules found", text), text


def test_prometheus_config_scrapes_the_contract_jobs():
    config = yaml.safe_load((PROM / "prometheus.yml").read_text(encoding="utf-8"))
    assert config["rule_files"] == ["rules/*.yaml"]
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    for job, port in JOBS.items():
        targets = [t for sc in jobs[job]["static_configs"] for t in sc["targets"]]
        assert targets and all(t.endswith(f":{port}") for t in targets), (job, targets)
    # The rules select exactly these job names.
    selected = set()
    for f in _rule_files():
        selected.update(re.findall(r'job="([^"]+)"', f.read_text(encoding="utf-8")))
    assert selected == set(JOBS)


# --------------------------------------------------------------------------- Alertmanager


def _amtool(*args: str) -> subprocess.CompletedProcess[str]:
    return _run([find_binary("amtool"), *args])


def _route(*labels: str) -> set[str]:
    out = _amtool("config", "routes", "test", f"--config.file={PROM / 'alertmanager.yml'}", *labels)
    assert out.returncode == 0, out.stderr
    return {r.strip() for r in out.stdout.strip().split(",")}


def _receivers() -> dict[str, set[str]]:
    config = yaml.safe_load((PROM / "alertmanager.yml").read_text(encoding="utf-8"))
    return {
        r["name"]: {a.strip() for e in r.get("email_configs", []) for a in e["to"].split(",")}
        for r in config["receivers"]
    }


def test_alertmanager_config_passes_amtool():
    out = _amtool("check-config", str(PROM / "alertmanager.yml"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_budget_alerts_reach_each_teams_billing_contacts_and_finance():
    config = load_config(EXAMPLE_CONFIG, environ={})
    receivers = _receivers()
    finance = set(config.report.finance_recipients)
    for alert in ("ChargebackTeamBudgetExceeded", "ChargebackTeamBudgetForecastExceeded"):
        for team in config.teams.values():
            [receiver] = _route(f"alertname={alert}", f"team={team.name}", "severity=critical")
            assert receivers[receiver] == set(team.billing_contacts) | finance, (alert, team.name, receiver)
        # A team added to the config but not yet to the routes still reaches finance.
        [receiver] = _route(f"alertname={alert}", "team=new-team", "severity=warning")
        assert receivers[receiver] == finance


def _alerts() -> list[tuple[str, str]]:
    alerts = []
    for f in _rule_files():
        for group in yaml.safe_load(f.read_text(encoding="utf-8"))["groups"]:
            alerts += [
                (r["alert"], r.get("labels", {}).get("severity", "")) for r in group["rules"] if "alert" in r
            ]
    return alerts


def test_every_project_alert_is_routed_budget_to_billing_the_rest_to_sre():
    alerts = _alerts()
    assert {"ChargebackTeamBudgetExceeded", "ChargebackProxyDown"} <= {a for a, _ in alerts}
    receivers = _receivers()
    for alert, severity in alerts:
        routed = _route(f"alertname={alert}", f"severity={severity}", "team=research", "pool=h100")
        assert len(routed) == 1, (alert, routed)
        [receiver] = routed
        if alert.startswith("ChargebackTeamBudget") or alert in (
            "ChargebackTeamBlocked",
            "ChargebackTeamQuotaExceeded",
        ):
            assert receiver == "chargeback-billing-research", alert
        else:
            assert receiver == ("sre-pager" if severity == "critical" else "sre"), (alert, severity, receiver)
            assert all(a.startswith("sre") for a in receivers[receiver])


# --------------------------------------------------------------------------- systemd


def _unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values...]}} (keys may repeat, unlike configparser's INI)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        assert current is not None, f"{path.name}: directive outside a section: {line}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|min|m)?", value)
    assert m, value
    return float(m.group(1)) * (60 if m.group(2) in {"min", "m"} else 1)


def _units_for_verify(tmp_path: Path) -> list[Path]:
    """Copies of every unit with the chargeback executable pointed at this checkout's venv."""
    chargeback = Path(sys.executable).parent / "chargeback"
    copies = []
    for unit in sorted([*SYSTEMD.glob("*.service"), *SYSTEMD.glob("*.timer")]):
        text = re.sub(
            r"(?m)^(Exec\w+=[-@:+!]*)\S*/chargeback\b",
            rf"\g<1>{chargeback}",
            unit.read_text(encoding="utf-8"),
        )
        (tmp_path / unit.name).write_text(text, encoding="utf-8")
        copies.append(tmp_path / unit.name)
    return copies


def test_reporter_units_exist():
    missing = [u for u in REPORTER_UNITS if not (SYSTEMD / u).exists()]
    if missing:
        pytest.fail(f"deploy/systemd/: {missing} missing (the reporter's monthly timer, issue 5)")
    timer = _unit(SYSTEMD / "chargeback-report.timer")
    assert timer["Timer"].get("OnCalendar"), "the reporter's timer needs OnCalendar="


def test_units_pass_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if not analyze:
        pytest.skip("systemd-analyze not installed: the units are still parsed by the other tests")
    units = _units_for_verify(tmp_path)
    out = _run([analyze, "verify", *map(str, units)], cwd=tmp_path)
    assert out.returncode == 0 and not out.stderr.strip(), out.stdout + out.stderr


@pytest.mark.parametrize("unit", ["chargeback-proxy.service", "chargeback-gpu-exporter.service"])
def test_units_are_hardened(tmp_path, unit):
    d = _unit(SYSTEMD / unit)["Service"]
    assert d.get("User") == ["chargeback"] or d.get("DynamicUser") == ["yes"]
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "Restart": "on-failure",
        "KillSignal": "SIGTERM",
        "CapabilityBoundingSet": "",
    }.items():
        assert d.get(key) == [value], f"{unit}: {key}={value} expected, got {d.get(key)}"
    assert any(
        v.startswith("-/etc/chargeback/") or v.startswith("/etc/chargeback/") for v in d["EnvironmentFile"]
    )
    assert any("--config.file=/etc/chargeback/chargeback.yaml" in v for v in d["ExecStart"])
    analyze = shutil.which("systemd-analyze")
    if analyze:
        # systemd's own exposure score (0 = locked down, 10 = unprotected): keep it in its "OK" band.
        copies = {p.name: p for p in _units_for_verify(tmp_path)}
        out = _run([analyze, "security", "--offline=yes", "--threshold=25", str(copies[unit])], cwd=tmp_path)
        score = re.search(r"Overall exposure level for \S+: ([\d.]+)", out.stdout)
        assert out.returncode == 0 and score, out.stdout[-2000:] + out.stderr
        assert float(score.group(1)) <= 2.5


def test_proxy_unit_outlives_the_drain_and_owns_the_state_directory():
    d = _unit(SYSTEMD / "chargeback-proxy.service")["Service"]
    grace = load_config(EXAMPLE_CONFIG, environ={}).proxy.shutdown_grace_seconds
    assert _seconds(d["TimeoutStopSec"][0]) > grace + 5, "SIGKILL must not cut the SIGTERM drain short"
    assert d["StateDirectory"] == ["chargeback"]
    assert d["WorkingDirectory"] == ["/var/lib/chargeback"]
    assert d["PrivateDevices"] == ["yes"]
    assert "proxy" in d["ExecStart"][0].split()
    # The exporter needs the GPUs' device nodes: no device sandbox, and no option that implies one.
    e = _unit(SYSTEMD / "chargeback-gpu-exporter.service")["Service"]
    assert "gpu-exporter" in e["ExecStart"][0].split()
    for key in ("PrivateDevices", "DevicePolicy", "DeviceAllow", "ProtectClock"):
        assert key not in e, f"chargeback-gpu-exporter.service: {key} would hide /dev/nvidia*"


def test_sysusers_file_creates_the_service_user():
    lines = [
        line.split()
        for line in (SYSTEMD / "chargeback.sysusers.conf").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0][:3] == ["u", "chargeback", "-"]


# --------------------------------------------------------------------------- container image


def _dockerfile() -> list[tuple[str, str]]:
    text = (REPO / "deploy" / "Dockerfile").read_text(encoding="utf-8")
    text = re.sub(r"\\\n", " ", text)
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
        for line in (raw.strip() for raw in text.splitlines())
        if line and not line.startswith("#")
    ]


def test_dockerfile_builds_a_non_root_image_of_the_package():
    instructions = _dockerfile()
    froms = [arg for op, arg in instructions if op == "FROM"]
    assert froms and all(f.split()[0] == "python:3.11-slim" for f in froms)
    final = instructions[max(i for i, (op, _) in enumerate(instructions) if op == "FROM") :]
    users = [arg for op, arg in final if op == "USER"]
    assert users and users[-1].split(":")[0].isdigit() and int(users[-1].split(":")[0]) > 0, users
    assert ("ENTRYPOINT", '["chargeback"]') in final
    assert any(op == "RUN" and "pip install" in arg and " ." in arg for op, arg in instructions)
    # Every COPY from the build context names something in the repository (and the .dockerignore keeps it).
    ignore = (REPO / "deploy" / "Dockerfile.dockerignore").read_text(encoding="utf-8")
    for op, arg in instructions:
        if op == "COPY" and not arg.startswith("--from"):
            for src in arg.split()[:-1]:
                assert (REPO / src).exists() or src == "README.md", (
                    f"deploy/Dockerfile: COPY {src}: not in the repository"
                )
                assert f"!{src.rstrip('/')}" in ignore, f"deploy/Dockerfile.dockerignore excludes {src}"
    exposed = {int(p) for op, arg in instructions if op == "EXPOSE" for p in arg.split()}
    assert exposed == {8080, 9841, 9842}

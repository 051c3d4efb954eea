"""Proof that every dashboard query works: a real Prometheus with the project's rules scrapes the real
proxy (under traffic from several users of three teams, streaming and not, with 4xx and 5xx answers)
and the GPU exporter (4 simulated GPUs in two pools). Every panel's every target and every
template-variable query then runs through the Prometheus HTTP API, with the template variables
substituted the way Grafana would, and must parse and return data (at least one finite value).

Grafana itself is not run (no Grafana package in the Debian or PyPI registries).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import math
import re
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from exporter import stack  # noqa: E402

build = importlib.import_module("dashboards.build")

pytestmark = pytest.mark.slow

USERS = {
    "ada@corp.example": "research",
    "ben@corp.example": "research",
    "cy@corp.example": "support",
    "dee@corp.example": "support",
    "eve@corp.example": "platform",
    "fay@corp.example": "platform",
}
TEAMS = {
    "research": {"business_unit": "R&D", "cost_center": "CC-4100", "budget": 5000},
    "support": {"business_unit": "Customer Operations", "cost_center": "CC-2300", "budget": 1200},
    "platform": {"business_unit": "Central IT", "cost_center": "CC-1000", "budget": 800},
    # a team without users: it never sends traffic, so its panels must show an idle team's zeros
    "legal": {"business_unit": "Legal", "cost_center": "CC-3100", "budget": 300},
}
POOLS = {
    "small": {"gpu_hourly_cost": 1.5, "gpus": 2, "capacity_tokens_per_second": 4000},
    "large": {"gpu_hourly_cost": 3.2, "gpus": 2, "capacity_tokens_per_second": 1500},
}
MODEL_POOLS = {"sim-small": "small", "sim-large": "large", "sim-restricted": "small", "sim-dead": "large"}
GPU_COUNT = 4
SCRAPE = "1s"
RATE_INTERVAL = "4s"  # Grafana's $__rate_interval for a 1 s scrape interval: 4 × scrape interval
DEADLINE_S = 90.0
ALL = {"cluster": ".*", "job": ".*"}  # "All": no cluster label here, one job of each kind


@dataclass
class Live:
    prometheus: stack.ManagedProcess
    started: float  # when Prometheus started: the dashboards' $__range covers everything since
    gpu_uuids: list[str]
    idle_at: float  # an instant after the rules had evaluated and before any request: an idle stack


def _rules_or_skip() -> list[Path]:
    files = stack.rule_files()
    if not files:
        pytest.skip("rules/*.yaml not written yet: the dashboards read recording rules")
    return files


def _traffic_loop(base_url: str, tokens: dict[str, str], stop: threading.Event) -> None:
    """Requests from every user until ``stop``: streamed and not, plus 403 (model not allowed for the
    team) and 502 (dead upstream) answers so that error panels have something to show."""
    from exporter.sim.traffic import run_traffic

    async def loop() -> None:
        wave = 0
        while not stop.is_set():
            await run_traffic(
                base_url,
                tokens,
                ["sim-small", "sim-large"],
                requests_per_user=2,
                stream_ratio=0.5,
                seed=wave,
                concurrency=4,
            )
            await run_traffic(
                base_url,
                {u: tokens[u] for u in ("cy@corp.example",)},
                ["sim-restricted"],
                requests_per_user=1,
                seed=wave,
            )
            await run_traffic(
                base_url,
                {u: tokens[u] for u in ("ada@corp.example",)},
                ["sim-restricted", "sim-dead"],
                requests_per_user=2,
                seed=wave,
            )
            wave += 1
            await asyncio.sleep(0.5)

    asyncio.run(loop())


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    yield from _live_stack(tmp_path_factory, "user")


@pytest.fixture(scope="module")
def live_team(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """The same stack with ``proxy.metrics_labels: team`` (no user label on the usage counters)."""
    yield from _live_stack(tmp_path_factory, "team")


def _live_stack(tmp_path_factory: pytest.TempPathFactory, metrics_labels: str) -> Iterator[Live]:
    rule_files = _rules_or_skip()
    harness = pytest.importorskip("exporter.sim.harness", reason="proxy test harness not available")
    workdir = tmp_path_factory.mktemp(f"dashboards-live-{metrics_labels}")
    procs: list[Any] = []
    stop = threading.Event()
    traffic: threading.Thread | None = None
    try:
        sim = harness.start_simulator(workdir, latency_ms=5, models=list(MODEL_POOLS))
        procs.append(sim)
        dead = f"http://127.0.0.1:{stack.free_port()}/v1"
        doc = harness.proxy_config(
            upstreams={m: [dead if m == "sim-dead" else f"{sim.url}/v1"] for m in MODEL_POOLS},
            ledger_url=f"sqlite:///{workdir / 'ledger.db'}",
            spool_dir=str(workdir / "spool"),
            teams=TEAMS,
            allowed_teams={"sim-restricted": ["research"]},
            proxy={"metrics_labels": metrics_labels},
        )
        doc["pools"] = POOLS
        for model, pool in MODEL_POOLS.items():
            doc["models"][model]["pool"] = pool
        doc["gpu_exporter"] = {"pool_by_index": {0: "small", 1: "small", 2: "large", 3: "large"}}
        # limits (in-process store): token quotas to count down, and one user per team held to one
        # request a minute, so that the limit panels have refusals to show
        doc["limits"] = {
            "teams": {t: {"monthly_tokens": 10_000_000} for t in TEAMS},
            "users": {
                u: {"enforce": "block", "requests_per_minute": 1}
                for u in ("ben@corp.example", "dee@corp.example")
            },
        }
        config_path = harness.write_config(workdir / "chargeback.yaml", doc)
        tokens = harness.create_keys(doc["ledger"]["url"], USERS)
        proxy = harness.start_proxy(workdir, config_path)
        procs.append(proxy)

        gpu_port = stack.free_port()
        gpu = stack.ManagedProcess(
            "gpu-exporter",
            # the gpu-exporter subcommand on its own (python -m exporter.gpu.cli), as ``chargeback gpu-exporter``
            [
                sys.executable,
                "-m",
                "exporter.gpu.cli",
                "gpu-exporter",
                "--config.file",
                str(config_path),
                "--web.listen-address",
                f"127.0.0.1:{gpu_port}",
                "--simulate",
                str(GPU_COUNT),
                "--simulate-pattern",
                "period=4,duty=0.5,levels=0.9/0.6/0.3/0",
            ],
            workdir,
            url=f"http://127.0.0.1:{gpu_port}",
            ready_path="/metrics",
        ).start()
        procs.append(gpu)

        prom = stack.start_prometheus(
            workdir,
            {
                "chargeback-proxy": [proxy.metrics_url.removeprefix("http://")],
                "chargeback-gpu-exporter": [f"127.0.0.1:{gpu_port}"],
            },
            rule_files=rule_files,
            scrape_interval=SCRAPE,
            evaluation_interval=SCRAPE,
        )
        started = time.time()
        procs.append(prom)
        # Traffic starts once Prometheus scrapes, so that counters rise between samples.
        stack.wait_for(
            lambda: stack.prom_query(prom.url, 'up{job="chargeback-proxy"} == 1'), 20, what="first scrape"
        )
        # The idle stack: every configured team's month-to-date (0) recorded, no request sent yet.
        stack.wait_for(
            lambda: len(stack.prom_query(prom.url, "team:chargeback_spend:month_to_date")) == len(TEAMS),
            30,
            what="month-to-date of every team",
        )
        idle_at = time.time()
        time.sleep(1.0)
        traffic = threading.Thread(target=_traffic_loop, args=(proxy.url, tokens, stop), daemon=True)
        traffic.start()
        uuids = [
            r["metric"]["uuid"]
            for r in stack.wait_for(
                lambda: stack.prom_query(prom.url, "chargeback_gpu_info"), 20, what="GPU info"
            )
        ]
        yield Live(prom, started, sorted(uuids), idle_at)
    finally:
        stop.set()
        if traffic is not None:
            traffic.join(30)
        for p in reversed(procs):
            p.stop()


# ----------------------------------------------------------------------------- Grafana's substitution


def regex_values(values: list[str]) -> str:
    """A multi-value selection the way Grafana's Prometheus data source writes it inside =~"…"."""
    escaped = [re.sub(r"([\\^$*+?.()|{}\[\]])", r"\\\\\1", v) for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def substitute(text: str, variables: dict[str, str], range_s: int) -> str:
    builtins = {
        "__rate_interval": RATE_INTERVAL,
        "__interval": SCRAPE,
        "__range_s": str(range_s),
        "__range": f"{range_s}s",
    }
    for name, value in {**builtins, **variables}.items():
        text = text.replace("${" + name + "}", value).replace("$" + name, value)
    left = re.findall(r"\$\{?\w+", text)
    assert not left, f"unsubstituted variables {left} in {text}"
    return text


def selections(live: Live) -> dict[str, list[dict[str, str]]]:
    """Variable values to run each dashboard with: everything selected, and a narrow selection."""
    every = dict(ALL)
    return {
        "overview": [every, {"cluster": ".*", "job": "chargeback-proxy"}],
        "team": [
            {**every, "team": "research", "user": ".*"},
            {**every, "team": ".*", "user": ".*"},
            {**every, "team": "support", "user": regex_values(["cy@corp.example"])},
            {**every, "team": regex_values(["research", "platform"]), "user": ".*"},
            {**every, "team": "research", "user": regex_values(["ada@corp.example", "ben@corp.example"])},
        ],
        "gpu_fleet": [
            {**every, "pool": ".*", "gpu": ".*"},
            {
                "cluster": ".*",
                "job": "chargeback-gpu-exporter",
                "pool": "large",
                "gpu": regex_values(live.gpu_uuids[2:]),
            },
        ],
    }


# ----------------------------------------------------------------------------- running queries


def api(prom: str, path: str, params: dict[str, Any]) -> dict[str, Any]:
    r = requests.get(f"{prom}{path}", params=params, timeout=10)
    body: dict[str, Any] = r.json()
    return body


def finite(result: list[dict[str, Any]]) -> bool:
    for series in result:
        values = series.get("values") or ([series["value"]] if "value" in series else [])
        if any(math.isfinite(float(v)) for _, v in values):
            return True
    return False


def run_target(prom: str, expr: str, instant: bool, now: float) -> tuple[bool, str]:
    """(ok, why not) for one query, as Grafana would send it (range or instant)."""
    if instant:
        body = api(prom, "/api/v1/query", {"query": expr, "time": f"{now:.3f}"})
    else:
        body = api(
            prom,
            "/api/v1/query_range",
            {"query": expr, "start": f"{now - 30:.3f}", "end": f"{now:.3f}", "step": "2"},
        )
    if body.get("status") != "success":
        return False, f"{body.get('errorType')}: {body.get('error')}"
    result = body["data"]["result"]
    if not result:
        return False, "no series"
    if not finite(result):
        return False, "only NaN/Inf values"
    return True, ""


LABEL_VALUES = re.compile(r"^label_values\((?:(.+),\s*)?(\w+)\)$")


def variable_values(prom: str, query: str, start: float, now: float) -> list[str]:
    """label_values(metric, label) → /api/v1/label/<label>/values?match[]=metric (what Grafana does)."""
    m = LABEL_VALUES.match(query)
    assert m, f"unsupported variable query {query!r}"
    selector, label = m.groups()
    params: dict[str, Any] = {"start": f"{start:.3f}", "end": f"{now:.3f}"}
    if selector:
        params["match[]"] = selector
    body = api(prom, f"/api/v1/label/{label}/values", params)
    assert body.get("status") == "success", f"{query}: {body.get('error')}"
    return list(body["data"])


def missing_rules(expr: str) -> list[str]:
    names = set(re.findall(r"\b([a-z_]+:[a-z_]+:[a-z0-9_]+)\b", expr))
    defined: set[str] = set()
    for path in stack.rule_files():
        for group in (yaml.safe_load(path.read_text()) or {}).get("groups", []):
            defined.update(r["record"] for r in group.get("rules", []) if "record" in r)
    return sorted(names - defined)


def dashboard_checks(key: str, live: Live) -> list[tuple[str, str, bool]]:
    """(label, expression template, instant) for every target of every panel of a dashboard."""
    dash = json.loads((REPO / build.DASHBOARD_DIR / build.json_name(key)).read_text())
    out = []
    for panel in dash["panels"]:
        for t in panel.get("targets", []):
            out.append((f"{key} / {panel['title']} / {t['refId']}", t["expr"], bool(t.get("instant"))))
    return out


def test_template_variables_list_real_values(live: Live) -> None:
    prom = live.prometheus.url
    now = time.time()
    dashes = {
        k: json.loads((REPO / build.DASHBOARD_DIR / build.json_name(k)).read_text()) for k in build.BUILDERS
    }
    queries = {
        (k, v["name"]): v["query"]
        for k, d in dashes.items()
        for v in d["templating"]["list"]
        if v["type"] == "query"
    }
    assert set(queries) == {
        *((k, v) for k in build.BUILDERS for v in ("cluster", "job")),
        ("team", "team"),
        ("team", "user"),
        ("gpu_fleet", "pool"),
        ("gpu_fleet", "gpu"),
    }
    at = {"cluster": ".*", "job": ".*", "team": "research", "pool": "large"}

    def values(k: str, name: str, **vars: str) -> list[str]:
        q = substitute(queries[(k, name)], {**at, **vars}, int(now - live.started) + 1)
        return stack.wait_for(lambda: variable_values(prom, q, live.started, time.time()), 30, what=q)  # type: ignore[return-value]

    # no cluster label on a single Prometheus: the list is empty and "All" (.*) matches every series
    for k in build.BUILDERS:
        q = substitute(queries[(k, "cluster")], at, 1)
        assert variable_values(prom, q, live.started, time.time()) == []
    assert values("overview", "job") == values("team", "job") == ["chargeback-proxy"]
    assert values("gpu_fleet", "job") == ["chargeback-gpu-exporter"]
    assert sorted(values("team", "team")) == sorted(TEAMS)
    assert sorted(values("team", "user")) == ["ada@corp.example", "ben@corp.example"]
    assert sorted(values("team", "user", team="platform")) == ["eve@corp.example", "fay@corp.example"]
    assert sorted(values("team", "user", team=".*")) == sorted(USERS)
    assert sorted(values("gpu_fleet", "pool")) == ["large", "small"]
    assert len(live.gpu_uuids) == GPU_COUNT
    assert values("gpu_fleet", "gpu") == live.gpu_uuids[2:]  # indexes 2, 3 are in pool "large"
    assert values("gpu_fleet", "gpu", pool=".*") == live.gpu_uuids


def test_every_panel_query_returns_data(live: Live) -> None:
    prom = live.prometheus.url
    pending: dict[str, tuple[str, str, bool]] = {}
    for key, variants in selections(live).items():
        for i, variables in enumerate(variants):
            for label, expr, instant in dashboard_checks(key, live):
                pending[f"{label} [{i}]"] = (json.dumps(variables), expr, instant)
    assert len(pending) > 100
    why: dict[str, str] = {}
    deadline = time.monotonic() + DEADLINE_S
    # Series appear over time (rate5m needs two samples, month-to-date a few evaluations): poll.
    while pending and time.monotonic() < deadline:
        now = time.time()
        range_s = int(now - live.started) + 1
        for label, (variables, expr, instant) in list(pending.items()):
            q = substitute(expr, json.loads(variables), range_s)
            ok, reason = run_target(prom, q, instant, now)
            if ok:
                del pending[label]
                why.pop(label, None)
            else:
                why[label] = f"{reason}\n      {q}"
        if pending:
            time.sleep(1.0)
    report = []
    for label in sorted(pending):
        _, expr, _ = pending[label]
        missing = missing_rules(expr)
        hint = f"\n      recording rules not defined in rules/: {missing}" if missing else ""
        report.append(f"  {label}: {why.get(label)}{hint}")
    assert not pending, f"{len(pending)} dashboard queries returned no data:\n" + "\n".join(report)


def panel_expr(key: str, title: str, ref: str = "A") -> str:
    dash = json.loads((REPO / build.DASHBOARD_DIR / build.json_name(key)).read_text())
    (panel,) = [p for p in dash["panels"] if p["title"] == title and p["type"] != "row"]
    (t,) = [t for t in panel["targets"] if t["refId"] == ref]
    return str(t["expr"])


def instant_values(
    live: Live, key: str, title: str, variables: dict[str, str], ref: str = "A"
) -> dict[str, float]:
    q = substitute(panel_expr(key, title, ref), variables, int(time.time() - live.started) + 1)
    result = stack.wait_for(lambda: stack.prom_query(live.prometheus.url, q), 30, what=q)
    return {json.dumps(r["metric"], sort_keys=True): float(r["value"][1]) for r in result}  # type: ignore[union-attr]


def test_panel_figures_match_the_configuration(live: Live) -> None:
    """Panels whose figures follow from the config show exactly those figures."""
    gpus = {**ALL, "pool": ".*", "gpu": ".*"}
    assert list(instant_values(live, "gpu_fleet", "GPUs", gpus).values()) == [4.0]
    # 2 GPUs × 1.5 + 2 GPUs × 3.2 per hour
    assert list(instant_values(live, "gpu_fleet", "Fleet cost (per hour)", gpus).values()) == [
        pytest.approx(9.4)
    ]
    per_gpu = instant_values(live, "gpu_fleet", "Hourly cost per GPU", {**ALL, "pool": "large", "gpu": ".*"})
    assert sorted(per_gpu.values()) == [3.2, 3.2]
    assert list(
        instant_values(live, "team", "Monthly budget", {**ALL, "team": "support", "user": ".*"}).values()
    ) == [1200.0]
    # each pool's shares add up to 1 (the overview's team × pool matrix)
    shares = instant_values(live, "overview", "Pool shares now (team × pool)", ALL)
    by_pool: dict[str, float] = {}
    for labels, value in shares.items():
        pool = json.loads(labels)["pool"]
        by_pool[pool] = by_pool.get(pool, 0.0) + value
    assert by_pool == {"large": pytest.approx(1.0), "small": pytest.approx(1.0)}


def _values_at(live: Live, when: float, key: str, title: str, variables: dict[str, str]) -> dict[str, float]:
    q = substitute(panel_expr(key, title), {**ALL, **variables}, 300)
    body = api(live.prometheus.url, "/api/v1/query", {"query": q, "time": f"{when:.3f}"})
    assert body["status"] == "success", f"{q}: {body.get('error')}"
    return {json.dumps(r["metric"], sort_keys=True): float(r["value"][1]) for r in body["data"]["result"]}


def test_idle_stack_shows_zero(live: Live) -> None:
    """Before the first request no spend-rate series exists (a share of nothing is undefined): the panels
    show 0 for the stack and for every configured team, not "no data"; so does a team that never sends
    traffic while the others do."""
    teams_zero = {json.dumps({"team": t}): 0.0 for t in TEAMS}
    at = live.idle_at
    assert _values_at(live, at, "overview", "Spend rate (per hour)", {}) == {"{}": 0.0}
    assert _values_at(live, at, "overview", "Unrecovered cost (per hour)", {}) == {"{}": 0.0}
    assert _values_at(live, at, "overview", "Spend rate by team (per hour)", {}) == teams_zero
    assert _values_at(live, at, "team", "Spend rate (per hour)", {"team": ".*", "user": ".*"}) == teams_zero
    assert _values_at(live, at, "team", "Month-to-date spend", {"team": ".*", "user": ".*"}) == {
        json.dumps({"__name__": "team:chargeback_spend:month_to_date", "team": t}): 0.0 for t in TEAMS
    }
    # under traffic, the team without users
    legal = {**ALL, "team": "legal", "user": ".*"}
    assert instant_values(live, "team", "Spend rate (per hour)", legal) == {
        json.dumps({"team": "legal"}): 0.0
    }


def test_unrecovered_cost_is_zero_under_token_share(live: Live) -> None:
    """Under token-share (the default real-time method) both pools' whole cost is charged while they
    serve tokens: spend 2 × 1.5 + 2 × 3.2 = 9.4 EUR/h and 0 unrecovered, although the rules' figure for
    proxy-price-per-token (unused capacity) is well above 0 at this load."""
    prom = live.prometheus.url
    assert stack.prom_query(prom, 'chargeback_realtime_method_info{method="token-share"} == 1')

    def spend() -> float | None:
        values = _values_at(live, time.time(), "overview", "Spend rate (per hour)", {})
        value = values.get("{}")
        return value if value is not None and abs(value - 9.4) < 1e-9 else None

    assert stack.wait_for(spend, 60, what="spend rate of both pools") == pytest.approx(9.4)
    assert _values_at(live, time.time(), "overview", "Unrecovered cost (per hour)", {}) == {"{}": 0.0}
    (proxy_price,) = stack.prom_query(prom, "sum(pool:chargeback_unrecovered_cost_per_hour:rate5m)")
    assert float(proxy_price["value"][1]) > 5.0  # the small traffic uses a sliver of 4000 + 1500 tokens/s


def test_team_mode_per_user_panels_are_empty_and_the_rest_has_data(live_team: Live) -> None:
    """proxy.metrics_labels: team. Panels whose description carries PER_USER_NOTE select user!=""
    and must stay empty; every other panel must return data as in user mode."""
    from dashboards.common import PER_USER_NOTE

    prom = live_team.prometheus.url
    per_user: dict[str, str] = {}
    pending: dict[str, tuple[str, str, bool]] = {}
    for key, variants in selections(live_team).items():
        dash = json.loads((REPO / build.DASHBOARD_DIR / build.json_name(key)).read_text())
        notes = {p["title"] for p in dash["panels"] if PER_USER_NOTE in (p.get("description") or "")}
        for i, variables in enumerate(variants):
            variables = {**variables, "user": ".*"} if "user" in variables else variables  # no users to pick
            for label, expr, instant in dashboard_checks(key, live_team):
                title = label.split(" / ")[1]
                if title in notes:
                    per_user[f"{label} [{i}]"] = substitute(expr, variables, 60)
                else:
                    pending[f"{label} [{i}]"] = (json.dumps(variables), expr, instant)
    assert len(per_user) >= 10 and len(pending) > 100
    deadline = time.monotonic() + DEADLINE_S
    why: dict[str, str] = {}
    while pending and time.monotonic() < deadline:
        now = time.time()
        range_s = int(now - live_team.started) + 1
        for label, (variables, expr, instant) in list(pending.items()):
            ok, reason = run_target(prom, substitute(expr, json.loads(variables), range_s), instant, now)
            if ok:
                del pending[label]
            else:
                why[label] = reason
        if pending:
            time.sleep(1.0)
    assert not pending, "team mode: no data for " + ", ".join(f"{k} ({why.get(k)})" for k in sorted(pending))
    now = time.time()
    for label, expr in per_user.items():  # traffic has run for a while: these stay empty
        ok, reason = run_target(prom, expr, False, now)
        assert not ok and reason == "no series", f"{label} shows data in team mode"
    user_query = next(
        v["query"]
        for v in json.loads((REPO / build.DASHBOARD_DIR / build.json_name("team")).read_text())["templating"][
            "list"
        ]
        if v["name"] == "user"
    )
    q = substitute(user_query, {**ALL, "team": "research"}, 60)
    assert variable_values(prom, q, live_team.started, now) == []

"""Structure of the generated Grafana dashboards (Grafana itself is not run: there is no Grafana package
in the Debian or PyPI registries). The proof that every query returns data against live metrics is in
test_dashboards_live.py; here every query is at least parsed by a real Prometheus."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

build = importlib.import_module("dashboards.build")
common = importlib.import_module("dashboards.common")

from exporter import contract, stack  # noqa: E402

DS = {"type": "prometheus", "uid": "${datasource}"}
KEYS = list(build.BUILDERS)


def load(key: str) -> dict[str, Any]:
    path = REPO / build.DASHBOARD_DIR / build.json_name(key)
    return json.loads(path.read_text(encoding="utf-8"))


def panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in dash["panels"]:
        out.append(p)
        out.extend(p.get("panels") or [])  # panels of collapsed rows
    return out


def content_panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in panels(dash) if p["type"] != "row"]


def all_exprs(dash: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in content_panels(dash) for t in p["targets"]]


def test_committed_files_equal_freshly_generated() -> None:
    stale = build.stale_files(REPO, build.render())
    assert stale == [], "run `make dashboards`: " + ", ".join(stale)


def test_generation_is_deterministic() -> None:
    assert build.render() == build.render()


def test_check_mode_reports_stale_and_missing_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert build.main(["--check", "--out", str(tmp_path)]) == 1
    assert "chargeback-overview.json (missing)" in capsys.readouterr().err
    assert build.main(["--out", str(tmp_path)]) == 0
    assert build.main(["--check", "--out", str(tmp_path)]) == 0
    team_json = tmp_path / "dashboards" / "chargeback-team.json"
    team_json.write_text(team_json.read_text().replace("Monthly budget", "Budget"))
    extra = tmp_path / "dashboards/chargeback-old.json"
    extra.write_text("{}\n")
    capsys.readouterr()
    assert build.main(["--check", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "dashboards/chargeback-team.json (differs from the generated version)" in err
    assert "chargeback-old.json (no longer generated)" in err
    assert "chargeback-overview.json" not in err


def test_other_currency(tmp_path: Path) -> None:
    assert build.main(["--currency", "usd", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "dashboards" / "chargeback-overview.json").read_text()
    assert "currencyUSD" in text and "currencyEUR" not in text
    assert common.currency_unit("HUF") == "currency:HUF "
    with pytest.raises(SystemExit):
        build.main(["--currency", "euro", "--out", str(tmp_path)])


@pytest.mark.parametrize("key", KEYS)
def test_dashboard_identity_and_time(key: str) -> None:
    dash = load(key)
    assert dash["uid"] == common.UIDS[key]
    assert dash["title"] == common.TITLES[key]
    assert dash["id"] is None  # let Grafana assign it on import
    assert "chargeback" in dash["tags"]
    assert dash["time"]["from"].startswith("now-") and dash["time"]["to"] == "now"
    assert dash["refresh"] and dash["schemaVersion"] >= 36
    assert dash["description"]


def test_uids_and_titles_unique() -> None:
    dashes = [load(k) for k in KEYS]
    assert len({d["uid"] for d in dashes}) == len(dashes) == 3
    assert len({d["title"] for d in dashes}) == 3


@pytest.mark.parametrize("key", KEYS)
def test_datasource_variable_and_no_hard_coded_datasource(key: str) -> None:
    dash = load(key)
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    for v in variables.values():
        if v["type"] == "query":
            assert v["datasource"] == DS, v["name"]
            assert re.fullmatch(r"label_values\(.+, \w+\)", v["query"]), v["query"]

    # Every "datasource" anywhere in the JSON is the variable (or the variable itself, which has none).
    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "datasource" and path != "templating.list[datasource]":
                    assert v == DS, f"{path}.{k} = {v!r}"
                walk(v, f"{path}.{k}")
        elif isinstance(node, list):
            for i, item in enumerate(node):
                name = (
                    item.get("name") if isinstance(item, dict) and path.endswith("templating.list") else None
                )
                walk(item, f"{path[1:] if path.startswith('.') else path}[{name or i}]")

    walk(dash, "")


@pytest.mark.parametrize("key", KEYS)
def test_panels_have_unique_ids_and_do_not_overlap(key: str) -> None:
    dash = load(key)
    ids = [p["id"] for p in panels(dash)]
    assert all(isinstance(i, int) and i > 0 for i in ids)
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(ids)}"
    cells: dict[tuple[int, int], str] = {}
    for p in panels(dash):
        g = p["gridPos"]
        assert g["w"] > 0 and g["h"] > 0 and g["x"] >= 0 and g["y"] >= 0, p["title"]
        assert g["x"] + g["w"] <= 24, f"{p['title']} runs past the 24 grid columns"
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r} at {(x, y)}"
                cells[(x, y)] = p["title"]


@pytest.mark.parametrize("key", KEYS)
def test_every_panel_has_unit_description_datasource_and_targets(key: str) -> None:
    dash = load(key)
    assert len(content_panels(dash)) >= 8
    for p in content_panels(dash):
        unit = p["fieldConfig"]["defaults"].get("unit")
        assert isinstance(unit, str) and unit, f"{p['title']} has no unit"
        assert len(p.get("description") or "") > 30, f"{p['title']} has no real description"
        assert p["datasource"] == DS, p["title"]
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["datasource"] == DS, p["title"]
            assert t["expr"].strip(), p["title"]
            # only Grafana's own variables and this dashboard's variables
            for var in re.findall(r"\$\{?(\w+)", t["expr"]):
                assert var.startswith("__") or var in {v["name"] for v in dash["templating"]["list"]}, var


def test_units_follow_the_conventions() -> None:
    units: dict[str, set[str]] = {}
    for key in KEYS:
        for p in content_panels(load(key)):
            unit = p["fieldConfig"]["defaults"]["unit"]
            units.setdefault(unit, set()).add(p["title"])
            if re.search(r"spend|cost", p["title"], re.I):
                assert unit == "currencyEUR", f"{p['title']} shows money in {unit}"
            if re.search(r"share|used|use\b|utilisation|idle time", p["title"], re.I) and not re.search(
                "Memory|Energy", p["title"]
            ):
                assert unit == "percentunit", f"{p['title']} is a ratio shown in {unit}"
    assert {"currencyEUR", "percentunit", "bytes", "watt", "joule", "s", "short"} <= set(units)


def test_links_between_the_three_dashboards() -> None:
    uids = set(common.UIDS.values())
    for key in KEYS:
        dash = load(key)
        targets = {link["url"] for link in dash["links"]}
        assert targets == {f"/d/{u}" for u in uids - {dash["uid"]}}
        assert all(link["keepTime"] and link["includeVars"] for link in dash["links"])
        # data links inside panels point at one of the three dashboards too
        for p in content_panels(dash):
            for link in p["fieldConfig"]["defaults"].get("links", []) + p.get("links", []):
                assert re.match(r"/d/([\w-]+)\?", link["url"]).group(1) in uids, link["url"]


def test_issue_panels_present() -> None:
    """The figures issue 6 asks for, by the rule (or metric) each one reads."""
    wanted = {
        "overview": [
            "team:chargeback_spend_per_hour:rate5m",
            "team:chargeback_spend:month_to_date",
            "team_pool:chargeback_token_share:ratio5m",
            "team:chargeback_budget_consumption:ratio",
            "team:chargeback_budget_forecast_consumption:ratio",
            "pool:chargeback_idle_cost_per_hour:rate5m",
            "topk(10",
            "pool:chargeback_cost_per_million_tokens:ratio5m",
        ],
        "team": [
            "team:chargeback_spend:month_to_date",
            "team:chargeback_spend:month_forecast",
            "chargeback_team_budget",
            "user_team_model:chargeback_prompt_tokens:rate5m",
            "team_model_code:chargeback_requests:rate5m",
            "chargeback_time_to_first_token_seconds_bucket",
        ],
        "gpu_fleet": [
            "chargeback_gpu_utilization_ratio",
            "pool:chargeback_gpu_busy:ratio5m",
            "pool:chargeback_gpu_idle:ratio5m",
            "chargeback_gpu_memory_used_bytes",
            "chargeback_gpu_power_watts",
            "chargeback_gpu_energy_joules_total",
            "pool:chargeback_gpu_hourly_cost:sum",
            "chargeback_nvml_up",
        ],
    }
    for key, needles in wanted.items():
        exprs = " ".join(e for _, e in all_exprs(load(key)))
        for needle in needles:
            assert needle in exprs, f"{key}: nothing queries {needle}"
    team_vars = {v["name"] for v in load("team")["templating"]["list"]}
    assert {"datasource", "team", "user"} <= team_vars
    tables = [p for p in content_panels(load("team")) if p["type"] == "table"]
    assert any(t["id"] == "groupingToMatrix" for p in tables for t in p["transformations"])


RECORDED = re.compile(r"\b([a-z_]+:[a-z_]+:[a-z0-9_]+)\b")
RAW = re.compile(r"\b(chargeback_[a-z_]+?)(?:_bucket|_sum|_count)?\b")


def test_raw_metric_names_are_in_the_contract() -> None:
    names = {v for k, v in vars(contract).items() if k.isupper() and isinstance(v, str)}
    for key in KEYS:
        dash = load(key)
        texts = [e for _, e in all_exprs(dash)] + [
            v["query"] for v in dash["templating"]["list"] if v["type"] == "query"
        ]
        for text in texts:
            for name in RAW.findall(RECORDED.sub("", text)):
                assert (
                    name in names or re.sub(r"_(prompt|completion)_tokens_total$", "", name) == "chargeback"
                ), f"{key}: {name} is not in exporter/contract.py"


def recorded_names() -> set[str]:
    names: set[str] = set()
    for path in stack.rule_files():
        doc = yaml.safe_load(path.read_text()) or {}
        for group in doc.get("groups", []):
            for rule in group.get("rules", []):
                if "record" in rule:
                    names.add(rule["record"])
    return names


def test_recording_rules_used_exist_in_rules() -> None:
    defined = recorded_names()
    if not defined:
        pytest.skip("rules/*.yaml holds no recording rules yet")
    used = {(key, n) for key in KEYS for _, e in all_exprs(load(key)) for n in RECORDED.findall(e)}
    missing = sorted({n for _, n in used} - defined)
    assert not missing, f"recording rules used by the dashboards but not defined in rules/: {missing}"


def test_configmaps_for_the_grafana_sidecar() -> None:
    """dashboards/kustomization.yaml wraps each committed JSON file in a ConfigMap (configMapGenerator)."""
    import kubernetes_validate
    import kustomize_offline

    built = {o["metadata"]["name"]: o for _, o in kustomize_offline.resolve(REPO / build.DASHBOARD_DIR, [])}
    assert sorted(built) == sorted(common.UIDS.values())
    for key in KEYS:
        doc = built[common.UIDS[key]]
        assert doc["kind"] == "ConfigMap"
        assert doc["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert doc["metadata"]["annotations"] == {
            "grafana_folder": build.GRAFANA_FOLDER,
            "chargeback/title": common.TITLES[key],
        }
        assert doc["data"] == {
            build.json_name(key): (REPO / build.DASHBOARD_DIR / build.json_name(key)).read_text()
        }
        kubernetes_validate.validate(doc, "1.29", strict=True)
        # kubectl apply keeps a copy in an annotation limited to 256 KiB
        assert len(json.dumps(doc)) < 256 * 1024


def test_provisioning_files() -> None:
    ds = yaml.safe_load((REPO / "deploy/grafana/provisioning/datasources/chargeback.yaml").read_text())
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    prov = yaml.safe_load((REPO / "deploy/grafana/provisioning/dashboards/chargeback.yaml").read_text())
    (provider,) = prov["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")


def substitute_for_parse(expr: str) -> str:
    """Any valid values: this only checks that Prometheus parses the expressions."""
    for name, value in {
        "__rate_interval": "1m",
        "__interval": "15s",
        "__range_s": "3600",
        "__range": "1h",
    }.items():
        expr = expr.replace("${" + name + "}", value).replace("$" + name, value)
    return re.sub(r"\$\{?(\w+)\}?", "x", expr)


@pytest.fixture(scope="module")
def empty_prometheus(tmp_path_factory: pytest.TempPathFactory):
    try:
        prom = stack.start_prometheus(tmp_path_factory.mktemp("prom-parse"))
    except stack.StackError as exc:
        pytest.skip(str(exc))
    yield prom
    prom.stop()


def test_every_query_parses(empty_prometheus: stack.ManagedProcess) -> None:
    errors = []
    for key in KEYS:
        for title, expr in all_exprs(load(key)):
            q = substitute_for_parse(expr)
            body = requests.get(
                f"{empty_prometheus.url}/api/v1/query", params={"query": q}, timeout=10
            ).json()
            if body["status"] != "success":
                errors.append(f"{key} / {title}: {body.get('error')} in {q}")
    assert not errors, "\n".join(errors)


# ----------------------------------------------------------------------------- Grafana's schema


@pytest.mark.parametrize("key", KEYS)
def test_dashboards_decode_strictly_against_grafanas_schema(key: str) -> None:
    """Every panel, target, variable and the dashboard itself decode with grafana-foundation-sdk's models
    and come back unchanged: no key the schema does not know, no legacy shape Grafana would migrate."""
    strict = importlib.import_module("dashboards.strict")
    dash = load(key)
    assert strict.problems(dash) == []
    assert dash["schemaVersion"] == 41
    for p in panels(dash):
        assert p["type"] == "row" or p["pluginVersion"] == "11.6.0", p["title"]


def test_strict_check_names_what_grafana_would_migrate() -> None:
    """The Grafana 6 shapes grafanalib wrote (and issue 16 found) are each named."""
    strict = importlib.import_module("dashboards.strict")
    dash = load("overview")
    (gauge,) = [p for p in dash["panels"] if p["title"] == "Budget consumption by team"]
    gauge["options"]["fieldOptions"] = {"defaults": {"max": 100}}
    (idle_at,) = [i for i, p in enumerate(dash["panels"]) if p["title"] == "Idle cost (per hour)"]
    idle = dash["panels"][idle_at]
    idle["fieldConfig"]["defaults"]["color"] = None
    gauge["targets"][0]["step"] = 10
    gauge["fieldConfig"]["defaults"]["maxValue"] = 1.5
    del gauge["pluginVersion"]
    spend = next(p for p in dash["panels"] if p["type"] == "timeseries")
    spend["fieldConfig"]["defaults"]["custom"]["fillOpacityy"] = 10
    spend["fieldConfig"]["defaults"]["custom"]["drawStyle"] = "squiggle"
    spend["options"]["legend"]["displayMode"] = "wide"
    spend["targets"][0]["format"] = "csv"
    dash["rows"] = []
    dash["schemaVersion"] = 39
    where = f"panel {gauge['id']} 'Budget consumption by team'"
    got = strict.problems(dash)
    for expected in [
        "schemaVersion is 39, not 41",
        "rows: legacy dashboard key",
        f"panels[{idle_at}].fieldConfig.defaults.color: null",
        f"panel {idle['id']} 'Idle cost (per hour)': does not decode (TypeError: argument of type 'NoneType' is not "
        "iterable)",
        f"{where}: legacy key options.fieldOptions",
        f"{where}: pluginVersion is None, not '11.6.0'",
        f"{where}: target A: legacy key step",
        f"{where}: options.fieldOptions: not in Grafana's schema",
        f"{where}: fieldConfig.defaults.maxValue: not in Grafana's schema",
        f"panel {spend['id']} {spend['title']!r}: fieldConfig.defaults.custom.fillOpacityy: not in Grafana's schema",
        # values that decode but do not fit the type the schema gives them
        f"panel {spend['id']} {spend['title']!r}: field_config.defaults.custom.draw_style: 'squiggle' is not one "
        "of ['line', 'bars', 'points']",
        f"panel {spend['id']} {spend['title']!r}: options.legend.display_mode: 'wide' is not one of "
        "['list', 'table', 'hidden']",
        f"panel {spend['id']} {spend['title']!r}: targets[0].format_val: 'csv' is not one of "
        "['time_series', 'table', 'heatmap']",
    ]:
        assert expected in got, f"{expected!r} not in {got}"


def test_bar_gauges_keep_their_field_config() -> None:
    """What Grafana's bar gauge migration destroyed: max, thresholds and links of the budget gauge, and
    no max (scaled to the data) for energy."""
    (budget,) = [p for p in load("overview")["panels"] if p["title"] == "Budget consumption by team"]
    d = budget["fieldConfig"]["defaults"]
    assert (d["min"], d["max"], d["unit"]) == (0, 1.5, "percentunit")
    assert [s["value"] for s in d["thresholds"]["steps"]] == [None, 0.8, 1.0]
    assert d["links"] and "fieldOptions" not in budget["options"]
    (energy,) = [p for p in load("gpu_fleet")["panels"] if p["title"] == "Energy used in the selected range"]
    assert "max" not in energy["fieldConfig"]["defaults"]
    assert energy["fieldConfig"]["defaults"]["unit"] == "joule"


# ----------------------------------------------------------------------------- exact figures (promtool)


def _all_selected(expr: str) -> str:
    """The expression as Grafana sends it with every variable at "All" (``.*``)."""
    return re.sub(r"\$\{?(cluster|job|team|user|pool|gpu)\}?", ".*", expr)


def _panel_expr(key: str, title: str) -> str:
    (panel,) = [p for p in content_panels(load(key)) if p["title"] == title]
    (t,) = panel["targets"]
    return str(t["expr"])


def _promtool_values(tmp_path: Path, series: list[tuple[str, str]], expr: str, expected: list[dict]) -> None:
    """Evaluate ``expr`` at 5m over ``series`` with promtool and require exactly ``expected``."""
    doc = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in series],
                "promql_expr_test": [{"expr": expr, "eval_time": "5m", "exp_samples": expected}],
            }
        ],
    }
    path = tmp_path / "dashboard_test.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    res = subprocess.run(
        [stack.find_binary("promtool"), "test", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr


UNRECOVERED_INPUT = [
    ('pool:chargeback_unrecovered_cost_per_hour:rate5m{pool="small"}', "0.75+0x10"),
    ('pool:chargeback_unrecovered_cost_per_hour:rate5m{pool="large"}', "2.5+0x10"),
]


@pytest.mark.parametrize(
    ("method", "expected"),
    [("proxy-price-per-token", 3.25), ("token-share", 0.0), (None, 0.0)],
)
def test_unrecovered_cost_follows_the_realtime_method(
    tmp_path: Path, method: str | None, expected: float
) -> None:
    """Under proxy-price-per-token the panel shows the unused capacity's cost the rules record; under
    token-share (also the rules' default without chargeback_realtime_method_info) the whole cost is
    charged and it shows 0, not the proxy-price figure next to a spend that already covers it."""
    series = list(UNRECOVERED_INPUT)
    if method:
        series.append(
            (
                f'chargeback_realtime_method_info{{job="chargeback-proxy", instance="p1", method="{method}"}}',
                "1+0x10",
            )
        )
    expr = _all_selected(_panel_expr("overview", "Unrecovered cost (per hour)"))
    _promtool_values(tmp_path, series, expr, [{"labels": "{}", "value": expected}])


def test_idle_spend_rate_is_zero_not_no_data(tmp_path: Path) -> None:
    """With no traffic the spend-rate series do not exist (a share of nothing is undefined): the panels
    show 0 for the whole stack and for every configured team, with the team label kept."""
    month_to_date = [
        ('team:chargeback_spend:month_to_date{team="research"}', "3+0x10"),
        ('team:chargeback_spend:month_to_date{team="legal"}', "0+0x10"),
    ]
    _promtool_values(
        tmp_path,
        month_to_date,
        _all_selected(_panel_expr("overview", "Spend rate (per hour)")),
        [{"labels": "{}", "value": 0}],
    )
    by_team = [{"labels": f'{{team="{t}"}}', "value": 0} for t in ("legal", "research")]
    _promtool_values(
        tmp_path,
        month_to_date,
        _all_selected(_panel_expr("overview", "Spend rate by team (per hour)")),
        by_team,
    )
    _promtool_values(
        tmp_path, month_to_date, _all_selected(_panel_expr("team", "Spend rate (per hour)")), by_team
    )


def test_time_zone_follows_the_billing_zone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The committed dashboards use the example config's zone; --config.file gives another one, and a bad
    zone is refused with the config's own error."""
    assert {load(k)["timezone"] for k in KEYS} == {"Europe/Berlin"}
    example = (REPO / "deploy/chargeback.example.yaml").read_text()
    assert "timezone: Europe/Berlin" in example
    config = tmp_path / "chargeback.yaml"
    config.write_text(example.replace("timezone: Europe/Berlin", "timezone: America/New_York"))
    assert build.main(["--config.file", str(config), "--out", str(tmp_path)]) == 0
    dash = json.loads((tmp_path / "dashboards" / "chargeback-team.json").read_text())
    assert dash["timezone"] == "America/New_York"
    config.write_text(example.replace("timezone: Europe/Berlin", "timezone: Mars/Olympus"))
    with pytest.raises(SystemExit):
        build.main(["--config.file", str(config), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert "--config.file" in err and "timezone" in err and "Mars/Olympus" in err


SERIES = re.compile(r"(?<![\w:])((?:[a-z_]+:)?chargeback_[a-z_]+(?::[a-z0-9_]+)?)(\{[^}]*\})?")


def test_queries_use_the_rules_selectors_and_the_scope_variables() -> None:
    """Raw metrics are read from the scrape jobs the rules read (rules/generate.py's selectors) narrowed by
    $cluster and $job; recorded series (no job label) by $cluster."""
    rules_generate = importlib.import_module("rules.generate")
    jobs = {rules_generate.PROXY_SELECTOR, rules_generate.GPU_SELECTOR}
    checked = 0
    for key in KEYS:
        dash = load(key)
        texts = [f"{title}: {e}" for title, e in all_exprs(dash)] + [
            f"variable {v['name']}: {v['query']}"
            for v in dash["templating"]["list"]
            if v["type"] == "query" and v["name"] not in {"cluster", "job"}
        ]
        for text in texts:
            for name, matchers in SERIES.findall(text):
                checked += 1
                matchers = matchers or "{}"
                assert 'cluster=~"$cluster"' in matchers, f"{key}: {name} without $cluster in {text}"
                if ":" in name:
                    continue
                assert any(job in matchers for job in jobs), (
                    f"{key}: {name} without the rules' job selector in {text}"
                )
                assert 'job=~"$job"' in matchers, f"{key}: {name} without $job in {text}"
        variables = {v["name"]: v for v in dash["templating"]["list"]}
        for name in ("cluster", "job", *(["team"] if key == "team" else [])):
            assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*", name
            assert variables[name]["multi"], name
    assert checked > 100


# ----------------------------------------------------------------------------- declared layout


@pytest.mark.parametrize("key", KEYS)
def test_ids_and_places_follow_the_declared_order(key: str) -> None:
    """Ids count rows and panels in the order they are declared, which is also their order on screen."""
    ps = load(key)["panels"]
    assert [p["id"] for p in ps] == list(range(1, len(ps) + 1))
    places = [(p["gridPos"]["y"], p["gridPos"]["x"]) for p in ps]
    assert places == sorted(places)


def test_layout_fills_lines_wraps_and_stacks_rows() -> None:
    layout = importlib.import_module("dashboards.layout")

    def panel(title: str, width: int | None = None, height: int | None = None, kind: str = "stat") -> Any:
        return layout.Panel(
            title, kind, layout.MONEY, ["up"], f"{layout.CURRENCY} a description", width=width, height=height
        )

    rows = [
        layout.Row("first", [panel("a", 16), panel("b", 8, 6), panel("c", 12)]),
        layout.Row("second", [panel("d", 24, kind="timeseries")], height=5),
        layout.Row("empty"),
        layout.Row("third", [panel("e", kind="table"), panel("f")]),
    ]
    out = layout.panels_json(rows, "currencyUSD", "USD")
    got = {p["title"]: (p["id"], *(p["gridPos"][k] for k in "xywh")) for p in out}
    assert got == {
        "first": (1, 0, 0, 24, 1),
        "a": (2, 0, 1, 16, 4),  # a stat is 4 high
        "b": (3, 16, 1, 8, 6),
        "c": (4, 0, 7, 12, 4),  # wrapped below the taller of a and b
        "second": (5, 0, 11, 24, 1),
        "d": (6, 0, 12, 24, 5),  # the row's height
        "empty": (7, 0, 17, 24, 1),
        "third": (8, 0, 18, 24, 1),
        "e": (9, 0, 19, 12, 8),  # the row's width, a graph or table is 8 high
        "f": (10, 12, 19, 12, 4),
    }
    assert out[1]["fieldConfig"]["defaults"]["unit"] == "currencyUSD"
    assert out[1]["description"] == "USD a description"
    with pytest.raises(ValueError, match="wider than the grid"):
        layout.panels_json([layout.Row("r", [panel("wide", 25)])], "currencyUSD", "USD")

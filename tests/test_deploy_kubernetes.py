"""Offline checks of deploy/kubernetes/: the kustomization resolves, every object validates against the
Kubernetes API schemas (PyPI kubernetes-validate) or the Prometheus Operator kinds' schemas
(tests/schemas/), the PrometheusRule is exactly what rules/ generates, and the pieces fit together
(names, ports, labels, secrets, the config each container loads, security contexts).

No cluster, no Docker: the objects come from tests/kustomize_offline.py, a small resolver that
understands the kustomization features used here (including configMapGenerator), and when kubectl is
installed `kubectl kustomize` must build exactly the same objects, generated ConfigMaps included.
"""

from __future__ import annotations

import copy
import importlib.util
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import kustomize_offline
import pytest
import yaml

from exporter.config import parse_config

REPO = Path(__file__).resolve().parent.parent
K8S = REPO / "deploy" / "kubernetes"
SCHEMAS = Path(__file__).resolve().parent / "schemas" / "monitoring.coreos.com_v1.yaml"
NAMESPACE = "llm-chargeback"
PART_OF = ("app.kubernetes.io/part-of", "llm-chargeback")
JOBS = {"chargeback-proxy", "chargeback-gpu-exporter"}
# Kubernetes versions to validate against: an older one still widely run, and the newest shipped.
K8S_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
MONITORING_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
SECRET_EXAMPLE = K8S / "secrets.example.yaml"
# Files the kustomization lists that others write; named in the failure so it is clear who is missing.
OWNERS = {
    "prometheusrule.yaml": "generated from rules/*.yaml: run python deploy/kubernetes/generate_prometheusrule.py",
    "reporter-cronjob.yaml": "the reporter's CronJob (issue 5)",
    "dashboards": "the dashboards' JSON and kustomization, written by dashboards/build.py",
}
# Containers whose root filesystem must stay writable, and why (the manifest says so too).
WRITABLE_ROOT = {"vllm": "vLLM/torch/Triton compile caches"}


# --------------------------------------------------------------------------- resolving the kustomization


_load_docs = kustomize_offline.load_docs
_pod_spec = kustomize_offline.pod_spec
_containers = kustomize_offline.containers


@pytest.fixture(scope="module")
def resolved() -> tuple[list[tuple[Path, dict[str, Any]]], list[str]]:
    missing: list[str] = []
    objects = kustomize_offline.resolve(K8S, missing)
    return objects, [str(Path(m).relative_to(REPO)) for m in missing]


@pytest.fixture(scope="module")
def objects(resolved) -> list[dict[str, Any]]:
    return [o for _, o in resolved[0]]


def _one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# --------------------------------------------------------------------------- the kustomization


def test_kustomization_lists_only_existing_files(resolved):
    _, missing = resolved
    if missing:
        lines = [f"  {m}  ({OWNERS.get(Path(m).name, 'deploy/kubernetes')})" for m in missing]
        pytest.fail(
            "deploy/kubernetes/kustomization.yaml lists files that do not exist:\n" + "\n".join(lines)
        )


def _kustomize_command() -> list[str] | None:
    """`kustomize build` or `kubectl kustomize`, whichever is installed (both use the default load restrictor)."""
    if kustomize := shutil.which("kustomize"):
        return [kustomize, "build"]
    if kubectl := shutil.which("kubectl"):
        return [kubectl, "kustomize"]
    return None


def test_kustomize_builds_the_same_objects(resolved):
    command = _kustomize_command()
    if command is None:
        pytest.skip(
            "neither kustomize nor kubectl installed: the offline resolver's result is checked by the other tests"
        )
    if resolved[1]:
        pytest.skip("files missing: see test_kustomization_lists_only_existing_files")
    # kustomize only reads the directory; nothing is contacted.
    out = subprocess.run([*command, str(K8S)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    built = [d for d in yaml.safe_load_all(out.stdout) if d]
    key = lambda o: (o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"])  # noqa: E731
    ours = [o for _, o in resolved[0]]
    assert sorted(map(key, built)) == sorted(map(key, ours))
    by_key = {key(o): o for o in ours}
    for obj in built:
        mine = by_key[key(obj)]
        assert obj["metadata"].get("labels") == mine["metadata"].get("labels"), key(obj)
        assert obj["metadata"].get("annotations") == mine["metadata"].get("annotations"), key(obj)
        assert [c["image"] for c in _containers(obj)] == [c["image"] for c in _containers(mine)], key(obj)
        if obj["kind"] == "ConfigMap":
            assert obj["data"] == mine["data"], key(obj)


def test_dashboard_configmaps_are_built_from_the_committed_json(resolved):
    """Each dashboard is committed once (dashboards/*.json); its ConfigMap is made by configMapGenerator."""
    dashboards = REPO / "dashboards"
    configmaps = {
        o["metadata"]["name"]: o
        for _, o in resolved[0]
        if o["kind"] == "ConfigMap" and o["metadata"].get("labels", {}).get("grafana_dashboard") == "1"
    }
    files = sorted(dashboards.glob("chargeback-*.json"))
    assert sorted(configmaps) == [f.stem for f in files]
    for f in files:
        cm = configmaps[f.stem]
        assert cm["data"] == {f.name: f.read_text(encoding="utf-8")}
        assert cm["metadata"]["annotations"]["grafana_folder"] == "Chargeback"
        assert cm["metadata"]["labels"]["app.kubernetes.io/component"] == "dashboards"
    # No second copy of a dashboard is committed under deploy/.
    copies = [
        p
        for p in (REPO / "deploy").rglob("*")
        if p.is_file()
        and "chargeback-overview" in p.read_text(errors="replace")
        and "panels" in p.read_text(errors="replace")
    ]
    assert copies == []


def test_every_object_is_in_the_namespace_and_labelled(objects):
    kinds = {o["kind"] for o in objects}
    for kind in (
        "Namespace",
        "ConfigMap",
        "Deployment",
        "Service",
        "DaemonSet",
        "NetworkPolicy",
        "PodMonitor",
        "ServiceMonitor",
    ):
        assert kind in kinds, f"no {kind} in the kustomization"
    assert _one(objects, "Namespace", NAMESPACE)
    names = set()
    for obj in objects:
        meta = obj["metadata"]
        ident = f"{obj['kind']}/{meta['name']}"
        assert ident not in names, f"{ident} defined twice"
        names.add(ident)
        if obj["kind"] != "Namespace":
            assert meta.get("namespace") == NAMESPACE, ident
        assert meta.get("labels", {}).get(PART_OF[0]) == PART_OF[1], ident


# --------------------------------------------------------------------------- schemas


def test_core_kinds_validate_against_kubernetes_schemas(resolved):
    files, _ = resolved
    checked = 0
    for path, obj in [*files, *((SECRET_EXAMPLE, d) for d in _load_docs(SECRET_EXAMPLE))]:
        if obj["kind"] in MONITORING_KINDS:
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = "/".join(map(str, exc.path))
                pytest.fail(
                    f"{path.relative_to(REPO)}: {obj['kind']}/{obj['metadata']['name']} (Kubernetes {version}): {where}: {exc.message}"
                )
            except kubernetes_validate.SchemaNotFoundError as exc:
                pytest.fail(f"{path.relative_to(REPO)}: {exc.message}")
        checked += 1
    assert checked >= 8


def _monitoring_validator(kind: str) -> jsonschema.Draft202012Validator:
    doc = yaml.safe_load(SCHEMAS.read_text(encoding="utf-8"))
    schema = {"$schema": doc["$schema"], "$defs": doc["$defs"], **doc["kinds"][kind]}
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _monitoring_errors(obj: dict[str, Any]) -> list[str]:
    validator = _monitoring_validator(obj["kind"])
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]


def test_monitoring_kinds_validate_against_operator_schemas(resolved):
    kinds = set()
    for path, obj in resolved[0]:
        if obj["kind"] not in MONITORING_KINDS:
            continue
        errors = _monitoring_errors(obj)
        assert not errors, (
            f"{path.relative_to(REPO)}: {obj['kind']}/{obj['metadata']['name']}:\n" + "\n".join(errors)
        )
        kinds.add(obj["kind"])
    assert {"ServiceMonitor", "PodMonitor"} <= kinds


def test_monitoring_schema_rejects_typos_and_bad_values():
    good = yaml.safe_load((K8S / "proxy-podmonitor.yaml").read_text(encoding="utf-8"))
    assert _monitoring_errors(good) == []
    typo = copy.deepcopy(good)
    typo["spec"]["podMetricsEndpoints"][0]["relabeling"] = typo["spec"]["podMetricsEndpoints"][0].pop(
        "relabelings"
    )
    assert any("relabeling" in e for e in _monitoring_errors(typo))
    bad = copy.deepcopy(good)
    bad["spec"]["podMetricsEndpoints"][0]["interval"] = "15 seconds"
    assert any("interval" in e for e in _monitoring_errors(bad))
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "x"},
        "spec": {"groups": [{"name": "g", "rules": [{"record": "a:b", "alert": "A", "expr": "1"}]}]},
    }
    assert _monitoring_errors(rule)


# --------------------------------------------------------------------------- the PrometheusRule


def _generator():
    spec = importlib.util.spec_from_file_location(
        "generate_prometheusrule", K8S / "generate_prometheusrule.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prometheusrule_is_generated_from_rules_exactly():
    gen = _generator()
    files = gen.rule_files(REPO / "rules")
    if not files:
        pytest.fail("rules/*.yaml: no rule files yet (issue 4); the PrometheusRule is generated from them")
    expected = gen.render(gen.build(REPO / "rules"))
    target = K8S / "prometheusrule.yaml"
    assert target.exists(), (
        "deploy/kubernetes/prometheusrule.yaml missing: run python deploy/kubernetes/generate_prometheusrule.py"
    )
    assert target.read_text(encoding="utf-8") == expected, (
        "deploy/kubernetes/prometheusrule.yaml differs from rules/: run python deploy/kubernetes/generate_prometheusrule.py"
    )
    # And the objects carry exactly the groups of the rule files, one object per file.
    objects = _load_docs(target)
    assert [o["metadata"]["annotations"]["llm-chargeback/source"] for o in objects] == [
        f"rules/{f.name}" for f in files
    ]
    for obj, path in zip(objects, files, strict=True):
        assert obj["spec"]["groups"] == yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]
        assert _monitoring_errors(obj) == [], obj["metadata"]["name"]


def test_rules_select_only_the_documented_job_names():
    target = K8S / "prometheusrule.yaml"
    if not target.exists():
        pytest.fail(
            "deploy/kubernetes/prometheusrule.yaml missing: run python deploy/kubernetes/generate_prometheusrule.py"
        )
    jobs = set()
    for obj in _load_docs(target):
        for group in obj["spec"]["groups"]:
            for rule in group["rules"]:
                jobs.update(re.findall(r'\bjob\s*=~?\s*"([^"]*)"', str(rule["expr"])))
    assert jobs, "no rule selects a job: the ServiceMonitor/PodMonitor job names would be untested"
    for job in jobs:
        assert job in JOBS or set(job.split("|")) <= JOBS, (
            f"a rule selects job {job!r}; the monitors set {sorted(JOBS)}"
        )


def _write_rules(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir()
    for name, text in files.items():
        (directory / name).write_text(text, encoding="utf-8")
    return directory


RECORDING = """groups:
  - name: chargeback-tokens
    interval: 30s
    rules:
      - record: team_model:chargeback_prompt_tokens:rate5m
        expr: |
          sum by (team, model) (
            rate(chargeback_prompt_tokens_total{job="chargeback-proxy"}[5m])
          )
"""
ALERTS = """groups:
  - name: chargeback-alerts
    rules:
      - alert: ChargebackProxyDown
        expr: up{job="chargeback-proxy"} == 0
        for: 5m
        labels: {severity: critical}
        annotations: {summary: "proxy {{ $labels.instance }} is down"}
"""


def test_generator_wraps_each_rule_file_unchanged(tmp_path):
    gen = _generator()
    rules = _write_rules(
        tmp_path / "rules", {"recording.yaml": RECORDING, "alerts.yaml": ALERTS, "notes.txt": "x"}
    )
    (rules / "tests").mkdir()
    (rules / "tests" / "alerts_test.yaml").write_text("rule_files: [../alerts.yaml]\n", encoding="utf-8")
    out = tmp_path / "prometheusrule.yaml"
    assert gen.main(["--rules-dir", str(rules), "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert text.startswith("# GENERATED by deploy/kubernetes/generate_prometheusrule.py")
    assert "expr: |\n" in text  # multi-line PromQL stays readable
    docs = _load_docs(out)
    assert [d["metadata"]["name"] for d in docs] == ["chargeback-alerts", "chargeback-recording"]
    assert docs[0]["spec"] == yaml.safe_load(ALERTS)
    assert docs[1]["spec"] == yaml.safe_load(RECORDING)
    for doc in docs:
        assert _monitoring_errors(doc) == []
        kubernetes_validate_metadata_name = doc["metadata"]["name"]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", kubernetes_validate_metadata_name)
    assert gen.main(["--rules-dir", str(rules), "--out", str(out), "--check"]) == 0
    (rules / "recording.yaml").write_text(RECORDING.replace("30s", "1m"), encoding="utf-8")
    assert gen.main(["--rules-dir", str(rules), "--out", str(out), "--check"]) == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("groups: [", "alerts.yaml: not valid YAML"),
        ("rules: []", "alerts.yaml: expected a mapping with exactly one key 'groups'"),
        (
            "groups:\n  - name: g\n    rules:\n      - expr: up\n",
            "alerts.yaml: groups[0].rules[0]: needs exactly one of 'record' and 'alert'",
        ),
        (
            "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up\n        fro: 5m\n",
            "alerts.yaml: groups[0].rules[0]: unknown keys ['fro']",
        ),
        (
            "groups:\n  - name: g\n    rules: []\n  - name: g\n    rules: []\n",
            "alerts.yaml: groups[1].name: group 'g' appears twice",
        ),
    ],
)
def test_generator_names_the_file_and_key_of_a_bad_rule_file(tmp_path, capsys, text, message):
    gen = _generator()
    rules = _write_rules(tmp_path / "rules", {"alerts.yaml": text})
    out = tmp_path / "out.yaml"
    assert gen.main(["--rules-dir", str(rules), "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_generator_refuses_an_empty_rules_directory(tmp_path, capsys):
    gen = _generator()
    assert (
        gen.main(
            ["--rules-dir", str(_write_rules(tmp_path / "rules", {})), "--out", str(tmp_path / "o.yaml")]
        )
        == 2
    )
    assert "no rule files" in capsys.readouterr().err


# --------------------------------------------------------------------------- how the pieces fit


def test_clients_reach_only_the_proxy_port(objects):
    deployment = _one(objects, "Deployment", "vllm-llama-3-1-8b")
    pod = deployment["spec"]["template"]
    containers = {c["name"]: c for c in pod["spec"]["containers"]}
    proxy, vllm = containers["chargeback-proxy"], containers["vllm"]
    assert {p["name"]: p["containerPort"] for p in proxy["ports"]} == {
        "proxy-api": 8080,
        "proxy-metrics": 9841,
    }
    assert "--host=127.0.0.1" in vllm["args"] and "--port=8000" in vllm["args"]
    assert "ports" not in vllm, "vLLM must not publish a port: only the proxy in its pod talks to it"
    services = [o for o in objects if o["kind"] == "Service"]
    api = _one(objects, "Service", "llm-api")
    assert _matches(api["spec"]["selector"], pod["metadata"]["labels"])
    assert [(p["port"], p["targetPort"]) for p in api["spec"]["ports"]] == [(8080, "proxy-api")]
    for svc in services:
        for port in svc["spec"]["ports"]:
            assert port.get("targetPort") not in {"proxy-metrics", 9841, 8000}, (
                f"Service/{svc['metadata']['name']} exposes {port}"
            )
    # The proxy's config sends every model to the vLLM in its own pod.
    config = _config(objects)
    assert {u for m in config.models.values() for u in m.upstreams} == {"http://127.0.0.1:8000/v1"}
    assert config.proxy.listen == ("0.0.0.0:8080",) and config.proxy.metrics_listen == "0.0.0.0:9841"
    assert config.gpu_exporter.listen == "0.0.0.0:9842"
    assert config.ledger.url.startswith("postgresql://")
    # Drain: the pod lives long enough for the proxy's preStop pause plus its shutdown grace.
    pre_stop = int(proxy["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["spec"]["terminationGracePeriodSeconds"] > pre_stop + config.proxy.shutdown_grace_seconds
    assert (
        int(vllm["lifecycle"]["preStop"]["exec"]["command"][-1])
        >= pre_stop + config.proxy.shutdown_grace_seconds
    )


def test_metrics_port_is_open_to_prometheus_only(objects):
    policy = _one(objects, "NetworkPolicy", "chargeback-proxy")
    pod_labels = _one(objects, "Deployment", "vllm-llama-3-1-8b")["spec"]["template"]["metadata"]["labels"]
    assert _matches(policy["spec"]["podSelector"]["matchLabels"], pod_labels)
    rules = policy["spec"]["ingress"]
    by_port = {r["ports"][0]["port"]: r for r in rules}
    assert set(by_port) == {"proxy-api", "proxy-metrics"}
    assert "from" not in by_port["proxy-api"]
    assert by_port["proxy-metrics"]["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]


def _relabelled_job(endpoint: dict[str, Any]) -> str | None:
    job = None
    for r in endpoint.get("relabelings", []):
        if (
            r.get("targetLabel") == "job"
            and r.get("action", "replace").lower() == "replace"
            and not r.get("sourceLabels")
        ):
            job = r["replacement"]
    return job


def test_monitors_scrape_the_right_pods_under_the_contract_job_names(objects):
    proxy_pm = _one(objects, "PodMonitor", "chargeback-proxy")
    deployment = _one(objects, "Deployment", "vllm-llama-3-1-8b")
    assert _matches(
        proxy_pm["spec"]["selector"]["matchLabels"], deployment["spec"]["template"]["metadata"]["labels"]
    )
    port_names = {p["name"] for c in _containers(deployment) for p in c.get("ports", [])}
    [endpoint] = proxy_pm["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "proxy-metrics" and endpoint["port"] in port_names
    assert _relabelled_job(endpoint) == "chargeback-proxy"

    exporter_sm = _one(objects, "ServiceMonitor", "chargeback-gpu-exporter")
    service = _one(objects, "Service", "chargeback-gpu-exporter")
    daemonset = _one(objects, "DaemonSet", "chargeback-gpu-exporter")
    assert _matches(exporter_sm["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert _matches(service["spec"]["selector"], daemonset["spec"]["template"]["metadata"]["labels"])
    [endpoint] = exporter_sm["spec"]["endpoints"]
    [port] = service["spec"]["ports"]
    assert endpoint["port"] == port["name"] and port["port"] == 9842
    assert {p["name"]: p["containerPort"] for c in _containers(daemonset) for p in c["ports"]} == {
        port["targetPort"]: 9842
    }
    assert _relabelled_job(endpoint) == "chargeback-gpu-exporter"

    monitors = [o for o in objects if o["kind"] in {"PodMonitor", "ServiceMonitor"}]
    jobs = {
        _relabelled_job(e)
        for m in monitors
        for e in m["spec"].get("podMetricsEndpoints", m["spec"].get("endpoints", []))
    }
    assert jobs == JOBS


def test_gpu_exporter_runs_on_gpu_nodes_with_nvml_access(objects):
    daemonset = _one(objects, "DaemonSet", "chargeback-gpu-exporter")
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["runtimeClassName"] == "nvidia"
    [container] = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert "nvidia.com/gpu" not in container["resources"].get("requests", {}), (
        "the exporter must not take a GPU away"
    )
    assert container["args"][0] == "gpu-exporter"
    assert container["readinessProbe"]["httpGet"] == {"path": "/-/ready", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/-/healthy", "port": "metrics"}


def _config_text(objects) -> str:
    return _one(objects, "ConfigMap", "chargeback-config")["data"]["chargeback.yaml"]


def _config(objects, environ: dict[str, str] | None = None):
    text = _config_text(objects)
    if environ is None:
        environ = dict.fromkeys(_required_env(text), "x")
    return parse_config(text, "chargeback.yaml", environ)


def _required_env(text: str) -> set[str]:
    """Variables the config names without a ${NAME:-default}: the container must set them."""
    return {m.group(1) for m in re.finditer(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text)}


def _secret_keys() -> dict[str, set[str]]:
    return {
        d["metadata"]["name"]: set(d.get("stringData", {})) | set(d.get("data", {}))
        for d in _load_docs(SECRET_EXAMPLE)
    }


def test_every_workload_has_what_it_references(resolved):
    files, _ = resolved
    objects = [o for _, o in files]
    configmaps = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ConfigMap"}
    secrets = _secret_keys()
    config_text = _config_text(objects)
    workloads = [(p, o) for p, o in files if _pod_spec(o) is not None]
    assert {o["kind"] for _, o in workloads} >= {"Deployment", "DaemonSet"}
    for path, obj in workloads:
        where = f"{path.relative_to(REPO)}: {obj['kind']}/{obj['metadata']['name']}"
        pod = _pod_spec(obj)
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for v in volumes.values():
            if "configMap" in v:
                assert v["configMap"]["name"] in configmaps, (
                    f"{where}: volume {v['name']}: no ConfigMap {v['configMap']['name']}"
                )
            if "secret" in v:
                assert v["secret"]["secretName"] in secrets, (
                    f"{where}: volume {v['name']}: no Secret {v['secret']['secretName']} in secrets.example.yaml"
                )
        for c in _containers(obj):
            env: dict[str, str] = {}
            for e in c.get("env", []):
                ref = e.get("valueFrom", {})
                if "secretKeyRef" in ref:
                    s = ref["secretKeyRef"]
                    assert s["key"] in secrets.get(s["name"], set()), (
                        f"{where}: {c['name']}: env {e['name']}: {s['name']}/{s['key']} not in secrets.example.yaml"
                    )
                    env[e["name"]] = "example"
                elif "configMapKeyRef" in ref:
                    cm = ref["configMapKeyRef"]
                    assert cm["key"] in configmaps.get(cm["name"], {}).get("data", {}), (
                        f"{where}: {c['name']}: env {e['name']}"
                    )
                    env[e["name"]] = configmaps[cm["name"]]["data"][cm["key"]]
                else:
                    env[e["name"]] = e.get("value", "")
            for src in c.get("envFrom", []):
                if "secretRef" in src:
                    assert src["secretRef"]["name"] in secrets, f"{where}: {c['name']}: envFrom {src}"
                    env.update(dict.fromkeys(secrets[src["secretRef"]["name"]], "example"))
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes, f"{where}: {c['name']}: mounts undefined volume {m['name']}"
            mounts_config = any(
                volumes[m["name"]].get("configMap", {}).get("name") == "chargeback-config"
                for m in c.get("volumeMounts", [])
            )
            if mounts_config:
                # The container loads the shared config: every ${NAME} it names must be set, and it must validate.
                unset = _required_env(config_text) - set(env)
                assert not unset, (
                    f"{where}: container {c['name']} loads chargeback.yaml but does not set {sorted(unset)}"
                )
                parse_config(config_text, "chargeback.yaml", env)
                assert c["image"].split(":")[0].endswith("llm-chargeback"), f"{where}: {c['name']}"


def test_config_configmap_is_the_example_adapted_for_the_cluster(objects):
    example = yaml.safe_load((REPO / "deploy" / "chargeback.example.yaml").read_text(encoding="utf-8"))
    ours = yaml.safe_load(_config_text(objects))
    assert set(ours) <= set(example), "the in-cluster config uses a section the example does not document"
    assert "${PGPASSWORD}" in ours["ledger"]["url"]
    config = _config(objects, {"PGPASSWORD": "s3cret"})
    assert (
        config.ledger.url
        == "postgresql://chargeback:s3cret@chargeback-db-rw.databases.svc.cluster.local:5432/chargeback"
    )
    assert set(config.teams) == set(example["teams"])


def test_secret_example_is_clearly_an_example():
    [secret] = _load_docs(SECRET_EXAMPLE)
    assert secret["kind"] == "Secret"
    assert all(v.startswith("EXAMPLE-ONLY") for v in secret["stringData"].values())
    assert {"PGPASSWORD", "SMTP_PASSWORD", "VLLM_API_KEY"} <= set(secret["stringData"])
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))["resources"]
    assert SECRET_EXAMPLE.name not in listed, (
        "an apply must never overwrite the real Secret with placeholders"
    )


def test_containers_are_non_root_locked_down_and_sized(resolved):
    for path, obj in resolved[0]:
        pod = _pod_spec(obj)
        if pod is None:
            continue
        where = f"{path.relative_to(REPO)}: {obj['kind']}/{obj['metadata']['name']}"
        pod_sc = pod.get("securityContext", {})
        long_running = obj["kind"] in {"Deployment", "DaemonSet", "StatefulSet"}
        for c in _containers(obj):
            sc = {**pod_sc, **c.get("securityContext", {})}
            name = f"{where}: container {c['name']}"
            assert sc.get("runAsNonRoot") is True or (sc.get("runAsUser") or 0) > 0, (
                f"{name}: must run as non-root"
            )
            assert sc.get("runAsUser", 1) != 0, f"{name}: runAsUser 0"
            assert sc.get("allowPrivilegeEscalation") is False, (
                f"{name}: allowPrivilegeEscalation must be false"
            )
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{name}: capabilities must drop ALL"
            assert sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", (
                f"{name}: seccompProfile RuntimeDefault"
            )
            assert not sc.get("privileged"), f"{name}: privileged"
            if c["name"] not in WRITABLE_ROOT:
                assert sc.get("readOnlyRootFilesystem") is True, (
                    f"{name}: readOnlyRootFilesystem must be true"
                )
            assert c.get("resources", {}).get("requests"), f"{name}: needs resource requests"
            assert c["resources"].get("limits", {}).get("memory"), f"{name}: needs a memory limit"
            if long_running:
                assert "readinessProbe" in c and "livenessProbe" in c, (
                    f"{name}: needs readiness and liveness probes"
                )
        assert pod.get("automountServiceAccountToken") is False, f"{where}: needs no Kubernetes API token"
        assert not pod.get("hostNetwork") and not pod.get("hostPID"), where


def test_proxy_probes_use_the_prometheus_style_health_paths_on_the_api_port(objects):
    deployment = _one(objects, "Deployment", "vllm-llama-3-1-8b")
    proxy = next(c for c in _containers(deployment) if c["name"] == "chargeback-proxy")
    # Readiness turns 503 while the proxy drains; liveness stays 200 so a draining pod is not killed.
    assert proxy["readinessProbe"]["httpGet"] == {"path": "/-/ready", "port": "proxy-api"}
    assert proxy["livenessProbe"]["httpGet"] == {"path": "/-/healthy", "port": "proxy-api"}
    assert proxy["args"][0] == "proxy"
    assert any(
        e["name"] == "PGPASSWORD" and e["valueFrom"]["secretKeyRef"]["name"] == "chargeback-secrets"
        for e in proxy["env"]
    )


def test_reporter_cronjob_loads_the_shared_config(objects):
    cronjobs = [o for o in objects if o["kind"] == "CronJob"]
    if not cronjobs:
        pytest.fail(
            "no CronJob in the kustomization: deploy/kubernetes/reporter-cronjob.yaml (issue 5) is missing"
        )
    for cj in cronjobs:
        containers = _containers(cj)
        assert any("report" in (c.get("args", []) + c.get("command", [])) for c in containers), (
            f"CronJob/{cj['metadata']['name']}"
        )
        volumes = _pod_spec(cj).get("volumes", [])
        assert any(v.get("configMap", {}).get("name") == "chargeback-config" for v in volumes), (
            f"CronJob/{cj['metadata']['name']} should mount ConfigMap chargeback-config (deploy/kubernetes/config.yaml)"
        )


def test_generators_may_read_only_below_their_kustomization(tmp_path):
    """What made dashboards/ hold its own kustomization: kustomize refuses a generator file outside the
    root; the offline resolver refuses it too, while a kustomization directory elsewhere is fine."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.json").write_text("{}\n", encoding="utf-8")
    base = tmp_path / "base"
    base.mkdir()
    (base / "kustomization.yaml").write_text(
        "generatorOptions: {disableNameSuffixHash: true}\n"
        "configMapGenerator:\n  - name: x\n    files: [../data/x.json]\n",
        encoding="utf-8",
    )
    with pytest.raises(AssertionError, match="outside the kustomization root"):
        kustomize_offline.resolve(base, [])
    command = _kustomize_command()
    if command is not None:
        out = subprocess.run([*command, str(base)], capture_output=True, text=True, timeout=60)
        assert out.returncode != 0 and "is not in or below" in out.stderr, out.stderr
    # The fix used here: the generator lives beside the file, and the base includes that directory.
    (tmp_path / "data" / "kustomization.yaml").write_text(
        "generatorOptions: {disableNameSuffixHash: true}\n"
        "configMapGenerator:\n  - name: x\n    files: [x.json]\n",
        encoding="utf-8",
    )
    (base / "kustomization.yaml").write_text("resources: [../data]\n", encoding="utf-8")
    [(_, cm)] = kustomize_offline.resolve(base, [])
    assert cm["data"] == {"x.json": "{}\n"}
    if command is not None:
        out = subprocess.run([*command, str(base)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        [built] = [d for d in yaml.safe_load_all(out.stdout) if d]
        assert built["data"] == cm["data"] and built["metadata"]["name"] == "x"

"""The metric contract (exporter/contract.py) is what the collectors expose and what the docs list, and
the GPU field table (exporter/gpu/fields.py) is all it takes to add a per-GPU reading."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from support.fakenvml import FakeGpu, FakeNvml

from exporter import contract, metrics_doc
from exporter.config import parse_config
from exporter.gpu import fields
from exporter.gpu.collector import GpuCollector
from exporter.gpu.fields import GpuField, NvmlCall
from exporter.gpu.nvml import NvmlBackend
from exporter.gpu.simulated import SimulatedBackend, simulated_uuid
from exporter.ledger.writer import LedgerStats
from exporter.limits.metrics import LimitMetrics
from exporter.metric_spec import MetricSpec
from exporter.proxy.metrics import ProxyMetrics
from exporter.proxy.usage_count import UsageSourceCollector

PROXY_CONFIG = """
currency: CHF
pools: {p: {gpu_hourly_cost: 1, capacity_tokens_per_second: 100}}
models: {m: {upstreams: ["http://127.0.0.1:1/v1"], pool: p}}
teams: {a: {budget: 10}}
limits:
  teams: {a: {enforce: block, monthly_tokens: 100, budget: 5}}
"""
GPU_CONFIG = "pools:\n  h100: {gpu_hourly_cost: 2.8}\ngpu_exporter: {default_pool: h100}\n"


def family_name(m: Metric) -> str:
    return m.name + "_total" if m.type == "counter" else m.name


def check_against_contract(families: Iterable[Metric], currency: str = "EUR") -> set[str]:
    """Every family named in the contract has its spec's type, HELP text and full label set."""
    seen = set()
    for m in families:
        name = family_name(m)
        if name not in contract.METRICS:
            assert not name.startswith("chargeback_"), f"{name} is not in the contract"
            continue
        spec = contract.spec(name)
        assert m.type == ("gauge" if spec.kind == "info" else spec.kind), name
        assert m.documentation == spec.help_text(currency=currency), name
        assert m.samples, f"{name}: no sample to check the labels of"
        for s in m.samples:
            assert set(s.labels) - {"le"} == set(spec.labels), name
        seen.add(name)
    return seen


def in_section(*sections: str) -> set[str]:
    return {name for name, s in contract.METRICS.items() if s.section in sections}


def test_proxy_collectors_expose_the_contract() -> None:
    cfg = parse_config(PROXY_CONFIG, "chargeback.yaml")
    stats = LedgerStats(rows_written=3, write_errors=0, queue_rows=1, spooled_rows=0)
    m = ProxyMetrics(cfg, lambda: stats)
    m.usage.record("x@corp", "a", "m", 200, 10, 2, 1, 0.5, False)
    m.usage.reject(401)
    m.observe("m", 0.3, 0.1)
    limits = LimitMetrics(cfg)
    limits.reject("a", "x@corp", "monthly_tokens")
    sources = UsageSourceCollector()
    sources.inc("m", "upstream")
    # through the text the proxy serves (its fast renderer included), not only collect()
    served = list(text_string_to_metric_families(m.render().decode()))
    seen = check_against_contract([*served, *limits.collect(), *sources.collect()], currency="CHF")
    assert seen == in_section("proxy-usage", "proxy-latency", "proxy-config", "proxy-limits", "proxy-ledger")


def test_gpu_collector_exposes_the_contract() -> None:
    cfg = parse_config(GPU_CONFIG, "test.yaml")
    fake = FakeNvml([FakeGpu("GPU-a", samples=[(1_000_000, 50), (2_000_000, 50)])])
    with fake.patch():
        collector = GpuCollector(NvmlBackend(), cfg.gpu_exporter, cfg.pools)
        registry = CollectorRegistry()
        registry.register(collector)
        families = list(registry.collect())
        collector.close()
    # no MIG instance on this GPU: its info family stays empty
    families = [f for f in families if f.name != contract.GPU_MIG_INFO]
    assert check_against_contract(families) == in_section(fields.SECTION) - {contract.GPU_MIG_INFO}


def test_docs_metric_tables_are_fresh() -> None:
    text = metrics_doc.DEFAULT_DOC.read_text(encoding="utf-8")
    assert metrics_doc.render(text) == text, "docs/metrics.md is stale: run python -m exporter.metrics_doc"
    for name in contract.METRICS:
        assert f"| `{name}` |" in text, name


def test_every_gpu_field_is_documented_and_in_the_contract() -> None:
    text = metrics_doc.DEFAULT_DOC.read_text(encoding="utf-8")
    for f in fields.FIELDS:
        assert contract.spec(f.name) is f.spec
        assert f.spec.doc_row() in text, f.name
        assert f.spec.labels == ("uuid",) and f.spec.kind in ("gauge", "counter"), f.name


def test_a_spec_refuses_what_prometheus_would_not_take() -> None:
    with pytest.raises(ValueError, match="ends in _total"):
        MetricSpec("chargeback_x", "counter", "X.")
    with pytest.raises(ValueError, match="kind"):
        MetricSpec("chargeback_x", "summary", "X.")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="subset"):
        contract.spec(contract.REQUESTS_TOTAL).family(["model", "team"])


# A per-GPU gauge added the way a contributor would: one entry in a copy of the table. The fake
# pynvml answers the new call from FakeGpu.readings; nothing else changes.
FAN = GpuField(
    MetricSpec(
        "chargeback_gpu_fan_speed_ratio", "gauge", "GPU fan speed (0-1).", ("uuid",), "ratio", "", "gpu"
    ),
    NvmlCall("fan", "nvmlDeviceGetFanSpeed"),
    lambda percent: percent / 100.0,
    lambda g: 0.2 + 0.5 * g.ratio,
)
FIELDS_WITH_FAN = (*fields.FIELDS, FAN)


def test_a_new_gpu_field_is_read_through_nvml_and_exported() -> None:
    cfg = parse_config(GPU_CONFIG, "test.yaml")
    fake = FakeNvml(
        [
            FakeGpu("GPU-a", readings={"nvmlDeviceGetFanSpeed": 55}, power_mw=300_000),
            FakeGpu("GPU-b", readings={"nvmlDeviceGetFanSpeed": 40}, unsupported={"nvmlDeviceGetFanSpeed"}),
        ]
    )
    with fake.patch():
        collector = GpuCollector(
            NvmlBackend(FIELDS_WITH_FAN), cfg.gpu_exporter, cfg.pools, fields=FIELDS_WITH_FAN
        )
        registry = CollectorRegistry()
        registry.register(collector)
        fan = {s.labels["uuid"]: s.value for m in registry.collect() for s in m.samples if s.name == FAN.name}
        power = registry.get_sample_value(contract.GPU_POWER_WATTS, {"uuid": "GPU-a"})
        errors = registry.get_sample_value(contract.NVML_ERRORS_TOTAL, {"reason": "not_supported"})
        collector.close()
    assert fan == {"GPU-a": 0.55}  # GPU-b: NotSupported, so absent (and not an error)
    assert power == 300.0  # the table's other fields read as before
    assert errors is None
    assert FAN.spec.doc_row() == (
        "| `chargeback_gpu_fan_speed_ratio` | gauge | uuid | ratio | GPU fan speed (0-1) |"
    )


def test_a_new_gpu_field_is_simulated() -> None:
    cfg = parse_config(GPU_CONFIG, "test.yaml")
    clock = [6000.0]  # the default pattern: GPU 0 at 90 % for the first half of every minute
    backend = SimulatedBackend(1, clock=lambda: clock[0], fields=FIELDS_WITH_FAN)
    collector = GpuCollector(
        backend, cfg.gpu_exporter, cfg.pools, clock=lambda: clock[0], fields=FIELDS_WITH_FAN
    )
    registry = CollectorRegistry()
    registry.register(collector)
    assert registry.get_sample_value(FAN.name, {"uuid": simulated_uuid(0)}) == pytest.approx(0.2 + 0.5 * 0.9)
    collector.close()


def test_a_counter_field_is_monotonic_across_driver_reloads() -> None:
    cfg = parse_config(GPU_CONFIG, "test.yaml")
    gpu = FakeGpu("GPU-a", energy_mj=5_000)
    fake = FakeNvml([gpu])
    with fake.patch():
        collector = GpuCollector(NvmlBackend(), cfg.gpu_exporter, cfg.pools)
        registry = CollectorRegistry()
        registry.register(collector)
        got = []
        for mj in (5_000, 7_000, 1_000):  # the driver reloaded before the third reading
            gpu.energy_mj = mj
            got.append(registry.get_sample_value(contract.GPU_ENERGY_JOULES_TOTAL, {"uuid": "GPU-a"}))
        collector.close()
    assert got == [5.0, 7.0, 8.0]


def test_the_temperature_falls_back_when_the_old_call_is_gone() -> None:
    import pynvml

    cfg = parse_config(GPU_CONFIG, "test.yaml")
    fake = FakeNvml([FakeGpu("GPU-a", temperature=40, errors={"temperature": pynvml.NVML_ERROR_DEPRECATED})])
    with fake.patch():
        saved = getattr(pynvml, "nvmlDeviceGetTemperatureV", None)
        pynvml.nvmlDeviceGetTemperatureV = lambda handle, sensor: 52
        try:
            collector = GpuCollector(NvmlBackend(), cfg.gpu_exporter, cfg.pools)
            registry = CollectorRegistry()
            registry.register(collector)
            value = registry.get_sample_value(contract.GPU_TEMPERATURE_CELSIUS, {"uuid": "GPU-a"})
            collector.close()
        finally:
            pynvml.nvmlDeviceGetTemperatureV = saved
    assert value == 52.0


def test_gpu_exporter_doc_table_matches_the_contract():
    """docs/gpu-exporter.md keeps its own, more detailed metric table; it must name exactly the
    contract's GPU metrics, each with the contract's type and labels, so it cannot go stale."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "gpu-exporter.md").read_text()
    rows = {}
    for line in doc.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`chargeback_"):
            labels = () if cells[2] == "–" else tuple(x.strip() for x in cells[2].strip("`").split(","))
            rows[cells[0].strip("`")] = (cells[1].split()[0], labels)
    want = {
        s.name: ("gauge" if s.kind == "info" else s.kind, s.labels)
        for s in contract.METRICS.values()
        if s.section == "gpu"
    }
    assert rows == want

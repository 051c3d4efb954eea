"""The GPU collector over the real NVML backend, with pynvml faked at the function level.

Every test patches the real ``pynvml`` module's functions (its NVMLError classes and constants
stay real) through ``FakeNvml.patch`` and scrapes a private CollectorRegistry once per step.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import pynvml
import pytest
from prometheus_client import CollectorRegistry
from support.fakenvml import FakeGpu, FakeMig, FakeNvml

from exporter import contract as c
from exporter.config import Config, parse_config
from exporter.gpu.collector import GpuCollector
from exporter.gpu.nvml import NvmlBackend

T0 = 1_700_000_000_000_000  # µs: a plausible NVML sample timestamp
S = 1_000_000  # one second in µs

CONFIG = """
pools:
  h100: {gpu_hourly_cost: 2.80, gpu_uuids: [GPU-a]}
  a10: {gpu_hourly_cost: 0.75}
gpu_exporter:
  default_pool: a10
  pool_by_index: {1: h100}
  nvml_call_timeout_seconds: 0.3
"""


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Scrape:
    """One collection of the registry, queried like ``get_sample_value``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.samples = [s for m in registry.collect() for s in m.samples]

    def __call__(self, metric: str, /, **labels: str) -> float | None:
        for s in self.samples:
            if s.name == metric and s.labels == labels:
                return s.value
        return None

    def labels(self, name: str) -> list[dict[str, str]]:
        return [s.labels for s in self.samples if s.name == name]

    def uuids(self, name: str) -> set[str]:
        return {s.labels["uuid"] for s in self.samples if s.name == name}


@pytest.fixture
def fake() -> Iterator[FakeNvml]:
    f = FakeNvml()
    with f.patch():
        yield f


def gpu_info(s: Scrape, fake: FakeNvml, gpu: FakeGpu, index: int, pool: str) -> float | None:
    """The ``gpu_info`` sample of one fake GPU with these labels (1 when it is exported so)."""
    return s(
        c.GPU_INFO, uuid=gpu.uuid, index=str(index), name=gpu.name, pool=pool, driver_version=fake.driver
    )


def make(cfg_text: str = CONFIG, clock: Clock | None = None) -> tuple[GpuCollector, CollectorRegistry]:
    cfg: Config = parse_config(cfg_text, "test.yaml")
    collector = GpuCollector(NvmlBackend(), cfg.gpu_exporter, cfg.pools, clock=clock or Clock())
    registry = CollectorRegistry()
    registry.register(collector)
    return collector, registry


def test_several_gpus_identity_pools_and_readings(fake: FakeNvml) -> None:
    fake.gpus = [
        FakeGpu("GPU-a", memory_used=10 * 2**30, power_mw=250_500, energy_mj=1_234_567, temperature=61),
        FakeGpu("GPU-b", name="NVIDIA A10", memory_total=24 * 2**30),
        FakeGpu("GPU-c", name="NVIDIA A10"),
    ]
    collector, reg = make()
    s = Scrape(reg)
    assert s(c.NVML_UP) == 1
    assert s.labels(c.GPU_INFO) == [
        {
            "uuid": "GPU-a",
            "index": "0",
            "name": "NVIDIA H100 80GB HBM3",
            "pool": "h100",
            "driver_version": "550.54.15",
        },
        {"uuid": "GPU-b", "index": "1", "name": "NVIDIA A10", "pool": "h100", "driver_version": "550.54.15"},
        {"uuid": "GPU-c", "index": "2", "name": "NVIDIA A10", "pool": "a10", "driver_version": "550.54.15"},
    ]
    assert s(c.GPU_HOURLY_COST, uuid="GPU-a", pool="h100") == 2.8  # by UUID (pools.h100.gpu_uuids)
    assert s(c.GPU_HOURLY_COST, uuid="GPU-b", pool="h100") == 2.8  # by index
    assert s(c.GPU_HOURLY_COST, uuid="GPU-c", pool="a10") == 0.75  # default pool
    assert s(c.GPU_UNMAPPED_GPUS) == 0
    assert s(c.GPU_MEMORY_USED_BYTES, uuid="GPU-a") == 10 * 2**30
    assert s(c.GPU_MEMORY_TOTAL_BYTES, uuid="GPU-a") == 80 * 2**30
    assert s(c.GPU_MEMORY_TOTAL_BYTES, uuid="GPU-b") == 24 * 2**30
    assert s(c.GPU_POWER_WATTS, uuid="GPU-a") == 250.5  # mW → W
    assert s(c.GPU_ENERGY_JOULES_TOTAL, uuid="GPU-a") == 1234.567  # mJ → J
    assert s(c.GPU_TEMPERATURE_CELSIUS, uuid="GPU-a") == 61
    assert s(c.NVML_ERRORS_TOTAL, reason="timeout") == 0
    assert s(c.GPU_COLLECT_DURATION_SECONDS) is not None
    assert fake.init_calls == 1
    Scrape(reg)
    assert fake.init_calls == 1  # initialised once, not per scrape
    collector.close()


def test_sample_based_utilisation_integrates_exactly(fake: FakeNvml) -> None:
    # The driver's buffer already holds the seconds before the exporter starts (a real H200 gave 14 s
    # of them at the first call): they give the ratio gauge its first value, but count neither as
    # busy nor idle time, which observed_seconds (the basis of the cost) never saw either.
    gpu = FakeGpu("GPU-a", samples=[(T0 - 2 * S, 100), (T0 - S, 100), (T0, 50)])
    fake.gpus = [gpu]
    clock = Clock()
    collector, reg = make(clock=clock)
    s = Scrape(reg)
    assert s(c.GPU_BUSY_SECONDS_TOTAL, uuid="GPU-a") == 0
    assert s(c.GPU_IDLE_SECONDS_TOTAL, uuid="GPU-a") == 0
    assert s(c.GPU_OBSERVED_SECONDS_TOTAL, uuid="GPU-a") == 0
    assert s(c.GPU_UTILIZATION_RATIO, uuid="GPU-a") == 0.75  # 1 s at 100 %, 1 s at 50 %

    # The newest sample is the baseline; each later one holds for the time since the one before.
    gpu.samples += [(T0 + S // 2, 100), (T0 + S, 0), (T0 + 3 * S // 2, 5)]
    clock.t += 1.5
    s = Scrape(reg)
    assert s(c.GPU_OBSERVED_SECONDS_TOTAL, uuid="GPU-a") == 1.5
    busy, idle = 0.5 * 1.00 + 0.5 * 0.0 + 0.5 * 0.05, 0.5 + 0.5  # 5 % is at the threshold: idle
    assert s(c.GPU_BUSY_SECONDS_TOTAL, uuid="GPU-a") == pytest.approx(busy, abs=1e-12)
    assert s(c.GPU_IDLE_SECONDS_TOTAL, uuid="GPU-a") == idle
    assert s(c.GPU_UTILIZATION_RATIO, uuid="GPU-a") == pytest.approx(0.525 / 1.5, abs=1e-12)
    assert s(c.GPU_IDLE, uuid="GPU-a") == 0

    # Irregular spacing: a 0.5 s sample at 25 %, then a 1 s sample at 0 %.
    gpu.samples += [(T0 + 2 * S, 25), (T0 + 3 * S, 0)]
    s = Scrape(reg)
    assert s(c.GPU_BUSY_SECONDS_TOTAL, uuid="GPU-a") == pytest.approx(busy + 0.125, abs=1e-12)
    assert s(c.GPU_IDLE_SECONDS_TOTAL, uuid="GPU-a") == idle + 1.0
    assert s(c.GPU_UTILIZATION_RATIO, uuid="GPU-a") == pytest.approx(0.125 / 1.5, abs=1e-12)

    # No new sample (NVML answers NOT_FOUND): counters unchanged, the last mean is kept.
    s = Scrape(reg)
    assert s(c.GPU_BUSY_SECONDS_TOTAL, uuid="GPU-a") == pytest.approx(busy + 0.125, abs=1e-12)
    assert s(c.GPU_IDLE_SECONDS_TOTAL, uuid="GPU-a") == idle + 1.0
    assert s(c.GPU_UTILIZATION_RATIO, uuid="GPU-a") == pytest.approx(0.125 / 1.5, abs=1e-12)

    # Two idle seconds (0 % and 2 %): the GPU was idle over the interval.
    gpu.samples += [(T0 + 4 * S, 0), (T0 + 5 * S, 2)]
    s = Scrape(reg)
    assert s(c.GPU_BUSY_SECONDS_TOTAL, uuid="GPU-a") == pytest.approx(busy + 0.125 + 0.02, abs=1e-12)
    assert s(c.GPU_IDLE_SECONDS_TOTAL, uuid="GPU-a") == idle + 1.0 + 2.0
    assert s(c.GPU_UTILIZATION_RATIO, uuid="GPU-a") == pytest.approx(0.01, abs=1e-12)
    assert s(c.GPU_IDLE, uuid="GPU-a") == 1
    assert s(c.NVML_ERRORS_TOTAL, reason="not_found") is None  # "no new samples" is not an error
    collector.close()


@pytest.mark.parametrize(
    "v2_error", [pynvml.NVML_ERROR_FUNCTION_NOT_FOUND, pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH]
)
def test_memory_used_leaves_the_drivers_reservation_out(fake: FakeNvml, v2_error: int) -> None:
    """As nvidia-smi: an idle H200 showed 0 MiB used and 615 MiB reserved, which version 1 of
    NVML's memory call reports as used. A driver without version 2 (or another version of its
    structure) gets version 1: then the reservation is in "used", the best that driver can say."""
    reserved = 615 * 2**20
    new = FakeGpu("GPU-a", memory_used=3 * 2**30, memory_reserved=reserved)
    old = FakeGpu("GPU-b", memory_used=3 * 2**30, memory_reserved=reserved, memory_v2_error=v2_error)
    fake.gpus = [new, old]
    collector, reg = make()
    s = Scrape(reg)
    assert s(c.GPU_MEMORY_USED_BYTES, uuid="GPU-a") == 3 * 2**30
    assert s(c.GPU_MEMORY_USED_BYTES, uuid="GPU-b") == 3 * 2**30 + reserved
    assert (
        s(c.GPU_MEMORY_TOTAL_BYTES, uuid="GPU-a") == s(c.GPU_MEMORY_TOTAL_BYTES, uuid="GPU-b") == 80 * 2**30
    )
    assert s(c.NVML_ERRORS_TOTAL, reason="function_not_found") is None  # the fallback is no error
    assert s(c.NVML_ERRORS_TOTAL, reason="argument_version_mismatch") is None
    collector.close()


def test_point_sample_fallback_uses_the_clock(fake: FakeNvml) -> None:
    gpu = FakeGpu("GPU-a", unsupported={"samples"}, util_percent=50)
    fake.gpus = [gpu]
    clock = Clock(100.0)
    collector, reg = make(clock=clock)
    s = Scrape(reg)
    assert s(c.GPU_BUSY_SECONDS_TOTAL, uuid="GPU-a") == 0
    assert s(c.GPU_UTILIZATION_RATIO, uuid="GPU-a") == 0.5
    clock.t = 110.0
    s = Scrape(reg)
    assert s(c.GPU_BUSY_SECONDS_TOTAL, uuid="GPU-a") == 5.0
    assert s(c.GPU_IDLE_SECONDS_TOTAL, uuid="GPU-a") == 0
    gpu.util_percent = 0
    clock.t = 115.0
    s = Scrape(reg)
    assert s(c.GPU_BUSY_SECONDS_TOTAL, uuid="GPU-a") == 5.0
    assert s(c.GPU_IDLE_SECONDS_TOTAL, uuid="GPU-a") == 5.0
    assert (s(c.GPU_UTILIZATION_RATIO, uuid="GPU-a"), s(c.GPU_IDLE, uuid="GPU-a")) == (0, 1)
    collector.close()


def test_not_supported_drops_that_series_for_that_gpu_only(fake: FakeNvml) -> None:
    fake.gpus = [
        FakeGpu("GPU-a", samples=[(T0, 0)]),
        FakeGpu("GPU-b", unsupported={"power", "energy", "temperature", "samples", "utilization"}),
        FakeGpu("GPU-c", errors={"memory": pynvml.NVML_ERROR_UNKNOWN}),
    ]
    collector, reg = make()
    s = Scrape(reg)
    for name in (c.GPU_POWER_WATTS, c.GPU_ENERGY_JOULES_TOTAL, c.GPU_TEMPERATURE_CELSIUS):
        assert s.uuids(name) == {"GPU-a", "GPU-c"}, name
    for name in (c.GPU_BUSY_SECONDS_TOTAL, c.GPU_IDLE_SECONDS_TOTAL):
        assert s.uuids(name) == {"GPU-a", "GPU-c"}, name  # GPU-b: no utilisation at all
    assert s.uuids(c.GPU_MEMORY_USED_BYTES) == {"GPU-a", "GPU-b"}
    assert s.uuids(c.GPU_INFO) == s.uuids(c.GPU_HOURLY_COST) == {"GPU-a", "GPU-b", "GPU-c"}
    assert s(c.NVML_ERRORS_TOTAL, reason="unknown") == 1  # a real error is counted...
    assert s(c.NVML_ERRORS_TOTAL, reason="not_supported") is None  # ...NotSupported is not
    collector.close()


def test_unmapped_gpu_gets_no_cost_and_one_warning(fake: FakeNvml, caplog: pytest.LogCaptureFixture) -> None:
    unmapped = FakeGpu("GPU-x")
    fake.gpus = [FakeGpu("GPU-a"), unmapped]
    cfg = "pools:\n  h100: {gpu_hourly_cost: 2.80, gpu_uuids: [GPU-a]}\n"
    collector, reg = make(cfg)
    with caplog.at_level(logging.WARNING, logger="chargeback.gpu"):
        Scrape(reg)
        s = Scrape(reg)
    assert s.labels(c.GPU_HOURLY_COST) == [{"uuid": "GPU-a", "pool": "h100"}]
    assert gpu_info(s, fake, unmapped, 1, "") == 1
    assert s(c.GPU_UNMAPPED_GPUS) == 1
    warnings = [r.getMessage() for r in caplog.records if "belongs to no pool" in r.getMessage()]
    assert len(warnings) == 1 and "GPU-x" in warnings[0]
    collector.close()


def test_nvml_missing_then_installed(fake: FakeNvml, caplog: pytest.LogCaptureFixture) -> None:
    fake.gpus = [FakeGpu("GPU-a")]
    fake.library_missing = True
    collector, reg = make()
    with caplog.at_level(logging.WARNING, logger="chargeback.gpu"):
        s1 = Scrape(reg)
        s2 = Scrape(reg)
    assert s1(c.NVML_UP) == s2(c.NVML_UP) == 0
    assert s2(c.NVML_ERRORS_TOTAL, reason="library_not_found") == 2  # retried on every scrape
    assert s2.labels(c.GPU_INFO) == []
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1  # one clear line, not one per scrape
    assert "NVML Shared Library Not Found" in lines[0] and "retrying" in lines[0]

    fake.library_missing = False
    s3 = Scrape(reg)
    assert s3(c.NVML_UP) == 1
    assert s3.uuids(c.GPU_INFO) == {"GPU-a"}
    assert s3(c.NVML_ERRORS_TOTAL, reason="library_not_found") == 2
    collector.close()


def test_gpu_lost_mid_run_vanishes_and_recovers_with_monotonic_counters(fake: FakeNvml) -> None:
    a = FakeGpu("GPU-a", samples=[(T0, 0)])
    b = FakeGpu("GPU-b", samples=[(T0, 0)])
    fake.gpus = [a, b]
    collector, reg = make()
    Scrape(reg)  # the baselines
    a.samples.append((T0 + S, 100))
    b.samples.append((T0 + S, 50))
    s = Scrape(reg)
    assert s(c.GPU_BUSY_SECONDS_TOTAL, uuid="GPU-a") == 1.0
    assert s(c.GPU_BUSY_SECONDS_TOTAL, uuid="GPU-b") == 0.5

    # GPU-b falls off the bus: its series go, GPU-a is still read, NVML is re-initialised next time.
    b.lost = True
    a.samples.append((T0 + 2 * S, 100))
    s = Scrape(reg)
    assert s.uuids(c.GPU_INFO) == {"GPU-a"}
    assert s(c.NVML_ERRORS_TOTAL, reason="gpu_is_lost") == 1
    assert s(c.NVML_UP) == 1
    assert s(c.GPU_BUSY_SECONDS_TOTAL, uuid="GPU-a") == 2.0
    assert fake.shutdown_calls == 1

    # After re-init GPU-b is no longer enumerated: it simply drops out.
    fake.gpus = [a]
    a.samples.append((T0 + 3 * S, 100))  # first sample after re-init: a new baseline
    s = Scrape(reg)
    assert fake.init_calls == 2
    assert s.uuids(c.GPU_INFO) == {"GPU-a"}
    assert s(c.GPU_BUSY_SECONDS_TOTAL, uuid="GPU-a") == 2.0

    # GPU-b comes back (reset, new index): its counters continue where they stopped.
    b.lost = False
    b.samples += [(T0 + 10 * S, 100), (T0 + 11 * S, 100)]
    a.samples.append((T0 + 4 * S, 25))
    fake.gpus = [b, a]
    s = Scrape(reg)
    assert gpu_info(s, fake, b, 0, "a10") == 1
    assert gpu_info(s, fake, a, 1, "h100") == 1
    assert s(c.GPU_BUSY_SECONDS_TOTAL, uuid="GPU-b") == 0.5 + 1.0
    assert s(c.GPU_BUSY_SECONDS_TOTAL, uuid="GPU-a") == 2.25
    assert fake.init_calls == 2
    collector.close()


@pytest.mark.parametrize(
    "code",
    [
        pynvml.NVML_ERROR_GPU_IS_LOST,
        pynvml.NVML_ERROR_UNINITIALIZED,
        pynvml.NVML_ERROR_DRIVER_NOT_LOADED,
        pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH,
    ],
)
def test_fatal_errors_trigger_reinit(fake: FakeNvml, code: int) -> None:
    gpu = FakeGpu("GPU-a")
    fake.gpus = [gpu, FakeGpu("GPU-b")]
    collector, reg = make()
    Scrape(reg)
    gpu.errors = {"power": code}
    s = Scrape(reg)
    assert s.uuids(c.GPU_INFO) == {"GPU-b"}
    reason = {v: k for k, v in vars(pynvml).items() if k.startswith("NVML_ERROR_")}[code][
        len("NVML_ERROR_") :
    ].lower()
    assert s(c.NVML_ERRORS_TOTAL, reason=reason) == 1
    gpu.errors = {}
    s = Scrape(reg)
    assert fake.init_calls == 2
    assert s.uuids(c.GPU_INFO) == {"GPU-a", "GPU-b"}
    collector.close()


def test_driver_reload_keeps_counters_monotonic(fake: FakeNvml) -> None:
    gpu = FakeGpu("GPU-a", energy_mj=5_000_000, samples=[(T0, 0)])
    fake.gpus = [gpu]
    collector, reg = make()
    Scrape(reg)  # the baseline
    gpu.samples.append((T0 + S, 100))
    s = Scrape(reg)
    assert s(c.GPU_ENERGY_JOULES_TOTAL, uuid="GPU-a") == 5000.0
    assert s(c.GPU_BUSY_SECONDS_TOTAL, uuid="GPU-a") == 1.0

    # The driver reloads behind the exporter's back: every call answers UNINITIALIZED.
    fake.initialized = False
    s = Scrape(reg)
    assert s(c.NVML_UP) == 0
    assert s(c.NVML_ERRORS_TOTAL, reason="uninitialized") == 1
    assert s.labels(c.GPU_INFO) == []

    # Re-initialised: NVML's energy and its sample buffer restarted from scratch.
    gpu.energy_mj = 1_000_000
    gpu.samples = [(T0 + 100 * S, 100)]
    s = Scrape(reg)
    assert s(c.NVML_UP) == 1
    assert s(c.GPU_ENERGY_JOULES_TOTAL, uuid="GPU-a") == 6000.0
    assert s(c.GPU_BUSY_SECONDS_TOTAL, uuid="GPU-a") == 1.0  # new baseline, not 99 s held at 100 %
    gpu.energy_mj = 1_500_000
    gpu.samples.append((T0 + 101 * S, 50))
    s = Scrape(reg)
    assert s(c.GPU_ENERGY_JOULES_TOTAL, uuid="GPU-a") == 6500.0
    assert s(c.GPU_BUSY_SECONDS_TOTAL, uuid="GPU-a") == 1.5
    collector.close()


def test_mig_instances_listed_and_no_fake_utilisation(fake: FakeNvml) -> None:
    fake.gpus = [
        FakeGpu(
            "GPU-m",
            mig=[
                FakeMig("MIG-1", 1, 0),
                FakeMig("MIG-2", 2, 0, name="NVIDIA H100 80GB HBM3 MIG 3g.40gb"),
            ],
        ),
        FakeGpu("GPU-a", samples=[(T0, 0), (T0 + S, 0)]),
    ]
    collector, reg = make()
    s = Scrape(reg)
    assert s.labels(c.GPU_MIG_INFO) == [
        {
            "uuid": "MIG-1",
            "parent_uuid": "GPU-m",
            "gpu_instance_id": "1",
            "compute_instance_id": "0",
            "profile": "1g.10gb",
        },
        {
            "uuid": "MIG-2",
            "parent_uuid": "GPU-m",
            "gpu_instance_id": "2",
            "compute_instance_id": "0",
            "profile": "3g.40gb",
        },
    ]
    for name in (c.GPU_UTILIZATION_RATIO, c.GPU_BUSY_SECONDS_TOTAL, c.GPU_IDLE_SECONDS_TOTAL, c.GPU_IDLE):
        assert s.uuids(name) == {"GPU-a"}, name  # absent for the MIG GPU, never a made-up 0
    assert s.uuids(c.GPU_HOURLY_COST) == {"GPU-m", "GPU-a"}
    assert s.uuids(c.GPU_MEMORY_USED_BYTES) == {"GPU-m", "GPU-a"}
    collector.close()


def test_stuck_call_is_bounded_and_the_worker_replaced(fake: FakeNvml) -> None:
    hang = threading.Event()
    stuck = FakeGpu("GPU-stuck", hang=hang)
    fake.gpus = [stuck, FakeGpu("GPU-a")]
    collector, reg = make()
    try:
        s = Scrape(reg)
        # GPU 0 hung past nvml_call_timeout_seconds; GPU 1 was read by a fresh worker thread.
        assert s.uuids(c.GPU_INFO) == {"GPU-a"}
        assert s(c.NVML_ERRORS_TOTAL, reason="timeout") == 1
        assert collector.worker.stuck_threads == 1
        # Still stuck: skipped at once (no second hung thread), still counted.
        s = Scrape(reg)
        assert s.uuids(c.GPU_INFO) == {"GPU-a"}
        assert s(c.NVML_ERRORS_TOTAL, reason="timeout") == 2
        assert collector.worker.stuck_threads == 1
    finally:
        hang.set()
    stuck.hang = None
    for _ in range(100):  # the abandoned thread returns and exits by itself
        if collector.worker.stuck_threads == 0:
            break
        time.sleep(0.02)
    s = Scrape(reg)
    assert s.uuids(c.GPU_INFO) == {"GPU-stuck", "GPU-a"}
    collector.close()


def test_hung_nvml_init_is_bounded_and_retried_once_it_returns(fake: FakeNvml) -> None:
    fake.gpus = [FakeGpu("GPU-a")]
    fake.init_hang = threading.Event()
    collector, reg = make()
    try:
        s = Scrape(reg)
        assert s(c.NVML_UP) == 0
        assert s(c.NVML_ERRORS_TOTAL, reason="timeout") == 1
        s = Scrape(reg)  # the first nvmlInit is still stuck: not called again
        assert s(c.NVML_UP) == 0
        assert s(c.NVML_ERRORS_TOTAL, reason="timeout") == 2
        assert collector.worker.stuck_threads == 1
    finally:
        fake.init_hang.set()
    fake.init_hang = None
    for _ in range(100):
        if collector.worker.stuck_threads == 0:
            break
        time.sleep(0.02)
    s = Scrape(reg)
    assert s(c.NVML_UP) == 1
    assert s.uuids(c.GPU_INFO) == {"GPU-a"}
    collector.close()

"""The ``--simulate`` backend: an exactly known utilisation pattern through the real collector."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from exporter import contract as c
from exporter.config import parse_config
from exporter.gpu.collector import GpuCollector
from exporter.gpu.simulated import (
    IDLE_WATTS,
    MAX_WATTS,
    SAMPLE_PERIOD_S,
    SimPattern,
    SimulatedBackend,
    simulated_uuid,
)

CONFIG = """
pools:
  h100: {gpu_hourly_cost: 2.80, gpu_indexes: [0]}
  a10: {gpu_hourly_cost: 0.75}
gpu_exporter:
  default_pool: a10
"""


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def values(registry: CollectorRegistry, metric: str) -> dict[str, float]:
    return {s.labels["uuid"]: s.value for m in registry.collect() for s in m.samples if s.name == metric}


def test_pattern_parse_and_integral() -> None:
    p = SimPattern.parse("period=60,duty=0.5,levels=0.9/0")
    assert p == SimPattern(60.0, 0.5, (0.9, 0.0))
    assert SimPattern.parse("") == SimPattern()
    assert p.ratio_at(0, 6029.9) == 0.9 and p.ratio_at(0, 6030.0) == 0.0 and p.ratio_at(1, 6000) == 0.0
    assert p.level(2) == 0.9  # levels repeat over the GPUs
    assert p.busy_integral(0, 0, 120) == pytest.approx(54.0)
    assert p.busy_integral(0, 15, 45) == pytest.approx(13.5)
    for bad, why in [
        ("period=0", "period must be > 0"),
        ("duty=2", "duty must be between 0 and 1"),
        ("levels=1.5", "levels must be"),
        ("speed=3", "bad simulate pattern item"),
        ("period=x", "numbers expected"),
    ]:
        with pytest.raises(ValueError, match=why):
            SimPattern.parse(bad)


def test_simulated_gpus_integrate_to_the_pattern_exactly() -> None:
    cfg = parse_config(CONFIG, "test.yaml")
    clock = Clock(6000.2)  # 6000 s is the start of a cycle: busy until 6030, idle until 6060
    pattern = SimPattern(60.0, 0.5, (0.9, 0.0))
    backend = SimulatedBackend(2, pattern, clock=clock)
    collector = GpuCollector(backend, cfg.gpu_exporter, cfg.pools, clock=clock)
    reg = CollectorRegistry()
    reg.register(collector)
    g0, g1 = simulated_uuid(0), simulated_uuid(1)
    assert g0 == "GPU-00000000-0000-0000-0000-000000000000"

    busy = values(reg, c.GPU_BUSY_SECONDS_TOTAL)  # baseline: the sample at 6000.0
    assert busy == {g0: 0.0, g1: 0.0}

    for t, expect_busy0, expect_idle0 in [(6010.2, 9.0, 0.0), (6045.0, 27.0, 15.0), (6130.3, 63.0, 60.0)]:
        clock.t = t
        samples = {
            (s.name, s.labels.get("uuid"), s.labels.get("pool")): s.value
            for m in reg.collect()
            for s in m.samples
        }
        last = int(t / SAMPLE_PERIOD_S) * SAMPLE_PERIOD_S
        assert samples[(c.GPU_BUSY_SECONDS_TOTAL, g0, None)] == pytest.approx(expect_busy0, abs=1e-9)
        assert samples[(c.GPU_BUSY_SECONDS_TOTAL, g0, None)] == pytest.approx(
            pattern.busy_integral(0, 6000, last), abs=1e-9
        )
        assert samples[(c.GPU_IDLE_SECONDS_TOTAL, g0, None)] == expect_idle0
        assert samples[(c.GPU_BUSY_SECONDS_TOTAL, g1, None)] == 0.0
        assert samples[(c.GPU_IDLE_SECONDS_TOTAL, g1, None)] == last - 6000  # level 0: always idle
        assert samples[(c.GPU_ENERGY_JOULES_TOTAL, g0, None)] == pytest.approx(
            IDLE_WATTS * (t - 6000) + (MAX_WATTS - IDLE_WATTS) * pattern.busy_integral(0, 6000, t), abs=1e-6
        )
        assert samples[(c.GPU_HOURLY_COST, g0, "h100")] == 2.8
        # wall time present since the first scrape (6000.2), whatever the utilisation: the basis of
        # cost (busy + idle is not: 27 + 15 ≠ 45 at 6045 because busy is weighted by utilisation)
        for g in (g0, g1):
            assert samples[(c.GPU_OBSERVED_SECONDS_TOTAL, g, None)] == pytest.approx(t - 6000.2, abs=1e-9)
        assert samples[(c.GPU_HOURLY_COST, g1, "a10")] == 0.75
        if t == 6010.2:  # wholly inside the busy half
            assert samples[(c.GPU_UTILIZATION_RATIO, g0, None)] == pytest.approx(0.9)
            assert samples[(c.GPU_IDLE, g0, None)] == 0
            assert samples[(c.GPU_POWER_WATTS, g0, None)] == pytest.approx(
                IDLE_WATTS + 0.9 * (MAX_WATTS - IDLE_WATTS)
            )
        if t == 6045.0:  # 20 s busy, 15 s idle since the previous scrape
            assert samples[(c.GPU_UTILIZATION_RATIO, g0, None)] == pytest.approx(18.0 / 35.0)
            assert samples[(c.GPU_IDLE, g1, None)] == 1
    collector.close()


def test_simulated_backend_rejects_bad_counts() -> None:
    with pytest.raises(ValueError, match="at least 1 GPU"):
        SimulatedBackend(0)

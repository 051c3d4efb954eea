"""The GPU collector: a prometheus_client custom collector that reads every GPU on each scrape.

Each ``collect()`` asks the backend (NVML or the simulator) for fresh readings through one worker
thread with a bounded wait, folds them into per-GPU accumulators kept here (so counters stay
monotonic when NVML is re-initialised or the driver reloads) and yields new metric families.
A scrape of a host with one GPU in pool ``h100`` looks like::

    chargeback_gpu_info{uuid="GPU-8f…",index="0",name="NVIDIA H100 80GB HBM3",pool="h100",driver_version="550.54.15"} 1.0
    chargeback_gpu_utilization_ratio{uuid="GPU-8f…"} 0.62
    chargeback_gpu_busy_seconds_total{uuid="GPU-8f…"} 5123.4
    chargeback_gpu_idle_seconds_total{uuid="GPU-8f…"} 1804.0
    chargeback_gpu_idle{uuid="GPU-8f…"} 0.0
    chargeback_gpu_observed_seconds_total{uuid="GPU-8f…"} 7200.0
    chargeback_gpu_memory_used_bytes{uuid="GPU-8f…"} 6.4e+10
    chargeback_gpu_memory_total_bytes{uuid="GPU-8f…"} 8.5e+10
    chargeback_gpu_power_watts{uuid="GPU-8f…"} 431.2
    chargeback_gpu_energy_joules_total{uuid="GPU-8f…"} 2.9e+06
    chargeback_gpu_temperature_celsius{uuid="GPU-8f…"} 61.0
    chargeback_gpu_hourly_cost{uuid="GPU-8f…",pool="h100"} 2.8
    chargeback_gpu_mig_info{uuid="MIG-…",parent_uuid="GPU-…",gpu_instance_id="1",compute_instance_id="0",profile="1g.10gb"} 1.0
    chargeback_gpu_unmapped_gpus 0.0
    chargeback_nvml_up 1.0
    chargeback_gpu_collect_duration_seconds 0.0021
    chargeback_nvml_errors_total{reason="timeout"} 0.0

Utilisation: with samples (``nvmlDeviceGetSamples``) each sample's value holds for the time since
the previous sample, so ``busy += ratio × Δt`` and ``idle += Δt`` when ``ratio ≤ threshold``; the
newest sample of the first reading is the baseline (older ones predate the exporter); the
ratio gauge is the time-weighted mean of the samples that arrived since the previous scrape (kept
from the previous scrape when none arrived). Without samples the point reading holds for the time
since the previous scrape, measured with the injected ``clock``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from itertools import pairwise
from typing import Any

from prometheus_client.core import Metric

from exporter import contract
from exporter.config import GpuExporterConfig, Pool
from exporter.gpu.backend import Backend, BackendError, DeviceReading, UtilPoint, UtilSamples
from exporter.gpu.fields import FIELDS, GpuField
from exporter.gpu.worker import CallTimeout, CallWorker
from exporter.logs import get_logger

log = get_logger(__name__)

# A gap between samples (or point readings) longer than this is not integrated: after a long NVML
# outage nobody knows what the GPU did, and holding one sample over it would invent busy time.
MAX_HOLD_SECONDS = 600.0

# Error reasons exported at 0 from the start, so alerts on increase() see the series before the
# first error happens.
SEEDED_REASONS = ("timeout", "gpu_is_lost", "uninitialized", "driver_not_loaded", "library_not_found")


@dataclass
class GpuState:
    """What the exporter accumulated for one GPU (by UUID); survives NVML re-initialisation."""

    busy_seconds: float = 0.0
    idle_seconds: float = 0.0
    # wall time the GPU was present (read successfully), whatever its utilisation: the GPU costs
    # money for every such second, so the reporter prices observed seconds, not busy + idle.
    observed_seconds: float = 0.0
    last_seen_at: float | None = None
    # counter fields (energy): the monotonic total exported, and the driver's own value at the
    # previous reading, by metric name
    totals: dict[str, float] = field(default_factory=dict)
    raw: dict[str, float] = field(default_factory=dict)
    last_sample_us: int | None = None
    last_point_at: float | None = None
    ratio: float | None = None  # idle when ≤ gpu_exporter.idle_threshold_ratio
    rebaseline: bool = False  # set by a re-init: the next sample starts a new integration


@dataclass
class _Scrape:
    up: bool = False
    driver_version: str = ""
    readings: list[DeviceReading] = field(default_factory=list)


def _mean(samples: tuple[tuple[int, float], ...], default: float | None) -> float | None:
    """Time-weighted mean of consecutive samples (each holds since the one before), as the
    integration below weighs them; ``default`` when they span no time."""
    total = weighted = 0.0
    for (t0, _), (t1, ratio) in pairwise(samples):
        dt = (t1 - t0) / 1e6
        if 0 < dt <= MAX_HOLD_SECONDS:
            total += dt
            weighted += ratio * dt
    return weighted / total if total else default


class GpuCollector:
    def __init__(
        self,
        backend: Backend,
        settings: GpuExporterConfig,
        pools: Mapping[str, Pool],
        clock: Callable[[], float] = time.monotonic,
        worker: CallWorker | None = None,
        fields: tuple[GpuField, ...] = FIELDS,
    ) -> None:
        self.backend = backend
        self.fields = fields
        self._counters = tuple(f for f in fields if f.spec.kind == "counter")  # kept monotonic
        self.settings = settings
        self.hourly_cost: dict[str, Decimal] = {name: p.gpu_hourly_cost for name, p in pools.items()}
        self.clock = clock
        self.timeout = settings.nvml_call_timeout_seconds
        self.worker = worker or CallWorker()
        self.states: dict[str, GpuState] = {}
        self.errors: dict[str, float] = dict.fromkeys(SEEDED_REASONS, 0.0)
        self._lock = threading.Lock()
        self._initialised = False
        self._last_init_failure: str | None = None
        self._warned_unmapped: set[str] = set()
        self._noted_unsupported: set[tuple[str, str]] = set()
        self._failing: dict[int, str] = {}  # GPU index → reason of its last failure

    # --- prometheus_client collector protocol

    def describe(self) -> list[Metric]:
        # Names only: registering must not touch NVML.
        return []

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            started = time.perf_counter()
            scrape = self._scrape()
            families = self._families(scrape)
            duration = contract.spec(contract.GPU_COLLECT_DURATION_SECONDS).family(
                value=time.perf_counter() - started
            )
        yield from families
        yield duration

    def close(self) -> None:
        self.worker.close()

    # --- reading

    def pool_for(self, uuid: str, index: int) -> str | None:
        s = self.settings
        return s.pool_by_uuid.get(uuid) or s.pool_by_index.get(index) or s.default_pool

    def _count(self, reason: str) -> None:
        self.errors[reason] = self.errors.get(reason, 0.0) + 1

    def _call(self, fn: Callable[..., object], *args: object, key: object = None) -> object:
        return self.worker.call(self.timeout, fn, *args, key=key)

    def _ensure_init(self) -> bool:
        if self._initialised:
            return True
        try:
            self._call(self.backend.init, key="init")
        except (BackendError, CallTimeout) as exc:
            reason = exc.reason if isinstance(exc, BackendError) else "timeout"
            self._count(reason)
            message = f"{reason}: {exc}"
            if message != self._last_init_failure:
                log.warning(
                    "GPU backend %s unavailable (%s); serving %s 0 and retrying on every scrape",
                    self.backend.description,
                    message,
                    contract.NVML_UP,
                )
            else:
                log.debug("GPU backend still unavailable: %s", message)
            self._last_init_failure = message
            return False
        if self._last_init_failure is not None:
            log.info("GPU backend %s initialised after earlier failures", self.backend.description)
        self._last_init_failure = None
        self._initialised = True
        # The time since the last reading may straddle a driver reload: the next reading is a new
        # baseline. last_sample_us stays, so samples already integrated are not asked for again.
        for st in self.states.values():
            st.rebaseline = True
            st.last_point_at = None
        return True

    def _mark_reinit(self) -> None:
        """Shut the backend down; the next scrape initialises it again."""
        if not self._initialised:
            return
        self._initialised = False
        try:
            self._call(self.backend.shutdown)
        except CallTimeout:
            self._count("timeout")

    def _scrape(self) -> _Scrape:
        out = _Scrape()
        if not self._ensure_init():
            return out
        try:
            out.driver_version = str(self._call(self.backend.driver_version, key="enumerate"))
            count = int(self._call(self.backend.device_count, key="enumerate"))  # type: ignore[call-overload]
        except CallTimeout:
            self._count("timeout")
            return out
        except BackendError as exc:
            self._count(exc.reason)
            log.warning("GPU enumeration failed: %s", exc)
            if exc.reinit:
                self._mark_reinit()
            return out
        out.up = True
        since = {uuid: st.last_sample_us for uuid, st in self.states.items() if st.last_sample_us is not None}
        reinit = False
        for index in range(count):
            try:
                reading = self._call(self.backend.read_device, index, since, key=("gpu", index))
            except CallTimeout:
                self._count("timeout")
                continue
            except BackendError as exc:
                self._count(exc.reason)
                # once per GPU and reason, not every scrape
                level = logging.DEBUG if self._failing.get(index) == exc.reason else logging.WARNING
                log.log(level, "GPU %d left out of this scrape: %s", index, exc)
                self._failing[index] = exc.reason
                reinit = reinit or exc.reinit
                continue
            assert isinstance(reading, DeviceReading)
            if self._failing.pop(index, None) is not None:
                log.info("GPU %d (%s) answers again", index, reading.uuid)
            for reason in reading.errors:
                self._count(reason)
            for name in reading.unsupported:
                if (reading.uuid, name) not in self._noted_unsupported:
                    self._noted_unsupported.add((reading.uuid, name))
                    log.info(
                        "GPU %s (%s): %s not supported; that series stays absent", index, reading.uuid, name
                    )
            self._update(self.states.setdefault(reading.uuid, GpuState()), reading)
            out.readings.append(reading)
        if reinit:
            self._mark_reinit()
        return out

    def _update(self, st: GpuState, r: DeviceReading) -> None:
        threshold = self.settings.idle_threshold_ratio
        seen = self.clock()
        if st.last_seen_at is not None and 0 < seen - st.last_seen_at <= MAX_HOLD_SECONDS:
            st.observed_seconds += seen - st.last_seen_at
        st.last_seen_at = seen
        u = r.utilization
        if isinstance(u, UtilSamples):
            st.last_point_at = None
            prev = st.last_sample_us
            busy = idle = covered = 0.0
            if prev is None and u.samples:
                # No baseline yet (the first reading, or after point readings): the driver's buffer
                # also holds the samples of the seconds before this exporter looked (14 s of them on
                # an H200), which observed_seconds never saw. The newest is the baseline; the history
                # only gives the ratio gauge its first value.
                st.ratio = _mean(u.samples, st.ratio)
                prev = u.samples[-1][0]
                st.rebaseline = False
            for ts, ratio in u.samples:
                if prev is not None and ts <= prev:
                    continue  # already integrated
                if st.rebaseline:
                    st.rebaseline = False
                elif prev is not None and (ts - prev) / 1e6 <= MAX_HOLD_SECONDS:
                    dt = (ts - prev) / 1e6
                    busy += ratio * dt
                    covered += dt
                    if ratio <= threshold:
                        idle += dt
                prev = ts
            st.last_sample_us = prev
            st.busy_seconds += busy
            st.idle_seconds += idle
            if covered > 0:
                st.ratio = busy / covered
        elif isinstance(u, UtilPoint):
            st.last_sample_us = None
            st.rebaseline = False
            now = self.clock()
            if st.last_point_at is not None and 0 < now - st.last_point_at <= MAX_HOLD_SECONDS:
                dt = now - st.last_point_at
                st.busy_seconds += u.ratio * dt
                if u.ratio <= threshold:
                    st.idle_seconds += dt
            st.last_point_at = now
            st.ratio = u.ratio

        for f in self._counters:
            raw = r.values.get(f.name)
            if raw is None:
                continue
            prev = st.raw.get(f.name)
            if prev is None:
                st.totals[f.name] = raw
            elif raw >= prev:
                st.totals[f.name] += raw - prev
            else:  # the driver reloaded and NVML's counter restarted from 0
                st.totals[f.name] += raw
            st.raw[f.name] = raw

    # --- output

    def _families(self, s: _Scrape) -> list[Metric]:
        def family(name: str) -> Any:
            return contract.spec(name).family()

        info = family(contract.GPU_INFO)
        mig = family(contract.GPU_MIG_INFO)
        ratio = family(contract.GPU_UTILIZATION_RATIO)
        busy = family(contract.GPU_BUSY_SECONDS_TOTAL)
        idle_s = family(contract.GPU_IDLE_SECONDS_TOTAL)
        observed = family(contract.GPU_OBSERVED_SECONDS_TOTAL)
        idle = family(contract.GPU_IDLE)
        readings = [(f, f.spec.family()) for f in self.fields]
        cost = family(contract.GPU_HOURLY_COST)
        unmapped_count = 0
        for r in s.readings:
            st = self.states[r.uuid]
            pool = self.pool_for(r.uuid, r.index)
            info.add_metric([r.uuid, str(r.index), r.name, pool or "", s.driver_version], 1)
            observed.add_metric([r.uuid], st.observed_seconds)
            for m in r.mig_instances:
                mig.add_metric(
                    [m.uuid, r.uuid, str(m.gpu_instance_id), str(m.compute_instance_id), m.profile], 1
                )
            if r.utilization is not None:
                busy.add_metric([r.uuid], st.busy_seconds)
                idle_s.add_metric([r.uuid], st.idle_seconds)
                if st.ratio is not None:
                    ratio.add_metric([r.uuid], st.ratio)
                    idle.add_metric([r.uuid], 1.0 if st.ratio <= self.settings.idle_threshold_ratio else 0.0)
            for f, fam in readings:
                value = r.values.get(f.name)
                if value is not None:  # a counter exports its monotonic total, a gauge the reading
                    fam.add_metric([r.uuid], st.totals[f.name] if f.spec.kind == "counter" else value)
            if pool is not None and pool in self.hourly_cost:
                cost.add_metric([r.uuid, pool], float(self.hourly_cost[pool]))
            else:
                unmapped_count += 1
                if r.uuid not in self._warned_unmapped:
                    self._warned_unmapped.add(r.uuid)
                    log.warning(
                        "GPU %d (%s) belongs to no pool: no %s for it. Name it in pools.<pool>.gpu_uuids, "
                        "gpu_exporter.pool_by_uuid / pool_by_index, or set gpu_exporter.default_pool",
                        r.index,
                        r.uuid,
                        contract.GPU_HOURLY_COST,
                    )
        unmapped = contract.spec(contract.GPU_UNMAPPED_GPUS).family(value=unmapped_count)
        up = contract.spec(contract.NVML_UP).family(value=1.0 if s.up else 0.0)
        errors = family(contract.NVML_ERRORS_TOTAL)
        for reason in sorted(self.errors):
            errors.add_metric([reason], self.errors[reason])
        return [
            info,
            mig,
            ratio,
            busy,
            idle_s,
            observed,
            idle,
            *(fam for _, fam in readings),
            cost,
            unmapped,
            up,
            errors,
        ]

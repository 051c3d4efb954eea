"""The GPU field table: one entry per per-GPU reading, as dcgm-exporter's counters CSV.

An entry says everything about one series: its metric spec (taken into exporter/contract.py, and
from there into docs/metrics.md), the NVML call it is read with and how the answer converts, what
the simulator (``--simulate``) reports, and how the collector exports it: a gauge as read, or — for
a counter — a driver counter made monotonic across driver reloads. Adding a per-GPU gauge is one
entry here (and a test); the NVML backend, the simulator and the collector loop over the table.

Utilisation (samples integrated into busy and idle seconds), identity, MIG and cost are not plain
readings: the collector handles them itself, with their specs in the contract.

NVML functions are named, not imported: the backend looks them up on ``pynvml`` at call time (so a
test can replace them), and this module stays importable without the NVML bindings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from exporter.metric_spec import MetricSpec

# The simulator's GPU: what its power and memory follow (exporter/gpu/simulated.py).
IDLE_WATTS = 60.0
MAX_WATTS = 700.0
MEMORY_TOTAL_BYTES = 80 * 2**30

SECTION = "gpu"


@dataclass(frozen=True)
class NvmlCall:
    """One pynvml call on a GPU handle: ``pynvml.<function>(handle, *pynvml.<args>)``.

    Fields that share a call (used and total memory) share one NVML call per scrape, and its
    failure counts once. ``what`` names it in logs (and ``FakeGpu.unsupported`` in the tests);
    ``fallback`` is called instead when the driver says ``function`` is deprecated or missing, or
    that it does not know the version of the structure asked for.
    """

    what: str
    function: str
    args: tuple[str, ...] = ()
    fallback: str | None = None
    fallback_args: tuple[str, ...] | None = None  # the fallback's own arguments (None: ``args``)


@dataclass(frozen=True)
class SimPoint:
    """One simulated GPU at one instant: what a field's ``simulate`` computes its value from."""

    index: int
    ratio: float  # utilisation now
    seconds: float  # since the simulated driver loaded
    busy_seconds: float  # ∫ utilisation dt since the simulated driver loaded


@dataclass(frozen=True)
class GpuField:
    """``spec.kind`` "gauge": exported as read. "counter": the driver's running total, which restarts
    at 0 when the driver reloads; the collector exports it monotonic."""

    spec: MetricSpec
    nvml: NvmlCall
    convert: Callable[[Any], float]
    simulate: Callable[[SimPoint], float]

    @property
    def name(self) -> str:
        return self.spec.name


def _gpu(name: str, kind: Any, help: str, unit: str, doc: str = "") -> MetricSpec:
    return MetricSpec(name, kind, help, ("uuid",), unit, doc, SECTION)


# Version 2 leaves the memory the driver reserves out of "used", as nvidia-smi does (615 MiB on an
# idle H200 that version 1 counts as used); drivers before R510 only have version 1.
MEMORY = NvmlCall(
    "memory",
    "nvmlDeviceGetMemoryInfo",
    ("nvmlMemory_v2",),
    fallback="nvmlDeviceGetMemoryInfo",
    fallback_args=(),
)

MEMORY_USED = GpuField(
    _gpu(
        "chargeback_gpu_memory_used_bytes",
        "gauge",
        "GPU memory in use, bytes.",
        "bytes",
        "framebuffer memory in use, without what the driver reserves (as nvidia-smi shows it)",
    ),
    MEMORY,
    lambda m: int(m.used),
    lambda g: 2**30 + round(g.ratio * 70 * 2**30),
)
MEMORY_TOTAL = GpuField(
    _gpu(
        "chargeback_gpu_memory_total_bytes",
        "gauge",
        "GPU memory installed, bytes.",
        "bytes",
        "framebuffer memory installed",
    ),
    MEMORY,
    lambda m: int(m.total),
    lambda g: MEMORY_TOTAL_BYTES,
)
POWER = GpuField(
    _gpu("chargeback_gpu_power_watts", "gauge", "GPU power draw, watts.", "watts", "power draw"),
    NvmlCall("power", "nvmlDeviceGetPowerUsage"),
    lambda mw: mw / 1000.0,
    lambda g: IDLE_WATTS + (MAX_WATTS - IDLE_WATTS) * g.ratio,
)
ENERGY = GpuField(
    _gpu(
        "chargeback_gpu_energy_joules_total",
        "counter",
        "Energy used by the GPU, joules.",
        "joules",
        "energy used",
    ),
    NvmlCall("energy", "nvmlDeviceGetTotalEnergyConsumption"),
    lambda mj: mj / 1000.0,
    # idle power all along plus the busy share of the rest
    lambda g: IDLE_WATTS * g.seconds + (MAX_WATTS - IDLE_WATTS) * g.busy_seconds,
)
TEMPERATURE = GpuField(
    _gpu(
        "chargeback_gpu_temperature_celsius",
        "gauge",
        "GPU core temperature, degrees Celsius.",
        "°C",
        "core temperature",
    ),
    # nvmlDeviceGetTemperature is deprecated and may disappear from future drivers
    NvmlCall(
        "temperature",
        "nvmlDeviceGetTemperature",
        ("NVML_TEMPERATURE_GPU",),
        fallback="nvmlDeviceGetTemperatureV",
    ),
    lambda t: float(int(t)),
    lambda g: 30.0 + 45.0 * g.ratio,
)

FIELDS: tuple[GpuField, ...] = (MEMORY_USED, MEMORY_TOTAL, POWER, ENERGY, TEMPERATURE)

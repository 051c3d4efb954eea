"""``--simulate N``: N fake GPUs whose utilisation is an exactly known function of time.

The pattern is a square wave aligned to the Unix epoch: GPU *i* runs at ``levels[i % len(levels)]``
during the first ``duty × period`` seconds of every ``period`` and at 0 for the rest. With the
defaults (``period=60,duty=0.5,levels=0.9/0.6/0.3/0``) GPU 0 is 90 % busy for the first 30 s of
every minute, GPU 3 never works. Two processes using the same pattern agree at every instant.

Like NVML, the backend hands out utilisation samples: one every ``SAMPLE_PERIOD_S`` seconds, on a
grid aligned to the epoch, each the exact mean utilisation over its sample period. Integrating the
samples therefore gives exactly :meth:`SimPattern.busy_integral`, which tests use as the expected
value. Every field of the GPU field table (power, energy, memory, temperature) follows the
utilisation deterministically, as its entry's ``simulate`` says (exporter/gpu/fields.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from exporter.gpu.backend import Backend, BackendError, DeviceReading, UtilSamples
from exporter.gpu.fields import FIELDS, GpuField, SimPoint
from exporter.gpu.fields import IDLE_WATTS as IDLE_WATTS
from exporter.gpu.fields import MAX_WATTS as MAX_WATTS
from exporter.gpu.fields import MEMORY_TOTAL_BYTES as MEMORY_TOTAL_BYTES

SAMPLE_PERIOD_S = 0.5
BUFFER_SECONDS = 600.0  # like NVML's ring buffer, older samples are gone
DRIVER_VERSION = "simulated"
DEFAULT_PATTERN = "period=60,duty=0.5,levels=0.9/0.6/0.3/0"


def simulated_uuid(index: int) -> str:
    return f"GPU-00000000-0000-0000-0000-{index:012d}"


@dataclass(frozen=True)
class SimPattern:
    period_s: float = 60.0
    duty: float = 0.5
    levels: tuple[float, ...] = (0.9, 0.6, 0.3, 0.0)

    @classmethod
    def parse(cls, spec: str) -> SimPattern:
        """``period=60,duty=0.5,levels=0.9/0.6/0.3/0`` (any subset; the rest keep defaults)."""
        values: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            key, sep, value = part.partition("=")
            if not sep or key.strip() not in ("period", "duty", "levels"):
                raise ValueError(
                    f"bad simulate pattern item {part!r}: expected period=S, duty=F or levels=A/B/..."
                )
            values[key.strip()] = value.strip()
        d = cls()
        try:
            period = float(values.get("period", d.period_s))
            duty = float(values.get("duty", d.duty))
            levels = tuple(float(v) for v in values["levels"].split("/")) if "levels" in values else d.levels
        except ValueError:
            raise ValueError(f"bad simulate pattern {spec!r}: numbers expected") from None
        if not (period > 0 and math.isfinite(period)):
            raise ValueError(f"bad simulate pattern {spec!r}: period must be > 0")
        if not 0.0 <= duty <= 1.0:
            raise ValueError(f"bad simulate pattern {spec!r}: duty must be between 0 and 1")
        if not levels or any(not 0.0 <= v <= 1.0 for v in levels):
            raise ValueError(
                f"bad simulate pattern {spec!r}: levels must be utilisation ratios between 0 and 1"
            )
        return cls(period, duty, levels)

    def level(self, index: int) -> float:
        return self.levels[index % len(self.levels)]

    def ratio_at(self, index: int, t: float) -> float:
        """Utilisation of GPU ``index`` at time ``t`` (seconds since the epoch)."""
        return self.level(index) if (t % self.period_s) < self.duty * self.period_s else 0.0

    def _busy_until(self, index: int, t: float) -> float:
        cycles, phase = divmod(t, self.period_s)
        on = self.duty * self.period_s
        return self.level(index) * (cycles * on + min(phase, on))

    def busy_integral(self, index: int, t0: float, t1: float) -> float:
        """∫ utilisation dt over [t0, t1]: busy seconds of GPU ``index``."""
        return self._busy_until(index, t1) - self._busy_until(index, t0)


class SimulatedBackend(Backend):
    def __init__(
        self,
        count: int,
        pattern: SimPattern | None = None,
        clock: Callable[[], float] = time.time,
        fields: tuple[GpuField, ...] = FIELDS,
    ) -> None:
        if count < 1:
            raise ValueError("--simulate needs at least 1 GPU")
        self.count = count
        self.pattern = pattern or SimPattern()
        self.clock = clock
        self.fields = fields
        # The simulated driver "loaded" here: samples and energy start at this grid point.
        self.t0 = math.floor(clock() / SAMPLE_PERIOD_S) * SAMPLE_PERIOD_S
        self.description = f"simulated ({count} GPUs, pattern {self.describe_pattern()})"
        self._initialised = False
        self._now: float | None = None

    def describe_pattern(self) -> str:
        p = self.pattern
        return f"period={p.period_s:g},duty={p.duty:g},levels={'/'.join(f'{v:g}' for v in p.levels)}"

    def init(self) -> None:
        self._initialised = True

    def shutdown(self) -> None:
        self._initialised = False

    def driver_version(self) -> str:
        return DRIVER_VERSION

    def device_count(self) -> int:
        if not self._initialised:
            raise BackendError("uninitialized", "simulated backend not initialised", reinit=True)
        # The collector asks for the count once per scrape: every GPU of the scrape is then read
        # at this same instant, so readings of different GPUs compare exactly.
        self._now = self.clock()
        return self.count

    def samples(self, index: int, since_us: int | None, now: float) -> tuple[tuple[int, float], ...]:
        sp = SAMPLE_PERIOD_S
        last = math.floor(now / sp)
        first = math.ceil(max(self.t0, now - BUFFER_SECONDS) / sp)
        if since_us is not None:
            first = max(first, math.floor(since_us / 1e6 / sp) + 1)
        out = []
        for k in range(first, last + 1):
            ts = k * sp
            # exact mean over the sample period that ends at ts
            ratio = self.pattern.busy_integral(index, ts - sp, ts) / sp
            out.append((round(ts * 1e6), ratio))
        return tuple(out)

    def read_device(self, index: int, last_sample_us: Mapping[str, int]) -> DeviceReading:
        if not self._initialised:
            raise BackendError("uninitialized", "simulated backend not initialised", reinit=True)
        if not 0 <= index < self.count:
            raise BackendError("invalid_argument", f"no simulated GPU {index}")
        now = self._now if self._now is not None else self.clock()
        uuid = simulated_uuid(index)
        point = SimPoint(
            index=index,
            ratio=self.pattern.ratio_at(index, now),
            seconds=now - self.t0,
            busy_seconds=self.pattern.busy_integral(index, self.t0, now),
        )
        return DeviceReading(
            uuid=uuid,
            index=index,
            name="Simulated GPU 80GB",
            values={f.name: f.simulate(point) for f in self.fields},
            utilization=UtilSamples(self.samples(index, last_sample_us.get(uuid), now)),
        )

"""The interface between the GPU collector and where GPU readings come from (NVML or the simulator).

A backend answers a handful of coarse questions — initialise, how many GPUs, read GPU *i* — and
turns its own failures into :class:`BackendError` with a short ``reason`` (the label of
``chargeback_nvml_errors_total``). All integration, accumulation and pool/cost logic lives in the
collector, so the collector cannot tell the real and the simulated backend apart and both behave
the same across re-initialisation.

Every call may block (NVML is a C library that can hang on a sick GPU): the collector only ever
calls a backend from its worker thread, with a bounded wait.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field


class BackendError(Exception):
    """A backend call failed.

    ``reason`` is a short snake_case word (``gpu_is_lost``, ``library_not_found``, ...).
    ``reinit`` is true when the library must be shut down and initialised again before further
    calls can succeed (GPU lost, driver reloaded, library not initialised).
    """

    def __init__(self, reason: str, message: str, reinit: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.reinit = reinit


@dataclass(frozen=True)
class UtilSamples:
    """Utilisation samples newer than the timestamp the collector asked for.

    ``samples`` are ``(timestamp_us, ratio)`` pairs in increasing time order; each sample's ratio is
    the GPU's utilisation over the period that ends at its timestamp.
    """

    samples: tuple[tuple[int, float], ...]


@dataclass(frozen=True)
class UtilPoint:
    """A single utilisation reading (used where the backend cannot give samples)."""

    ratio: float


@dataclass(frozen=True)
class MigInstance:
    uuid: str
    gpu_instance_id: int
    compute_instance_id: int
    profile: str


@dataclass
class DeviceReading:
    """What one GPU said during one scrape. ``None`` means the backend could not read that value."""

    uuid: str
    index: int
    name: str
    # The readings of the GPU field table (exporter/gpu/fields.py) by metric name; a field the
    # backend could not read is missing. A counter field holds the driver's own running total (it
    # restarts at 0 when the driver reloads); the collector turns it into a monotonic counter.
    values: dict[str, float] = field(default_factory=dict)
    utilization: UtilSamples | UtilPoint | None = None
    mig_instances: list[MigInstance] = field(default_factory=list)
    # Fields the GPU does not support (NVML NotSupported): absent, not errors.
    unsupported: list[str] = field(default_factory=list)
    # Reasons of other per-field failures (each one counted as an error, the field left absent).
    errors: list[str] = field(default_factory=list)


class Backend(ABC):
    """Source of GPU readings. Implementations: ``NvmlBackend``, ``SimulatedBackend``."""

    #: shown on the landing page and in logs
    description: str = "backend"

    @abstractmethod
    def init(self) -> None:
        """Initialise the library; raises BackendError (e.g. ``library_not_found``)."""

    @abstractmethod
    def shutdown(self) -> None:
        """Release the library; never raises."""

    @abstractmethod
    def driver_version(self) -> str: ...

    @abstractmethod
    def device_count(self) -> int: ...

    @abstractmethod
    def read_device(self, index: int, last_sample_us: Mapping[str, int]) -> DeviceReading:
        """Read GPU ``index``.

        ``last_sample_us`` maps a GPU UUID to the timestamp of the newest utilisation sample the
        collector has already integrated: only newer samples are wanted. A GPU missing from it
        gets whatever samples the backend still holds. Raises BackendError when the GPU cannot be
        read at all (its series are then absent this scrape).
        """

"""A stand-in for the NVIDIA driver at the level of pynvml's functions, for tests and the benchmark.

:meth:`FakeNvml.patch` replaces the ``pynvml.nvml*`` functions the NVML backend calls with fakes
that read scripted :class:`FakeGpu` objects; the module's real ``NVMLError`` classes and constants
stay in place, so the backend's error handling runs exactly as it would against a driver.

    fake = FakeNvml([FakeGpu("GPU-a"), FakeGpu("GPU-b", unsupported={"power"})])
    with fake.patch():
        ...  # NvmlBackend().init() now talks to the fake
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pynvml

# Field names used in FakeGpu.unsupported / .errors → the pynvml function they break.
FUNCTIONS = {
    "name": "nvmlDeviceGetName",
    "memory": "nvmlDeviceGetMemoryInfo",
    "power": "nvmlDeviceGetPowerUsage",
    "energy": "nvmlDeviceGetTotalEnergyConsumption",
    "temperature": "nvmlDeviceGetTemperature",
    "samples": "nvmlDeviceGetSamples",
    "utilization": "nvmlDeviceGetUtilizationRates",
    "mig_mode": "nvmlDeviceGetMigMode",
}


def _err(code: int) -> pynvml.NVMLError:
    return pynvml.NVMLError(code)  # maps to the real subclass, e.g. NVMLError_GPUIsLost


@dataclass
class FakeMig:
    uuid: str
    gpu_instance_id: int
    compute_instance_id: int
    name: str = "NVIDIA H100 80GB HBM3 MIG 1g.10gb"


@dataclass
class FakeGpu:
    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    memory_total: int = 80 * 2**30
    memory_used: int = 0
    # what the driver sets aside: version 1 of the memory call counts it as used, version 2 does not
    memory_reserved: int = 0
    # what the version-2 memory call raises (a driver before R510: FUNCTION_NOT_FOUND), None: it works
    memory_v2_error: int | None = None
    power_mw: int = 100_000
    energy_mj: int = 0
    temperature: int = 40
    util_percent: int = 0  # what nvmlDeviceGetUtilizationRates says
    samples: list[tuple[int, int]] = field(default_factory=list)  # (timestamp µs, percent)
    unsupported: set[str] = field(default_factory=set)  # keys of FUNCTIONS → NotSupported
    errors: dict[str, int] = field(default_factory=dict)  # key of FUNCTIONS → NVML_ERROR_* raised
    mig: list[FakeMig] = field(default_factory=list)  # non-empty: MIG mode on
    # Any other pynvml device function → what it returns for this GPU (a field added to the GPU
    # field table reads through it without a fake of its own); its name also works as a key of
    # ``unsupported`` and ``errors``.
    readings: dict[str, Any] = field(default_factory=dict)
    lost: bool = False  # every call on it raises GPU_IS_LOST
    hang: threading.Event | None = None  # calls on it block until the event is set


@dataclass(frozen=True)
class _Handle:
    gpu: FakeGpu
    mig: FakeMig | None = None


class FakeNvml:
    def __init__(self, gpus: list[FakeGpu] | None = None, driver_version: str = "550.54.15") -> None:
        self.gpus = list(gpus or [])
        self.driver = driver_version
        self.library_missing = False
        self.driver_not_loaded = False
        self.init_hang: threading.Event | None = None  # nvmlInit blocks until it is set
        self.initialized = False
        self.init_calls = 0
        self.shutdown_calls = 0

    # --- plumbing

    def _check(self) -> None:
        if not self.initialized:
            raise _err(pynvml.NVML_ERROR_UNINITIALIZED)

    def _dev(self, handle: _Handle, key: str | None = None) -> FakeGpu:
        self._check()
        gpu = handle.gpu
        if gpu.hang is not None:
            gpu.hang.wait()
        if gpu.lost:
            raise _err(pynvml.NVML_ERROR_GPU_IS_LOST)
        if key is not None:
            if key in gpu.unsupported:
                raise _err(pynvml.NVML_ERROR_NOT_SUPPORTED)
            if key in gpu.errors:
                raise _err(gpu.errors[key])
        return gpu

    # --- the fake pynvml functions

    def nvmlInit(self) -> None:
        if self.init_hang is not None:
            self.init_hang.wait()
        if self.library_missing:
            raise _err(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
        if self.driver_not_loaded:
            raise _err(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
        self.initialized = True
        self.init_calls += 1

    def nvmlShutdown(self) -> None:
        self._check()
        self.initialized = False
        self.shutdown_calls += 1

    def nvmlSystemGetDriverVersion(self) -> str:
        self._check()
        return self.driver

    def nvmlDeviceGetCount(self) -> int:
        self._check()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        self._check()
        if not 0 <= index < len(self.gpus):
            raise _err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        handle = _Handle(self.gpus[index])
        self._dev(handle)
        return handle

    def nvmlDeviceGetUUID(self, handle: _Handle) -> str:
        gpu = self._dev(handle)
        return handle.mig.uuid if handle.mig else gpu.uuid

    def nvmlDeviceGetName(self, handle: _Handle) -> str:
        gpu = self._dev(handle, "name")
        return handle.mig.name if handle.mig else gpu.name

    def nvmlDeviceGetMemoryInfo(self, handle: _Handle, version: Any = None) -> Any:
        gpu = self._dev(handle, "memory")
        if version is None:
            used = gpu.memory_used + gpu.memory_reserved
            return pynvml.c_nvmlMemory_t(total=gpu.memory_total, free=gpu.memory_total - used, used=used)
        if gpu.memory_v2_error is not None:
            raise _err(gpu.memory_v2_error)
        return pynvml.c_nvmlMemory_v2_t(
            version=version,
            total=gpu.memory_total,
            reserved=gpu.memory_reserved,
            free=gpu.memory_total - gpu.memory_used - gpu.memory_reserved,
            used=gpu.memory_used,
        )

    def nvmlDeviceGetPowerUsage(self, handle: _Handle) -> int:
        return self._dev(handle, "power").power_mw

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: _Handle) -> int:
        return self._dev(handle, "energy").energy_mj

    def nvmlDeviceGetTemperature(self, handle: _Handle, sensor: int) -> int:
        return self._dev(handle, "temperature").temperature

    def nvmlDeviceGetUtilizationRates(self, handle: _Handle) -> Any:
        gpu = self._dev(handle, "utilization")
        if gpu.mig:  # MIG mode: NVML gives no utilisation for the GPU
            raise _err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return pynvml.c_nvmlUtilization_t(gpu=gpu.util_percent, memory=0)

    def nvmlDeviceGetSamples(
        self, handle: _Handle, sampling_type: int, timestamp: int
    ) -> tuple[int, list[Any]]:
        gpu = self._dev(handle, "samples")
        if gpu.mig or sampling_type != pynvml.NVML_GPU_UTILIZATION_SAMPLES:
            raise _err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        out = []
        for ts, percent in gpu.samples:
            if ts > timestamp:
                s = pynvml.c_nvmlSample_t()
                s.timeStamp = ts
                s.sampleValue.uiVal = percent
                out.append(s)
        if not out:
            raise _err(pynvml.NVML_ERROR_NOT_FOUND)
        return pynvml.NVML_VALUE_TYPE_UNSIGNED_INT, out

    def nvmlDeviceGetMigMode(self, handle: _Handle) -> list[int]:
        gpu = self._dev(handle, "mig_mode")
        mode = pynvml.NVML_DEVICE_MIG_ENABLE if gpu.mig else 0
        return [mode, mode]

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: _Handle) -> int:
        self._dev(handle)
        return 7

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: _Handle, index: int) -> _Handle:
        gpu = self._dev(handle)
        if not gpu.mig:
            raise _err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if index >= len(gpu.mig):
            raise _err(pynvml.NVML_ERROR_NOT_FOUND)
        return _Handle(gpu, gpu.mig[index])

    def nvmlDeviceGetGpuInstanceId(self, handle: _Handle) -> int:
        self._dev(handle)
        if handle.mig is None:
            raise _err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return handle.mig.gpu_instance_id

    def nvmlDeviceGetComputeInstanceId(self, handle: _Handle) -> int:
        self._dev(handle)
        if handle.mig is None:
            raise _err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return handle.mig.compute_instance_id

    def reading(self, function: str) -> Any:
        """A fake of ``pynvml.<function>(handle, *args)`` answering from ``FakeGpu.readings``."""

        def fake(handle: _Handle, *args: Any) -> Any:
            gpu = self._dev(handle, function)
            if function not in gpu.readings:
                raise _err(pynvml.NVML_ERROR_NOT_SUPPORTED)
            return gpu.readings[function]

        return fake

    # --- installing

    def functions(self) -> dict[str, Any]:
        fakes = {name: self.reading(name) for gpu in self.gpus for name in gpu.readings}
        return fakes | {name: getattr(self, name) for name in dir(self) if name.startswith("nvml")}

    @contextlib.contextmanager
    def patch(self) -> Iterator[FakeNvml]:
        """Swap the fakes into the real ``pynvml`` module for the duration of the block (functions
        named in ``FakeGpu.readings``: those of the GPUs given before the block)."""
        functions = self.functions()
        saved = {name: getattr(pynvml, name) for name in functions}
        try:
            for name, fn in functions.items():
                setattr(pynvml, name, fn)
            yield self
        finally:
            for name, fn in saved.items():
                setattr(pynvml, name, fn)

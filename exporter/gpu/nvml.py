"""The real backend: NVIDIA's NVML through nvidia-ml-py (``import pynvml``).

Functions are looked up on the ``pynvml`` module at call time (``pynvml.nvmlX(...)``), so a test
can replace them one by one and keep the module's real error classes and constants.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import pynvml

from exporter.gpu.backend import Backend, BackendError, DeviceReading, MigInstance, UtilPoint, UtilSamples
from exporter.gpu.fields import FIELDS, GpuField, NvmlCall

T = TypeVar("T")

# Errors after which no call succeeds until NVML is shut down and initialised again.
REINIT_ERRORS = frozenset(
    {
        pynvml.NVML_ERROR_GPU_IS_LOST,
        pynvml.NVML_ERROR_UNINITIALIZED,
        pynvml.NVML_ERROR_DRIVER_NOT_LOADED,
        pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH,
    }
)

# NVML_ERROR_GPU_IS_LOST → "gpu_is_lost": the reason label of chargeback_nvml_errors_total.
_REASONS: dict[int, str] = {
    value: name[len("NVML_ERROR_") :].lower()
    for name, value in vars(pynvml).items()
    if name.startswith("NVML_ERROR_") and isinstance(value, int)
}

_MIG_PROFILE = re.compile(r"\bMIG\s+(\S+)\s*$")


def error_reason(exc: BaseException) -> str:
    value = getattr(exc, "value", None)
    return _REASONS.get(value, "unknown") if isinstance(value, int) else "unknown"


def _to_backend_error(exc: pynvml.NVMLError, what: str) -> BackendError:
    return BackendError(error_reason(exc), f"{what}: NVML error: {exc}", reinit=exc.value in REINIT_ERRORS)


def _text(value: str | bytes) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _reraise(exc: BaseException) -> Any:
    raise exc


def _sample_value(value_type: int, sample: Any) -> float:
    v = sample.sampleValue
    return float(
        {
            pynvml.NVML_VALUE_TYPE_DOUBLE: v.dVal,
            pynvml.NVML_VALUE_TYPE_UNSIGNED_INT: v.uiVal,
            pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG: v.ulVal,
            pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: v.ullVal,
            pynvml.NVML_VALUE_TYPE_SIGNED_LONG_LONG: v.sllVal,
            pynvml.NVML_VALUE_TYPE_SIGNED_INT: v.siVal,
        }.get(value_type, v.uiVal)
    )


def nvml_call(call: NvmlCall, handle: Any) -> Any:
    """``pynvml.<function>(handle, *args)``, looked up now; the fallback when the driver lacks it."""
    args = [getattr(pynvml, a) for a in call.args]
    try:
        return getattr(pynvml, call.function)(handle, *args)
    except pynvml.NVMLError as exc:
        if call.fallback is None or exc.value not in (
            pynvml.NVML_ERROR_FUNCTION_NOT_FOUND,
            pynvml.NVML_ERROR_DEPRECATED,
            pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH,  # a driver that knows another struct version
        ):
            raise
        if call.fallback_args is not None:
            args = [getattr(pynvml, a) for a in call.fallback_args]
        return getattr(pynvml, call.fallback)(handle, *args)


class NvmlBackend(Backend):
    description = "NVML (nvidia-ml-py)"

    def __init__(self, fields: tuple[GpuField, ...] = FIELDS) -> None:
        self.fields = fields

    def init(self) -> None:
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise _to_backend_error(exc, "nvmlInit") from None

    def shutdown(self) -> None:
        # already gone (driver unloaded, never initialised): nothing to release
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()

    def driver_version(self) -> str:
        try:
            return _text(pynvml.nvmlSystemGetDriverVersion())
        except pynvml.NVMLError as exc:
            if exc.value in REINIT_ERRORS:
                raise _to_backend_error(exc, "nvmlSystemGetDriverVersion") from None
            return ""

    def device_count(self) -> int:
        try:
            return int(pynvml.nvmlDeviceGetCount())
        except pynvml.NVMLError as exc:
            raise _to_backend_error(exc, "nvmlDeviceGetCount") from None

    def read_device(self, index: int, last_sample_us: Mapping[str, int]) -> DeviceReading:
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            uuid = _text(pynvml.nvmlDeviceGetUUID(handle))
        except pynvml.NVMLError as exc:
            raise _to_backend_error(exc, f"GPU {index}") from None
        reading = DeviceReading(uuid=uuid, index=index, name="")

        def field(name: str, call: Callable[[], T]) -> T | None:
            """One NVML call for one series: NotSupported → absent; GPU lost & co → whole GPU fails."""
            try:
                return call()
            except pynvml.NVMLError as exc:
                if exc.value in REINIT_ERRORS:
                    raise _to_backend_error(exc, f"GPU {index} ({uuid}) {name}") from None
                if exc.value == pynvml.NVML_ERROR_NOT_SUPPORTED:
                    reading.unsupported.append(name)
                else:
                    reading.errors.append(error_reason(exc))
                return None

        reading.name = _text(field("name", lambda: pynvml.nvmlDeviceGetName(handle)) or "")
        answers: dict[NvmlCall, Any] = {}  # one NVML call per scrape serves every field that uses it
        for f in self.fields:
            if f.nvml not in answers:
                answers[f.nvml] = field(f.nvml.what, lambda call=f.nvml: nvml_call(call, handle))
            if answers[f.nvml] is not None:
                reading.values[f.name] = f.convert(answers[f.nvml])

        mig_enabled = False
        mode = field("mig_mode", lambda: pynvml.nvmlDeviceGetMigMode(handle))
        if mode is not None:
            mig_enabled = mode[0] == pynvml.NVML_DEVICE_MIG_ENABLE
        if mig_enabled:
            reading.mig_instances = self._mig_instances(handle, field)
        # With MIG enabled NVML reports no utilisation for the GPU or its instances: the field
        # comes back NotSupported and the series stays absent (never a made-up 0).
        reading.utilization = self._utilization(handle, last_sample_us.get(uuid), field)
        return reading

    @staticmethod
    def _utilization(
        handle: Any, since_us: int | None, field: Callable[..., Any]
    ) -> UtilSamples | UtilPoint | None:
        def samples() -> UtilSamples:
            try:
                value_type, raw = pynvml.nvmlDeviceGetSamples(
                    handle, pynvml.NVML_GPU_UTILIZATION_SAMPLES, since_us or 0
                )
            except pynvml.NVMLError as exc:
                if exc.value == pynvml.NVML_ERROR_NOT_FOUND:  # no sample newer than since_us
                    return UtilSamples(())
                raise
            pairs = sorted(
                (int(s.timeStamp), _sample_value(value_type, s) / 100.0)
                for s in raw
                if since_us is None or int(s.timeStamp) > since_us
            )
            return UtilSamples(tuple(pairs))

        got = field("utilization_samples", samples)
        if got is not None:
            return got
        # Fallback: the driver's point sample (utilisation over its last sample period, 1/6 s to
        # 1 s depending on the product), held by the collector until the next scrape.
        rates = field("utilization", lambda: pynvml.nvmlDeviceGetUtilizationRates(handle))
        return UtilPoint(rates.gpu / 100.0) if rates is not None else None

    @staticmethod
    def _mig_instances(handle: Any, field: Callable[..., Any]) -> list[MigInstance]:
        count = field("mig_device_count", lambda: pynvml.nvmlDeviceGetMaxMigDeviceCount(handle)) or 0
        found: list[MigInstance] = []
        for i in range(count):
            try:
                mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, i)
            except pynvml.NVMLError as exc:
                if exc.value == pynvml.NVML_ERROR_NOT_FOUND:  # slot not populated
                    continue
                field("mig_device", lambda exc=exc: _reraise(exc))  # counted / escalated like any field
                continue
            uuid = field("mig_uuid", lambda mig=mig: _text(pynvml.nvmlDeviceGetUUID(mig)))
            if uuid is None:
                continue
            gi = field("mig_gpu_instance_id", lambda mig=mig: pynvml.nvmlDeviceGetGpuInstanceId(mig))
            ci = field("mig_compute_instance_id", lambda mig=mig: pynvml.nvmlDeviceGetComputeInstanceId(mig))
            name = field("mig_name", lambda mig=mig: _text(pynvml.nvmlDeviceGetName(mig))) or ""
            m = _MIG_PROFILE.search(name)
            found.append(
                MigInstance(
                    uuid=uuid,
                    gpu_instance_id=-1 if gi is None else int(gi),
                    compute_instance_id=-1 if ci is None else int(ci),
                    profile=m.group(1) if m else name,
                )
            )
        return found

"""The ``gpu_exporter:`` section of the config file. Pools may also name their GPUs themselves
(``pools.X.gpu_uuids`` / ``gpu_indexes``); those join the maps here."""

from __future__ import annotations

from dataclasses import field
from typing import Annotated, Any

from pydantic import ValidationInfo, field_validator, model_validator

from exporter.sections import Listen, Section, Str, context, fail, known_pool, mapping, number, section

DEFAULT_GPU_EXPORTER_LISTEN = "0.0.0.0:9842"


@section
class GpuExporterConfig(Section):
    listen: Listen = DEFAULT_GPU_EXPORTER_LISTEN
    idle_threshold_ratio: Annotated[float, number(maximum=1.0)] = 0.05
    default_pool: Str | None = None
    pool_by_uuid: dict[str, str] = field(default_factory=dict)
    pool_by_index: dict[int, str] = field(default_factory=dict)
    nvml_call_timeout_seconds: Annotated[float, number(minimum=0.01)] = 2.0

    @field_validator("default_pool")
    @classmethod
    def _known_default(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else known_pool(value, info)

    @field_validator("pool_by_uuid", mode="plain")
    @classmethod
    def _by_uuid(cls, value: Any, info: ValidationInfo) -> dict[str, str]:
        return {str(u): known_pool(p, info, f".{u}") for u, p in mapping(value).items()}

    @field_validator("pool_by_index", mode="plain")
    @classmethod
    def _by_index(cls, value: Any, info: ValidationInfo) -> dict[int, str]:
        out: dict[int, str] = {}
        for idx, pool in mapping(value).items():
            if isinstance(idx, bool) or not isinstance(idx, int) or idx < 0:
                fail("GPU index must be a whole number ≥ 0", f".{idx}")
            out[idx] = known_pool(pool, info, f".{idx}")
        return out

    @model_validator(mode="after")
    def _pools_name_gpus(self, info: ValidationInfo) -> GpuExporterConfig:
        by_uuid: dict[str, str] = {}
        by_index: dict[int, str] = {}
        for pool in (context(info).get("pools") or {}).values():
            for u in pool.gpu_uuids:
                by_uuid[u] = pool.name
            for i in pool.gpu_indexes:
                by_index[i] = pool.name
        object.__setattr__(self, "pool_by_uuid", {**by_uuid, **self.pool_by_uuid})
        object.__setattr__(self, "pool_by_index", {**by_index, **self.pool_by_index})
        return self

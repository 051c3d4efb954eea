"""hybrid: each pool's cost shared by a weighted mix of token share, time share, fixed shares and an
equal split. Its parameters are ``report.hybrid`` (weights summing to exactly 1)."""

from __future__ import annotations

from dataclasses import field
from decimal import Decimal
from typing import Any

from pydantic import ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from exporter.config import Config
from exporter.report.inputs import Inputs
from exporter.report.method_registry import Param, register
from exporter.report.methods import Allocation, pool_share_method
from exporter.sections import Section, fail, known_team, mapping, money, section

HYBRID_COMPONENTS = ("token_share", "time_share", "fixed_share", "equal_split")
_SHARE = money().func


def _shares(value: Any) -> dict[str, Decimal]:
    out: dict[str, Decimal] = {}
    for name, share in mapping(value).items():
        if share is None:
            fail("is required", f".{name}")
        try:
            out[name] = _SHARE(share)
        except PydanticCustomError as exc:  # the share's own message, one level down
            fail(str((exc.context or {})["message"]), f".{name}")
    return out


@section
class HybridConfig(Section):
    weights: dict[str, Decimal] = field(default_factory=lambda: {"token_share": Decimal(1)})
    fixed_shares: dict[str, Decimal] = field(default_factory=dict)

    @classmethod
    def gather(cls, data: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if data and not mapping(data.get("weights")):
            fail("at least one component weight is required", "weights")
        return data

    @field_validator("weights", mode="plain")
    @classmethod
    def _weights(cls, value: Any) -> dict[str, Decimal]:
        for comp in mapping(value):
            if comp not in HYBRID_COMPONENTS:
                fail(f"unknown component (expected one of: {', '.join(HYBRID_COMPONENTS)})", f".{comp}")
        weights = _shares(value)
        if not weights:
            fail("at least one component weight is required")
        total = sum(weights.values(), Decimal(0))
        if total != 1:
            fail(f"weights must sum to 1, got {total}")
        return weights

    @field_validator("fixed_shares", mode="plain")
    @classmethod
    def _fixed(cls, value: Any, info: ValidationInfo) -> dict[str, Decimal]:
        for team in mapping(value):
            known_team(team, info, f".{team}")
        return _shares(value)

    @model_validator(mode="after")
    def _consistent(self) -> HybridConfig:
        if self.weights.get("fixed_share") and not self.fixed_shares:
            fail("required when the fixed_share component has a weight", "fixed_shares")
        total = sum(self.fixed_shares.values(), Decimal(0))
        if self.fixed_shares and total != 1:
            fail(f"shares must sum to 1, got {total}", "fixed_shares")
        return self


@register("hybrid", order=4, params={"hybrid": Param(HybridConfig, HybridConfig)})
def hybrid(inputs: Inputs, cfg: Config) -> Allocation:
    h = cfg.report.hybrid  # HybridConfig's checks hold however it was built (sums of exactly 1)
    params: dict[str, object] = {
        "weights": {k: str(v) for k, v in sorted(h.weights.items())},
        "fixed_shares": {k: str(v) for k, v in sorted(h.fixed_shares.items())},
    }
    parts = [(w, c) for c, w in sorted(h.weights.items())]
    return pool_share_method("hybrid", inputs, cfg, parts, h.fixed_shares, params)

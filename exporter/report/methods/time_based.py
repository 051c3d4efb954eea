"""time-based: each pool's cost shared by request seconds."""

from __future__ import annotations

from decimal import Decimal

from exporter.config import Config
from exporter.report.inputs import Inputs
from exporter.report.method_registry import register
from exporter.report.methods import Allocation, pool_share_method


@register("time-based", order=3)
def time_based(inputs: Inputs, cfg: Config) -> Allocation:
    return pool_share_method("time-based", inputs, cfg, [(Decimal(1), "time_share")])

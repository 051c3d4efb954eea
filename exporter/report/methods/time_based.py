"""time-based: each pool's cost shared by request seconds."""

from __future__ import annotations

from decimal import Decimal

from exporter.config import Config
from exporter.report.inputs import Inputs
from exporter.report.method_registry import register
from exporter.report.methods import Allocation, _pool_lines, _pool_params, _share_method, _unknown_pool_note


@register("time-based", order=3)
def time_based(inputs: Inputs, cfg: Config) -> Allocation:
    notes: list[str] = []
    _unknown_pool_note(_pool_lines(inputs), notes)
    book = _share_method(inputs, cfg.report.idle_handling, [(Decimal(1), "time_share")])
    params = {"idle_handling": cfg.report.idle_handling, "pools": _pool_params(inputs)}
    return book.result("time-based", params, notes)

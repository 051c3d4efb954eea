"""token-share: each pool's cost shared by weighted tokens (the default, and a real-time method)."""

from __future__ import annotations

from decimal import Decimal

from exporter.config import Config
from exporter.report.inputs import Inputs
from exporter.report.method_registry import register
from exporter.report.methods import Allocation, _pool_lines, _pool_params, _share_method, _unknown_pool_note


@register("token-share", order=2, realtime=1)
def token_share(inputs: Inputs, cfg: Config) -> Allocation:
    notes: list[str] = []
    _unknown_pool_note(_pool_lines(inputs), notes)
    book = _share_method(inputs, cfg.report.idle_handling, [(Decimal(1), "token_share")])
    params = {"idle_handling": cfg.report.idle_handling, "pools": _pool_params(inputs)}
    return book.result("token-share", params, notes)

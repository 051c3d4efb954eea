"""token-share: each pool's cost shared by weighted tokens (the default, and a real-time method)."""

from __future__ import annotations

from decimal import Decimal

from exporter.config import Config
from exporter.report.inputs import Inputs
from exporter.report.method_registry import register
from exporter.report.methods import Allocation, pool_share_method


@register("token-share", order=2, realtime=1)
def token_share(inputs: Inputs, cfg: Config) -> Allocation:
    return pool_share_method("token-share", inputs, cfg, [(Decimal(1), "token_share")])

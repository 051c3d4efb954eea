"""Unit prices for spend known at request time (the one place that says what a token costs).

Token-share spend depends on everybody's usage and on what the GPUs cost over the whole month, so
it is only known once the month is over. A budget that blocks requests needs a figure now, so it
uses a stated unit price per *weighted* token (prompt tokens × prompt weight + completion tokens ×
completion weight), per model:

1. ``limits.price_per_million_weighted_tokens.<model>`` when configured;
2. otherwise the proxy price of the model's pool: the pool's cost per hour spread over its full
   capacity, ``gpu_hourly_cost × gpus / 3600 / capacity_tokens_per_second`` (the same price as
   ``pool:chargeback_price_per_token:ratio`` and the proxy-price-per-token method);
3. otherwise none: the model's spend is unknown, and a blocking budget is refused at config load.

docs/methods.md explains how this figure relates to the month's statement.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from exporter.catalog import Model, Pool

MILLION = Decimal(1_000_000)
NANO = Decimal("1e-9")  # spend is counted in nano-units of the currency (integers in the store)


@dataclass(frozen=True)
class ModelPrice:
    model: str
    per_weighted_token: Decimal | None
    source: str  # "configured" | "proxy-price" | "none"
    prompt_weight: Decimal
    completion_weight: Decimal

    def weighted_tokens(self, prompt: int, completion: int) -> Decimal:
        return prompt * self.prompt_weight + completion * self.completion_weight

    def spend(self, prompt: int, completion: int) -> Decimal:
        """Estimated spend (0 when the model has no price)."""
        if self.per_weighted_token is None:
            return Decimal(0)
        return self.weighted_tokens(prompt, completion) * self.per_weighted_token


class PricedConfig(Protocol):
    """What prices are read from (exporter.config.Config; a protocol keeps this module below it)."""

    @property
    def pools(self) -> Mapping[str, Pool]: ...

    @property
    def models(self) -> Mapping[str, Model]: ...

    @property
    def limits(self) -> Any: ...  # LimitsConfig | None


def model_price(cfg: PricedConfig, model: Model) -> ModelPrice:
    return price_of(model, cfg.pools, cfg.limits.price_per_million if cfg.limits is not None else {})


def price_of(model: Model, pools: Mapping[str, Pool], configured_prices: Mapping[str, Decimal]) -> ModelPrice:
    w = model.token_weights
    configured = configured_prices.get(model.name)
    if configured is not None:
        return ModelPrice(model.name, configured / MILLION, "configured", w.prompt, w.completion)
    pool = pools.get(model.pool)
    if pool is not None and pool.capacity_tokens_per_second:
        price = pool.hourly_cost / Decimal(3600) / pool.capacity_tokens_per_second
        return ModelPrice(model.name, price, "proxy-price", w.prompt, w.completion)
    return ModelPrice(model.name, None, "none", w.prompt, w.completion)


def price_table(cfg: PricedConfig) -> dict[str, ModelPrice]:
    return {name: model_price(cfg, m) for name, m in cfg.models.items()}


def to_nano(amount: Decimal) -> int:
    return int(amount.scaleb(9).to_integral_value())


def from_nano(value: int) -> Decimal:
    return Decimal(value).scaleb(-9)

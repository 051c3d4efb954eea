"""proxy-price-per-token: a price per weighted token from each pool's cost and stated capacity
(``pools.X.capacity_tokens_per_second``); unused capacity stays with central IT."""

from __future__ import annotations

from decimal import Decimal

from exporter.config import Config
from exporter.report.inputs import Inputs
from exporter.report.method_registry import register
from exporter.report.methods import (
    MILLION,
    UNRECOVERED,
    Allocation,
    Book,
    MethodError,
    pool_lines,
    pool_params,
    unknown_pool_note,
)


@register("proxy-price-per-token", order=1, realtime=2)
def proxy_price_per_token(inputs: Inputs, cfg: Config) -> Allocation:
    book = Book(inputs)
    notes: list[str] = []
    lines_by_pool = pool_lines(inputs)
    unknown_pool_note(lines_by_pool, notes)
    prices: dict[str, object] = {}
    for pool, p in sorted(inputs.pools.items()):
        lines = lines_by_pool.get(pool, [])
        # C_p covers the time its GPUs were present, so capacity does too: the average GPU's
        # presence (= the whole period when the exporter saw every GPU throughout).
        seconds = (
            p.gpu_seconds / p.gpus
            if p.cost_source == "prometheus" and p.gpus
            else Decimal(inputs.period.seconds)
        )
        k = p.capacity_tokens_per_second
        if k is None or k <= 0:
            if any(u.weighted_tokens for u in lines):
                raise MethodError(
                    f"{cfg.path}: pools.{pool}.capacity_tokens_per_second: required by method proxy-price-per-token "
                    f"(pool {pool} has usage in {inputs.period.label})"
                )
            book.add_central(UNRECOVERED, pool, p.cost, f"pool {pool}: no capacity configured and no usage")
            continue
        price = p.cost / (k * seconds) if seconds else Decimal(0)
        prices[pool] = {
            "price_per_million_tokens": str(price * MILLION),
            "capacity_tokens_per_second": str(k),
            "capacity_seconds": str(seconds),
        }
        recovered = Decimal(0)
        for u in lines:
            a = u.weighted_tokens * price
            book.add_usage(u, a)
            recovered += a
        book.add_central(
            UNRECOVERED,
            pool,
            p.cost - recovered,
            f"pool {pool}: capacity not used (cost minus tokens × price)"
            if recovered <= p.cost
            else f"pool {pool}: usage above the stated capacity (negative: recovered more than cost)",
        )
    params = {"prices": prices, "pools": pool_params(inputs)}
    return book.result("proxy-price-per-token", params, notes)

"""tiered: a rate card of marginal token tiers (``report.tiers``), per team per period."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

from pydantic import ValidationError

from exporter.config import Config
from exporter.report.inputs import Inputs
from exporter.report.method_registry import Param, register
from exporter.report.methods import MILLION, Allocation, Book, charge_team, rate_card_result, team_lines
from exporter.sections import Money, Section, describe, fail, plain, section, translate, validate_entry, whole


@section
class Tier(Section):
    up_to_tokens: Annotated[int | None, whole(minimum=1)] = None  # None: unbounded (last tier)
    price_per_million: Money


def _tiers(value: Any) -> tuple[Tier, ...]:
    """Ascending upper bounds, only the last one open-ended."""
    if not value:
        return ()
    if not isinstance(value, list | tuple):
        fail(f"expected a list of tiers, got {describe(value)}")
    tiers: list[Tier] = []
    previous = 0
    for i, t in enumerate(value):
        try:
            tier = t if isinstance(t, Tier) else validate_entry(Tier, t, {})
        except ValidationError as exc:
            where, message = translate(exc)
            fail(message, f"[{i}].{where}" if where else f"[{i}]")
        if tier.up_to_tokens is None and i != len(value) - 1:
            fail("only the last tier may be open-ended", f"[{i}].up_to_tokens")
        if tier.up_to_tokens is not None and tier.up_to_tokens <= previous:
            fail(
                f"tiers out of order: {tier.up_to_tokens} is not above the previous bound {previous}",
                f"[{i}].up_to_tokens",
            )
        previous = tier.up_to_tokens or previous
        tiers.append(tier)
    return tuple(tiers)


Tiers = Annotated[tuple[Tier, ...], plain(_tiers)]


def tier_charge(tokens: Decimal, cfg: Config) -> tuple[Decimal, list[tuple[str, Decimal, Decimal]]]:
    """Marginal tiers: each tier's price applies to the tokens that fall inside it."""
    total = Decimal(0)
    bands: list[tuple[str, Decimal, Decimal]] = []
    lower = Decimal(0)
    for t in cfg.report.tiers:
        upper = Decimal(t.up_to_tokens) if t.up_to_tokens is not None else None
        in_band = max(Decimal(0), (min(tokens, upper) if upper is not None else tokens) - lower)
        if in_band > 0:
            amount = in_band * t.price_per_million / MILLION
            total += amount
            bands.append((f"{lower}-{upper if upper is not None else '∞'}", in_band, amount))
        if upper is None or tokens <= upper:
            break
        lower = upper
    return total, bands


@register("tiered", order=5, params={"tiers": Param(Tiers, tuple)}, requires="tiers")
def tiered(inputs: Inputs, cfg: Config) -> Allocation:
    book = Book(inputs)
    for _team, lines in sorted(team_lines(inputs).items()):
        charge_team(book, lines, lambda tokens: tier_charge(tokens, cfg)[0])
    params: dict[str, object] = {
        "tiers": [
            {"up_to_tokens": t.up_to_tokens, "price_per_million": str(t.price_per_million)}
            for t in cfg.report.tiers
        ],
        "basis": "cumulative weighted tokens per team in the period; marginal (each tier's price applies inside it)",
    }
    return rate_card_result(book, inputs, "tiered", params, [])

"""Money: exact ``Decimal`` amounts rounded to the currency's minor unit by largest remainder.

Rounding each amount on its own would let a team's lines miss the team total by a cent or more,
and the team totals miss the pool cost. Largest remainder fixes the total first and hands out the
leftover minor units to the amounts that lost the most in rounding down:

1. floor every amount to the minor unit;
2. the target total (minus the floors' sum) is a whole number k of minor units, 0 ≤ k ≤ n;
3. the k amounts with the largest remainders get one more unit (ties: the earlier key).

It works for negative amounts too (floors go down); a target within one minor unit of the exact
sum keeps k in range — that is how a team's rounded total becomes the target for its lines.
"""

from __future__ import annotations

import decimal
from collections.abc import Hashable, Mapping
from decimal import ROUND_FLOOR, ROUND_HALF_EVEN, Decimal
from typing import TypeVar

K = TypeVar("K", bound=Hashable)

# Enough digits that shares of a month of GPU cost never lose a sub-cent digit.
CONTEXT = decimal.Context(prec=50, rounding=ROUND_HALF_EVEN)


def quantum(minor_units: int) -> Decimal:
    return Decimal(1).scaleb(-minor_units)


def round_money(amount: Decimal, minor_units: int) -> Decimal:
    return amount.quantize(quantum(minor_units), rounding=ROUND_HALF_EVEN)


def largest_remainder(
    amounts: Mapping[K, Decimal], minor_units: int, target: Decimal | None = None
) -> dict[K, Decimal]:
    """Round ``amounts`` to ``minor_units`` so they sum exactly to ``target`` (default: the exact
    sum rounded half-even). ``target`` must lie within one minor unit of the exact sum."""
    q = quantum(minor_units)
    if not amounts:
        if target not in (None, Decimal(0)) and target != 0:
            raise ValueError(f"cannot distribute {target} over no amounts")
        return {}
    exact_total = sum(amounts.values(), Decimal(0))
    if target is None:
        target = round_money(exact_total, minor_units)
    target = target.quantize(q)
    floors = {k: v.quantize(q, rounding=ROUND_FLOOR) for k, v in amounts.items()}
    units = int(((target - sum(floors.values(), Decimal(0))) / q).to_integral_value())
    n = len(amounts)
    # Order: largest remainder first, then insertion order (callers pass sorted keys) for ties.
    order = [
        k for _, k in sorted(enumerate(amounts), key=lambda ik: (-(amounts[ik[1]] - floors[ik[1]]), ik[0]))
    ]
    out = dict(floors)
    # With a target within one unit of the exact sum, 0 <= units <= n and this is one pass; a
    # farther target (never produced here) is spread evenly rather than refused.
    every, rest = divmod(units, n)
    for k in order:
        out[k] += q * every
    for k in order[:rest]:
        out[k] += q
    return {k: out[k] for k in amounts}


def fmt_money(amount: Decimal, minor_units: int) -> str:
    """Fixed-point text with exactly ``minor_units`` decimals ("-0.00" never appears)."""
    v = amount.quantize(quantum(minor_units))
    if v == 0:
        v = abs(v)
    return f"{v:.{minor_units}f}"


def fmt_decimal(value: Decimal, places: int) -> str:
    v = value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN)
    if v == 0:
        v = abs(v)
    return f"{v:.{places}f}"

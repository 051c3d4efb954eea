"""Money: exact ``Decimal`` amounts rounded to the currency's minor unit by largest remainder.

Rounding each amount on its own would let a team's lines miss the team total by a cent or more,
and the team totals miss the pool cost. Largest remainder fixes the total first and hands out the
leftover minor units to the amounts that lost the most in rounding down:

1. floor every amount to the minor unit;
2. the target total (minus the floors' sum) is a whole number k of minor units, 0 ≤ k ≤ n;
3. the k amounts with the largest remainders get one more unit (ties: the earlier key).

It works for negative amounts too (floors go down); a target within one minor unit of the exact
sum keeps k in range — that is how a team's rounded total becomes the target for its lines.

A statement's lines belong to a team and a pool at once, and both sums must hold: a team's lines
add up to its total and, under a full-recovery method, the lines on a pool add up to the pool's
cost. :func:`largest_remainder_table` rounds such a table so that every row and every column
keeps its own largest-remainder total (controlled rounding, solved as a small flow problem).

Amounts are shown by locale convention (:func:`fmt_money_locale`, CLDR data from Babel):
``1.234,50 €`` in de_DE, ``€1,234.50`` in en_US. Machine formats (CSV, JSON) keep plain
fixed-point text (:func:`fmt_money`).
"""

from __future__ import annotations

import copy
import decimal
from collections.abc import Hashable, Mapping
from decimal import ROUND_FLOOR, ROUND_HALF_EVEN, Decimal
from functools import cache
from typing import TypeVar

from babel import Locale, UnknownLocaleError
from babel.numbers import NumberPattern, format_decimal

K = TypeVar("K", bound=Hashable)
R = TypeVar("R", bound=Hashable)
C = TypeVar("C", bound=Hashable)

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


def largest_remainder_table(
    cells: Mapping[tuple[R, C], Decimal],
    minor_units: int,
    row_targets: Mapping[R, Decimal],
    col_targets: Mapping[C, Decimal],
) -> dict[tuple[R, C], Decimal]:
    """Round a (row, column) table so each row sums to its target and, where possible, each column
    to its target. Targets come from :func:`largest_remainder` over the row sums and the column
    sums (so they agree in total and lie within one unit of the exact sums).

    Every cell is its floor or its floor + one unit (cells without a remainder stay exact). Which
    cells get the extra unit is a bipartite matching of rows to columns: the largest remainders are
    taken first, then augmenting paths move units until every row and column has what it needs.
    Should the column targets be unreachable (a row whose only cell's column has no unit to give,
    e.g. ties broken differently in rows and columns), the rows still hold and the columns take
    the nearest feasible totals: rows are what statements are issued for.
    """
    q = quantum(minor_units)
    floors = {k: v.quantize(q, rounding=ROUND_FLOOR) for k, v in cells.items()}
    rem = {k: cells[k] - floors[k] for k in cells}

    def need(targets: Mapping[K, Decimal], idx: int) -> dict[K, int]:
        out: dict[K, int] = {}
        for key, target in targets.items():
            base = sum((floors[k] for k in cells if k[idx] == key), Decimal(0))
            out[key] = int(((target.quantize(q) - base) / q).to_integral_value())
        return out

    row_need: dict[R, int] = need(row_targets, 0)  # type: ignore[arg-type]
    col_cap: dict[C, int] = need(col_targets, 1)  # type: ignore[arg-type]
    # candidate cells per row, largest remainder first (ties: insertion order)
    order = sorted(enumerate(cells), key=lambda ik: (-rem[ik[1]], ik[0]))
    cand: dict[R, list[tuple[R, C]]] = {}
    for _, k in order:
        if rem[k] > 0:
            cand.setdefault(k[0], []).append(k)
    position = {k: i for i, k in enumerate(cells)}
    chosen: set[tuple[R, C]] = set()
    used: dict[C, int] = dict.fromkeys(col_cap, 0)

    def augment(row: R, seen: set[R]) -> bool:
        """Give ``row`` one more unit: a free column, or one taken back from another row that can
        move its unit elsewhere (Kuhn's augmenting path)."""
        seen.add(row)
        for k in cand.get(row, []):
            if k in chosen:
                continue
            col = k[1]
            if used.get(col, 0) < col_cap.get(col, 0):
                chosen.add(k)
                used[col] = used.get(col, 0) + 1
                return True
        for k in cand.get(row, []):
            if k in chosen:
                continue
            col = k[1]
            # take back the unit that lost least in rounding first (ties: the earlier cell), so
            # the result is deterministic and keeps the largest remainders where it can
            givers = sorted(
                (c for c in chosen if c[1] == col and c[0] not in seen), key=lambda c: (rem[c], position[c])
            )
            for other in givers:
                if augment(other[0], seen):
                    chosen.discard(other)
                    chosen.add(k)
                    return True
        return False

    for row in row_targets:
        for _ in range(row_need.get(row, 0)):
            if not augment(row, set()):
                # columns cannot all hold: give the row its unit on its largest free remainder
                k = next((k for k in cand.get(row, []) if k not in chosen), None)
                if k is None:  # only exact cells left (target noise): the least-loaded column's
                    k = min(
                        (k for k in cells if k[0] == row and k not in chosen),
                        key=lambda c: (used.get(c[1], 0) - col_cap.get(c[1], 0), position[c]),
                        default=None,
                    )
                if k is None:
                    raise ValueError(
                        f"row {row!r}: its target is more than one unit per cell above its amounts"
                    )
                chosen.add(k)
                used[k[1]] = used.get(k[1], 0) + 1
    return {k: floors[k] + (q if k in chosen else 0) for k in cells}


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


def hours_places(hours: Decimal) -> int:
    """Three decimals (3.6 s: at GPU prices of up to 10 an hour, hours × price then lands within
    half a cent of the cost shown next to it), or as many more (up to 6) as a small non-zero value
    needs to show: 90 idle seconds read 0.025 h next to an idle cost of 0.09, not 0.0 or 0.02."""
    places = 3
    while places < 6 and hours != 0 and hours.quantize(Decimal(1).scaleb(-places)) == 0:
        places += 1
    return places


def fmt_hours(hours: Decimal) -> str:
    return fmt_decimal(hours, hours_places(hours))


@cache
def locale(name: str) -> Locale:
    """A Babel locale from ``de_DE`` / ``en-US``; ValueError naming it when unknown."""
    try:
        return Locale.parse(name.replace("-", "_"))
    except (UnknownLocaleError, ValueError):
        raise ValueError(f"unknown locale {name!r} (expected e.g. en_US, de_DE, fr_CH)") from None


@cache
def _currency_pattern(name: str, minor_units: int) -> NumberPattern:
    pattern = copy.copy(locale(name).currency_formats["standard"])
    pattern.frac_prec = (minor_units, minor_units)
    return pattern


def fmt_money_locale(amount: Decimal, currency: str, minor_units: int, locale_name: str) -> str:
    """``1.234,50 €`` (de_DE), ``€1,234.50`` (en_US): grouping, decimal sign and the currency's
    place by the locale's convention, exactly ``minor_units`` decimals."""
    v = amount.quantize(quantum(minor_units))
    if v == 0:
        v = abs(v)
    return str(
        _currency_pattern(locale_name, minor_units).apply(
            v, locale(locale_name), currency=currency, currency_digits=False
        )
    )


def fmt_number_locale(value: Decimal | int, locale_name: str, places: int | None = None) -> str:
    """A quantity with the locale's grouping and decimal sign; ``places`` fixes the decimals."""
    d = Decimal(value)
    if places is None:
        if d == d.to_integral_value():
            return format_decimal(int(d), locale=locale(locale_name))
        return format_decimal(d.normalize(), locale=locale(locale_name), decimal_quantization=False)
    d = d.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN)
    if d == 0:
        d = abs(d)
    return format_decimal(
        d, format=f"#,##0.{'0' * places}" if places else "#,##0", locale=locale(locale_name)
    )

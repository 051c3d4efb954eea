"""The allocation methods. Each turns :class:`Inputs` into exact (unrounded) charges.

One module per method in this package registers it (exporter/report/method_registry.py) with
the parameters it owns under ``report:``; this module holds what they share (its public names are
the API method modules build on) and finds them.

Pool-cost methods (token-share, time-based, hybrid) recover every pool's cost C_p; how the idle
part of C_p is treated follows ``report.idle_handling``:

- ``spread`` — the whole C_p is shared by usage (the idle part rides along, shown per team);
- ``absorb`` — only the busy part is shared; the idle cost is a central-IT line;
- ``even``  — the busy part is shared by usage; the idle cost is split evenly among the teams
  with usage in that pool, as a line of its own.

proxy-price-per-token charges a price per weighted token derived from capacity, and leaves the
rest of the pool cost (unused capacity) on a central-IT line. tiered and flat-fee-with-overages
are rate cards: they charge for tokens regardless of pool cost, and the summary shows the pool
cost they did not recover (or the surplus, as a negative amount).

docs/methods.md has the formulas and worked examples.
"""

from __future__ import annotations

import decimal
import importlib
import pkgutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal

from exporter.config import Config
from exporter.report.inputs import UNKNOWN_POOL, Inputs, Usage
from exporter.report.method_registry import methods
from exporter.report.money import CONTEXT
from exporter.sections import ConfigError

MILLION = Decimal(1_000_000)
CENTRAL = "central-it"

# Line kinds
USAGE = "usage"
FEE = "monthly-fee"
FIXED_SHARE = "fixed-share"
EQUAL_SPLIT = "equal-split"
IDLE_SHARE = "idle-share"
IDLE_ABSORBED = "idle-absorbed"
UNRECOVERED = "unrecovered"
UNALLOCATED = "unallocated"


class MethodError(ConfigError):
    """Method parameters that cannot produce a statement (missing capacity, no rate card ...)."""


@dataclass
class Charge:
    """One statement line before rounding."""

    team: str
    kind: str
    amount: Decimal = Decimal(0)
    user: str = ""
    model: str = ""
    pool: str = ""
    description: str = ""
    idle_amount: Decimal = Decimal(0)  # the part of amount that pays for idle GPU time
    usage: Usage | None = None

    @property
    def sort_key(self) -> tuple[int, str, str, str, str]:
        return (0 if self.kind == USAGE else 1, self.kind, self.user, self.model, self.pool)


@dataclass
class Allocation:
    method: str
    params: dict[str, object]
    charges: list[Charge]  # teams' lines (usage lines even when their amount is 0)
    central: list[Charge]  # central IT's lines (unrecovered, absorbed idle, unallocated)
    notes: list[str] = field(default_factory=list)


class Book:
    """Collects exact amounts: one usage line per Usage, extra lines by (team, kind, pool)."""

    def __init__(self, inputs: Inputs) -> None:
        self.usage = {
            u.key: Charge(team=u.team, kind=USAGE, user=u.user, model=u.model, pool=u.pool, usage=u)
            for u in inputs.usage
        }
        self.extra: dict[tuple[str, str, str], Charge] = {}
        self.central: dict[tuple[str, str], Charge] = {}

    def add_usage(self, u: Usage, amount: Decimal, idle: Decimal = Decimal(0)) -> None:
        c = self.usage[u.key]
        c.amount += amount
        c.idle_amount += idle

    def add_extra(
        self, team: str, kind: str, pool: str, amount: Decimal, description: str, idle: Decimal = Decimal(0)
    ) -> None:
        c = self.extra.get((team, kind, pool))
        if c is None:
            c = self.extra[(team, kind, pool)] = Charge(
                team=team, kind=kind, pool=pool, description=description
            )
        c.amount += amount
        c.idle_amount += idle

    def add_central(self, kind: str, pool: str, amount: Decimal, description: str) -> None:
        c = self.central.get((kind, pool))
        if c is None:
            c = self.central[(kind, pool)] = Charge(
                team=CENTRAL, kind=kind, pool=pool, description=description
            )
        c.amount += amount

    def result(self, method: str, params: dict[str, object], notes: list[str]) -> Allocation:
        charges = list(self.usage.values()) + list(self.extra.values())
        charges.sort(key=lambda c: (c.team, *c.sort_key))
        central = sorted(self.central.values(), key=lambda c: (c.kind, c.pool))
        return Allocation(method, params, charges, central, notes)


def spread(
    amount: Decimal, lines: list[Usage], weight: Callable[[Usage], Decimal]
) -> list[tuple[Usage, Decimal]] | None:
    """amount × w(u) / Σw over ``lines``; None when Σw is 0 (nothing to share by)."""
    total = sum((weight(u) for u in lines), Decimal(0))
    if total <= 0:
        return None
    return [(u, amount * weight(u) / total) for u in lines]


def by_tokens(u: Usage) -> Decimal:
    return u.weighted_tokens


def by_seconds(u: Usage) -> Decimal:
    return u.request_seconds


def pool_lines(inputs: Inputs) -> dict[str, list[Usage]]:
    out: dict[str, list[Usage]] = {p: [] for p in inputs.pools}
    for u in inputs.usage:
        out.setdefault(u.pool, []).append(u)
    return out


def pool_params(inputs: Inputs) -> dict[str, object]:
    return {
        name: {
            "cost_exact": str(p.cost),
            "cost_source": p.cost_source,
            "idle_cost_exact": str(p.idle_cost),
            "capacity_tokens_per_second": None
            if p.capacity_tokens_per_second is None
            else str(p.capacity_tokens_per_second),
        }
        for name, p in sorted(inputs.pools.items())
    }


def unknown_pool_note(lines: dict[str, list[Usage]], notes: list[str]) -> None:
    if lines.get(UNKNOWN_POOL):
        notes.append(f"{len(lines[UNKNOWN_POOL])} usage lines have no known pool and carry no pool cost")


# --------------------------------------------------------------------------- pool-cost methods


def _idle_side(book: Book, inputs: Inputs, pool: str, lines: list[Usage], idle_handling: str) -> None:
    """The idle part of a pool's cost when it is not spread by usage."""
    idle = inputs.pools[pool].idle_cost
    if idle == 0:
        return
    if idle_handling == "absorb":
        book.add_central(IDLE_ABSORBED, pool, idle, f"idle GPU time in pool {pool}, kept by central IT")
    elif idle_handling == "even":
        teams = sorted({u.team for u in lines})
        for t in teams:
            share = idle / len(teams)
            book.add_extra(
                t,
                IDLE_SHARE,
                pool,
                share,
                f"even share of idle GPU time in pool {pool} (1/{len(teams)})",
                idle=share,
            )


def share_pool_costs(
    inputs: Inputs,
    idle_handling: str,
    parts: list[tuple[Decimal, str]],
    fixed_shares: dict[str, Decimal] | None = None,
) -> Book:
    """Pool cost shared by a weighted mix of components (token_share, time_share, equal_split,
    fixed_share, with ``fixed_shares`` per team); token-share and time-based are the one-component
    cases."""
    book = Book(inputs)
    lines_by_pool = pool_lines(inputs)
    for pool, p in sorted(inputs.pools.items()):
        lines = lines_by_pool.get(pool, [])
        spread_idle = idle_handling == "spread"
        allocatable = p.cost if spread_idle else p.busy_cost
        idle_ratio = (p.idle_cost / p.cost) if (spread_idle and p.cost) else Decimal(0)
        unallocated = Decimal(0)
        any_allocated = False
        for weight, comp in parts:
            amount = allocatable * weight
            if amount == 0:
                continue
            if comp in ("token_share", "time_share"):
                shares = spread(amount, lines, by_tokens if comp == "token_share" else by_seconds)
                if shares is None:
                    unallocated += amount
                    continue
                for u, a in shares:
                    book.add_usage(u, a, a * idle_ratio)
            elif comp == "equal_split":
                teams = sorted({u.team for u in lines})
                if not teams:
                    unallocated += amount
                    continue
                for t in teams:
                    a = amount / len(teams)
                    book.add_extra(
                        t,
                        EQUAL_SPLIT,
                        pool,
                        a,
                        f"equal split of pool {pool} (1/{len(teams)}, weight {weight})",
                        a * idle_ratio,
                    )
            elif comp == "fixed_share":
                for t, f in sorted((fixed_shares or {}).items()):
                    a = amount * f
                    book.add_extra(
                        t,
                        FIXED_SHARE,
                        pool,
                        a,
                        f"fixed share {f} of pool {pool} (weight {weight})",
                        a * idle_ratio,
                    )
            any_allocated = True
        if not any_allocated and lines == []:
            # Nobody used the pool: its whole cost (idle included) stays with central IT.
            book.add_central(UNALLOCATED, pool, p.cost, f"pool {pool} had no usage in the period")
            continue
        if unallocated:
            book.add_central(
                UNALLOCATED, pool, unallocated, f"part of pool {pool} with nothing to share it by"
            )
        if not spread_idle:
            _idle_side(book, inputs, pool, lines, idle_handling)
    return book


def pool_share_method(
    method: str,
    inputs: Inputs,
    cfg: Config,
    parts: list[tuple[Decimal, str]],
    fixed_shares: dict[str, Decimal] | None = None,
    params: dict[str, object] | None = None,
) -> Allocation:
    """A whole pool-cost method: :func:`share_pool_costs` with its notes and parameters
    (``params``, the method's own, come between idle_handling and the pools)."""
    notes: list[str] = []
    unknown_pool_note(pool_lines(inputs), notes)
    book = share_pool_costs(inputs, cfg.report.idle_handling, parts, fixed_shares)
    shown = {"idle_handling": cfg.report.idle_handling, **(params or {}), "pools": pool_params(inputs)}
    return book.result(method, shown, notes)


# --------------------------------------------------------------------------- rate cards


def team_lines(inputs: Inputs) -> dict[str, list[Usage]]:
    out: dict[str, list[Usage]] = {}
    for u in inputs.usage:
        out.setdefault(u.team, []).append(u)
    return out


def charge_team(book: Book, lines: list[Usage], price: Callable[[Decimal], Decimal]) -> None:
    """A rate card's charge for one team: ``price`` of the team's weighted tokens in the period,
    onto its usage lines in proportion to their tokens."""
    tokens = sum((u.weighted_tokens for u in lines), Decimal(0))
    for u, a in spread(price(tokens), lines, by_tokens) or []:
        book.add_usage(u, a)


def rate_card_result(
    book: Book, inputs: Inputs, method: str, params: dict[str, object], notes: list[str]
) -> Allocation:
    """A rate card's allocation: the pool cost it did not recover goes to central IT."""
    cost = sum((p.cost for p in inputs.pools.values()), Decimal(0))
    charged = sum((c.amount for c in [*book.usage.values(), *book.extra.values()]), Decimal(0))
    book.add_central(
        UNRECOVERED, "", cost - charged, "pool cost not covered by the rate card (negative: surplus)"
    )
    return book.result(method, {**params, "pools": pool_params(inputs)}, notes)


def allocate(inputs: Inputs, cfg: Config, method: str | None = None) -> Allocation:
    method = method or cfg.report.method
    known = methods()
    if method not in known:
        raise MethodError(f"unknown method {method!r} (expected one of: {', '.join(known)})")
    # The config refuses a report.method without its required key; --method can still name one.
    needed = known[method].requires
    if needed and not getattr(cfg.report, needed):
        raise MethodError(f"{cfg.path}: report.{needed}: required by method {method}")
    with decimal.localcontext(CONTEXT):
        return known[method].allocate(inputs, cfg)  # type: ignore[no-any-return]


def all_teams(cfg: Config, inputs: Inputs, charges: Iterable[Charge]) -> list[str]:
    """Configured teams (statements even without usage) plus unassigned when it has lines."""
    teams = set(cfg.teams)
    teams.update(c.team for c in charges)
    teams.update(u.team for u in inputs.usage)
    return sorted(teams)


def _discover() -> None:
    """Import every method module here: each registers itself (a new method needs no edit here)."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


_discover()

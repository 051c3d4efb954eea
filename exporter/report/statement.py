"""The statement model: rounded amounts per team and line, and the summary for central IT.

Rounding (see :mod:`exporter.report.money`) happens in four steps, each by largest remainder:

1. pool costs → the total pool cost, rounded;
2. team totals → their exact sum, rounded (= recovered); central IT keeps total cost − recovered;
3. what is spent per pool (by teams and central IT) → the total pool cost: the pool's cost again
   wherever the method shares out pool cost;
4. the pool × (teams + central IT) table → pool totals from 3. always, team totals from 2.
   wherever the table allows (controlled rounding; otherwise a team's total moves by a unit to
   follow its pool), then each cell's lines → that cell.

So lines add up to their team's total, team totals plus central IT add up to the total pool cost,
and on every pool what the teams pay ("recovered") plus central IT's lines on it add up to the
pool's cost — under a full-recovery method, recovered is the cost — to the minor unit. Nothing in
a statement's amounts depends on the time the report was run.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any

from exporter.config import Config
from exporter.report.inputs import Inputs
from exporter.report.methods import CENTRAL, USAGE, Allocation, Charge, all_teams
from exporter.report.money import (
    fmt_decimal,
    fmt_money,
    fmt_money_locale,
    fmt_number_locale,
    largest_remainder,
    largest_remainder_table,
    round_money,
)
from exporter.report.period import Period

HOUR = Decimal(3600)
MILLION = Decimal(1_000_000)
NOISE = Decimal("1e-20")  # far below any minor unit, far above 50-digit division noise

GLOSSARY = (
    (
        "weighted tokens",
        "prompt tokens × the model's prompt weight + completion tokens × its completion weight. "
        "Weights make a token of a large model count for more than one of a small model; pool cost "
        "is shared out in proportion to them.",
    ),
    (
        "idle share",
        "the part of a charge that pays for GPU time in which the pool served nobody. The GPUs cost "
        "money all the same; under idle_handling spread it is shared in proportion to usage.",
    ),
    (
        "price per 1M weighted tokens",
        "the charge ÷ weighted tokens × 1,000,000: what the period's usage effectively cost.",
    ),
)


def fmt_qty(value: Decimal | int) -> str:
    """Quantities: integers as integers, fractions with their exact digits (never exponent form)."""
    d = Decimal(value)
    if d == d.to_integral_value():
        return str(int(d))
    return format(d.normalize(), "f")


@dataclass
class Line:
    team: str
    kind: str
    user: str
    model: str
    pool: str
    description: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    weighted_tokens: Decimal
    request_seconds: Decimal
    charge: Decimal

    def as_dict(self, minor: int) -> dict[str, Any]:
        return {
            "team": self.team,
            "kind": self.kind,
            "user": self.user,
            "model": self.model,
            "pool": self.pool,
            "description": self.description,
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_prompt_tokens": self.cached_tokens,
            "weighted_tokens": fmt_qty(self.weighted_tokens),
            "request_seconds": fmt_decimal(self.request_seconds, 3),
            "charge": fmt_money(self.charge, minor),
        }


@dataclass
class TeamStatement:
    team: str
    business_unit: str
    cost_center: str
    billing_contacts: tuple[str, ...]
    budget: Decimal | None
    lines: list[Line]
    total: Decimal
    idle_share: Decimal  # the part of total that pays for idle GPU time (where allocated)

    @property
    def over_budget(self) -> bool:
        return self.budget is not None and self.total > self.budget

    @property
    def weighted_tokens(self) -> Decimal:
        return sum((line.weighted_tokens for line in self.lines if line.kind == USAGE), Decimal(0))

    @property
    def budget_used_percent(self) -> Decimal | None:
        if self.budget is None or self.budget == 0:
            return None
        return (self.total / self.budget * 100).quantize(Decimal("0.1"))

    def usage_totals(self) -> dict[str, Any]:
        usage = [line for line in self.lines if line.kind == USAGE]
        return {
            "requests": sum(line.requests for line in usage),
            "prompt_tokens": sum(line.prompt_tokens for line in usage),
            "completion_tokens": sum(line.completion_tokens for line in usage),
            "cached_prompt_tokens": sum(line.cached_tokens for line in usage),
            "weighted_tokens": sum((line.weighted_tokens for line in usage), Decimal(0)),
            "request_seconds": sum((line.request_seconds for line in usage), Decimal(0)),
        }


@dataclass
class PoolSummary:
    name: str
    cost: Decimal
    cost_source: str
    gpus: int
    gpu_hours: Decimal
    busy_hours: Decimal
    idle_hours: Decimal
    idle_cost: Decimal
    idle_known: bool
    capacity_tokens_per_second: Decimal | None
    weighted_tokens: Decimal
    recovered: Decimal  # Σ of team lines attributed to this pool


@dataclass(frozen=True)
class Previous:
    """The figures of the period before (see :func:`exporter.report.period.previous_period`),
    from the same source and method, to set this period against."""

    period: Period
    totals: dict[str, Decimal]  # team (and central IT) → total
    weighted_tokens: dict[str, Decimal]  # team → weighted tokens
    total_pool_cost: Decimal
    recovered: Decimal


def unit_price(total: Decimal, weighted_tokens: Decimal) -> Decimal | None:
    """Charge per 1M weighted tokens (exact; renderers round it), None without tokens."""
    if weighted_tokens <= 0:
        return None
    return total / weighted_tokens * MILLION


def change_percent(now: Decimal, before: Decimal) -> Decimal | None:
    if before == 0:
        return None
    return ((now - before) / before * 100).quantize(Decimal("0.1"))


@dataclass
class Statement:
    period: Period
    method: str
    params: dict[str, Any]
    currency: str
    minor_units: int
    source: str
    teams: list[TeamStatement]
    central: TeamStatement
    pools: list[PoolSummary]
    total_pool_cost: Decimal
    recovered: Decimal
    unrecovered: Decimal
    idle_cost: Decimal
    notes: list[str] = field(default_factory=list)
    issue_date: date | None = None
    locale: str = "en_US"
    billing_contact: str = ""
    previous: Previous | None = None

    def number(self, team: str | None = None) -> str:
        """The statement number: the same period, method and team always give the same number
        (``CB-2026-10-ALPHA-3F2A91``; the summary's has no team part), so a rerun reissues the
        same statement rather than a new one."""
        key = f"{self.period.label}|{self.method}|{team or ''}"
        digest = hashlib.sha256(key.encode()).hexdigest()[:6].upper()
        name = "".join(ch for ch in (team or "").upper() if ch.isalnum())[:12]
        return "-".join(p for p in ("CB", self.period.label, name, digest) if p)

    def previous_total(self, team: str) -> Decimal | None:
        if self.previous is None:
            return None
        return self.previous.totals.get(team, Decimal(0))

    def previous_unit_price(self, team: str) -> Decimal | None:
        if self.previous is None:
            return None
        return unit_price(
            self.previous.totals.get(team, Decimal(0)), self.previous.weighted_tokens.get(team, Decimal(0))
        )

    def team(self, name: str) -> TeamStatement:
        for t in self.teams:
            if t.team == name:
                return t
        if name == CENTRAL:
            return self.central
        raise KeyError(name)

    def money(self, amount: Decimal) -> str:
        """Plain fixed-point text (machine formats, subjects, logs)."""
        return fmt_money(amount, self.minor_units)

    def cash(self, amount: Decimal) -> str:
        """Money for people, by the locale's convention: ``1.234,50 €`` (de_DE), ``€1,234.50``."""
        return fmt_money_locale(amount, self.currency, self.minor_units, self.locale)

    def num(self, value: Decimal | int, places: int | None = None) -> str:
        """A quantity for people, with the locale's grouping and decimal sign."""
        return fmt_number_locale(value, self.locale, places)


def _line(c: Charge, charge: Decimal) -> Line:
    u = c.usage
    return Line(
        team=c.team,
        kind=c.kind,
        user=c.user,
        model=c.model,
        pool=c.pool,
        description=c.description,
        requests=u.requests if u else 0,
        prompt_tokens=u.prompt_tokens if u else 0,
        completion_tokens=u.completion_tokens if u else 0,
        cached_tokens=u.cached_tokens if u else 0,
        weighted_tokens=u.weighted_tokens if u else Decimal(0),
        request_seconds=u.request_seconds if u else Decimal(0),
        charge=charge,
    )


def previous_figures(st: Statement) -> Previous:
    return Previous(
        period=st.period,
        totals={t.team: t.total for t in [*st.teams, st.central]},
        weighted_tokens={t.team: t.weighted_tokens for t in st.teams},
        total_pool_cost=st.total_pool_cost,
        recovered=st.recovered,
    )


def build_statement(
    cfg: Config,
    inputs: Inputs,
    alloc: Allocation,
    issue_date: date | None = None,
    previous: Previous | None = None,
) -> Statement:
    """The rounded statement. ``issue_date`` and ``previous`` (the period before, for comparison)
    are printed on it and change no amount."""
    minor = cfg.currency_minor_units
    # 1. pool costs
    pool_costs = largest_remainder({p: inputs.pools[p].cost for p in sorted(inputs.pools)}, minor)
    total_cost = sum(pool_costs.values(), Decimal(0))

    # 2. team totals
    teams = [t for t in all_teams(cfg, inputs, alloc.charges) if t != CENTRAL]
    by_team: dict[str, list[Charge]] = {t: [] for t in teams}
    for c in alloc.charges:
        by_team[c.team].append(c)
    exact_totals = {t: sum((c.amount for c in by_team[t]), Decimal(0)) for t in teams}
    exact_cost = sum((p.cost for p in inputs.pools.values()), Decimal(0))
    # Shares are computed to 50 digits, so what a full-recovery method hands out can differ from
    # the exact cost in the 40th digit; a cost of exactly x.xx5 would then round up on one side
    # and down on the other. Such a method recovers the rounded cost, to the cent.
    full = abs(sum(exact_totals.values(), Decimal(0)) - exact_cost) < NOISE
    team_totals = largest_remainder(exact_totals, minor, total_cost if full else None)
    recovered = sum(team_totals.values(), Decimal(0))
    unrecovered = total_cost - recovered

    # 3. the table of pools (rows) × teams and central IT (columns): every pool keeps what was
    # spent on it (its cost, where the method shares out pool cost); every team keeps its total
    # from 2. wherever the pools allow (a team alone on a pool whose cent went the other way takes
    # its pool's), so its total is the sum of its cells. Then 4. each cell's lines → that cell.
    if not alloc.central and unrecovered != 0:
        raise AssertionError(f"internal: {unrecovered} unrecovered with no central line")
    everyone = [*alloc.charges, *alloc.central]
    cell_exact: dict[tuple[str, str], Decimal] = {}
    for c in sorted(everyone, key=lambda c: c.pool):
        cell_exact[(c.pool, c.team)] = cell_exact.get((c.pool, c.team), Decimal(0)) + c.amount
    pool_exact: dict[str, Decimal] = {}
    for (pool, _), amount in cell_exact.items():
        pool_exact[pool] = pool_exact.get(pool, Decimal(0)) + amount
    for pool, amount in pool_exact.items():  # the same arithmetic noise, per pool
        if pool in inputs.pools and abs(amount - inputs.pools[pool].cost) < NOISE:
            pool_exact[pool] = inputs.pools[pool].cost
    pool_targets = largest_remainder(pool_exact, minor, total_cost) if pool_exact else {}
    cell_rounded = largest_remainder_table(
        cell_exact, minor, pool_targets, {**team_totals, CENTRAL: unrecovered}
    )
    line_charge: dict[int, Decimal] = {}
    for (pool, team), target in cell_rounded.items():
        members = [c for c in everyone if (c.pool, c.team) == (pool, team)]
        line_charge.update(largest_remainder({id(c): c.amount for c in members}, minor, target))
    for t in team_totals:
        team_totals[t] = sum((line_charge[id(c)] for c in by_team[t]), Decimal(0))
    recovered = sum(team_totals.values(), Decimal(0))
    unrecovered = total_cost - recovered

    statements: list[TeamStatement] = []
    for t in teams:
        charges = by_team[t]
        conf = cfg.teams.get(t)
        statements.append(
            TeamStatement(
                team=t,
                business_unit=conf.business_unit if conf else "",
                cost_center=conf.cost_center if conf else "",
                billing_contacts=conf.billing_contacts if conf else (),
                budget=conf.budget if conf else None,
                lines=[_line(c, line_charge[id(c)]) for c in charges],
                total=team_totals[t],
                idle_share=round_money(sum((c.idle_amount for c in charges), Decimal(0)), minor),
            )
        )
    central = TeamStatement(
        team=CENTRAL,
        business_unit="central IT",
        cost_center="",
        billing_contacts=tuple(cfg.report.finance_recipients),
        budget=None,
        lines=[_line(c, line_charge[id(c)]) for c in alloc.central],
        total=unrecovered,
        idle_share=Decimal(0),
    )

    pools: list[PoolSummary] = []
    for name in sorted(inputs.pools):
        p = inputs.pools[name]
        pool_recovered = sum(
            (line.charge for s in statements for line in s.lines if line.pool == name), Decimal(0)
        )
        pools.append(
            PoolSummary(
                name=name,
                cost=pool_costs[name],
                cost_source=p.cost_source,
                gpus=p.gpus,
                gpu_hours=p.gpu_seconds / HOUR,
                busy_hours=p.busy_seconds / HOUR,
                idle_hours=p.idle_seconds / HOUR,
                idle_cost=round_money(p.idle_cost, minor),
                idle_known=p.idle_known,
                capacity_tokens_per_second=p.capacity_tokens_per_second,
                weighted_tokens=sum((u.weighted_tokens for u in inputs.usage if u.pool == name), Decimal(0)),
                recovered=pool_recovered,
            )
        )
    return Statement(
        period=inputs.period,
        method=alloc.method,
        params=alloc.params,
        currency=cfg.currency,
        minor_units=minor,
        source=inputs.source,
        teams=statements,
        central=central,
        pools=pools,
        total_pool_cost=total_cost,
        recovered=recovered,
        unrecovered=unrecovered,
        idle_cost=sum((p.idle_cost for p in pools), Decimal(0)),
        notes=sorted(set(inputs.notes)) + alloc.notes,
        issue_date=issue_date,
        locale=cfg.report.locale,
        billing_contact=cfg.report.billing_contact,
        previous=previous,
    )

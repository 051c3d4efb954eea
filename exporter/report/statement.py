"""The statement model: rounded amounts per team and line, and the summary for central IT.

Rounding (see :mod:`exporter.report.money`) happens in four steps, each by largest remainder:

1. pool costs → the total pool cost, rounded;
2. team totals → their exact sum, rounded (= recovered); central IT keeps total cost − recovered;
3. what the teams pay per pool → the same recovered total (so under a full-recovery method a
   pool's "recovered" is its cost, to the minor unit);
4. the team × pool table → team totals by row and per-pool recovered by column (controlled
   rounding), then each cell's lines → that cell; central IT's lines → its total.

So lines add up to their team's total, the lines on a pool add up to what the pool recovered, and
team totals plus central IT add up to the total pool cost, to the minor unit. Nothing in a
statement's amounts depends on the time the report was run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from exporter.config import Config
from exporter.report.inputs import UNASSIGNED, Inputs
from exporter.report.methods import CENTRAL, USAGE, Allocation, Charge, all_teams
from exporter.report.money import (
    fmt_decimal,
    fmt_money,
    largest_remainder,
    largest_remainder_table,
    round_money,
)
from exporter.report.period import Period

HOUR = Decimal(3600)


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

    def team(self, name: str) -> TeamStatement:
        for t in self.teams:
            if t.team == name:
                return t
        if name == CENTRAL:
            return self.central
        raise KeyError(name)

    def money(self, amount: Decimal) -> str:
        return fmt_money(amount, self.minor_units)


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


def build_statement(cfg: Config, inputs: Inputs, alloc: Allocation) -> Statement:
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
    team_totals = largest_remainder(exact_totals, minor)
    recovered = sum(team_totals.values(), Decimal(0))
    unrecovered = total_cost - recovered

    # 3. what the teams pay per pool, and 4. the team × pool table, then lines within each cell
    cell_exact: dict[tuple[str, str], Decimal] = {}
    for c in alloc.charges:
        cell_exact[(c.team, c.pool)] = cell_exact.get((c.team, c.pool), Decimal(0)) + c.amount
    pool_exact: dict[str, Decimal] = {}
    for (_, pool), amount in sorted(cell_exact.items(), key=lambda kv: kv[0][1]):
        pool_exact[pool] = pool_exact.get(pool, Decimal(0)) + amount
    pool_recovered = largest_remainder(pool_exact, minor, recovered) if pool_exact else {}
    cell_rounded = largest_remainder_table(cell_exact, minor, team_totals, pool_recovered)
    line_charge: dict[int, Decimal] = {}
    for cell, target in cell_rounded.items():
        members = [c for c in alloc.charges if (c.team, c.pool) == cell]
        rounded = largest_remainder({id(c): c.amount for c in members}, minor, target)
        line_charge.update(rounded)

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
    central_rounded = (
        largest_remainder({i: c.amount for i, c in enumerate(alloc.central)}, minor, unrecovered)
        if alloc.central
        else {}
    )
    if not alloc.central and unrecovered != 0:
        raise AssertionError(f"internal: {unrecovered} unrecovered with no central line")
    central = TeamStatement(
        team=CENTRAL,
        business_unit="central IT",
        cost_center="",
        billing_contacts=tuple(cfg.report.finance_recipients),
        budget=None,
        lines=[_line(c, central_rounded[i]) for i, c in enumerate(alloc.central)],
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
    )


def is_unassigned(team: str) -> bool:
    return team == UNASSIGNED

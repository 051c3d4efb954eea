"""Self-service usage: what ``GET /v1/usage`` and ``chargeback usage --user`` report for one person.

Only the caller's own counters and their team's totals against its limits are shown; nothing
about any other user.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol

from exporter.config import Config
from exporter.limits.messages import BillingMonth, money
from exporter.limits.settings import (
    BUDGET,
    KINDS,
    MONTHLY_TOKENS,
    REQUESTS_PER_MINUTE,
    LimitsConfig,
    LimitSet,
)
from exporter.limits.store import Counters, LimitStore, MemoryStore, Usage
from exporter.pricing import ModelPrice, from_nano, to_nano


class UsageSource(Protocol):
    """What this module reads from the limiter (``exporter.limits.limiter.Limiter``). Spelled out
    here so that the limiter imports this module and not the other way round."""

    cfg: Config
    limits: LimitsConfig
    prices: dict[str, ModelPrice]
    store: LimitStore
    statement_spend: dict[str, int]  # team → month-to-date spend (nano) from the recording rules
    reconciled_month: str

    def month(self, now: float | None = None) -> BillingMonth: ...


def plain_money(amount: Decimal, minor: int) -> str:
    """'5012.33': the currency's minor units, no thousands separator (JSON consumers parse it)."""
    return money(amount, minor).replace(",", "")


def plain_number(value: Decimal) -> str:
    """'50', '12.5': no exponent, no trailing zeros."""
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def _ratio(used: Decimal, limit: Decimal) -> float:
    return float(used / limit) if limit else 0.0


def _used(kind: str, c: Counters) -> Decimal:
    if kind == BUDGET:
        return from_nano(c.spend_nano)
    if kind == MONTHLY_TOKENS:
        return Decimal(c.tokens_milli) / 1000
    if kind == REQUESTS_PER_MINUTE:
        return Decimal(c.window_requests)
    return Decimal(c.window_tokens)


def _limits(limit_set: LimitSet | None, c: Counters, month: BillingMonth, minor: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if limit_set is None:
        return out
    for kind in KINDS:
        lim = limit_set.limits.get(kind)
        if lim is None:
            continue
        used = _used(kind, c)
        fmt = (lambda d: plain_money(d, minor)) if kind == BUDGET else plain_number
        out.append(
            {
                "scope": limit_set.scope,
                "name": limit_set.name,
                "limit": kind,
                "enforce": lim.enforce,
                "value": fmt(lim.value),
                "used": fmt(used),
                "remaining": fmt(max(lim.value - used, Decimal(0))),
                "used_ratio": round(_ratio(used, lim.value), 6),
                "period": "month" if kind in (BUDGET, MONTHLY_TOKENS) else "minute",
                "resets_at": month.resets_at_iso() if kind in (BUDGET, MONTHLY_TOKENS) else None,
            }
        )
    return out


def usage_document(
    limiter: UsageSource, user: str, team: str, u: Counters, t: Counters, month: BillingMonth, store_up: bool
) -> dict[str, Any]:
    cfg = limiter.cfg
    minor = cfg.currency_minor_units
    models = []
    for name in sorted(u.models):
        m = u.models[name]
        models.append(
            {
                "model": name,
                "requests": m.get("requests", 0),
                "prompt_tokens": m.get("prompt", 0),
                "completion_tokens": m.get("completion", 0),
                "weighted_tokens": plain_number(Decimal(m.get("tokens", 0)) / 1000),
                "estimated_spend": plain_money(from_nano(m.get("spend", 0)), minor),
                "price_source": limiter.prices[name].source if name in limiter.prices else "none",
            }
        )
    team_set = limiter.limits.teams.get(team)
    budget = team_set.limits.get(BUDGET) if team_set else None
    team_budget = None
    if budget is not None:
        used = from_nano(t.spend_nano)
        team_budget = {
            "budget": plain_money(budget.value, minor),
            "used": plain_money(used, minor),
            "remaining": plain_money(max(budget.value - used, Decimal(0)), minor),
            "used_ratio": round(_ratio(used, budget.value), 6),
            "enforce": budget.enforce,
        }
        if limiter.statement_spend and limiter.reconciled_month == month.key:
            team_budget["statement_month_to_date"] = plain_money(
                from_nano(limiter.statement_spend.get(team, 0)), minor
            )
    return {
        "object": "usage",
        "user": user,
        "team": team,
        "currency": cfg.currency,
        "period": {
            "month": month.key,
            "timezone": month.timezone,
            "start": datetime.fromtimestamp(month.start, UTC).isoformat().replace("+00:00", "Z"),
            "end": datetime.fromtimestamp(month.end, UTC).isoformat().replace("+00:00", "Z"),
        },
        "models": models,
        "totals": {
            "requests": u.requests,
            "weighted_tokens": plain_number(Decimal(u.tokens_milli) / 1000),
            "estimated_spend": plain_money(from_nano(u.spend_nano), minor),
        },
        "team_budget": team_budget,
        "limits": _limits(team_set, t, month, minor)
        + _limits(limiter.limits.users.get(user), u, month, minor),
        "limit_store": {"backend": limiter.store.backend, "up": store_up},
        "note": "spend is estimated at the limit unit price (see docs/methods.md); the statement may differ",
    }


def seed_memory_store(limiter: UsageSource, ledger_url: str) -> None:
    """Fill an in-process store with the month to date from the ledger (runs in a worker thread)."""
    from exporter.ledger.rollup import totals
    from exporter.ledger.store import open_store

    store = limiter.store
    if not isinstance(store, MemoryStore):
        return
    month = limiter.month()
    ledger = open_store(ledger_url)
    try:
        got = totals(ledger, datetime.fromtimestamp(month.start, UTC), datetime.fromtimestamp(month.end, UTC))
    finally:
        ledger.close()
    for (team, user, model), tot in got.items():
        price = limiter.prices.get(model)
        if price is None or not (tot.prompt_tokens or tot.completion_tokens):
            continue
        usage = Usage(
            team,
            user,
            model,
            to_nano(price.spend(tot.prompt_tokens, tot.completion_tokens)),
            int(price.weighted_tokens(tot.prompt_tokens, tot.completion_tokens) * 1000),
            0,
            tot.prompt_tokens,
            tot.completion_tokens,
        )
        store.record(month.key, 0, usage, lambda _c: None)
        # record() counted one request; the ledger knows how many there were
        for kind, name in (("team", team), ("user", user)):
            store.months[(month.key, kind, name)].requests += tot.requests - 1
        store.months[(month.key, "user", user)].models[model]["requests"] += tot.requests - 1

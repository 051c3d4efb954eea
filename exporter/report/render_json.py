"""JSON: everything in the statement, keys sorted, amounts as decimal strings (never floats).

Numbers stay machine-readable here (no locale grouping); the statement number, issue date,
contacts, the previous period's figures and the price per 1M weighted tokens are plain fields."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from exporter.report.money import fmt_decimal, fmt_money
from exporter.report.statement import GLOSSARY, Statement, TeamStatement, fmt_qty, unit_price

PRICE_PLACES = 6  # price per 1M weighted tokens: enough digits to recompute the charge


def _price(value: Decimal | None) -> str | None:
    return None if value is None else fmt_decimal(value, PRICE_PLACES)


def _header(st: Statement, team: str | None) -> dict[str, Any]:
    return {
        "statement_number": st.number(team),
        "issue_date": st.issue_date.isoformat() if st.issue_date else None,
        "billing_contact": st.billing_contact,
        "locale": st.locale,
        "glossary": dict(GLOSSARY),
    }


def team_dict(st: Statement, t: TeamStatement) -> dict[str, Any]:
    m = st.minor_units
    used = t.budget_used_percent
    totals = t.usage_totals()
    return {
        "team": t.team,
        "statement_number": st.number(t.team),
        "business_unit": t.business_unit,
        "cost_center": t.cost_center,
        "billing_contacts": list(t.billing_contacts),
        "budget": None if t.budget is None else fmt_money(t.budget, m),
        "budget_used_percent": None if used is None else str(used),
        "total": fmt_money(t.total, m),
        "idle_share": fmt_money(t.idle_share, m),
        "over_budget": t.over_budget,
        "price_per_million_weighted_tokens": _price(unit_price(t.total, t.weighted_tokens)),
        "previous": None
        if st.previous is None
        else {
            "period": st.previous.period.label,
            "total": fmt_money(st.previous.totals.get(t.team, Decimal(0)), m),
            "weighted_tokens": fmt_qty(st.previous.weighted_tokens.get(t.team, Decimal(0))),
            "price_per_million_weighted_tokens": _price(st.previous_unit_price(t.team)),
        },
        "usage": {
            **{k: v for k, v in totals.items() if isinstance(v, int)},
            "weighted_tokens": fmt_qty(totals["weighted_tokens"]),
            "request_seconds": fmt_decimal(totals["request_seconds"], 3),
        },
        "lines": [line.as_dict(m) for line in t.lines],
    }


def statement_dict(st: Statement) -> dict[str, Any]:
    m = st.minor_units
    prev = st.previous
    return {
        **_header(st, None),
        "period": st.period.as_dict(),
        "previous_period": None
        if prev is None
        else {
            **prev.period.as_dict(),
            "total_pool_cost": fmt_money(prev.total_pool_cost, m),
            "recovered": fmt_money(prev.recovered, m),
            "teams": {k: fmt_money(v, m) for k, v in prev.totals.items()},
        },
        "method": st.method,
        "parameters": st.params,
        "currency": st.currency,
        "source": st.source,
        "summary": {
            "total_pool_cost": fmt_money(st.total_pool_cost, m),
            "recovered": fmt_money(st.recovered, m),
            "unrecovered": fmt_money(st.unrecovered, m),
            "idle_cost": fmt_money(st.idle_cost, m),
            "teams": {t.team: fmt_money(t.total, m) for t in st.teams},
        },
        "pools": [
            {
                "pool": p.name,
                "cost": fmt_money(p.cost, m),
                "cost_source": p.cost_source,
                "gpus": p.gpus,
                "gpu_hours": fmt_decimal(p.gpu_hours, 3),
                "busy_hours": fmt_decimal(p.busy_hours, 3),
                "idle_hours": fmt_decimal(p.idle_hours, 3),
                "idle_cost": fmt_money(p.idle_cost, m) if p.idle_known else None,
                "capacity_tokens_per_second": None
                if p.capacity_tokens_per_second is None
                else fmt_qty(p.capacity_tokens_per_second),
                "weighted_tokens": fmt_qty(p.weighted_tokens),
                "recovered": fmt_money(p.recovered, m),
            }
            for p in st.pools
        ],
        "teams": [team_dict(st, t) for t in st.teams],
        "central": team_dict(st, st.central),
        "notes": list(st.notes),
    }


def render_json(st: Statement) -> str:
    return json.dumps(statement_dict(st), sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def render_team_json(st: Statement, t: TeamStatement) -> str:
    body = {
        **_header(st, t.team),
        "period": st.period.as_dict(),
        "method": st.method,
        "parameters": st.params,
        "currency": st.currency,
        "source": st.source,
        **team_dict(st, t),
    }
    return json.dumps(body, sort_keys=True, indent=2, ensure_ascii=False) + "\n"

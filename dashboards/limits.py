"""Rows for limits that act (issue 15), kept in one place so the dashboards only call in:

- team dashboard: what is left of the team's budget and quota, and who is being refused by what;
- overview: refusals by team and limit, and whether every proxy reaches its limit store.
"""

from __future__ import annotations

from dashboards import selectors
from dashboards.common import MONEY, NONE, REQUESTS_PER_SECOND, TOKENS, Panel, Row, steps
from exporter import contract

STORE_UP_STEPS = steps(("red", None), ("green", 1))
REFUSALS = REQUESTS_PER_SECOND


def refusals(by: str, matchers: str) -> str:
    """429s per second of the limits, summed ``by`` the given labels."""
    return f"sum by ({by}) (rate({contract.LIMIT_REJECTIONS_TOTAL}{{{matchers}}}[$__rate_interval]))"


def team_limits_row(team: str) -> Row:
    """Row "Limits" for the selected teams (``team``: the label matchers of the team dashboard's raw
    metrics, ``selectors.proxy_matchers('team=~"$team"')``)."""
    return Row(
        "Limits",
        width=6,
        height=6,
        panels=[
            Panel(
                "Budget left (limit price)",
                "stat",
                MONEY,
                [f"min by (team) ({contract.LIMIT_REMAINING_BUDGET}{{{team}}})"],
                "What is left of the team's monthly budget at the limit unit price "
                "(chargeback_limit_remaining_budget, min over replicas). With enforce: block the team's "
                "requests are refused at 0; see docs/methods.md for how this figure relates to the statement.",
                thresholds=steps(("red", None), ("green", 0.01)),
            ),
            Panel(
                "Token quota left",
                "stat",
                TOKENS,
                [f"min by (team) ({contract.LIMIT_REMAINING_WEIGHTED_TOKENS}{{{team}}})"],
                "What is left of the team's monthly weighted-token quota (chargeback_limit_remaining_weighted_tokens, "
                "min over replicas).",
                thresholds=steps(("red", None), ("green", 1)),
            ),
            Panel(
                "Requests blocked by limits",
                "timeseries",
                REFUSALS,
                [(refusals("user, limit", team), "{{user}} · {{limit}}")],
                "429s per second by user and limit (chargeback_limit_rejections_total): budget and monthly_tokens "
                "block until the month ends (alert ChargebackTeamBlocked); rate limits clear within a minute.",
                width=12,
                stacked=True,
            ),
        ],
    )


def overview_limits_row() -> Row:
    """Row "Limits" on the overview: refusals by team, and the limit store's health per proxy."""
    return Row(
        "Limits",
        height=7,
        panels=[
            Panel(
                "Requests blocked by limits, by team",
                "timeseries",
                REFUSALS,
                [(refusals("team, limit", selectors.proxy_matchers()), "{{team}} · {{limit}}")],
                "429s per second by team and limit (chargeback_limit_rejections_total). A team refused by "
                "budget or monthly_tokens is blocked for the rest of the billing month (ChargebackTeamBlocked).",
                width=16,
                stacked=True,
            ),
            Panel(
                "Limit store reachable",
                "timeseries",
                NONE,
                [(f"min by (instance) ({contract.LIMIT_STORE_UP}{selectors.proxy()})", "{{instance}}")],
                "1 while a proxy reaches its limit store (chargeback_limit_store_up). At 0 it lets every request "
                "through unchecked (fail-open) and ChargebackLimitStoreUnreachable fires after 2 minutes.",
                width=8,
                thresholds=STORE_UP_STEPS,
                max_value=1,
            ),
        ],
    )

"""Panels for limits that act (issue 15), kept in one place so the dashboards only call in:

- team dashboard: what is left of the team's budget and quota, and who is being refused by what;
- overview: refusals by team and limit, and whether every proxy reaches its limit store.

Panel ids start at 900 so they never collide with the dashboards' own.
"""

from __future__ import annotations

from dashboards import selectors
from dashboards.common import REQUESTS_PER_SECOND, TOKENS, Layout, stat, steps, target, targets, timeseries

STORE_UP_STEPS = steps(("red", None), ("green", 1))
REFUSALS = REQUESTS_PER_SECOND


def add_team_limit_panels(lay: Layout, team: str, money: str) -> None:
    """Row "Limits" for the selected teams (``team``: the label matchers of the team dashboard's raw
    metrics, ``selectors.proxy_matchers('team=~"$team"')``)."""
    lay.row(900, "Limits")
    lay.add(
        stat(
            901,
            "Budget left (limit price)",
            "What is left of the team's monthly budget at the limit unit price "
            "(chargeback_limit_remaining_budget, min over replicas). With enforce: block the team's "
            "requests are refused at 0; see docs/methods.md for how this figure relates to the statement.",
            money,
            [target(f"min by (team) (chargeback_limit_remaining_budget{{{team}}})")],
            thresholds=steps(("red", None), ("green", 0.01)),
        ),
        6,
        6,
    )
    lay.add(
        stat(
            902,
            "Token quota left",
            "What is left of the team's monthly weighted-token quota (chargeback_limit_remaining_weighted_tokens, "
            "min over replicas).",
            TOKENS,
            [target(f"min by (team) (chargeback_limit_remaining_weighted_tokens{{{team}}})")],
            thresholds=steps(("red", None), ("green", 1)),
        ),
        6,
        6,
    )
    lay.add(
        timeseries(
            903,
            "Requests blocked by limits",
            "429s per second by user and limit (chargeback_limit_rejections_total): budget and monthly_tokens "
            "block until the month ends (alert ChargebackTeamBlocked); rate limits clear within a minute.",
            REFUSALS,
            [
                target(
                    f"sum by (user, limit) (rate(chargeback_limit_rejections_total{{{team}}}[$__rate_interval]))",
                    "{{user}} · {{limit}}",
                )
            ],
            stacked=True,
        ),
        12,
        6,
    )


def add_overview_limit_panels(lay: Layout) -> None:
    """Row "Limits" on the overview: refusals by team, and the limit store's health per proxy."""
    lay.row(910, "Limits")
    lay.add(
        timeseries(
            911,
            "Requests blocked by limits, by team",
            "429s per second by team and limit (chargeback_limit_rejections_total). A team refused by "
            "budget or monthly_tokens is blocked for the rest of the billing month (ChargebackTeamBlocked).",
            REFUSALS,
            [
                target(
                    f"sum by (team, limit) (rate(chargeback_limit_rejections_total{selectors.proxy()}[$__rate_interval]))",
                    "{{team}} · {{limit}}",
                )
            ],
            stacked=True,
        ),
        16,
        7,
    )
    lay.add(
        timeseries(
            912,
            "Limit store reachable",
            "1 while a proxy reaches its limit store (chargeback_limit_store_up). At 0 it lets every request "
            "through unchecked (fail-open) and ChargebackLimitStoreUnreachable fires after 2 minutes.",
            "none",
            targets((f"min by (instance) (chargeback_limit_store_up{selectors.proxy()})", "{{instance}}")),
            thresholds=STORE_UP_STEPS,
            max_value=1,
        ),
        8,
        7,
    )

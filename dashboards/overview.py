"""Chargeback overview: where the money goes this month, team by team and pool by pool.

For central IT and finance: spend rate and month-to-date spend per team, budget consumption with the
month-end forecast, each team's share of each GPU pool, idle cost, top users and what a million
tokens really cost on each pool.
"""

from __future__ import annotations

from dashboards import selectors
from dashboards.common import (
    BUDGET_STEPS,
    CURRENCY,
    IDLE_STEPS,
    MONEY,
    PER_USER_NOTE,
    PERCENT_UNIT,
    REQUESTS_PER_SECOND,
    TOKENS,
    Json,
    Panel,
    Row,
    capacity_used,
    column_units,
    dashboard,
    data_link,
    matrix,
    merged_columns,
    scope_variables,
)
from dashboards.limits import overview_limits_row
from dashboards.selectors import NAMED_USER
from exporter import contract

# Spend per hour of each user: their part of their team's weighted tokens on a pool times the
# team's spend on that pool (team_pool:chargeback_spend_per_hour:rate5m), so it follows whichever
# real-time method the rules use. Team-pool pairs without traffic in the window drop out (> 0).
R = selectors.recorded()  # recorded series of the selected clusters
RAW = selectors.proxy()  # raw metrics of the proxy job the rules read, narrowed by $cluster and $job
# Per-user series select user!="" (see PER_USER_NOTE: no user label in team mode)
RU = selectors.recorded(NAMED_USER)
RAWU = selectors.proxy(NAMED_USER)

USER_SPEND_PER_HOUR = (
    "sum by (user, team) ("
    f"user_team_pool:chargeback_weighted_tokens:rate5m{RU}"
    f" / on (team, pool) group_left () (team_pool:chargeback_weighted_tokens:rate5m{R} > 0)"
    f" * on (team, pool) group_left team_pool:chargeback_spend_per_hour:rate5m{R}"
    ")"
)
# Under token-share the pools' whole cost is charged (idle time through the month's usage shares, as on
# the statement), so nothing is unrecovered; under proxy-price-per-token the cost of unused capacity is.
UNRECOVERED = (
    f"sum(pool:chargeback_unrecovered_cost_per_hour:rate5m{R}) and on () ({selectors.method_is_proxy_price()})"
    " or on () vector(0)"
)
TOP_USERS = f"topk(10, {USER_SPEND_PER_HOUR})"


TEAM_LINK = data_link(
    "Open the team dashboard for ${__field.labels.team}", "team", "var-team=${__field.labels.team}"
)

ROWS = [
    Row(
        "This month",
        width=4,
        panels=[
            Panel(
                "Spend rate (per hour)",
                "stat",
                MONEY,
                [f"sum(team:chargeback_spend_per_hour:rate5m{R}) or on () vector(0)"],
                f"What all teams are being charged per hour right now, in {CURRENCY}: the sum over teams of "
                "team:chargeback_spend_per_hour:rate5m (real-time method from report.realtime_method).",
            ),
            Panel(
                "Month-to-date spend",
                "stat",
                MONEY,
                [f"sum(team:chargeback_spend:month_to_date{R})"],
                f"Spend of all teams since the start of the billing month (config timezone:), in {CURRENCY}: "
                "sum of team:chargeback_spend:month_to_date.",
            ),
            Panel(
                "Month-end forecast",
                "stat",
                MONEY,
                [f"sum(team:chargeback_spend:month_forecast{R})"],
                "Where total spend will be at the end of the calendar month if the current pace continues: "
                "sum of team:chargeback_spend:month_forecast.",
            ),
            Panel(
                "GPU fleet cost (per hour)",
                "stat",
                MONEY,
                [f"sum(pool:chargeback_gpu_hourly_cost:sum{R})"],
                "What the GPU pools cost per hour, used or not: sum of pool:chargeback_gpu_hourly_cost:sum "
                "(the GPU exporter's chargeback_gpu_hourly_cost per GPU).",
            ),
            Panel(
                "Idle cost (per hour)",
                "stat",
                MONEY,
                [f"sum(pool:chargeback_idle_cost_per_hour:rate5m{R})"],
                "Money spent per hour on GPUs that sit idle (at or below the idle threshold): sum of "
                "pool:chargeback_idle_cost_per_hour:rate5m. Orange above half, red above 80 % of the fleet cost.",
            ),
            Panel(
                "Unrecovered cost (per hour)",
                "stat",
                MONEY,
                [UNRECOVERED],
                "Pool cost per hour that the teams are not charged. Under proxy-price-per-token it is the cost of "
                "unused capacity (sum of pool:chargeback_unrecovered_cost_per_hour:rate5m), which central IT "
                "carries. Under token-share it is 0: the pools' whole cost is charged, idle time included "
                "(through the month's usage shares, as on the statement).",
            ),
        ],
    ),
    Row(
        "Spend and budgets by team",
        panels=[
            Panel(
                "Spend rate by team (per hour)",
                "timeseries",
                MONEY,
                [
                    (
                        # 0 (not "no data") for every configured team while it has no traffic
                        f"team:chargeback_spend_per_hour:rate5m{R} or on (team) 0 * team:chargeback_spend:month_to_date{R}",
                        "{{team}}",
                    )
                ],
                f"{CURRENCY} per hour charged to each team over time, stacked: team:chargeback_spend_per_hour:rate5m.",
                stacked=True,
                links=[TEAM_LINK],
            ),
            Panel(
                "Month-to-date spend by team",
                "bargauge",
                MONEY,
                [(f"sort_desc(team:chargeback_spend:month_to_date{R})", "{{team}}")],
                "Each team's spend since the start of the billing month (config timezone:): team:chargeback_spend:month_to_date. "
                "Click a bar to open that team's dashboard.",
                links=[TEAM_LINK],
            ),
            Panel(
                "Budget consumption by team",
                "bargauge",
                PERCENT_UNIT,
                [
                    (f"team:chargeback_budget_consumption:ratio{R}", "{{team}} month to date"),
                    (f"team:chargeback_budget_forecast_consumption:ratio{R}", "{{team}} forecast"),
                ],
                "Month-to-date spend as a share of the monthly budget (team:chargeback_budget_consumption:ratio) "
                "and where the month-end forecast lands (team:chargeback_budget_forecast_consumption:ratio). "
                "Orange from 80 %, red from 100 % of the budget.",
                max_value=1.5,
                thresholds=BUDGET_STEPS,
                links=[TEAM_LINK],
            ),
            Panel(
                "Budgets",
                "table",
                MONEY,
                [
                    (f"max by (team) ({contract.TEAM_BUDGET}{RAW})", "budget"),
                    (f"team:chargeback_spend:month_to_date{R}", "month to date"),
                    (f"team:chargeback_spend:month_forecast{R}", "forecast"),
                    (f"team:chargeback_budget_consumption:ratio{R}", "used"),
                    (f"team:chargeback_budget_forecast_consumption:ratio{R}", "forecast used"),
                ],
                "Per team: monthly budget (max of chargeback_team_budget over proxy replicas), month-to-date "
                "spend (team:chargeback_spend:month_to_date), month-end forecast "
                "(team:chargeback_spend:month_forecast) and both as a share of the budget "
                "(team:chargeback_budget_consumption:ratio, team:chargeback_budget_forecast_consumption:ratio).",
                transformations=merged_columns(
                    {"team": "Team"}, "Budget", "Month to date", "Forecast", "Used", "Forecast used"
                ),
                overrides=column_units({"Used": PERCENT_UNIT, "Forecast used": PERCENT_UNIT}),
                sort_by="Forecast used",
                links=[TEAM_LINK],
            ),
        ],
    ),
    Row(
        "GPU pools",
        panels=[
            Panel(
                "Share of each pool by team",
                "timeseries",
                PERCENT_UNIT,
                [(f"team_pool:chargeback_token_share:ratio5m{R}", "{{pool}} · {{team}}")],
                "Each team's share of the weighted tokens served by a pool over the last 5 minutes "
                "(team_pool:chargeback_token_share:ratio5m); the shares of one pool add up to 100 %. "
                "Under token-share this is the part of the pool's cost the team pays.",
                max_value=1,
            ),
            Panel(
                "Pool shares now (team × pool)",
                "table",
                PERCENT_UNIT,
                [f"team_pool:chargeback_token_share:ratio5m{R}"],
                "The current team_pool:chargeback_token_share:ratio5m as a matrix: one row per team, one column "
                "per pool; each column adds up to 100 %.",
                transformations=[matrix("team", "pool")],
            ),
            Panel(
                "Idle cost by pool (per hour)",
                "timeseries",
                MONEY,
                [(f"pool:chargeback_idle_cost_per_hour:rate5m{R}", "{{pool}}")],
                f"{CURRENCY} per hour spent on idle GPUs in each pool: pool:chargeback_idle_cost_per_hour:rate5m. "
                "How it is billed (central IT, spread by usage, evenly) is report.idle_handling.",
                width=8,
                stacked=True,
            ),
            Panel(
                "Cost per 1M weighted tokens by pool",
                "timeseries",
                MONEY,
                [
                    (f"pool:chargeback_cost_per_million_tokens:ratio5m{R}", "{{pool}} actual"),
                    (f"pool:chargeback_price_per_token:ratio{R} * 1e6", "{{pool}} at full capacity"),
                ],
                "What one million weighted tokens actually cost on each pool at the current load "
                "(pool:chargeback_cost_per_million_tokens:ratio5m), against the proxy list price at full "
                "capacity (pool:chargeback_price_per_token:ratio × 1e6). The gap is the price of unused capacity.",
                width=8,
                fill=0,
            ),
            capacity_used(
                R,
                "Weighted tokens per second served by a pool divided by its configured capacity "
                "(pool:chargeback_capacity_utilization:ratio5m).",
                thresholds=IDLE_STEPS,
            ),
        ],
    ),
    Row(
        "Users",
        height=9,
        panels=[
            Panel(
                "Top users (by spend rate now)",
                "table",
                MONEY,
                [
                    (TOP_USERS, "spend"),
                    (
                        f"sum by (user, team) (user_team_pool:chargeback_weighted_tokens:rate5m{RU})"
                        f" and on (user, team) {TOP_USERS}",
                        "tokens",
                    ),
                    (
                        f"sum by (user, team) (rate({contract.REQUESTS_TOTAL}{RAWU}[$__rate_interval]))"
                        f" and on (user, team) {TOP_USERS}",
                        "requests",
                    ),
                ],
                "The ten users costing the most per hour right now: a user's part of the team's weighted tokens "
                "on each pool (user_team_pool:chargeback_weighted_tokens:rate5m ÷ "
                "team_pool:chargeback_weighted_tokens:rate5m) times the team's spend on that pool "
                "(team_pool:chargeback_spend_per_hour:rate5m); with their weighted tokens per second "
                "(user_team_pool:chargeback_weighted_tokens:rate5m) and requests per second "
                "(chargeback_requests_total)." + PER_USER_NOTE,
                transformations=merged_columns(
                    {"user": "User", "team": "Team"}, "Spend per hour", "Weighted tokens/s", "Requests/s"
                ),
                overrides=column_units({"Weighted tokens/s": TOKENS, "Requests/s": REQUESTS_PER_SECOND}),
                sort_by="Spend per hour",
                links=[TEAM_LINK],
            ),
            Panel(
                "Top users: weighted tokens per second",
                "timeseries",
                TOKENS,
                [
                    (
                        f"topk(10, sum by (user, team) (user_team_pool:chargeback_weighted_tokens:rate5m{RU}))",
                        "{{user}} ({{team}})",
                    )
                ],
                "Weighted tokens per second of the ten busiest users at each point in time "
                "(user_team_pool:chargeback_weighted_tokens:rate5m summed over pools)." + PER_USER_NOTE,
            ),
        ],
    ),
    overview_limits_row(),
]


def build(currency: str) -> Json:
    return dashboard(
        "overview",
        currency,
        "Chargeback for self-hosted LLM inference: spend, budgets, pool shares, idle cost and top users. "
        "Generated by dashboards/build.py from dashboards/overview.py; do not edit in Grafana.",
        ROWS,
        variables=scope_variables(selectors.PROXY_SELECTOR),
        time_from="now-24h",
    )

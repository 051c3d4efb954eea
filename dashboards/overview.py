"""Chargeback overview: where the money goes this month, team by team and pool by pool.

For central IT and finance: spend rate and month-to-date spend per team, budget consumption with the
month-end forecast, each team's share of each GPU pool, idle cost, top users and what a million
tokens really cost on each pool.
"""

from __future__ import annotations

from dashboards import selectors
from dashboards.common import (
    BUDGET_STEPS,
    IDLE_STEPS,
    PER_USER_NOTE,
    PERCENT_UNIT,
    REQUESTS_PER_SECOND,
    TOKENS,
    Json,
    Layout,
    bargauge,
    currency_unit,
    dashboard,
    data_link,
    matrix,
    merge,
    organize,
    scope_variables,
    stat,
    table,
    target,
    targets,
    timeseries,
    unit_override,
)
from dashboards.limits import add_overview_limit_panels
from dashboards.selectors import NAMED_USER

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


def build(currency: str) -> Json:
    money = currency_unit(currency)
    team_link = data_link(
        "Open the team dashboard for ${__field.labels.team}", "team", "var-team=${__field.labels.team}"
    )
    lay = Layout()

    lay.row(1, "This month")
    lay.add(
        stat(
            2,
            "Spend rate (per hour)",
            f"What all teams are being charged per hour right now, in {currency}: the sum over teams of "
            "team:chargeback_spend_per_hour:rate5m (real-time method from report.realtime_method).",
            money,
            [target(f"sum(team:chargeback_spend_per_hour:rate5m{R}) or on () vector(0)")],
        ),
        4,
        4,
    )
    lay.add(
        stat(
            3,
            "Month-to-date spend",
            f"Spend of all teams since the start of the billing month (config timezone:), in {currency}: "
            "sum of team:chargeback_spend:month_to_date.",
            money,
            [target(f"sum(team:chargeback_spend:month_to_date{R})")],
        ),
        4,
        4,
    )
    lay.add(
        stat(
            4,
            "Month-end forecast",
            "Where total spend will be at the end of the calendar month if the current pace continues: "
            "sum of team:chargeback_spend:month_forecast.",
            money,
            [target(f"sum(team:chargeback_spend:month_forecast{R})")],
        ),
        4,
        4,
    )
    lay.add(
        stat(
            5,
            "GPU fleet cost (per hour)",
            "What the GPU pools cost per hour, used or not: sum of pool:chargeback_gpu_hourly_cost:sum "
            "(the GPU exporter's chargeback_gpu_hourly_cost per GPU).",
            money,
            [target(f"sum(pool:chargeback_gpu_hourly_cost:sum{R})")],
        ),
        4,
        4,
    )
    lay.add(
        stat(
            6,
            "Idle cost (per hour)",
            "Money spent per hour on GPUs that sit idle (at or below the idle threshold): sum of "
            "pool:chargeback_idle_cost_per_hour:rate5m. Orange above half, red above 80 % of the fleet cost.",
            money,
            [target(f"sum(pool:chargeback_idle_cost_per_hour:rate5m{R})")],
        ),
        4,
        4,
    )
    lay.add(
        stat(
            7,
            "Unrecovered cost (per hour)",
            "Pool cost per hour that the teams are not charged. Under proxy-price-per-token it is the cost of "
            "unused capacity (sum of pool:chargeback_unrecovered_cost_per_hour:rate5m), which central IT "
            "carries. Under token-share it is 0: the pools' whole cost is charged, idle time included "
            "(through the month's usage shares, as on the statement).",
            money,
            [target(UNRECOVERED)],
        ),
        4,
        4,
    )

    lay.row(8, "Spend and budgets by team")
    lay.add(
        timeseries(
            9,
            "Spend rate by team (per hour)",
            f"{currency} per hour charged to each team over time, stacked: team:chargeback_spend_per_hour:rate5m.",
            money,
            [
                target(
                    # 0 (not "no data") for every configured team while it has no traffic
                    f"team:chargeback_spend_per_hour:rate5m{R} or on (team) 0 * team:chargeback_spend:month_to_date{R}",
                    "{{team}}",
                )
            ],
            stacked=True,
            links=[team_link],
        ),
        12,
        8,
    )
    lay.add(
        bargauge(
            10,
            "Month-to-date spend by team",
            "Each team's spend since the start of the billing month (config timezone:): team:chargeback_spend:month_to_date. "
            "Click a bar to open that team's dashboard.",
            money,
            [target(f"sort_desc(team:chargeback_spend:month_to_date{R})", "{{team}}", instant=True)],
            links=[team_link],
        ),
        12,
        8,
    )
    lay.add(
        bargauge(
            11,
            "Budget consumption by team",
            "Month-to-date spend as a share of the monthly budget (team:chargeback_budget_consumption:ratio) "
            "and where the month-end forecast lands (team:chargeback_budget_forecast_consumption:ratio). "
            "Orange from 80 %, red from 100 % of the budget.",
            PERCENT_UNIT,
            targets(
                (f"team:chargeback_budget_consumption:ratio{R}", "{{team}} month to date"),
                (f"team:chargeback_budget_forecast_consumption:ratio{R}", "{{team}} forecast"),
                instant=True,
            ),
            max_value=1.5,
            thresholds=BUDGET_STEPS,
            links=[team_link],
        ),
        12,
        8,
    )
    lay.add(
        table(
            12,
            "Budgets",
            "Per team: monthly budget (max of chargeback_team_budget over proxy replicas), month-to-date "
            "spend (team:chargeback_spend:month_to_date), month-end forecast "
            "(team:chargeback_spend:month_forecast) and both as a share of the budget "
            "(team:chargeback_budget_consumption:ratio, team:chargeback_budget_forecast_consumption:ratio).",
            money,
            targets(
                (f"max by (team) (chargeback_team_budget{RAW})", "budget"),
                (f"team:chargeback_spend:month_to_date{R}", "month to date"),
                (f"team:chargeback_spend:month_forecast{R}", "forecast"),
                (f"team:chargeback_budget_consumption:ratio{R}", "used"),
                (f"team:chargeback_budget_forecast_consumption:ratio{R}", "forecast used"),
                instant=True,
                table=True,
            ),
            transformations=[
                merge(),
                organize(
                    rename={
                        "team": "Team",
                        "Value #A": "Budget",
                        "Value #B": "Month to date",
                        "Value #C": "Forecast",
                        "Value #D": "Used",
                        "Value #E": "Forecast used",
                    }
                ),
            ],
            overrides=[unit_override("Used", PERCENT_UNIT), unit_override("Forecast used", PERCENT_UNIT)],
            sort_by="Forecast used",
            links=[team_link],
        ),
        12,
        8,
    )

    lay.row(13, "GPU pools")
    lay.add(
        timeseries(
            14,
            "Share of each pool by team",
            "Each team's share of the weighted tokens served by a pool over the last 5 minutes "
            "(team_pool:chargeback_token_share:ratio5m); the shares of one pool add up to 100 %. "
            "Under token-share this is the part of the pool's cost the team pays.",
            PERCENT_UNIT,
            [target(f"team_pool:chargeback_token_share:ratio5m{R}", "{{pool}} · {{team}}")],
            max_value=1,
        ),
        12,
        8,
    )
    lay.add(
        table(
            15,
            "Pool shares now (team × pool)",
            "The current team_pool:chargeback_token_share:ratio5m as a matrix: one row per team, one column "
            "per pool; each column adds up to 100 %.",
            PERCENT_UNIT,
            [target(f"team_pool:chargeback_token_share:ratio5m{R}", instant=True, table=True)],
            transformations=[matrix("team", "pool")],
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            16,
            "Idle cost by pool (per hour)",
            f"{currency} per hour spent on idle GPUs in each pool: pool:chargeback_idle_cost_per_hour:rate5m. "
            "How it is billed (central IT, spread by usage, evenly) is report.idle_handling.",
            money,
            [target(f"pool:chargeback_idle_cost_per_hour:rate5m{R}", "{{pool}}")],
            stacked=True,
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            17,
            "Cost per 1M weighted tokens by pool",
            "What one million weighted tokens actually cost on each pool at the current load "
            "(pool:chargeback_cost_per_million_tokens:ratio5m), against the proxy list price at full "
            "capacity (pool:chargeback_price_per_token:ratio × 1e6). The gap is the price of unused capacity.",
            money,
            targets(
                (f"pool:chargeback_cost_per_million_tokens:ratio5m{R}", "{{pool}} actual"),
                (f"pool:chargeback_price_per_token:ratio{R} * 1e6", "{{pool}} at full capacity"),
            ),
            fill=0,
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            18,
            "Capacity used by pool",
            "Weighted tokens per second served by a pool divided by its configured capacity "
            "(pool:chargeback_capacity_utilization:ratio5m).",
            PERCENT_UNIT,
            [target(f"pool:chargeback_capacity_utilization:ratio5m{R}", "{{pool}}")],
            thresholds=IDLE_STEPS,
        ),
        8,
        8,
    )

    lay.row(19, "Users")
    lay.add(
        table(
            20,
            "Top users (by spend rate now)",
            "The ten users costing the most per hour right now: a user's part of the team's weighted tokens "
            "on each pool (user_team_pool:chargeback_weighted_tokens:rate5m ÷ "
            "team_pool:chargeback_weighted_tokens:rate5m) times the team's spend on that pool "
            "(team_pool:chargeback_spend_per_hour:rate5m); with their weighted tokens per second "
            "(user_team_pool:chargeback_weighted_tokens:rate5m) and requests per second "
            "(chargeback_requests_total)." + PER_USER_NOTE,
            money,
            targets(
                (TOP_USERS, "spend"),
                (
                    f"sum by (user, team) (user_team_pool:chargeback_weighted_tokens:rate5m{RU})"
                    f" and on (user, team) {TOP_USERS}",
                    "tokens",
                ),
                (
                    f"sum by (user, team) (rate(chargeback_requests_total{RAWU}[$__rate_interval]))"
                    f" and on (user, team) {TOP_USERS}",
                    "requests",
                ),
                instant=True,
                table=True,
            ),
            transformations=[
                merge(),
                organize(
                    rename={
                        "user": "User",
                        "team": "Team",
                        "Value #A": "Spend per hour",
                        "Value #B": "Weighted tokens/s",
                        "Value #C": "Requests/s",
                    }
                ),
            ],
            overrides=[
                unit_override("Weighted tokens/s", TOKENS),
                unit_override("Requests/s", REQUESTS_PER_SECOND),
            ],
            sort_by="Spend per hour",
            links=[team_link],
        ),
        12,
        9,
    )
    lay.add(
        timeseries(
            21,
            "Top users: weighted tokens per second",
            "Weighted tokens per second of the ten busiest users at each point in time "
            "(user_team_pool:chargeback_weighted_tokens:rate5m summed over pools)." + PER_USER_NOTE,
            TOKENS,
            [
                target(
                    f"topk(10, sum by (user, team) (user_team_pool:chargeback_weighted_tokens:rate5m{RU}))",
                    "{{user}} ({{team}})",
                )
            ],
        ),
        12,
        9,
    )

    add_overview_limit_panels(lay)

    return dashboard(
        "overview",
        "Chargeback for self-hosted LLM inference: spend, budgets, pool shares, idle cost and top users. "
        "Generated by dashboards/build.py from dashboards/overview.py; do not edit in Grafana.",
        lay,
        variables=scope_variables(selectors.PROXY_SELECTOR),
        time_from="now-24h",
    )

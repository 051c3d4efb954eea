"""Team: one team's month against its budget, and who in the team uses which model how much.

For team leads during the month: month-to-date spend against the budget with the month-end
forecast, tokens by user and model, requests and error rates, time to first token, and a table of
users × models for the selected time range.
"""

from __future__ import annotations

from dashboards import selectors
from dashboards.common import (
    BUDGET_STEPS,
    PER_USER_NOTE,
    PERCENT_UNIT,
    REQUESTS_PER_SECOND,
    SECONDS,
    TOKENS,
    Json,
    Layout,
    currency_unit,
    dashboard,
    decimals_override,
    matrix,
    merge,
    organize,
    query_variable,
    scope_variables,
    stat,
    table,
    target,
    targets,
    timeseries,
)
from dashboards.limits import add_team_limit_panels
from dashboards.selectors import NAMED_USER

MTD = "team:chargeback_spend:month_to_date"
TEAM = 'team=~"$team"'
USER = 'user=~"$user"'
# Selectors (dashboards/selectors.py): recorded series of the selected teams (and users), and the raw
# metrics of the proxy job the rules read, narrowed by $cluster and $job. Per-user series select
# user!="" (see PER_USER_NOTE).
R = selectors.recorded(TEAM)
RU = selectors.recorded(TEAM, NAMED_USER, USER)
RAW = selectors.proxy(TEAM)
RAWU = selectors.proxy(TEAM, NAMED_USER, USER)

# Models these teams used in the window; the latency histograms only carry a model label, so the
# team's view of them is "the models it calls".
TEAM_MODELS = f"sum by (model) (team_model_code:chargeback_requests:rate5m{R})"


def _error_ratio(code_regex: str) -> str:
    # "or … * 0" keeps a 0 line for models without such errors instead of no series at all.
    code = f'code=~"{code_regex}"'
    errors = f"sum by (model) (team_model_code:chargeback_requests:rate5m{selectors.recorded(TEAM, code)})"
    total = f"sum by (model) (team_model_code:chargeback_requests:rate5m{R})"
    return f"({errors} or {total} * 0) / ({total} > 0)"


def _ttft(q: str) -> str:
    return (
        f"histogram_quantile({q}, sum by (le, model) "
        f"(rate(chargeback_time_to_first_token_seconds_bucket{selectors.proxy()}[$__rate_interval])))"
        f" and on (model) {TEAM_MODELS}"
    )


def build(currency: str) -> Json:
    money = currency_unit(currency)
    lay = Layout()

    lay.row(1, "Budget")
    lay.add(
        stat(
            2,
            "Month-to-date spend",
            f"What $team has been charged since the start of the billing month (config timezone:), in {currency}: "
            "team:chargeback_spend:month_to_date.",
            money,
            [target(f"team:chargeback_spend:month_to_date{R}")],
        ),
        4,
        4,
    )
    lay.add(
        stat(
            3,
            "Monthly budget",
            "The team's monthly budget from the configuration (teams.<team>.budget), exported by the proxy "
            "as chargeback_team_budget (max over replicas).",
            money,
            [target(f"max by (team) (chargeback_team_budget{RAW})")],
            graph=False,
        ),
        4,
        4,
    )
    lay.add(
        stat(
            4,
            "Month-end forecast",
            "Spend at the end of the calendar month if the current pace continues: "
            "team:chargeback_spend:month_forecast.",
            money,
            [target(f"team:chargeback_spend:month_forecast{R}")],
        ),
        4,
        4,
    )
    lay.add(
        stat(
            5,
            "Budget used",
            "Month-to-date spend ÷ monthly budget (team:chargeback_budget_consumption:ratio). "
            "Orange from 80 %, red from 100 %.",
            PERCENT_UNIT,
            [target(f"team:chargeback_budget_consumption:ratio{R}")],
            thresholds=BUDGET_STEPS,
        ),
        4,
        4,
    )
    lay.add(
        stat(
            6,
            "Forecast budget use",
            "Month-end forecast ÷ monthly budget (team:chargeback_budget_forecast_consumption:ratio): above "
            "100 % the team will overrun its budget at the current pace.",
            PERCENT_UNIT,
            [target(f"team:chargeback_budget_forecast_consumption:ratio{R}")],
            thresholds=BUDGET_STEPS,
        ),
        4,
        4,
    )
    lay.add(
        stat(
            7,
            "Spend rate (per hour)",
            "What the team is charged per hour right now: team:chargeback_spend_per_hour:rate5m.",
            money,
            # 0 (not "no data") while the team has no traffic: the month-to-date series exists for every
            # configured team
            [target(f"team:chargeback_spend_per_hour:rate5m{R} or on (team) 0 * {MTD}{R}")],
        ),
        4,
        4,
    )
    lay.add(
        timeseries(
            8,
            "Month-to-date spend vs budget",
            "Month-to-date spend (team:chargeback_spend:month_to_date) climbing towards the monthly budget "
            "(chargeback_team_budget), with the month-end forecast (team:chargeback_spend:month_forecast).",
            money,
            targets(
                (f"team:chargeback_spend:month_to_date{R}", "month to date"),
                (f"team:chargeback_spend:month_forecast{R}", "month-end forecast"),
                (f"max by (team) (chargeback_team_budget{RAW})", "budget"),
            ),
            fill=0,
            overrides=[
                {
                    "matcher": {"id": "byName", "options": "budget"},
                    "properties": [
                        {"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}},
                        {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
                    ],
                },
                {
                    "matcher": {"id": "byName", "options": "month-end forecast"},
                    "properties": [{"id": "custom.lineStyle", "value": {"fill": "dot", "dash": [0, 10]}}],
                },
            ],
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            9,
            "Spend rate by pool (per hour)",
            f"{currency} per hour the team is charged on each GPU pool: team_pool:chargeback_spend_per_hour:rate5m.",
            money,
            # 0 on the pools the team used this month while it has no traffic now
            [
                target(
                    f"team_pool:chargeback_spend_per_hour:rate5m{R}"
                    f" or on (team, pool) 0 * team_pool:chargeback_spend:month_to_date{R}",
                    "{{pool}}",
                )
            ],
            stacked=True,
        ),
        6,
        8,
    )
    lay.add(
        timeseries(
            10,
            "Share of each pool",
            "The team's share of each pool's weighted tokens over the last 5 minutes "
            "(team_pool:chargeback_token_share:ratio5m).",
            PERCENT_UNIT,
            [target(f"team_pool:chargeback_token_share:ratio5m{R}", "{{pool}}")],
            max_value=1,
        ),
        6,
        8,
    )

    lay.row(11, "Usage")
    lay.add(
        timeseries(
            12,
            "Tokens per second by user and model",
            "Prompt and completion tokens per second of each selected user on each model "
            "(user_team_model:chargeback_prompt_tokens:rate5m, user_team_model:chargeback_completion_tokens:rate5m)."
            + PER_USER_NOTE,
            TOKENS,
            targets(
                (f"user_team_model:chargeback_prompt_tokens:rate5m{RU}", "{{user}} · {{model}} prompt"),
                (
                    f"user_team_model:chargeback_completion_tokens:rate5m{RU}",
                    "{{user}} · {{model}} completion",
                ),
            ),
            stacked=True,
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            13,
            "Weighted tokens per second by user",
            "Weighted tokens (prompt × prompt weight + completion × completion weight of the model) per "
            "second of each selected user: user_team_model:chargeback_weighted_tokens:rate5m summed over "
            "models. Weighted tokens are what pool shares and spend are computed from." + PER_USER_NOTE,
            TOKENS,
            [
                target(
                    f"sum by (user) (user_team_model:chargeback_weighted_tokens:rate5m{RU})",
                    "{{user}}",
                )
            ],
            stacked=True,
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            14,
            "Requests per second by model and status",
            "Requests per second of the whole team by model and HTTP status code "
            "(team_model_code:chargeback_requests:rate5m; the rule has no user label).",
            REQUESTS_PER_SECOND,
            [
                target(
                    f"sum by (model, code) (team_model_code:chargeback_requests:rate5m{R})",
                    "{{model}} {{code}}",
                )
            ],
            stacked=True,
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            15,
            "Error rate by model",
            "Share of the team's requests answered with 5xx (upstream or proxy failures) and with 4xx "
            "(rejected: bad key, model not allowed, bad request), from team_model_code:chargeback_requests:rate5m; "
            "and the upstream error ratio of the same models for all teams (model:chargeback_upstream_errors:ratio5m).",
            PERCENT_UNIT,
            targets(
                (_error_ratio("5.."), "{{model}} 5xx"),
                (_error_ratio("4.."), "{{model}} 4xx"),
                (
                    f"(model:chargeback_upstream_errors:ratio5m{selectors.recorded()} or {TEAM_MODELS} * 0) and on (model) {TEAM_MODELS}",
                    "{{model}} upstream (all teams)",
                ),
            ),
            fill=0,
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            16,
            "Time to first token",
            "Median, 95th and 99th percentile of the time from request to first streamed token on the "
            "models the team uses, from the proxy histogram chargeback_time_to_first_token_seconds "
            "(labelled by model only, so the figures cover all teams calling that model).",
            SECONDS,
            targets(
                (_ttft("0.5"), "{{model}} p50"),
                (_ttft("0.95"), "{{model}} p95"),
                (_ttft("0.99"), "{{model}} p99"),
            ),
            fill=0,
        ),
        8,
        8,
    )

    lay.row(17, "Users × models")
    lay.add(
        table(
            18,
            "Tokens by user and model (selected range)",
            "Prompt plus completion tokens each selected user sent to each model during the selected time "
            "range: increase of chargeback_prompt_tokens_total and chargeback_completion_tokens_total over "
            "the range (no recording rule covers an arbitrary range). One row per user, one column per model."
            + PER_USER_NOTE,
            TOKENS,
            [
                target(
                    f"sum by (user, model) (increase(chargeback_prompt_tokens_total{RAWU}[$__range]))"
                    f" + sum by (user, model) (increase(chargeback_completion_tokens_total{RAWU}[$__range]))",
                    instant=True,
                    table=True,
                )
            ],
            transformations=[matrix("user", "model")],
            decimals=0,  # increase() extrapolates to fractions of a token: show whole tokens
        ),
        12,
        9,
    )
    lay.add(
        table(
            19,
            "Users × models detail (selected range)",
            "Per user and model over the selected range: requests, prompt and completion tokens (increase of "
            "chargeback_requests_total, chargeback_prompt_tokens_total, chargeback_completion_tokens_total), "
            "and current weighted tokens per second (user_team_model:chargeback_weighted_tokens:rate5m)."
            + PER_USER_NOTE,
            TOKENS,
            targets(
                (f"sum by (user, model) (increase(chargeback_requests_total{RAWU}[$__range]))", "requests"),
                (
                    f"sum by (user, model) (increase(chargeback_prompt_tokens_total{RAWU}[$__range]))",
                    "prompt",
                ),
                (
                    f"sum by (user, model) (increase(chargeback_completion_tokens_total{RAWU}[$__range]))",
                    "completion",
                ),
                (
                    f"sum by (user, model) (user_team_model:chargeback_weighted_tokens:rate5m{RU})",
                    "weighted now",
                ),
                instant=True,
                table=True,
            ),
            transformations=[
                merge(),
                organize(
                    rename={
                        "user": "User",
                        "model": "Model",
                        "Value #A": "Requests",
                        "Value #B": "Prompt tokens",
                        "Value #C": "Completion tokens",
                        "Value #D": "Weighted tokens/s now",
                    }
                ),
            ],
            sort_by="Prompt tokens",
            decimals=0,  # whole requests and tokens (increase() extrapolates to fractions)
            overrides=[decimals_override("Weighted tokens/s now", 1)],
        ),
        12,
        9,
    )

    add_team_limit_panels(lay, selectors.proxy_matchers(TEAM), money)

    return dashboard(
        "team",
        "One team's month against its budget and its usage by user and model. Pick the team (or All) and "
        "users at the top. Generated by dashboards/build.py from dashboards/team.py; do not edit in Grafana.",
        lay,
        variables=[
            *scope_variables(selectors.PROXY_SELECTOR),
            query_variable(
                "team",
                "Team",
                f"chargeback_team_info{selectors.proxy()}",
                "team",
                include_all=True,
                multi=True,
            ),
            query_variable(
                "user",
                "User",
                f"chargeback_requests_total{selectors.proxy(TEAM, NAMED_USER)}",
                "user",
                include_all=True,
                multi=True,
            ),
        ],
        time_from="now-24h",
    )

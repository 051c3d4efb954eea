"""Team: one team's month against its budget, and who in the team uses which model how much.

For team leads during the month: month-to-date spend against the budget with the month-end
forecast, tokens by user and model, requests and error rates, time to first token, and a table of
users × models for the selected time range.
"""

from __future__ import annotations

from dashboards import selectors
from dashboards.common import (
    BUDGET_STEPS,
    CURRENCY,
    MONEY,
    PER_USER_NOTE,
    PERCENT_UNIT,
    REQUESTS_PER_SECOND,
    SECONDS,
    TOKENS,
    Json,
    Panel,
    Row,
    dashboard,
    field_override,
    list_variable,
    matrix,
    merged_columns,
    scope_variables,
)
from dashboards.limits import team_limits_row
from dashboards.selectors import NAMED_USER
from exporter import contract

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
        f"(rate({contract.TIME_TO_FIRST_TOKEN_SECONDS}_bucket{selectors.proxy()}[$__rate_interval])))"
        f" and on (model) {TEAM_MODELS}"
    )


def _range_increase(metric: str) -> str:
    """What each selected user sent to each model during the selected time range."""
    return f"sum by (user, model) (increase({metric}{RAWU}[$__range]))"


ROWS = [
    Row(
        "Budget",
        width=4,
        panels=[
            Panel(
                "Month-to-date spend",
                "stat",
                MONEY,
                [f"{MTD}{R}"],
                "What $team has been charged since the start of the billing month (config timezone:), "
                f"in {CURRENCY}: team:chargeback_spend:month_to_date.",
            ),
            Panel(
                "Monthly budget",
                "stat",
                MONEY,
                [f"max by (team) ({contract.TEAM_BUDGET}{RAW})"],
                "The team's monthly budget from the configuration (teams.<team>.budget), exported by the proxy "
                "as chargeback_team_budget (max over replicas).",
                graph=False,
            ),
            Panel(
                "Month-end forecast",
                "stat",
                MONEY,
                [f"team:chargeback_spend:month_forecast{R}"],
                "Spend at the end of the calendar month if the current pace continues: "
                "team:chargeback_spend:month_forecast.",
            ),
            Panel(
                "Budget used",
                "stat",
                PERCENT_UNIT,
                [f"team:chargeback_budget_consumption:ratio{R}"],
                "Month-to-date spend ÷ monthly budget (team:chargeback_budget_consumption:ratio). "
                "Orange from 80 %, red from 100 %.",
                thresholds=BUDGET_STEPS,
            ),
            Panel(
                "Forecast budget use",
                "stat",
                PERCENT_UNIT,
                [f"team:chargeback_budget_forecast_consumption:ratio{R}"],
                "Month-end forecast ÷ monthly budget (team:chargeback_budget_forecast_consumption:ratio): above "
                "100 % the team will overrun its budget at the current pace.",
                thresholds=BUDGET_STEPS,
            ),
            Panel(
                "Spend rate (per hour)",
                "stat",
                MONEY,
                # 0 (not "no data") while the team has no traffic: the month-to-date series exists for every
                # configured team
                [f"team:chargeback_spend_per_hour:rate5m{R} or on (team) 0 * {MTD}{R}"],
                "What the team is charged per hour right now: team:chargeback_spend_per_hour:rate5m.",
            ),
            Panel(
                "Month-to-date spend vs budget",
                "timeseries",
                MONEY,
                [
                    (f"{MTD}{R}", "month to date"),
                    (f"team:chargeback_spend:month_forecast{R}", "month-end forecast"),
                    (f"max by (team) ({contract.TEAM_BUDGET}{RAW})", "budget"),
                ],
                "Month-to-date spend (team:chargeback_spend:month_to_date) climbing towards the monthly budget "
                "(chargeback_team_budget), with the month-end forecast (team:chargeback_spend:month_forecast).",
                width=12,
                fill=0,
                overrides=[
                    field_override(
                        "budget",
                        color={"mode": "fixed", "fixedColor": "red"},
                        **{"custom.lineStyle": {"fill": "dash", "dash": [10, 10]}},
                    ),
                    field_override(
                        "month-end forecast", **{"custom.lineStyle": {"fill": "dot", "dash": [0, 10]}}
                    ),
                ],
            ),
            Panel(
                "Spend rate by pool (per hour)",
                "timeseries",
                MONEY,
                # 0 on the pools the team used this month while it has no traffic now
                [
                    (
                        f"team_pool:chargeback_spend_per_hour:rate5m{R}"
                        f" or on (team, pool) 0 * team_pool:chargeback_spend:month_to_date{R}",
                        "{{pool}}",
                    )
                ],
                f"{CURRENCY} per hour the team is charged on each GPU pool: team_pool:chargeback_spend_per_hour:rate5m.",
                width=6,
                stacked=True,
            ),
            Panel(
                "Share of each pool",
                "timeseries",
                PERCENT_UNIT,
                [(f"team_pool:chargeback_token_share:ratio5m{R}", "{{pool}}")],
                "The team's share of each pool's weighted tokens over the last 5 minutes "
                "(team_pool:chargeback_token_share:ratio5m).",
                width=6,
                max_value=1,
            ),
        ],
    ),
    Row(
        "Usage",
        panels=[
            Panel(
                "Tokens per second by user and model",
                "timeseries",
                TOKENS,
                [
                    (f"user_team_model:chargeback_prompt_tokens:rate5m{RU}", "{{user}} · {{model}} prompt"),
                    (
                        f"user_team_model:chargeback_completion_tokens:rate5m{RU}",
                        "{{user}} · {{model}} completion",
                    ),
                ],
                "Prompt and completion tokens per second of each selected user on each model "
                "(user_team_model:chargeback_prompt_tokens:rate5m, user_team_model:chargeback_completion_tokens:rate5m)."
                + PER_USER_NOTE,
                stacked=True,
            ),
            Panel(
                "Weighted tokens per second by user",
                "timeseries",
                TOKENS,
                [(f"sum by (user) (user_team_model:chargeback_weighted_tokens:rate5m{RU})", "{{user}}")],
                "Weighted tokens (prompt × prompt weight + completion × completion weight of the model) per "
                "second of each selected user: user_team_model:chargeback_weighted_tokens:rate5m summed over "
                "models. Weighted tokens are what pool shares and spend are computed from." + PER_USER_NOTE,
                stacked=True,
            ),
            Panel(
                "Requests per second by model and status",
                "timeseries",
                REQUESTS_PER_SECOND,
                [
                    (
                        f"sum by (model, code) (team_model_code:chargeback_requests:rate5m{R})",
                        "{{model}} {{code}}",
                    )
                ],
                "Requests per second of the whole team by model and HTTP status code "
                "(team_model_code:chargeback_requests:rate5m; the rule has no user label).",
                width=8,
                stacked=True,
            ),
            Panel(
                "Error rate by model",
                "timeseries",
                PERCENT_UNIT,
                [
                    (_error_ratio("5.."), "{{model}} 5xx"),
                    (_error_ratio("4.."), "{{model}} 4xx"),
                    (
                        f"(model:chargeback_upstream_errors:ratio5m{selectors.recorded()} or {TEAM_MODELS} * 0)"
                        f" and on (model) {TEAM_MODELS}",
                        "{{model}} upstream (all teams)",
                    ),
                ],
                "Share of the team's requests answered with 5xx (upstream or proxy failures) and with 4xx "
                "(rejected: bad key, model not allowed, bad request), from team_model_code:chargeback_requests:rate5m; "
                "and the upstream error ratio of the same models for all teams (model:chargeback_upstream_errors:ratio5m).",
                width=8,
                fill=0,
            ),
            Panel(
                "Time to first token",
                "timeseries",
                SECONDS,
                [(_ttft(q), f"{{{{model}}}} p{p}") for q, p in (("0.5", 50), ("0.95", 95), ("0.99", 99))],
                "Median, 95th and 99th percentile of the time from request to first streamed token on the "
                "models the team uses, from the proxy histogram chargeback_time_to_first_token_seconds "
                "(labelled by model only, so the figures cover all teams calling that model).",
                width=8,
                fill=0,
            ),
        ],
    ),
    Row(
        "Users × models",
        height=9,
        panels=[
            Panel(
                "Tokens by user and model (selected range)",
                "table",
                TOKENS,
                [
                    f"{_range_increase(contract.PROMPT_TOKENS_TOTAL)}"
                    f" + {_range_increase(contract.COMPLETION_TOKENS_TOTAL)}"
                ],
                "Prompt plus completion tokens each selected user sent to each model during the selected time "
                "range: increase of chargeback_prompt_tokens_total and chargeback_completion_tokens_total over "
                "the range (no recording rule covers an arbitrary range). One row per user, one column per model."
                + PER_USER_NOTE,
                transformations=[matrix("user", "model")],
                decimals=0,  # increase() extrapolates to fractions of a token: show whole tokens
            ),
            Panel(
                "Users × models detail (selected range)",
                "table",
                TOKENS,
                [
                    (_range_increase(contract.REQUESTS_TOTAL), "requests"),
                    (_range_increase(contract.PROMPT_TOKENS_TOTAL), "prompt"),
                    (_range_increase(contract.COMPLETION_TOKENS_TOTAL), "completion"),
                    (
                        f"sum by (user, model) (user_team_model:chargeback_weighted_tokens:rate5m{RU})",
                        "weighted now",
                    ),
                ],
                "Per user and model over the selected range: requests, prompt and completion tokens (increase of "
                "chargeback_requests_total, chargeback_prompt_tokens_total, chargeback_completion_tokens_total), "
                "and current weighted tokens per second (user_team_model:chargeback_weighted_tokens:rate5m)."
                + PER_USER_NOTE,
                transformations=merged_columns(
                    {"user": "User", "model": "Model"},
                    "Requests",
                    "Prompt tokens",
                    "Completion tokens",
                    "Weighted tokens/s now",
                ),
                sort_by="Prompt tokens",
                decimals=0,  # whole requests and tokens (increase() extrapolates to fractions)
                overrides=[field_override("Weighted tokens/s now", decimals=1)],
            ),
        ],
    ),
    team_limits_row(selectors.proxy_matchers(TEAM)),
]


def build(currency: str) -> Json:
    return dashboard(
        "team",
        currency,
        "One team's month against its budget and its usage by user and model. Pick the team (or All) and "
        "users at the top. Generated by dashboards/build.py from dashboards/team.py; do not edit in Grafana.",
        ROWS,
        variables=[
            *scope_variables(selectors.PROXY_SELECTOR),
            list_variable("team", "Team", f"{contract.TEAM_INFO}{selectors.proxy()}", "team"),
            list_variable(
                "user", "User", f"{contract.REQUESTS_TOTAL}{selectors.proxy(TEAM, NAMED_USER)}", "user"
            ),
        ],
        time_from="now-24h",
    )

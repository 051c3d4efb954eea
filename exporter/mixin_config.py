"""Job selectors and alert thresholds shared by the rules and the dashboards (as kubernetes-mixin's
``_config``): rules/generate.py writes its PromQL with them, dashboards/selectors.py narrows every
dashboard query with the same job selectors. Change a value here, then run ``make generate``.

Standard library only: rules/generate.py runs from a checkout with nothing but PyYAML.
"""

from __future__ import annotations

# --- job selectors: the only label matchers on raw metrics --------------------------------------
PROXY_SELECTOR = 'job="chargeback-proxy"'  # every proxy replica's metrics listener
GPU_SELECTOR = 'job="chargeback-gpu-exporter"'  # every GPU exporter
# Dashboards: the label that tells clusters apart behind Thanos or Mimir ($cluster)
CLUSTER_LABEL = "cluster"

# --- windows ---------------------------------------------------------------------------------------
RATE_WINDOW = "5m"  # the "5m" in every *:rate5m / *:ratio5m series (the names assume 5m)
IDLE_ALERT_WINDOW = "1h"  # window of pool:chargeback_idle_cost_share:ratio1h
# Month-to-date is recomputed from the raw counters at every evaluation, never from its own past,
# so evaluation gaps cannot reset it and HA replicas agree: the billing month is cut into hour-long
# tiles (aligned to the Unix epoch, as subquery steps are), each tile's increase() is taken, and the
# tiles since the billing month's start are summed; the current, unfinished hour is summed from
# 5-minute tiles. MTD_LOOKBACK must cover the longest billing month (31 days + 1 h in a zone that
# leaves summer time in October) and Prometheus must keep raw samples that long.
MTD_LOOKBACK = "32d"
# The month-to-date group reads a month of raw samples at every evaluation; a large fleet can give
# it a longer interval than the global evaluation_interval (--month-to-date-interval 5m).
MTD_GROUP_INTERVAL = ""  # "" = Prometheus' global evaluation_interval

# --- links and text in alerts -----------------------------------------------------------------
RUNBOOK_BASE_URL = "https://github.com/llm-chargeback/llm-chargeback/blob/main/docs/runbook.md"
DASHBOARD_BASE_URL = "http://localhost:3000"  # Grafana; the team dashboard is <base>/d/chargeback-team
TEAM_DASHBOARD_UID = "chargeback-team"
CURRENCY = "EUR"  # currency of the budgets as written in alert text (the config's currency:)

# --- alert thresholds and hold times --------------------------------------------------------------
IDLE_COST_SHARE_THRESHOLD = 0.5  # ChargebackGPUIdleCostHigh: idle share of a pool's cost
IDLE_COST_FOR = "2h"
UPSTREAM_ERROR_RATIO_THRESHOLD = 0.05  # ChargebackUpstreamErrorRateHigh
UPSTREAM_ERROR_FOR = "10m"
LEDGER_QUEUE_ROWS_THRESHOLD = 1000  # ChargebackLedgerBacklog: rows that never drained for 5m
# ChargebackLedgerJournalBacklog: journaled rows not in the database that never fell below this for
# 10 minutes. In normal operation the journal holds about one batch (flush_interval_seconds' worth).
LEDGER_JOURNAL_ROWS_THRESHOLD = 10_000
LEDGER_JOURNAL_FOR = "10m"
LEDGER_DEAD_LETTER_WINDOW = "1h"
BUDGET_EXCEEDED_FOR = "0m"  # month-to-date spend only grows within a month: no flapping to wait out
BUDGET_FORECAST_FOR = "1h"  # the forecast follows the 5m spend rate: wait out short bursts
# kubernetes-mixin's TargetDown waits 10m: a scrape that fails for a few minutes (a node drain, a
# rolling update) is not worth waking anyone for, and clients retry against the other replicas.
PROXY_DOWN_FOR = "10m"
EXPORTER_DOWN_FOR = "10m"
USAGE_ESTIMATED_RATIO_THRESHOLD = 0.05  # share of a model's requests whose usage was estimated
USAGE_ESTIMATED_FOR = "15m"
RULE_FAILURES_FOR = "5m"
UNMAPPED_GPUS_FOR = "30m"  # a GPU added to a host before the config names its pool
TEAM_BLOCKED_WINDOW = "10m"  # ChargebackTeamBlocked: 429s of a monthly limit within this window
LIMIT_STORE_DOWN_FOR = "2m"  # ChargebackLimitStoreUnreachable

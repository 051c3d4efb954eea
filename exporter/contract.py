"""Metric names: the contract shared by the proxy, the GPU exporter, the rules, the dashboards and
the reporter. Change a name only everywhere at once (rules/, dashboards/, docs/metrics.md).

Config-derived gauges (team info, budgets, model info, weights, capacity) are exported by every
proxy replica with identical values: aggregate them with ``max by (...)``, never ``sum``.
Usage counters carry no replica label beyond the scrape target's own, so ``sum by`` adds replicas.
"""

# --- proxy: usage counters, labels {user, team, model}; {team, model} alone (no user label) when
# proxy.metrics_labels is "team": a missing label reads as "" in PromQL, so `sum by (user, team, model)`
# works on both shapes and `user!=""` selects per-user series.
REQUESTS_TOTAL = "chargeback_requests_total"
PROMPT_TOKENS_TOTAL = "chargeback_prompt_tokens_total"
COMPLETION_TOKENS_TOTAL = "chargeback_completion_tokens_total"
CACHED_PROMPT_TOKENS_TOTAL = "chargeback_cached_prompt_tokens_total"
REQUEST_SECONDS_TOTAL = "chargeback_request_seconds_total"
USAGE_ESTIMATED_TOTAL = "chargeback_usage_estimated_total"
# {team, model, code}: requests by the HTTP status returned to the client; never a user label, so a
# new status code adds teams × models series at most
REQUESTS_BY_CODE_TOTAL = "chargeback_requests_by_code_total"
# {model, source}: which path counted each request's usage: upstream | tokenize | estimate
USAGE_SOURCE_TOTAL = "chargeback_usage_source_total"
# {code}: refused before a user and a configured model were known (401/400/404/413/503); no user label
REJECTED_REQUESTS_TOTAL = "chargeback_rejected_requests_total"
# limits (issue 15)
LIMIT_REJECTIONS_TOTAL = "chargeback_limit_rejections_total"  # {team, user, limit}
TEAM_LIMIT = "chargeback_team_limit"  # {team, limit, enforce}: the configured value
LIMIT_REMAINING_BUDGET = "chargeback_limit_remaining_budget"  # {team}, currency at the limit price
LIMIT_REMAINING_WEIGHTED_TOKENS = "chargeback_limit_remaining_weighted_tokens"  # {team}
LIMIT_STORE_UP = "chargeback_limit_store_up"
LIMIT_STORE_ERRORS_TOTAL = "chargeback_limit_store_errors_total"
LIMIT_UNCHECKED_REQUESTS_TOTAL = "chargeback_limit_unchecked_requests_total"

# --- proxy: latency and load, label {model}
REQUEST_DURATION_SECONDS = "chargeback_request_duration_seconds"
TIME_TO_FIRST_TOKEN_SECONDS = "chargeback_time_to_first_token_seconds"
INFLIGHT_REQUESTS = "chargeback_inflight_requests"

# --- proxy: from the config
TEAM_INFO = "chargeback_team_info"  # {team, business_unit, cost_center} = 1
TEAM_BUDGET = "chargeback_team_budget"  # {team}, monthly, configured currency
MODEL_INFO = "chargeback_model_info"  # {model, pool} = 1
MODEL_PROMPT_TOKEN_WEIGHT = "chargeback_model_prompt_token_weight"  # {model}
MODEL_COMPLETION_TOKEN_WEIGHT = "chargeback_model_completion_token_weight"  # {model}
POOL_CAPACITY_TOKENS_PER_SECOND = "chargeback_pool_capacity_tokens_per_second"  # {pool}
REALTIME_METHOD_INFO = "chargeback_realtime_method_info"  # {method} = 1
# {timezone}: the current billing month in the config's timezone (exporter/billing_calendar.py)
BILLING_MONTH_START = "chargeback_billing_month_start_timestamp_seconds"
BILLING_MONTH_END = "chargeback_billing_month_end_timestamp_seconds"

# --- proxy: ledger health
LEDGER_ROWS_WRITTEN_TOTAL = "chargeback_ledger_rows_written_total"
LEDGER_WRITE_ERRORS_TOTAL = "chargeback_ledger_write_errors_total"
LEDGER_QUEUE_ROWS = "chargeback_ledger_queue_rows"
LEDGER_SPOOLED_ROWS = "chargeback_ledger_spooled_rows"
LEDGER_JOURNAL_ROWS = "chargeback_ledger_journal_rows"  # journaled, not yet in the database
LEDGER_JOURNAL_BYTES = "chargeback_ledger_journal_bytes"
LEDGER_UNJOURNALED_ROWS = "chargeback_ledger_unjournaled_rows"  # in memory only: the journal failed
LEDGER_DEAD_LETTER_ROWS_TOTAL = "chargeback_ledger_dead_letter_rows_total"
LEDGER_ROWS_LOST_TOTAL = "chargeback_ledger_rows_lost_total"  # neither written nor journaled

# --- GPU exporter, label {uuid} on every per-GPU series
GPU_INFO = "chargeback_gpu_info"  # {uuid, index, name, pool, driver_version} = 1
GPU_MIG_INFO = "chargeback_gpu_mig_info"  # {uuid, parent_uuid, gpu_instance_id, compute_instance_id, profile}
GPU_UTILIZATION_RATIO = "chargeback_gpu_utilization_ratio"
GPU_BUSY_SECONDS_TOTAL = "chargeback_gpu_busy_seconds_total"
GPU_IDLE_SECONDS_TOTAL = "chargeback_gpu_idle_seconds_total"
GPU_IDLE = "chargeback_gpu_idle"
GPU_OBSERVED_SECONDS_TOTAL = (
    "chargeback_gpu_observed_seconds_total"  # wall time present: × hourly cost = cost
)
GPU_MEMORY_USED_BYTES = "chargeback_gpu_memory_used_bytes"
GPU_MEMORY_TOTAL_BYTES = "chargeback_gpu_memory_total_bytes"
GPU_POWER_WATTS = "chargeback_gpu_power_watts"
GPU_ENERGY_JOULES_TOTAL = "chargeback_gpu_energy_joules_total"
GPU_TEMPERATURE_CELSIUS = "chargeback_gpu_temperature_celsius"
GPU_HOURLY_COST = "chargeback_gpu_hourly_cost"  # {uuid, pool}
GPU_UNMAPPED_GPUS = "chargeback_gpu_unmapped_gpus"  # GPUs on the host that no pool claims (no cost)
NVML_UP = "chargeback_nvml_up"
GPU_COLLECT_DURATION_SECONDS = "chargeback_gpu_collect_duration_seconds"
NVML_ERRORS_TOTAL = "chargeback_nvml_errors_total"  # {reason}

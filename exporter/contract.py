"""The metric contract: every metric llm-chargeback exports, defined once, as a table of specs.

Each entry (exporter/metric_spec.py) holds the name, the type, the label set, the HELP text, the
unit and the docs' wording. The collectors of the proxy, the limits, the ledger, the billing
calendar and the GPU exporter build their families from it; rules/generate.py and dashboards/ read
the names from it; docs/metrics.md's tables are generated from it (``python -m exporter.metrics_doc``,
run by ``make generate``). Per-GPU readings are entries of the GPU field table
(exporter/gpu/fields.py), taken in here. Change a name only everywhere at once.

The module-level constants are the plain names (``REQUESTS_TOTAL == "chargeback_requests_total"``);
``spec(REQUESTS_TOTAL)`` gives the whole entry, ``METRICS`` the table in docs order.

Config-derived gauges (team info, budgets, model info, weights, capacity) are exported by every
proxy replica with identical values: aggregate them with ``max by (...)``, never ``sum``.
Usage counters carry no replica label beyond the scrape target's own, so ``sum by`` adds replicas.
"""

from __future__ import annotations

from exporter.gpu import fields as gpu_fields
from exporter.metric_spec import Kind, MetricSpec

METRICS: dict[str, MetricSpec] = {}

# the tables of docs/metrics.md, in order
SECTIONS = {
    "proxy-usage": "Usage counters",
    "proxy-latency": "Latency and load",
    "proxy-config": "From the configuration",
    "proxy-limits": "Limits",
    "proxy-ledger": "Ledger health",
    gpu_fields.SECTION: "GPU exporter",
}

_section = ""


def _add(spec: MetricSpec) -> str:
    if spec.name in METRICS:
        raise ValueError(f"{spec.name} is defined twice")
    if spec.section not in SECTIONS:
        raise ValueError(f"{spec.name}: unknown section {spec.section!r}")
    METRICS[spec.name] = spec
    return spec.name


def _metric(
    name: str, kind: Kind, help: str, labels: tuple[str, ...] = (), unit: str = "–", doc: str = ""
) -> str:
    return _add(MetricSpec(name, kind, help, labels, unit, doc, _section))


def spec(name: str) -> MetricSpec:
    """The contract's entry for a metric name (KeyError for a name outside the contract)."""
    return METRICS[name]


USER_TEAM_MODEL = ("user", "team", "model")

# --- proxy: usage counters, labels {user, team, model}; {team, model} alone (no user label) when
# proxy.metrics_labels is "team": a missing label reads as "" in PromQL, so `sum by (user, team, model)`
# works on both shapes and `user!=""` selects per-user series.
_section = "proxy-usage"
REQUESTS_TOTAL = _metric(
    "chargeback_requests_total",
    "counter",
    "Requests by user, team and model (by status code: chargeback_requests_by_code_total).",
    USER_TEAM_MODEL,
    "requests",
    "requests, whatever their answer (by status: the next counter)",
)
# {team, model, code}: requests by the HTTP status returned to the client; never a user label, so a
# new status code adds teams × models series at most
REQUESTS_BY_CODE_TOTAL = _metric(
    "chargeback_requests_by_code_total",
    "counter",
    "Requests by team, model and HTTP status code returned to the client.",
    ("team", "model", "code"),
    "requests",
    "requests by the HTTP status returned to the client (499: the client went away; 502: upstream"
    " unreachable; 504: upstream timeout); no user label in either mode",
)
PROMPT_TOKENS_TOTAL = _metric(
    "chargeback_prompt_tokens_total",
    "counter",
    "Prompt tokens reported by the upstream (or estimated).",
    USER_TEAM_MODEL,
    "tokens",
    "prompt tokens reported by the upstream (or estimated)",
)
COMPLETION_TOKENS_TOTAL = _metric(
    "chargeback_completion_tokens_total",
    "counter",
    "Completion tokens reported by the upstream (or estimated).",
    USER_TEAM_MODEL,
    "tokens",
    "completion tokens reported by the upstream (or estimated)",
)
CACHED_PROMPT_TOKENS_TOTAL = _metric(
    "chargeback_cached_prompt_tokens_total",
    "counter",
    "Prompt tokens served from the upstream's prefix cache.",
    USER_TEAM_MODEL,
    "tokens",
    "prompt tokens the upstream served from its prefix cache (`prompt_tokens_details.cached_tokens`);"
    " included in the prompt tokens",
)
REQUEST_SECONDS_TOTAL = _metric(
    "chargeback_request_seconds_total",
    "counter",
    "Summed wall time of requests, for time-based allocation.",
    USER_TEAM_MODEL,
    "seconds",
    "summed wall time of requests (for time-based allocation)",
)
USAGE_ESTIMATED_TOTAL = _metric(
    "chargeback_usage_estimated_total",
    "counter",
    "Requests whose usage the proxy had to estimate.",
    USER_TEAM_MODEL,
    "requests",
    "requests whose usage the upstream did not report and the proxy estimated",
)
# {model, source}: which path counted each request's usage: upstream | tokenize | estimate
USAGE_SOURCE_TOTAL = _metric(
    "chargeback_usage_source_total",
    "counter",
    "Requests by the path that counted their usage: upstream, tokenize or estimate.",
    ("model", "source"),
    "requests",
    "which path counted each request's usage: `upstream` (the server's own usage), `tokenize` (the"
    " server's tokenizer, `usage_fallback: tokenize`) or `estimate` (characters / 4); see docs/proxy.md",
)
# {code}: refused before a user and a configured model were known (401/400/404/413/503); no user label
REJECTED_REQUESTS_TOTAL = _metric(
    "chargeback_rejected_requests_total",
    "counter",
    "Requests refused before a user and a configured model were known (401, 400, 404, 413, 503).",
    ("code",),
    "requests",
)

# --- proxy: latency and load, label {model}
_section = "proxy-latency"
REQUEST_DURATION_SECONDS = _metric(
    "chargeback_request_duration_seconds",
    "histogram",
    "Time from request to the last byte sent to the client.",
    ("model",),
    "seconds",
    "request start to the last byte sent to the client",
)
TIME_TO_FIRST_TOKEN_SECONDS = _metric(
    "chargeback_time_to_first_token_seconds",
    "histogram",
    "Streaming requests: time until the first event reached the client.",
    ("model",),
    "seconds",
)
INFLIGHT_REQUESTS = _metric(
    "chargeback_inflight_requests",
    "gauge",
    "Requests being forwarded right now.",
    ("model",),
    "requests",
)

# --- proxy: from the config
_section = "proxy-config"
TEAM_INFO = _metric(
    "chargeback_team_info",
    "info",
    "Team metadata (always 1).",
    ("team", "business_unit", "cost_center"),
    doc="one per configured team",
)
TEAM_BUDGET = _metric(
    "chargeback_team_budget",
    "gauge",
    "Monthly team budget in {currency}.",
    ("team",),
    "currency per calendar month",
    "`teams.<team>.budget` (teams without a budget have no series)",
)
MODEL_INFO = _metric(
    "chargeback_model_info",
    "info",
    "Model to GPU pool (always 1).",
    ("model", "pool"),
    doc="the GPU pool serving each model",
)
MODEL_PROMPT_TOKEN_WEIGHT = _metric(
    "chargeback_model_prompt_token_weight", "gauge", "Cost weight of one prompt token.", ("model",)
)
MODEL_COMPLETION_TOKEN_WEIGHT = _metric(
    "chargeback_model_completion_token_weight", "gauge", "Cost weight of one completion token.", ("model",)
)
POOL_CAPACITY_TOKENS_PER_SECOND = _metric(
    "chargeback_pool_capacity_tokens_per_second",
    "gauge",
    "Configured weighted-token capacity of a GPU pool.",
    ("pool",),
    "weighted tokens/s",
    "`pools.<pool>.capacity_tokens_per_second` (only pools that set it)",
)
REALTIME_METHOD_INFO = _metric(
    "chargeback_realtime_method_info",
    "info",
    "Allocation method used for real-time spend (always 1).",
    ("method",),
    doc="`report.realtime_method`: `token-share` or `proxy-price-per-token`, the method of the"
    " real-time spend series",
)
# {timezone}: the current billing month in the config's timezone (exporter/billing_calendar.py)
BILLING_MONTH_START = _metric(
    "chargeback_billing_month_start_timestamp_seconds",
    "gauge",
    "Start of the current billing month (config timezone) as a Unix timestamp.",
    ("timezone",),
    "Unix seconds",
    "start of the current billing month: midnight on the 1st in the config's `timezone:` (computed at"
    " scrape time); the rules count month-to-date from it",
)
BILLING_MONTH_END = _metric(
    "chargeback_billing_month_end_timestamp_seconds",
    "gauge",
    "End (exclusive) of the current billing month (config timezone) as a Unix timestamp.",
    ("timezone",),
    "Unix seconds",
    "end (exclusive) of the current billing month: the next month's start; the forecast's hours left",
)

# --- proxy: limits (issue 15)
_section = "proxy-limits"
LIMIT_REJECTIONS_TOTAL = _metric(
    "chargeback_limit_rejections_total",
    "counter",
    "Requests refused with 429 by a limit (budget, monthly_tokens, requests_per_minute, tokens_per_minute).",
    ("team", "user", "limit"),
    "requests",
    "requests refused with 429 by a limit (`user` is empty with `proxy.metrics_labels: team`); `limit`"
    " is `budget`, `monthly_tokens`, `requests_per_minute` or `tokens_per_minute` (they are also in"
    ' `chargeback_requests_total{code="429"}` and in the ledger)',
)
TEAM_LIMIT = _metric(
    "chargeback_team_limit",
    "gauge",
    "A team's configured limit (currency, weighted tokens, requests or tokens per minute).",
    ("team", "limit", "enforce"),
    "currency, weighted tokens, requests/min or tokens/min",
    'a team\'s configured limit and whether it blocks (`enforce="block"`) or only alerts',
)
LIMIT_REMAINING_BUDGET = _metric(
    "chargeback_limit_remaining_budget",
    "gauge",
    "What is left of the team's monthly budget at the limit price, in {currency}.",
    ("team",),
    "currency",
    "the team's budget minus its month-to-date spend at the limit unit price (docs/methods.md);"
    " negative when overrun",
)
LIMIT_REMAINING_WEIGHTED_TOKENS = _metric(
    "chargeback_limit_remaining_weighted_tokens",
    "gauge",
    "What is left of the team's monthly weighted-token quota.",
    ("team",),
    "weighted tokens",
    "the team's monthly token quota minus its month-to-date weighted tokens",
)
LIMIT_STORE_UP = _metric(
    "chargeback_limit_store_up",
    "gauge",
    "1 when the last call to the limit store (Redis or in-process) succeeded.",
    unit="0/1",
    doc="1 when the last call to the limit store (Redis, or in-process) succeeded; 0 while the proxy"
    " fails open",
)
LIMIT_STORE_ERRORS_TOTAL = _metric(
    "chargeback_limit_store_errors_total", "counter", "Failed calls to the limit store.", unit="calls"
)
LIMIT_UNCHECKED_REQUESTS_TOTAL = _metric(
    "chargeback_limit_unchecked_requests_total",
    "counter",
    "Requests let through unchecked because the limit store was unreachable (fail-open).",
    unit="requests",
    doc="requests let through without a limit check because the store was unreachable (fail-open)",
)

# --- proxy: ledger health
_section = "proxy-ledger"
LEDGER_ROWS_WRITTEN_TOTAL = _metric(
    "chargeback_ledger_rows_written_total", "counter", "Rows written to the ledger database.", unit="rows"
)
LEDGER_WRITE_ERRORS_TOTAL = _metric(
    "chargeback_ledger_write_errors_total", "counter", "Failed ledger write attempts.", unit="attempts"
)
LEDGER_QUEUE_ROWS = _metric(
    "chargeback_ledger_queue_rows", "gauge", "Rows waiting in memory for the ledger.", unit="rows"
)
LEDGER_SPOOLED_ROWS = _metric(
    "chargeback_ledger_spooled_rows",
    "gauge",
    "Rows waiting on disk only (journaled beyond the memory queue, or by an earlier run).",
    unit="rows",
    doc="rows waiting on disk only: journaled while the memory queue was full, or left by an earlier run",
)
LEDGER_JOURNAL_ROWS = _metric(  # journaled, not yet in the database
    "chargeback_ledger_journal_rows",
    "gauge",
    "Rows in the write-ahead journal not yet committed to the database (backlog).",
    unit="rows",
    doc="journal backlog: rows journaled but not yet committed to the database",
)
LEDGER_JOURNAL_BYTES = _metric(
    "chargeback_ledger_journal_bytes",
    "gauge",
    "Bytes of journal files not yet deleted.",
    unit="bytes",
    doc="size of the journal files not yet deleted",
)
LEDGER_UNJOURNALED_ROWS = _metric(  # in memory only: the journal failed
    "chargeback_ledger_unjournaled_rows",
    "gauge",
    "Rows held in memory only because the journal could not be written (a crash loses them).",
    unit="rows",
)
LEDGER_DEAD_LETTER_ROWS_TOTAL = _metric(
    "chargeback_ledger_dead_letter_rows_total",
    "counter",
    "Rows the database refused for good, kept in the dead-letter file.",
    unit="rows",
    doc="rows the database refused for good, kept in `<spool_dir>/dead-letter/`",
)
LEDGER_ROWS_LOST_TOTAL = _metric(  # neither written nor journaled
    "chargeback_ledger_rows_lost_total",
    "counter",
    "Rows that could be neither written to the database nor journaled.",
    unit="rows",
    doc="rows that could be neither written nor journaled (the proxy then exits 1)",
)

# --- GPU exporter, label {uuid} on every per-GPU series
_section = gpu_fields.SECTION
GPU_INFO = _metric(
    "chargeback_gpu_info",
    "info",
    "GPU identity and pool; join other series on uuid.",
    ("uuid", "index", "name", "pool", "driver_version"),
    doc="one per GPU; `pool` is empty for a GPU no pool claims",
)
GPU_MIG_INFO = _metric(
    "chargeback_gpu_mig_info",
    "info",
    "MIG instances of a GPU (utilisation is not reported per instance).",
    ("uuid", "parent_uuid", "gpu_instance_id", "compute_instance_id", "profile"),
    doc="one per MIG instance",
)
GPU_UTILIZATION_RATIO = _metric(
    "chargeback_gpu_utilization_ratio",
    "gauge",
    "Mean GPU utilisation (0-1) since the previous scrape.",
    ("uuid",),
    "ratio 0–1",
    "mean utilisation since the previous scrape",
)
GPU_BUSY_SECONDS_TOTAL = _metric(
    "chargeback_gpu_busy_seconds_total",
    "counter",
    "Integral of utilisation over time: seconds of work.",
    ("uuid",),
    "seconds",
    "∫ utilisation dt: seconds of work (50 % for 10 s adds 5)",
)
GPU_IDLE_SECONDS_TOTAL = _metric(
    "chargeback_gpu_idle_seconds_total",
    "counter",
    "Seconds at or below the idle utilisation threshold.",
    ("uuid",),
    "seconds",
    "seconds at or below `gpu_exporter.idle_threshold_ratio`",
)
GPU_IDLE = _metric(
    "chargeback_gpu_idle",
    "gauge",
    "1 when the GPU was idle over the last interval, else 0.",
    ("uuid",),
    "0/1",
    "1 when the GPU was idle over the last interval",
)
GPU_OBSERVED_SECONDS_TOTAL = _metric(  # wall time present: × hourly cost = cost
    "chargeback_gpu_observed_seconds_total",
    "counter",
    "Wall-clock seconds the GPU was present and read (basis of its cost).",
    ("uuid",),
    "seconds",
    "wall time the GPU was present and observed (× hourly cost = cost); the reporter's cost basis,"
    " since busy + idle < wall time for a GPU between the idle threshold and 100 %",
)
# the per-GPU readings of the field table (exporter/gpu/fields.py), in its order
for _field in gpu_fields.FIELDS:
    _add(_field.spec)
GPU_MEMORY_USED_BYTES = gpu_fields.MEMORY_USED.name
GPU_MEMORY_TOTAL_BYTES = gpu_fields.MEMORY_TOTAL.name
GPU_POWER_WATTS = gpu_fields.POWER.name
GPU_ENERGY_JOULES_TOTAL = gpu_fields.ENERGY.name
GPU_TEMPERATURE_CELSIUS = gpu_fields.TEMPERATURE.name
GPU_HOURLY_COST = _metric(
    "chargeback_gpu_hourly_cost",
    "gauge",
    "Configured cost of this GPU per hour (pool price).",
    ("uuid", "pool"),
    "currency per GPU-hour",
    "the pool's `gpu_hourly_cost` for this GPU",
)
GPU_UNMAPPED_GPUS = _metric(  # GPUs on the host that no pool claims (no cost)
    "chargeback_gpu_unmapped_gpus",
    "gauge",
    "GPUs seen in this scrape that belong to no configured pool (no cost).",
    unit="GPUs",
    doc="GPUs in this scrape that belong to no pool (and so cost nothing)",
)
NVML_UP = _metric(
    "chargeback_nvml_up",
    "gauge",
    "1 when the GPU library answered this scrape, else 0.",
    unit="0/1",
    doc="1 when NVML answered this scrape",
)
GPU_COLLECT_DURATION_SECONDS = _metric(
    "chargeback_gpu_collect_duration_seconds",
    "gauge",
    "Seconds the exporter spent reading the GPUs for this scrape.",
    unit="seconds",
    doc="time the scrape spent reading the GPUs",
)
NVML_ERRORS_TOTAL = _metric(
    "chargeback_nvml_errors_total",
    "counter",
    "GPU library errors by reason.",
    ("reason",),
    "errors",
    "NVML failures by NVML error name (`timeout`, `gpu_is_lost`, …)",
)
del _field
_section = ""

"""GPU fleet: what each pool and each GPU does, draws and costs, and whether NVML answers.

For operations: per pool and per GPU utilisation, busy against idle time, memory, power and energy,
hourly and idle cost, and the health of the exporter's NVML reads.
"""

from __future__ import annotations

from dashboards import selectors
from dashboards.common import (
    BYTES,
    CELSIUS,
    CURRENCY,
    IDLE_STEPS,
    JOULES,
    MONEY,
    NONE,
    PERCENT_UNIT,
    SECONDS,
    WATTS,
    Json,
    Panel,
    Row,
    capacity_used,
    dashboard,
    list_variable,
    organize,
    scope_variables,
    steps,
)
from exporter import contract

POOL = 'pool=~"$pool"'
# Selectors (dashboards/selectors.py): recorded pool series of the selected clusters and pools, and the
# raw metrics of the GPU exporter job the rules read, narrowed by $cluster and $job.
R = selectors.recorded(POOL)
RAW = selectors.gpu()
POOL_GPUS = f"{contract.GPU_INFO}{selectors.gpu(POOL)}"  # the GPUs of the selected pools
GPU = 'uuid=~"$gpu"'
SELECTED_GPUS = f"{contract.GPU_INFO}{selectors.gpu(POOL, GPU)}"  # the selected GPUs


def per_gpu(expr: str) -> str:
    """Attach pool and index (from chargeback_gpu_info) to a per-GPU series and keep the selected GPUs."""
    return f"{expr} * on (uuid) group_left (pool, index) {SELECTED_GPUS}"


GPU_LEGEND = "{{pool}} #{{index}} {{uuid}}"
UP_STEPS = steps(("red", None), ("green", 1.0))


def gpu_query(expr: str, legend: str = GPU_LEGEND) -> tuple[str, str]:
    """A per-GPU series of the selected GPUs, legend with pool and index."""
    return per_gpu(expr), legend


# Share of time each GPU spent idle (seconds idle per second), its hourly cost, and the product of both.
GPU_IDLE_RATE = f"rate({contract.GPU_IDLE_SECONDS_TOTAL}{RAW}[$__rate_interval])"
GPU_HOURLY_COST = f"max by (uuid) ({contract.GPU_HOURLY_COST}{RAW})"
GPU_IDLE_COST = f"({GPU_HOURLY_COST} * on (uuid) max by (uuid) ({GPU_IDLE_RATE}))"

ROWS = [
    Row(
        "Pools",
        width=5,
        panels=[
            Panel(
                "GPUs",
                "stat",
                NONE,
                [f"count({POOL_GPUS})"],
                "Number of GPUs the exporters report in the selected pools (chargeback_gpu_info).",
                width=4,
                graph=False,
            ),
            Panel(
                "Fleet cost (per hour)",
                "stat",
                MONEY,
                [f"sum(pool:chargeback_gpu_hourly_cost:sum{R})"],
                f"What the selected pools cost per hour in {CURRENCY}, busy or idle: "
                "sum of pool:chargeback_gpu_hourly_cost:sum.",
            ),
            Panel(
                "Idle cost (per hour)",
                "stat",
                MONEY,
                [f"sum(pool:chargeback_idle_cost_per_hour:rate5m{R})"],
                "Part of that cost spent on idle GPUs: sum of pool:chargeback_idle_cost_per_hour:rate5m.",
            ),
            Panel(
                "Idle share of the fleet",
                "stat",
                PERCENT_UNIT,
                [
                    f"sum(pool:chargeback_gpu_idle:ratio5m{R} * on (pool) pool:chargeback_gpus:count{R})"
                    f" / sum(pool:chargeback_gpus:count{R})"
                ],
                "Share of GPU time spent idle in the selected pools over the last 5 minutes, weighted by pool "
                "size: pool:chargeback_gpu_idle:ratio5m weighted by pool:chargeback_gpus:count. Orange above 50 %, "
                "red above 80 %.",
                thresholds=IDLE_STEPS,
            ),
            Panel(
                "NVML up",
                "stat",
                NONE,
                [f"min({contract.NVML_UP}{RAW})"],
                "1 (UP) when every GPU exporter's last NVML read succeeded (min of chargeback_nvml_up).",
                thresholds=UP_STEPS,
                mappings=[
                    {
                        "type": "value",
                        "options": {
                            "0": {"text": "DOWN", "color": "red", "index": 0},
                            "1": {"text": "UP", "color": "green", "index": 1},
                        },
                    }
                ],
                graph=False,
            ),
            Panel(
                "Busy vs idle by pool",
                "timeseries",
                PERCENT_UNIT,
                [
                    (f"pool:chargeback_gpu_busy:ratio5m{R}", "{{pool}} busy"),
                    (f"pool:chargeback_gpu_idle:ratio5m{R}", "{{pool}} idle"),
                ],
                "Share of the pool's GPU time spent busy (pool:chargeback_gpu_busy:ratio5m) and idle "
                "(pool:chargeback_gpu_idle:ratio5m); a GPU counts as idle at or below "
                "gpu_exporter.idle_threshold_ratio utilisation.",
                width=8,
                max_value=1,
            ),
            Panel(
                "Hourly cost and idle cost by pool",
                "timeseries",
                MONEY,
                [
                    (f"pool:chargeback_gpu_hourly_cost:sum{R}", "{{pool}} cost"),
                    (f"pool:chargeback_idle_cost_per_hour:rate5m{R}", "{{pool}} idle cost"),
                ],
                f"{CURRENCY} per hour each pool costs (pool:chargeback_gpu_hourly_cost:sum) and the part spent on "
                "idle GPUs (pool:chargeback_idle_cost_per_hour:rate5m).",
                width=8,
                fill=0,
            ),
            capacity_used(
                R,
                "Weighted tokens per second the proxy sent to the pool divided by its configured capacity "
                "(pool:chargeback_capacity_utilization:ratio5m): the token view of load, next to the NVML view.",
                fill=0,
            ),
        ],
    ),
    Row(
        "GPUs",
        width=8,
        panels=[
            Panel(
                "GPU utilisation",
                "timeseries",
                PERCENT_UNIT,
                [gpu_query(f"{contract.GPU_UTILIZATION_RATIO}{RAW}")],
                "NVML utilisation of each GPU, 0–100 % (chargeback_gpu_utilization_ratio).",
                width=12,
                max_value=1,
                fill=0,
            ),
            Panel(
                "Idle time per GPU",
                "timeseries",
                PERCENT_UNIT,
                [gpu_query(GPU_IDLE_RATE)],
                "Share of time each GPU spent idle: rate of chargeback_gpu_idle_seconds_total (seconds idle per "
                "second); the rest of the time it was busy (chargeback_gpu_busy_seconds_total).",
                width=12,
                max_value=1,
                fill=0,
                thresholds=IDLE_STEPS,
            ),
            Panel(
                "Memory used",
                "timeseries",
                BYTES,
                [
                    gpu_query(f"{contract.GPU_MEMORY_USED_BYTES}{RAW}", GPU_LEGEND + " used"),
                    gpu_query(f"{contract.GPU_MEMORY_TOTAL_BYTES}{RAW}", GPU_LEGEND + " total"),
                ],
                "Framebuffer memory in use on each GPU (chargeback_gpu_memory_used_bytes); the dashed lines are "
                "each GPU's total (chargeback_gpu_memory_total_bytes).",
                width=12,
                fill=0,
                overrides=[
                    {
                        "matcher": {"id": "byRegexp", "options": ".* total$"},
                        "properties": [
                            {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}}
                        ],
                    }
                ],
            ),
            Panel(
                "Power draw",
                "timeseries",
                WATTS,
                [gpu_query(f"{contract.GPU_POWER_WATTS}{RAW}")],
                "Power each GPU draws, in watts (chargeback_gpu_power_watts).",
                width=12,
                fill=0,
            ),
            Panel(
                "Energy used in the selected range",
                "bargauge",
                JOULES,
                [gpu_query(f"increase({contract.GPU_ENERGY_JOULES_TOTAL}{RAW}[$__range])")],
                "Energy each GPU consumed over the selected time range: increase of "
                "chargeback_gpu_energy_joules_total over the range (1 kWh = 3.6 MJ).",
            ),
            Panel(
                "Hourly cost per GPU",
                "timeseries",
                MONEY,
                [gpu_query(GPU_HOURLY_COST)],
                f"{CURRENCY} per hour each GPU costs, from its pool's pools.<pool>.gpu_hourly_cost "
                "(chargeback_gpu_hourly_cost).",
                fill=0,
            ),
            Panel(
                "Idle cost per GPU (per hour)",
                "timeseries",
                MONEY,
                [gpu_query(GPU_IDLE_COST)],
                f"{CURRENCY} per hour each GPU burns while idle: its hourly cost (chargeback_gpu_hourly_cost) times "
                "the share of time it was idle (rate of chargeback_gpu_idle_seconds_total).",
                stacked=True,
            ),
            Panel(
                "Temperature",
                "timeseries",
                CELSIUS,
                [gpu_query(f"{contract.GPU_TEMPERATURE_CELSIUS}{RAW}")],
                "GPU core temperature (chargeback_gpu_temperature_celsius).",
                width=12,
                fill=0,
            ),
            Panel(
                "GPU inventory",
                "table",
                NONE,
                [SELECTED_GPUS],
                "Every GPU the exporters see, with its index, model name, pool and driver (chargeback_gpu_info).",
                width=12,
                transformations=[
                    organize(
                        exclude=("Time", "Value", "__name__", "job"),
                        rename={
                            "uuid": "UUID",
                            "index": "Index",
                            "name": "Model",
                            "pool": "Pool",
                            "driver_version": "Driver",
                            "instance": "Exporter",
                        },
                    )
                ],
            ),
        ],
    ),
    Row(
        "NVML health",
        width=8,
        height=7,
        panels=[
            Panel(
                "NVML up per exporter",
                "timeseries",
                NONE,
                [(f"{contract.NVML_UP}{RAW}", "{{instance}}")],
                "1 when the exporter's last read of the GPU library succeeded, 0 when NVML failed "
                "(chargeback_nvml_up); the exporter keeps serving and retries on every scrape.",
                fill=0,
                max_value=1,
                thresholds=UP_STEPS,
            ),
            Panel(
                "NVML errors per second",
                "timeseries",
                "cps",
                [
                    (
                        f"sum by (instance, reason) (rate({contract.NVML_ERRORS_TOTAL}{RAW}[$__rate_interval]))"
                        f" or sum by (instance) ({contract.NVML_UP}{RAW}) * 0",
                        "{{instance}} {{reason}}",
                    )
                ],
                "GPU library errors per second by reason (rate of chargeback_nvml_errors_total); a flat 0 line "
                "per exporter when there are none.",
                fill=0,
            ),
            Panel(
                "Exporter read time",
                "timeseries",
                SECONDS,
                [(f"{contract.GPU_COLLECT_DURATION_SECONDS}{RAW}", "{{instance}}")],
                "Seconds each exporter spent reading the GPUs for the last scrape "
                "(chargeback_gpu_collect_duration_seconds).",
                fill=0,
            ),
        ],
    ),
]


def build(currency: str) -> Json:
    return dashboard(
        "gpu_fleet",
        currency,
        "Per pool and per GPU: utilisation, busy vs idle, memory, power, energy, hourly and idle cost, NVML "
        "health. Generated by dashboards/build.py from dashboards/gpu_fleet.py; do not edit in Grafana.",
        ROWS,
        variables=[
            *scope_variables(selectors.GPU_SELECTOR),
            list_variable("pool", "Pool", f"{contract.GPU_INFO}{RAW}", "pool"),
            list_variable("gpu", "GPU", POOL_GPUS, "uuid"),
        ],
        time_from="now-6h",
    )

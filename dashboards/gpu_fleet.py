"""GPU fleet: what each pool and each GPU does, draws and costs, and whether NVML answers.

For operations: per pool and per GPU utilisation, busy against idle time, memory, power and energy,
hourly and idle cost, and the health of the exporter's NVML reads.
"""

from __future__ import annotations

from dashboards import selectors
from dashboards.common import (
    BYTES,
    CELSIUS,
    IDLE_STEPS,
    JOULES,
    NONE,
    PERCENT_UNIT,
    SECONDS,
    WATTS,
    Json,
    Layout,
    bargauge,
    currency_unit,
    dashboard,
    organize,
    query_variable,
    scope_variables,
    stat,
    steps,
    table,
    target,
    targets,
    timeseries,
)

POOL = 'pool=~"$pool"'
# Selectors (dashboards/selectors.py): recorded pool series of the selected clusters and pools, and the
# raw metrics of the GPU exporter job the rules read, narrowed by $cluster and $job.
R = selectors.recorded(POOL)
RAW = selectors.gpu()
POOL_GPUS = f"chargeback_gpu_info{selectors.gpu(POOL)}"  # the GPUs of the selected pools
GPU = 'uuid=~"$gpu"'
GPU_INFO = f"chargeback_gpu_info{selectors.gpu(POOL, GPU)}"  # the selected GPUs


def per_gpu(expr: str) -> str:
    """Attach pool and index (from chargeback_gpu_info) to a per-GPU series and keep the selected GPUs."""
    return f"{expr} * on (uuid) group_left (pool, index) {GPU_INFO}"


GPU_LEGEND = "{{pool}} #{{index}} {{uuid}}"


def build(currency: str) -> Json:
    money = currency_unit(currency)
    lay = Layout()

    lay.row(1, "Pools")
    lay.add(
        stat(
            2,
            "GPUs",
            "Number of GPUs the exporters report in the selected pools (chargeback_gpu_info).",
            NONE,
            [target(f"count({POOL_GPUS})")],
            graph=False,
        ),
        4,
        4,
    )
    lay.add(
        stat(
            3,
            "Fleet cost (per hour)",
            f"What the selected pools cost per hour in {currency}, busy or idle: "
            "sum of pool:chargeback_gpu_hourly_cost:sum.",
            money,
            [target(f"sum(pool:chargeback_gpu_hourly_cost:sum{R})")],
        ),
        5,
        4,
    )
    lay.add(
        stat(
            4,
            "Idle cost (per hour)",
            "Part of that cost spent on idle GPUs: sum of pool:chargeback_idle_cost_per_hour:rate5m.",
            money,
            [target(f"sum(pool:chargeback_idle_cost_per_hour:rate5m{R})")],
        ),
        5,
        4,
    )
    lay.add(
        stat(
            5,
            "Idle share of the fleet",
            "Share of GPU time spent idle in the selected pools over the last 5 minutes, weighted by pool "
            "size: pool:chargeback_gpu_idle:ratio5m weighted by pool:chargeback_gpus:count. Orange above 50 %, "
            "red above 80 %.",
            PERCENT_UNIT,
            [
                target(
                    f"sum(pool:chargeback_gpu_idle:ratio5m{R} * on (pool) pool:chargeback_gpus:count{R})"
                    f" / sum(pool:chargeback_gpus:count{R})"
                )
            ],
            thresholds=IDLE_STEPS,
        ),
        5,
        4,
    )
    lay.add(
        stat(
            6,
            "NVML up",
            "1 (UP) when every GPU exporter's last NVML read succeeded (min of chargeback_nvml_up).",
            NONE,
            [target(f"min(chargeback_nvml_up{RAW})")],
            thresholds=steps(("red", None), ("green", 1.0)),
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
        5,
        4,
    )
    lay.add(
        timeseries(
            7,
            "Busy vs idle by pool",
            "Share of the pool's GPU time spent busy (pool:chargeback_gpu_busy:ratio5m) and idle "
            "(pool:chargeback_gpu_idle:ratio5m); a GPU counts as idle at or below "
            "gpu_exporter.idle_threshold_ratio utilisation.",
            PERCENT_UNIT,
            targets(
                (f"pool:chargeback_gpu_busy:ratio5m{R}", "{{pool}} busy"),
                (f"pool:chargeback_gpu_idle:ratio5m{R}", "{{pool}} idle"),
            ),
            max_value=1,
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            8,
            "Hourly cost and idle cost by pool",
            f"{currency} per hour each pool costs (pool:chargeback_gpu_hourly_cost:sum) and the part spent on "
            "idle GPUs (pool:chargeback_idle_cost_per_hour:rate5m).",
            money,
            targets(
                (f"pool:chargeback_gpu_hourly_cost:sum{R}", "{{pool}} cost"),
                (f"pool:chargeback_idle_cost_per_hour:rate5m{R}", "{{pool}} idle cost"),
            ),
            fill=0,
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            9,
            "Capacity used by pool",
            "Weighted tokens per second the proxy sent to the pool divided by its configured capacity "
            "(pool:chargeback_capacity_utilization:ratio5m): the token view of load, next to the NVML view.",
            PERCENT_UNIT,
            [target(f"pool:chargeback_capacity_utilization:ratio5m{R}", "{{pool}}")],
            fill=0,
        ),
        8,
        8,
    )

    lay.row(10, "GPUs")
    lay.add(
        timeseries(
            11,
            "GPU utilisation",
            "NVML utilisation of each GPU, 0–100 % (chargeback_gpu_utilization_ratio).",
            PERCENT_UNIT,
            [target(per_gpu(f"chargeback_gpu_utilization_ratio{RAW}"), GPU_LEGEND)],
            max_value=1,
            fill=0,
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            12,
            "Idle time per GPU",
            "Share of time each GPU spent idle: rate of chargeback_gpu_idle_seconds_total (seconds idle per "
            "second); the rest of the time it was busy (chargeback_gpu_busy_seconds_total).",
            PERCENT_UNIT,
            [target(per_gpu(f"rate(chargeback_gpu_idle_seconds_total{RAW}[$__rate_interval])"), GPU_LEGEND)],
            max_value=1,
            fill=0,
            thresholds=IDLE_STEPS,
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            13,
            "Memory used",
            "Framebuffer memory in use on each GPU (chargeback_gpu_memory_used_bytes); the dashed lines are "
            "each GPU's total (chargeback_gpu_memory_total_bytes).",
            BYTES,
            targets(
                (per_gpu(f"chargeback_gpu_memory_used_bytes{RAW}"), GPU_LEGEND + " used"),
                (per_gpu(f"chargeback_gpu_memory_total_bytes{RAW}"), GPU_LEGEND + " total"),
            ),
            fill=0,
            overrides=[
                {
                    "matcher": {"id": "byRegexp", "options": ".* total$"},
                    "properties": [{"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}}],
                }
            ],
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            14,
            "Power draw",
            "Power each GPU draws, in watts (chargeback_gpu_power_watts).",
            WATTS,
            [target(per_gpu(f"chargeback_gpu_power_watts{RAW}"), GPU_LEGEND)],
            fill=0,
        ),
        12,
        8,
    )
    lay.add(
        bargauge(
            15,
            "Energy used in the selected range",
            "Energy each GPU consumed over the selected time range: increase of "
            "chargeback_gpu_energy_joules_total over the range (1 kWh = 3.6 MJ).",
            JOULES,
            [
                target(
                    per_gpu(f"increase(chargeback_gpu_energy_joules_total{RAW}[$__range])"),
                    GPU_LEGEND,
                    instant=True,
                )
            ],
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            16,
            "Hourly cost per GPU",
            f"{currency} per hour each GPU costs, from its pool's pools.<pool>.gpu_hourly_cost "
            "(chargeback_gpu_hourly_cost).",
            money,
            [target(per_gpu(f"max by (uuid) (chargeback_gpu_hourly_cost{RAW})"), GPU_LEGEND)],
            fill=0,
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            17,
            "Idle cost per GPU (per hour)",
            f"{currency} per hour each GPU burns while idle: its hourly cost (chargeback_gpu_hourly_cost) times "
            "the share of time it was idle (rate of chargeback_gpu_idle_seconds_total).",
            money,
            [
                target(
                    per_gpu(
                        f"(max by (uuid) (chargeback_gpu_hourly_cost{RAW}) * on (uuid) "
                        f"max by (uuid) (rate(chargeback_gpu_idle_seconds_total{RAW}[$__rate_interval])))"
                    ),
                    GPU_LEGEND,
                )
            ],
            stacked=True,
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            18,
            "Temperature",
            "GPU core temperature (chargeback_gpu_temperature_celsius).",
            CELSIUS,
            [target(per_gpu(f"chargeback_gpu_temperature_celsius{RAW}"), GPU_LEGEND)],
            fill=0,
        ),
        12,
        8,
    )
    lay.add(
        table(
            19,
            "GPU inventory",
            "Every GPU the exporters see, with its index, model name, pool and driver (chargeback_gpu_info).",
            NONE,
            [target(f"{GPU_INFO}", instant=True, table=True)],
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
        12,
        8,
    )

    lay.row(20, "NVML health")
    lay.add(
        timeseries(
            21,
            "NVML up per exporter",
            "1 when the exporter's last read of the GPU library succeeded, 0 when NVML failed "
            "(chargeback_nvml_up); the exporter keeps serving and retries on every scrape.",
            NONE,
            [target(f"chargeback_nvml_up{RAW}", "{{instance}}")],
            draw_style="line",
            fill=0,
            max_value=1,
            thresholds=steps(("red", None), ("green", 1.0)),
        ),
        8,
        7,
    )
    lay.add(
        timeseries(
            22,
            "NVML errors per second",
            "GPU library errors per second by reason (rate of chargeback_nvml_errors_total); a flat 0 line "
            "per exporter when there are none.",
            "cps",
            [
                target(
                    f"sum by (instance, reason) (rate(chargeback_nvml_errors_total{RAW}[$__rate_interval]))"
                    f" or sum by (instance) (chargeback_nvml_up{RAW}) * 0",
                    "{{instance}} {{reason}}",
                )
            ],
            fill=0,
        ),
        8,
        7,
    )
    lay.add(
        timeseries(
            23,
            "Exporter read time",
            "Seconds each exporter spent reading the GPUs for the last scrape "
            "(chargeback_gpu_collect_duration_seconds).",
            SECONDS,
            [target(f"chargeback_gpu_collect_duration_seconds{RAW}", "{{instance}}")],
            fill=0,
        ),
        8,
        7,
    )

    return dashboard(
        "gpu_fleet",
        "Per pool and per GPU: utilisation, busy vs idle, memory, power, energy, hourly and idle cost, NVML "
        "health. Generated by dashboards/build.py from dashboards/gpu_fleet.py; do not edit in Grafana.",
        lay,
        variables=[
            *scope_variables(selectors.GPU_SELECTOR),
            query_variable("pool", "Pool", f"chargeback_gpu_info{RAW}", "pool", include_all=True, multi=True),
            query_variable("gpu", "GPU", POOL_GPUS, "uuid", include_all=True, multi=True),
        ],
        time_from="now-6h",
    )

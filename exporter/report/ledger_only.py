"""Statements from the ledger and the config alone: no Prometheus involved (``--pool-costs config``).

For sites that run the proxy and its ledger but no Prometheus (or must bill while it is down): the
billed quantities come from the ledger's daily rollup, and each pool's cost from the config
(GPUs × ``gpu_hourly_cost`` × hours in the period). That needs the config to price every pool (a GPU
count for each) and to know the pool of every model found in the ledger; anything missing is an
error naming it, never a guess. Idle seconds are unknown then (no GPU exporter), as in the
Prometheus path's config fallback.
"""

from __future__ import annotations

from typing import Any

from exporter.config import Config, ConfigError
from exporter.report.inputs import Inputs, _config_pool, build_usage, ledger_usage
from exporter.report.period import Period


def check_config_prices_pools(cfg: Config) -> None:
    unpriced = sorted(name for name, p in cfg.pools.items() if p.gpus <= 0)
    if unpriced:
        raise ConfigError(
            f"{cfg.path}: --pool-costs config needs a GPU count for every pool; "
            + ", ".join(f"pools.{n}.gpus" for n in unpriced)
            + " missing (set gpus, gpu_uuids or gpu_indexes)"
        )


def gather_ledger_only(cfg: Config, store: Any, period: Period) -> Inputs:
    check_config_prices_pools(cfg)
    raw = ledger_usage(store, period)
    unknown = sorted({model for (_, _, model) in raw if model not in cfg.models})
    if unknown:
        raise ConfigError(
            f"{cfg.path}: the ledger has requests for models not in the config ({', '.join(unknown)}); "
            "--pool-costs config needs each model's pool under models:"
        )
    notes = [
        "billed quantities taken from the ledger (requests by start time); "
        "pool costs from the config (GPUs × gpu_hourly_cost × hours), without Prometheus"
    ]
    usage = build_usage(cfg, raw, {}, {}, notes)
    pools = {name: _config_pool(cfg, name, period) for name in sorted(cfg.pools)}
    return Inputs(period=period, usage=usage, pools=pools, source="ledger", notes=notes, stats={"queries": 0})

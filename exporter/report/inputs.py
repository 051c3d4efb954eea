"""Everything the allocation methods need for one period, gathered from PromQL (or the ledger).

Per user × team × model: requests, prompt/completion/cached tokens, request seconds, weighted
tokens (prompt × w_prompt + completion × w_completion) and the model's GPU pool.
Per pool: cost C_p, GPU seconds present, busy and idle seconds, idle cost, capacity K_p.

Token weights and pool membership come from the config when it names the model (the config is
authoritative for billing); for models the config does not know, from the proxy's
``chargeback_model_*_token_weight`` / ``chargeback_model_info`` series, else weight 1 and pool
"unknown" (such usage cannot carry a pool cost and is flagged in the notes).

Pool cost: for each GPU, its average ``chargeback_gpu_hourly_cost`` over the period × the hours
it was present, where seconds present = exact Δ``chargeback_gpu_observed_seconds_total`` (wall
time the exporter saw the GPU). Not Δbusy + Δidle: busy seconds are ∫ utilisation dt and idle
seconds count only time at or below the idle threshold, so their sum falls short of wall time
whenever a GPU runs between the threshold and 100 %. Idle cost = hourly cost × Δidle seconds.
Exporters that predate the observed counter: see :func:`gpu_presence`. Pools without any GPU
exporter data fall back to the config: gpus × gpu_hourly_cost × hours in the period (idle cost
then unknown, shown as 0).
"""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from exporter import contract
from exporter.config import Config
from exporter.logs import get_logger
from exporter.report.period import Period
from exporter.report.promql import (
    BASELINE_WINDOW_SECONDS,
    DeltaStats,
    LabelKey,
    PromClient,
    exact_deltas,
    regex_matcher,
    sum_by,
)

log = get_logger(__name__)

UNASSIGNED = "unassigned"
UNKNOWN_POOL = "unknown"
# Samples are float64, and backends keep them to different precision (VictoriaMetrics stores about
# 15 significant digits): quantities from them are rounded to a millisecond and hourly prices to a
# millionth of the currency, so every PromQL backend yields the same statement.
SECONDS_QUANTUM = Decimal("0.001")
PRICE_QUANTUM = Decimal("0.000001")
HOUR = Decimal(3600)
# A pool's GPUs may fall this many seconds each short of the expected time before a note says so:
# the last scrape before the period's end, and a series born inside the period, each miss up to a
# scrape interval that no query can see (Prometheus's own staleness window is 5 minutes).
PRESENCE_TOLERANCE_SECONDS = Decimal(300)


@dataclass
class Usage:
    team: str  # the statement's team: a configured team or "unassigned"
    user: str
    model: str
    pool: str
    source_teams: tuple[str, ...] = ()  # team label values seen (differs from team when unassigned)
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    request_seconds: Decimal = Decimal(0)
    weighted_tokens: Decimal = Decimal(0)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.team, self.user, self.model)


@dataclass
class PoolInput:
    name: str
    cost: Decimal  # exact, unrounded
    cost_source: str  # "prometheus" | "config"
    gpus: int
    gpu_seconds: Decimal  # observed GPU-seconds (Σ over GPUs)
    busy_seconds: Decimal
    idle_seconds: Decimal
    idle_cost: Decimal  # 0 when unknown (config fallback)
    capacity_tokens_per_second: Decimal | None
    idle_known: bool = True

    @property
    def busy_cost(self) -> Decimal:
        return self.cost - self.idle_cost


@dataclass
class Inputs:
    period: Period
    usage: list[Usage]
    pools: dict[str, PoolInput]
    source: str  # "prometheus" | "ledger"
    notes: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)


def statement_team(cfg: Config, label: str) -> str:
    return label if label in cfg.teams else UNASSIGNED


@dataclass
class RawUsage:
    """Per (team label, user, model) quantities before weights and pools are applied."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    request_seconds: Decimal = Decimal(0)


def _as_int(value: Decimal, what: str, notes: list[str]) -> int:
    integral = value.to_integral_value()
    if integral != value:
        notes.append(f"{what}: non-integer count {value} rounded to {integral}")
    return int(integral)


def build_usage(
    cfg: Config,
    raw: dict[tuple[str, str, str], RawUsage],
    model_pools: dict[str, str],
    model_weights: dict[str, tuple[Decimal, Decimal]],
    notes: list[str],
) -> list[Usage]:
    """Apply team mapping, pools and token weights; merge lines that map to the same statement key."""
    merged: dict[tuple[str, str, str], Usage] = {}
    unknown_teams: set[str] = set()
    unknown_models: set[str] = set()
    for (team_label, user, model), r in sorted(raw.items()):
        team = statement_team(cfg, team_label)
        if team == UNASSIGNED:
            unknown_teams.add(team_label)
        m = cfg.models.get(model)
        if m is not None:
            pool, (wp, wc) = m.pool, (m.token_weights.prompt, m.token_weights.completion)
        else:
            unknown_models.add(model)
            pool = model_pools.get(model, UNKNOWN_POOL)
            wp, wc = model_weights.get(model, (Decimal(1), Decimal(1)))
        key = (team, user, model)
        u = merged.get(key)
        if u is None:
            u = merged[key] = Usage(team=team, user=user, model=model, pool=pool)
        u.source_teams = tuple(sorted({*u.source_teams, team_label}))
        u.requests += r.requests
        u.prompt_tokens += r.prompt_tokens
        u.completion_tokens += r.completion_tokens
        u.cached_tokens += r.cached_tokens
        u.request_seconds += r.request_seconds
        u.weighted_tokens += Decimal(r.prompt_tokens) * wp + Decimal(r.completion_tokens) * wc
    for t in sorted(unknown_teams):
        notes.append(
            f"team {t!r} is in the data but not in the config: its usage is billed to team {UNASSIGNED!r}"
        )
    for model in sorted(unknown_models):
        pool = model_pools.get(model, UNKNOWN_POOL)
        notes.append(
            f"model {model!r} is not in the config: pool {pool!r} and token weights taken from Prometheus"
            + (" (no pool known: its usage carries no pool cost)" if pool == UNKNOWN_POOL else "")
        )
    for u in merged.values():
        u.request_seconds = u.request_seconds.quantize(SECONDS_QUANTUM)
    return [merged[k] for k in sorted(merged)]


# --------------------------------------------------------------------------- Prometheus

PROXY_COUNTERS = {
    "requests": contract.REQUESTS_TOTAL,
    "prompt_tokens": contract.PROMPT_TOKENS_TOTAL,
    "completion_tokens": contract.COMPLETION_TOKENS_TOTAL,
    "cached_tokens": contract.CACHED_PROMPT_TOKENS_TOTAL,
    "request_seconds": contract.REQUEST_SECONDS_TOTAL,
}
# Per GPU (by uuid): the basis of the pool costs (see gather_pools).
GPU_COUNTERS = {
    "busy": contract.GPU_BUSY_SECONDS_TOTAL,
    "idle": contract.GPU_IDLE_SECONDS_TOTAL,
    "observed": contract.GPU_OBSERVED_SECONDS_TOTAL,
}
USAGE_LABELS = ("team", "user", "model")
# Counters without a user label (proxy.metrics_labels: team) give one line per team and model.
NO_USER_LABEL_NOTE = (
    "the proxy counters in Prometheus carry no user label (proxy.metrics_labels: team), so usage lines"
    " are per team and model, not per user; for per-user lines run the report with --source ledger"
)


def _gauge_by(
    client: PromClient, expr: str, at: int, label: str, value_label: str | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in client.vector(expr, at).items():
        d = dict(k)
        if label in d:
            out[d[label]] = d.get(value_label, "") if value_label else v
    return out


def _per_model(
    client: PromClient, period: Period, metric: str, value_label: str | None = None
) -> dict[str, Any]:
    """A proxy's per-model gauge, last seen in the period: its value per model, or the value of
    its label ``value_label`` (the pool of ``chargeback_model_info``)."""
    by = f"model, {value_label}" if value_label else "model"
    expr = f"max by ({by}) (last_over_time({client.selector(metric)}[{period.seconds}s] @ {period.end_ts}))"
    return _gauge_by(client, expr, period.end_ts, "model", value_label)


def _config_pool(cfg: Config, name: str, period: Period) -> PoolInput:
    p = cfg.pools[name]
    seconds = Decimal(period.seconds) * p.gpus
    return PoolInput(
        name=name,
        cost=p.hourly_cost * Decimal(period.seconds) / HOUR,
        cost_source="config",
        gpus=p.gpus,
        gpu_seconds=seconds,
        busy_seconds=Decimal(0),
        idle_seconds=Decimal(0),
        idle_cost=Decimal(0),
        capacity_tokens_per_second=p.capacity_tokens_per_second,
        idle_known=False,
    )


def _step_estimate(client: PromClient, sel: str, end: int, window: int) -> Decimal | None:
    """Median spacing (ms precision) of the raw samples of ``sel`` in the ``window`` seconds before
    ``end``: the GPU exporter's scrape interval, for pricing GPUs whose exporter predates
    ``chargeback_gpu_observed_seconds_total``."""
    gaps: list[Decimal] = []
    for samples in client.matrix(f"{sel}[{window}s] @ {end}", end).values():
        gaps += [Decimal(round((b - a) * 1000)) / 1000 for (a, _), (b, _) in itertools.pairwise(samples)]
    gaps.sort()
    return gaps[len(gaps) // 2] if gaps else None


def gpu_presence(
    client: PromClient,
    period: Period,
    notes: list[str],
    deltas: dict[str, dict[LabelKey, Decimal]],
) -> dict[str, Decimal]:
    """Seconds each GPU (by uuid) was present and read in the period: the basis of its cost.

    Exact: Δ``chargeback_gpu_observed_seconds_total``. Busy + idle seconds are no substitute (busy
    seconds are ∫ utilisation dt and idle seconds count only time at or below the idle threshold,
    so a GPU at 50 % all month has neither). For a GPU whose exporter predates the observed-seconds
    counter (no such series, or one that only appeared inside the period while the GPU was already
    exported before it: an exporter upgraded mid-period), presence is estimated as the number of
    ``chargeback_gpu_busy_seconds_total`` samples in (start, end] × the scrape interval (the median
    spacing of those samples in the period's last 3 hours), at most the period; a note names it.
    """
    start, end = period.start_ts, period.end_ts
    observed = sum_by(deltas["observed"], ("uuid",))
    busy = sum_by(deltas["busy"], ("uuid",))
    idle = sum_by(deltas["idle"], ("uuid",))
    uuids = sorted(u for (u,) in set(busy) | set(idle) | set(observed))
    if not uuids:
        return {}
    sel_obs, sel_busy = (
        client.selector(contract.GPU_OBSERVED_SECONDS_TOTAL),
        client.selector(contract.GPU_BUSY_SECONDS_TOTAL),
    )
    w = BASELINE_WINDOW_SECONDS
    obs_at_start = {
        d["uuid"]
        for d in map(dict, client.vector(f"last_over_time({sel_obs}[{w}s] @ {start})", end))
        if "uuid" in d
    }
    busy_at_start = {
        d["uuid"]
        for d in map(dict, client.vector(f"last_over_time({sel_busy}[{w}s] @ {start})", end))
        if "uuid" in d
    }
    out: dict[str, Decimal] = {}
    estimate: list[str] = []
    for uuid in uuids:
        if (uuid,) in observed and (uuid in obs_at_start or uuid not in busy_at_start):
            out[uuid] = observed[(uuid,)]
        else:
            estimate.append(uuid)
    if not estimate:
        return out
    # (start, end]: a window of P − 1 ms ending at end excludes the sample at start whether the
    # server's windows are closed (Prometheus 2) or left-open (Prometheus 3, VictoriaMetrics).
    sel = client.selector(contract.GPU_BUSY_SECONDS_TOTAL, regex_matcher("uuid", estimate))
    counts = sum_by(
        client.vector(f"count_over_time({sel}[{period.seconds * 1000 - 1}ms] @ {end})", end), ("uuid",)
    )
    step = _step_estimate(client, sel, end, min(3 * 3600, period.seconds))
    for uuid in estimate:
        lower = busy.get((uuid,), Decimal(0)) + idle.get((uuid,), Decimal(0))
        if step is None:
            out[uuid] = lower
            notes.append(
                f"GPU {uuid}: no {contract.GPU_OBSERVED_SECONDS_TOTAL} and no scrape interval measurable; "
                f"priced by busy + idle seconds ({lower / HOUR:.2f} h), a lower bound of its presence"
            )
            continue
        n = counts.get((uuid,), Decimal(0))
        out[uuid] = min(n * step, Decimal(period.seconds))
        why = (
            "no such series"
            if (uuid,) not in observed
            else "the series starts inside the period (exporter upgraded?)"
        )
        notes.append(
            f"GPU {uuid}: presence estimated from {n} samples × {step}s scrape interval = {out[uuid] / HOUR:.2f} h "
            f"({contract.GPU_OBSERVED_SECONDS_TOTAL}: {why})"
        )
    return out


def gather_pools(
    cfg: Config,
    client: PromClient,
    period: Period,
    notes: list[str],
    deltas: dict[str, dict[LabelKey, Decimal]],
) -> dict[str, PoolInput]:
    """Per pool: cost = Σ over its GPUs of average hourly cost × seconds present / 3600; idle cost
    the same with idle seconds; busy seconds summed. Pools without GPU data: from the config."""
    end = period.end_ts
    sel_cost = client.selector(contract.GPU_HOURLY_COST)
    hourly: dict[str, tuple[str, Decimal]] = {}
    for k, v in client.vector(f"avg_over_time({sel_cost}[{period.seconds}s] @ {end})", end).items():
        d = dict(k)
        if "uuid" in d:
            hourly[d["uuid"]] = (d.get("pool", ""), v)
    info_pool = _gauge_by(
        client,
        f"last_over_time({client.selector(contract.GPU_INFO)}[{period.seconds}s] @ {end})",
        end,
        "uuid",
        "pool",
    )
    busy = sum_by(deltas["busy"], ("uuid",))
    idle = sum_by(deltas["idle"], ("uuid",))
    present = gpu_presence(client, period, notes, deltas)
    per_pool: dict[str, dict[str, Decimal]] = {}
    gpus: dict[str, set[str]] = {}
    for uuid in sorted(present):
        pool, rate = hourly.get(uuid, (info_pool.get(uuid, ""), None))  # type: ignore[arg-type]
        if not pool:
            pool = cfg.gpu_exporter.pool_by_uuid.get(uuid) or cfg.gpu_exporter.default_pool or ""
        if not pool:
            notes.append(
                f"GPU {uuid}: no pool known (no chargeback_gpu_hourly_cost/chargeback_gpu_info pool label); left out"
            )
            continue
        if rate is None:
            if pool not in cfg.pools:
                notes.append(
                    f"GPU {uuid}: no hourly cost exported and pool {pool!r} is not in the config; left out"
                )
                continue
            rate = cfg.pools[pool].gpu_hourly_cost
            notes.append(f"GPU {uuid}: no chargeback_gpu_hourly_cost samples; config price {rate}/h used")
        rate = rate.quantize(PRICE_QUANTUM)
        b = busy.get((uuid,), Decimal(0)).quantize(SECONDS_QUANTUM)
        i = idle.get((uuid,), Decimal(0)).quantize(SECONDS_QUANTUM)
        seconds = present[uuid].quantize(SECONDS_QUANTUM)
        acc = per_pool.setdefault(
            pool,
            {
                "cost": Decimal(0),
                "idle_cost": Decimal(0),
                "present": Decimal(0),
                "busy": Decimal(0),
                "idle": Decimal(0),
            },
        )
        acc["cost"] += rate * seconds / HOUR
        acc["idle_cost"] += rate * i / HOUR
        acc["present"] += seconds
        acc["busy"] += b
        acc["idle"] += i
        gpus.setdefault(pool, set()).add(uuid)

    pools: dict[str, PoolInput] = {}
    for name in sorted(set(cfg.pools) | set(per_pool)):
        acc = per_pool.get(name)
        if acc is None:
            pools[name] = _config_pool(cfg, name, period)
            notes.append(
                f"pool {name!r}: no GPU exporter data in the period; cost from the config (gpus × gpu_hourly_cost × hours)"
            )
            continue
        conf = cfg.pools.get(name)
        pools[name] = PoolInput(
            name=name,
            cost=acc["cost"],
            cost_source="prometheus",
            gpus=len(gpus[name]),
            gpu_seconds=acc["present"],
            busy_seconds=acc["busy"],
            idle_seconds=acc["idle"],
            idle_cost=acc["idle_cost"],
            capacity_tokens_per_second=conf.capacity_tokens_per_second if conf else None,
        )
        n_gpus = conf.gpus if conf else len(gpus[name])
        expected = Decimal(period.seconds) * n_gpus
        if expected and acc["present"] < expected - PRESENCE_TOLERANCE_SECONDS * n_gpus:
            # An exporter that started inside the period (installed this month) is no gap: expect
            # GPU time only from the pool's first sample on.
            first = first_seen(client, period, sorted(gpus[name]))
            since = ""
            if first is not None and first > period.start_ts:
                expected = (period.end_ts - first) * n_gpus
                since = f" since the first sample at {iso_utc_ts(first)}"
            if acc["present"] < expected - PRESENCE_TOLERANCE_SECONDS * n_gpus:
                notes.append(
                    f"pool {name!r}: GPUs observed {acc['present'] / HOUR:.2f} GPU-hours of "
                    f"{expected / HOUR:.2f} expected{since} (exporter gaps or fewer GPUs than configured)"
                )
    return pools


def iso_utc_ts(ts: Decimal) -> str:
    return datetime.fromtimestamp(float(ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def first_seen(client: PromClient, period: Period, uuids: list[str]) -> Decimal | None:
    """The first second (unix time) by which any of these GPUs had a
    ``chargeback_gpu_busy_seconds_total`` sample in the period, or None if none has one.

    A bisection on "any sample in (start, t]?" (``count_over_time`` at ``t``): about 22 small
    queries for a month, run only for a pool that falls short, and the same on Prometheus and
    VictoriaMetrics (``timestamp()`` inside a subquery is not).
    """
    if not uuids:
        return None
    sel = client.selector(contract.GPU_BUSY_SECONDS_TOTAL, regex_matcher("uuid", uuids))
    start = period.start_ts

    def any_by(t: int) -> bool:
        return bool(client.vector(f"count(count_over_time({sel}[{t - start}s] @ {t}))", t))

    lo, hi = start, period.end_ts
    if not any_by(hi):
        return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if any_by(mid):
            hi = mid
        else:
            lo = mid
    return Decimal(hi)


def gather_prometheus(
    cfg: Config, client: PromClient, period: Period, lookback: int | None = None, workers: int = 4
) -> Inputs:
    """Query every input for ``period``; raises PromQLError on any failed query."""
    start, end = period.start_ts, period.end_ts
    notes: list[str] = []
    kwargs: dict[str, Any] = {} if lookback is None else {"lookback": lookback}
    # follow-up queries select series by a regex on a label every series has: with
    # proxy.metrics_labels: team there is no user label, and team always exists
    split = "team" if cfg.proxy.metrics_labels == "team" else "user"
    tasks = {name: (metric, split) for name, metric in PROXY_COUNTERS.items()}
    tasks.update({name: (metric, "uuid") for name, metric in GPU_COUNTERS.items()})
    dstats = {name: DeltaStats() for name in tasks}
    clients = {name: PromClient(client.url, client.timeout, client.extra) for name in tasks}

    def one(name: str) -> dict[LabelKey, Decimal]:
        metric, split = tasks[name]
        return exact_deltas(clients[name], metric, start, end, split, stats=dstats[name], **kwargs)

    # Independent counters in parallel: the server does the scanning; we mostly wait on HTTP.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {name: pool.submit(one, name) for name in tasks}
        deltas = {name: f.result() for name, f in futures.items()}

    raw: dict[tuple[str, str, str], RawUsage] = {}
    for name in PROXY_COUNTERS:
        for key, value in sum_by(deltas[name], USAGE_LABELS).items():
            r = raw.setdefault(key, RawUsage())  # type: ignore[arg-type]
            if name == "request_seconds":
                r.request_seconds += value
            else:
                setattr(r, name, getattr(r, name) + _as_int(value, f"{PROXY_COUNTERS[name]}{key}", notes))
    raw = {
        k: v
        for k, v in raw.items()
        if any((v.requests, v.prompt_tokens, v.completion_tokens, v.cached_tokens, v.request_seconds))
    }

    model_pools = _per_model(client, period, contract.MODEL_INFO, "pool")
    weights: dict[str, tuple[Decimal, Decimal]] = {}
    if any(k[2] not in cfg.models for k in raw):
        wp = _per_model(client, period, contract.MODEL_PROMPT_TOKEN_WEIGHT)
        wc = _per_model(client, period, contract.MODEL_COMPLETION_TOKEN_WEIGHT)
        weights = {m: (wp.get(m, Decimal(1)), wc.get(m, Decimal(1))) for m in set(wp) | set(wc)}
    usage = build_usage(cfg, raw, model_pools, weights, notes)
    if any(not u.user for u in usage):
        notes.append(NO_USER_LABEL_NOTE)
    pools = gather_pools(cfg, client, period, notes, deltas)
    for c in clients.values():
        client.stats.queries += c.stats.queries
        client.stats.seconds += c.stats.seconds
        client.stats.series += c.stats.series
    resets = sum(s.with_resets for s in dstats.values())
    stats = {
        "queries": client.stats.queries,
        "series": {name: s.series for name, s in sorted(dstats.items())},
        "series_with_resets": resets,
        "series_with_old_baseline": sum(s.old_baseline for s in dstats.values()),
        "series_raw_fetched": sum(s.raw_fetched for s in dstats.values()),
        "series_by_process_restarts": sum(s.by_restarts for s in dstats.values()),
        "series_scanned_for_resets": sum(s.scanned for s in dstats.values()),
        "series_stopped_early": sum(s.stopped for s in dstats.values()),
    }
    return Inputs(period=period, usage=usage, pools=pools, source="prometheus", notes=notes, stats=stats)


# --------------------------------------------------------------------------- ledger


def ledger_usage(store: Any, period: Period) -> dict[tuple[str, str, str], RawUsage]:
    """Per (team, user, model) totals for requests that started inside the period, from the ledger's
    daily rollup (raw rows only for partial UTC days at the period's edges)."""
    from exporter.ledger.rollup import totals

    out: dict[tuple[str, str, str], RawUsage] = {}
    for key, t in totals(store, period.start, period.end).items():
        out[key] = RawUsage(
            requests=t.requests,
            prompt_tokens=t.prompt_tokens,
            completion_tokens=t.completion_tokens,
            cached_tokens=t.cached_tokens,
            request_seconds=(Decimal(t.duration_us) / 1_000_000).quantize(SECONDS_QUANTUM),
        )
    return out


def gather_ledger(
    cfg: Config, client: PromClient, store: Any, period: Period, lookback: int | None = None
) -> Inputs:
    """Billed quantities from the ledger (complete across proxy restarts); pool costs from PromQL."""
    notes: list[str] = [
        "billed quantities taken from the ledger (requests by start time); pool costs from Prometheus"
    ]
    raw = ledger_usage(store, period)
    kwargs: dict[str, Any] = {} if lookback is None else {"lookback": lookback}
    deltas = {
        name: exact_deltas(client, metric, period.start_ts, period.end_ts, "uuid", **kwargs)
        for name, metric in GPU_COUNTERS.items()
    }
    model_pools = _per_model(client, period, contract.MODEL_INFO, "pool")
    usage = build_usage(cfg, raw, model_pools, {}, notes)
    pools = gather_pools(cfg, client, period, notes, deltas)
    return Inputs(
        period=period,
        usage=usage,
        pools=pools,
        source="ledger",
        notes=notes,
        stats={"queries": client.stats.queries},
    )

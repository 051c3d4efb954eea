"""The proxy's Prometheus metrics, on a private registry per app (served on the metrics listener only).

Per-user usage counters live in plain dicts updated on the event loop (no locks, no per-user
pre-initialisation: a user appears on the first request) and are exposed by a custom collector.
Config-derived gauges and ledger health are collected at scrape time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Histogram, ProcessCollector
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter import contract
from exporter.config import Config

DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

# index of each value in a usage cell
_PROMPT, _COMPLETION, _CACHED, _SECONDS, _ESTIMATED = range(5)


class UsageCollector(Collector):
    """Counters labelled by user, team and model (and code for requests)."""

    def __init__(self) -> None:
        self.usage: dict[tuple[str, str, str], list[float]] = {}
        self.requests: dict[tuple[str, str, str, str], int] = {}
        self.rejected: dict[str, int] = {}

    def record(
        self,
        user: str,
        team: str,
        model: str,
        code: int,
        prompt: int,
        completion: int,
        cached: int,
        seconds: float,
        estimated: bool,
    ) -> None:
        key = (user, team, model, str(code))
        self.requests[key] = self.requests.get(key, 0) + 1
        cell = self.usage.get(key[:3])
        if cell is None:
            cell = self.usage[key[:3]] = [0, 0, 0, 0.0, 0]
        cell[_PROMPT] += prompt
        cell[_COMPLETION] += completion
        cell[_CACHED] += cached
        cell[_SECONDS] += seconds
        if estimated:
            cell[_ESTIMATED] += 1

    def reject(self, code: int) -> None:
        key = str(code)
        self.rejected[key] = self.rejected.get(key, 0) + 1

    def collect(self) -> Iterable[Metric]:
        # dict.copy() is atomic under the GIL: the scrape may run in a worker thread.
        requests = self.requests.copy()
        usage = self.usage.copy()
        rejected = self.rejected.copy()
        fam = CounterMetricFamily(
            contract.REQUESTS_TOTAL, "Requests by user, team, model and HTTP status code returned to the client.",
            labels=("user", "team", "model", "code"),
        )
        for labels, value in requests.items():
            fam.add_metric(labels, value)
        yield fam
        specs = (
            (contract.PROMPT_TOKENS_TOTAL, "Prompt tokens reported by the upstream (or estimated).", _PROMPT),
            (contract.COMPLETION_TOKENS_TOTAL, "Completion tokens reported by the upstream (or estimated).", _COMPLETION),
            (contract.CACHED_PROMPT_TOKENS_TOTAL, "Prompt tokens served from the upstream's prefix cache.", _CACHED),
            (contract.REQUEST_SECONDS_TOTAL, "Summed wall time of requests, for time-based allocation.", _SECONDS),
            (contract.USAGE_ESTIMATED_TOTAL, "Requests whose usage the proxy had to estimate.", _ESTIMATED),
        )
        for name, doc, index in specs:
            fam = CounterMetricFamily(name, doc, labels=("user", "team", "model"))
            for labels, cell in usage.items():
                fam.add_metric(labels, cell[index])
            yield fam
        fam = CounterMetricFamily(
            contract.REJECTED_REQUESTS_TOTAL,
            "Requests refused before a user and a configured model were known (401, 400, 404, 413, 503).",
            labels=("code",),
        )
        for code, value in rejected.items():
            fam.add_metric((code,), value)
        yield fam


class ConfigCollector(Collector):
    """Gauges that describe the configuration (identical on every replica: aggregate with max)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def collect(self) -> Iterable[Metric]:
        cfg = self.cfg
        info = GaugeMetricFamily(contract.TEAM_INFO, "Team metadata (always 1).", labels=("team", "business_unit", "cost_center"))
        budget = GaugeMetricFamily(contract.TEAM_BUDGET, f"Monthly team budget in {cfg.currency}.", labels=("team",))
        for team in cfg.teams.values():
            info.add_metric((team.name, team.business_unit, team.cost_center), 1)
            if team.budget is not None:
                budget.add_metric((team.name,), float(team.budget))
        yield info
        yield budget
        model_info = GaugeMetricFamily(contract.MODEL_INFO, "Model to GPU pool (always 1).", labels=("model", "pool"))
        pw = GaugeMetricFamily(contract.MODEL_PROMPT_TOKEN_WEIGHT, "Cost weight of one prompt token.", labels=("model",))
        cw = GaugeMetricFamily(
            contract.MODEL_COMPLETION_TOKEN_WEIGHT, "Cost weight of one completion token.", labels=("model",)
        )
        for model in cfg.models.values():
            model_info.add_metric((model.name, model.pool), 1)
            pw.add_metric((model.name,), float(model.token_weights.prompt))
            cw.add_metric((model.name,), float(model.token_weights.completion))
        yield model_info
        yield pw
        yield cw
        cap = GaugeMetricFamily(
            contract.POOL_CAPACITY_TOKENS_PER_SECOND, "Configured weighted-token capacity of a GPU pool.", labels=("pool",)
        )
        for pool in cfg.pools.values():
            if pool.capacity_tokens_per_second is not None:
                cap.add_metric((pool.name,), float(pool.capacity_tokens_per_second))
        yield cap
        method = GaugeMetricFamily(
            contract.REALTIME_METHOD_INFO, "Allocation method used for real-time spend (always 1).", labels=("method",)
        )
        method.add_metric((cfg.report.realtime_method,), 1)
        yield method


class LedgerCollector(Collector):
    """Ledger writer health, read from LedgerWriter.stats() at scrape time."""

    def __init__(self, stats: Callable[[], Any]) -> None:
        self.stats = stats

    def collect(self) -> Iterable[Metric]:
        s = self.stats()
        yield CounterMetricFamily(contract.LEDGER_ROWS_WRITTEN_TOTAL, "Rows written to the ledger database.", value=s.rows_written)
        yield CounterMetricFamily(contract.LEDGER_WRITE_ERRORS_TOTAL, "Failed ledger write attempts.", value=s.write_errors)
        yield GaugeMetricFamily(contract.LEDGER_QUEUE_ROWS, "Rows waiting in memory for the ledger.", value=s.queue_rows)
        yield GaugeMetricFamily(contract.LEDGER_SPOOLED_ROWS, "Rows waiting in the on-disk spool.", value=s.spooled_rows)


class ProxyMetrics:
    def __init__(self, cfg: Config, ledger_stats: Callable[[], Any] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.usage = UsageCollector()
        self.registry.register(self.usage)
        self.registry.register(ConfigCollector(cfg))
        if ledger_stats is not None:
            self.registry.register(LedgerCollector(ledger_stats))
        ProcessCollector(registry=self.registry)
        self.duration = Histogram(
            contract.REQUEST_DURATION_SECONDS, "Time from request to the last byte sent to the client.",
            ("model",), buckets=DURATION_BUCKETS, registry=self.registry,
        )
        self.ttft = Histogram(
            contract.TIME_TO_FIRST_TOKEN_SECONDS, "Streaming requests: time until the first event reached the client.",
            ("model",), buckets=TTFT_BUCKETS, registry=self.registry,
        )
        self.inflight = Gauge(
            contract.INFLIGHT_REQUESTS, "Requests being forwarded right now.", ("model",), registry=self.registry
        )
        # Bounded (configured models only), so pre-initialising per model is safe and helps rate().
        self._duration = {m: self.duration.labels(m) for m in cfg.models}
        self._ttft = {m: self.ttft.labels(m) for m in cfg.models}
        self._inflight = {m: self.inflight.labels(m) for m in cfg.models}

    def inflight_inc(self, model: str) -> None:
        self._inflight[model].inc()

    def inflight_dec(self, model: str) -> None:
        self._inflight[model].dec()

    def observe(self, model: str, duration: float, ttft: float | None) -> None:
        self._duration[model].observe(duration)
        if ttft is not None:
            self._ttft[model].observe(ttft)

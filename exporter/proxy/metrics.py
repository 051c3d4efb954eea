"""The proxy's Prometheus metrics, on a private registry per app (served on the metrics listener only).

Per-user usage counters live in plain dicts updated on the event loop (no locks, no per-user
pre-initialisation: a user appears on the first request) and are exposed by a custom collector.
Config-derived gauges and ledger health are collected at scrape time.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from exporter import contract
from exporter.billing_calendar import BillingMonthCollector
from exporter.config import Config

if TYPE_CHECKING:
    from exporter.ledger.writer import LedgerStats

DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

# index of each value in a usage cell; the last item is the pre-rendered label string
_REQUESTS, _PROMPT, _COMPLETION, _CACHED, _SECONDS, _ESTIMATED, _LABELS = range(7)

_USAGE_SPECS = tuple(
    (contract.spec(name), index)
    for name, index in (
        (contract.REQUESTS_TOTAL, _REQUESTS),
        (contract.PROMPT_TOKENS_TOTAL, _PROMPT),
        (contract.COMPLETION_TOKENS_TOTAL, _COMPLETION),
        (contract.CACHED_PROMPT_TOKENS_TOTAL, _CACHED),
        (contract.REQUEST_SECONDS_TOTAL, _SECONDS),
        (contract.USAGE_ESTIMATED_TOTAL, _ESTIMATED),
    )
)
_BY_CODE = contract.spec(contract.REQUESTS_BY_CODE_TOTAL)
_REJECTED = contract.spec(contract.REJECTED_REQUESTS_TOTAL)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: str) -> str:
    return ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())


class UsageCollector(Collector):
    """Usage counters labelled by user, team and model, and requests by team, model and status code.

    ``per_user=False`` (``proxy.metrics_labels: team``) leaves the ``user`` label out of every
    series, so their number is bounded by teams × models whatever the number of users. Prometheus
    treats a missing label and an empty one alike: ``sum by (user, team, model)`` works on both
    shapes and ``user!=""`` selects per-user series only. Status codes never carry the user label,
    so a new code adds teams × models series at most, not users × models.

    ``render()`` writes the text exposition format directly, with label strings rendered once per
    series: with 5,000 users × 4 models that is several times faster than going through generic
    metric families. ``collect()`` offers the same data client_python's way.
    """

    def __init__(self, per_user: bool = True) -> None:
        self.per_user = per_user
        self.usage: dict[tuple[str, str, str], list[Any]] = {}
        self.by_code: dict[tuple[str, str, str], list[Any]] = {}  # (team, model, code): [count, labels]
        self.rejected: dict[str, int] = {}

    @property
    def usage_labels(self) -> tuple[str, ...]:
        return ("user", "team", "model") if self.per_user else ("team", "model")

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
        key = (team, model, str(code))
        req = self.by_code.get(key)
        if req is None:
            req = self.by_code[key] = [0, _labels(team=team, model=model, code=key[2])]
        req[0] += 1
        if not self.per_user:
            user = ""
        cell = self.usage.get((user, team, model))
        if cell is None:
            labels = (
                _labels(user=user, team=team, model=model)
                if self.per_user
                else _labels(team=team, model=model)
            )
            cell = self.usage[(user, team, model)] = [0, 0, 0, 0, 0.0, 0, labels]
        cell[_REQUESTS] += 1
        cell[_PROMPT] += prompt
        cell[_COMPLETION] += completion
        cell[_CACHED] += cached
        cell[_SECONDS] += seconds
        if estimated:
            cell[_ESTIMATED] += 1

    def reject(self, code: int) -> None:
        key = str(code)
        self.rejected[key] = self.rejected.get(key, 0) + 1

    def render(self) -> str:
        # dict.copy() is atomic under the GIL: the scrape runs in a worker thread.
        by_code = list(self.by_code.copy().values())
        usage = list(self.usage.copy().values())
        rejected = self.rejected.copy()
        out: list[str] = []
        for spec, i in _USAGE_SPECS:
            name = spec.name
            out.append(f"# HELP {name} {spec.help}\n# TYPE {name} counter\n")
            if i == _SECONDS:
                out += [f"{name}{{{c[_LABELS]}}} {float(c[i])!r}\n" for c in usage]
            else:
                out += [f"{name}{{{c[_LABELS]}}} {c[i]}\n" for c in usage]
        name = _BY_CODE.name
        out.append(f"# HELP {name} {_BY_CODE.help}\n# TYPE {name} counter\n")
        out += [f"{name}{{{r[1]}}} {r[0]}\n" for r in by_code]
        name = _REJECTED.name
        out.append(f"# HELP {name} {_REJECTED.help}\n# TYPE {name} counter\n")
        out += [f'{name}{{code="{code}"}} {n}\n' for code, n in rejected.items()]
        return "".join(out)

    def collect(self) -> Iterable[Metric]:
        usage = self.usage.copy()
        labels = self.usage_labels
        for spec, index in _USAGE_SPECS:
            fam = spec.family(labels)
            for key, cell in usage.items():
                fam.add_metric(key if self.per_user else key[1:], cell[index])
            yield fam
        fam = _BY_CODE.family()
        for key, (value, _) in self.by_code.copy().items():
            fam.add_metric(key, value)
        yield fam
        fam = _REJECTED.family()
        for code, value in self.rejected.copy().items():
            fam.add_metric((code,), value)
        yield fam


class ConfigCollector(Collector):
    """Gauges that describe the configuration (identical on every replica: aggregate with max)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def collect(self) -> Iterable[Metric]:
        cfg = self.cfg
        info = contract.spec(contract.TEAM_INFO).family()
        budget = contract.spec(contract.TEAM_BUDGET).family(currency=cfg.currency)
        for team in cfg.teams.values():
            info.add_metric((team.name, team.business_unit, team.cost_center), 1)
            if team.budget is not None:
                budget.add_metric((team.name,), float(team.budget))
        yield info
        yield budget
        model_info = contract.spec(contract.MODEL_INFO).family()
        pw = contract.spec(contract.MODEL_PROMPT_TOKEN_WEIGHT).family()
        cw = contract.spec(contract.MODEL_COMPLETION_TOKEN_WEIGHT).family()
        for model in cfg.models.values():
            model_info.add_metric((model.name, model.pool), 1)
            pw.add_metric((model.name,), float(model.token_weights.prompt))
            cw.add_metric((model.name,), float(model.token_weights.completion))
        yield model_info
        yield pw
        yield cw
        cap = contract.spec(contract.POOL_CAPACITY_TOKENS_PER_SECOND).family()
        for pool in cfg.pools.values():
            if pool.capacity_tokens_per_second is not None:
                cap.add_metric((pool.name,), float(pool.capacity_tokens_per_second))
        yield cap
        method = contract.spec(contract.REALTIME_METHOD_INFO).family()
        method.add_metric((cfg.report.realtime_method,), 1)
        yield method


# ledger health metric → its LedgerStats field
_LEDGER_STATS = (
    (contract.LEDGER_ROWS_WRITTEN_TOTAL, "rows_written"),
    (contract.LEDGER_WRITE_ERRORS_TOTAL, "write_errors"),
    (contract.LEDGER_QUEUE_ROWS, "queue_rows"),
    (contract.LEDGER_SPOOLED_ROWS, "spooled_rows"),
    (contract.LEDGER_JOURNAL_ROWS, "journal_rows"),
    (contract.LEDGER_JOURNAL_BYTES, "journal_bytes"),
    (contract.LEDGER_UNJOURNALED_ROWS, "rows_unjournaled"),
    (contract.LEDGER_DEAD_LETTER_ROWS_TOTAL, "rows_rejected"),
    (contract.LEDGER_ROWS_LOST_TOTAL, "rows_lost"),
)


class LedgerCollector(Collector):
    """Ledger writer health, read from LedgerWriter.stats() at scrape time."""

    def __init__(self, stats: Callable[[], LedgerStats]) -> None:
        self.stats = stats

    def collect(self) -> Iterable[Metric]:
        s = self.stats()
        for name, field in _LEDGER_STATS:
            yield contract.spec(name).family(value=getattr(s, field))


class LoopHistogram:
    """A histogram updated only on the event loop: a bisect and two additions per observation, no lock
    (prometheus_client's Histogram takes a lock and walks every bucket in Python). Read at scrape time
    from a worker thread: list copies are atomic under the GIL, and a scrape racing an observation can
    at worst miss that one observation."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bucket (le = less than or equal)
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def snapshot(self) -> tuple[list[tuple[str, float]], float]:
        counts, total = list(self.counts), self.sum
        buckets, acc = [], 0
        for bound, n in zip((*self.bounds, float("inf")), counts, strict=True):
            acc += n
            buckets.append((floatToGoString(bound), acc))
        return buckets, total


class LatencyCollector(Collector):
    """Per-model request duration and time-to-first-token histograms and in-flight gauges."""

    def __init__(self, models: Iterable[str]) -> None:
        # Bounded (configured models only), so pre-creating every model's series is safe and helps rate().
        self.duration = {m: LoopHistogram(DURATION_BUCKETS) for m in models}
        self.ttft = {m: LoopHistogram(TTFT_BUCKETS) for m in self.duration}
        self.inflight = dict.fromkeys(self.duration, 0)

    def collect(self) -> Iterable[Metric]:
        for name, hists in (
            (contract.REQUEST_DURATION_SECONDS, self.duration),
            (contract.TIME_TO_FIRST_TOKEN_SECONDS, self.ttft),
        ):
            fam = contract.spec(name).family()
            for model, hist in list(hists.items()):
                buckets, total = hist.snapshot()
                fam.add_metric((model,), buckets, total)
            yield fam
        gauge = contract.spec(contract.INFLIGHT_REQUESTS).family()
        for model, n in list(self.inflight.items()):
            gauge.add_metric((model,), n)
        yield gauge


class ProxyMetrics:
    def __init__(self, cfg: Config, ledger_stats: Callable[[], LedgerStats] | None = None) -> None:
        # ``registry`` holds everything but the per-user counters, which render() appends itself;
        # ``full_registry`` has both (for anything that wants client_python's collect()).
        self.registry = CollectorRegistry(auto_describe=False)
        self.usage = UsageCollector(per_user=cfg.proxy.metrics_labels == "user")
        self.full_registry = CollectorRegistry(auto_describe=False)
        self.full_registry.register(self.usage)
        self.registry.register(ConfigCollector(cfg))
        self.registry.register(BillingMonthCollector(cfg.tz))
        if ledger_stats is not None:
            self.registry.register(LedgerCollector(ledger_stats))
        ProcessCollector(registry=self.registry)
        self.latency = LatencyCollector(cfg.models)
        self.registry.register(self.latency)
        self._duration = self.latency.duration
        self._ttft = self.latency.ttft
        self._inflight = self.latency.inflight

    def render(self) -> bytes:
        """The whole exposition (text format 0.0.4). Slow with many users: call it off the event loop."""
        return self.usage.render().encode() + generate_latest(self.registry)

    def inflight_inc(self, model: str) -> None:
        self._inflight[model] += 1

    def inflight_dec(self, model: str) -> None:
        self._inflight[model] -= 1

    def observe(self, model: str, duration: float, ttft: float | None) -> None:
        self._duration[model].observe(duration)
        if ttft is not None:
            self._ttft[model].observe(ttft)

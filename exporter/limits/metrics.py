"""The limits' Prometheus metrics (collected at scrape time from plain attributes)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter import contract
from exporter.config import Config
from exporter.limits.settings import BUDGET, MONTHLY_TOKENS
from exporter.limits.store import Counters
from exporter.pricing import from_nano


class LimitMetrics(Collector):
    def __init__(self, cfg: Config) -> None:
        assert cfg.limits is not None
        self.cfg = cfg
        self.rejections: dict[tuple[str, str, str], int] = {}
        self.store_up = 1
        self.store_errors = 0
        self.unchecked = 0
        self.team_used: dict[str, tuple[int, int]] = {}  # team → (spend nano, tokens milli)
        self._month = ""
        # proxy.metrics_labels: team keeps user names out of the metrics (the ledger has them)
        self.user_label = cfg.proxy.metrics_labels != "team"

    def reject(self, team: str, user: str, limit: str) -> None:
        key = (team, user if self.user_label else "", limit)
        self.rejections[key] = self.rejections.get(key, 0) + 1

    def team_counters(self, team: str, c: Counters, month: str) -> None:
        if month != self._month:  # a new billing month: forget the last month's figures
            self.team_used = {}
            self._month = month
        self.team_used[team] = (c.spend_nano, c.tokens_milli)

    def collect(self) -> Iterable[Metric]:
        limits = self.cfg.limits
        assert limits is not None
        rej = CounterMetricFamily(
            contract.LIMIT_REJECTIONS_TOTAL,
            "Requests refused with 429 by a limit (budget, monthly_tokens, requests_per_minute, tokens_per_minute).",
            labels=("team", "user", "limit"),
        )
        for labels, n in self.rejections.copy().items():
            rej.add_metric(labels, n)
        yield rej
        configured = GaugeMetricFamily(
            contract.TEAM_LIMIT,
            "A team's configured limit (currency, weighted tokens, requests or tokens per minute).",
            labels=("team", "limit", "enforce"),
        )
        budget = GaugeMetricFamily(
            contract.LIMIT_REMAINING_BUDGET,
            f"What is left of the team's monthly budget at the limit price, in {self.cfg.currency}.",
            labels=("team",),
        )
        quota = GaugeMetricFamily(
            contract.LIMIT_REMAINING_WEIGHTED_TOKENS,
            "What is left of the team's monthly weighted-token quota.",
            labels=("team",),
        )
        used = self.team_used.copy()
        for team, ls in limits.teams.items():
            for kind, lim in ls.limits.items():
                configured.add_metric((team, kind, lim.enforce), float(lim.value))
            spend, tokens = used.get(team, (0, 0))
            if BUDGET in ls.limits:
                budget.add_metric((team,), float(ls.limits[BUDGET].value - from_nano(spend)))
            if MONTHLY_TOKENS in ls.limits:
                quota.add_metric((team,), float(ls.limits[MONTHLY_TOKENS].value) - tokens / 1000)
        yield configured
        yield budget
        yield quota
        yield GaugeMetricFamily(
            contract.LIMIT_STORE_UP,
            "1 when the last call to the limit store (Redis or in-process) succeeded.",
            value=self.store_up,
        )
        yield CounterMetricFamily(
            contract.LIMIT_STORE_ERRORS_TOTAL, "Failed calls to the limit store.", value=self.store_errors
        )
        yield CounterMetricFamily(
            contract.LIMIT_UNCHECKED_REQUESTS_TOTAL,
            "Requests let through unchecked because the limit store was unreachable (fail-open).",
            value=self.unchecked,
        )

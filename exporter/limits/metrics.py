"""The limits' Prometheus metrics (collected at scrape time from plain attributes)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.metrics_core import Metric
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
        rej = contract.spec(contract.LIMIT_REJECTIONS_TOTAL).family()
        for labels, n in self.rejections.copy().items():
            rej.add_metric(labels, n)
        yield rej
        configured = contract.spec(contract.TEAM_LIMIT).family()
        budget = contract.spec(contract.LIMIT_REMAINING_BUDGET).family(currency=self.cfg.currency)
        quota = contract.spec(contract.LIMIT_REMAINING_WEIGHTED_TOKENS).family()
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
        for name, value in (
            (contract.LIMIT_STORE_UP, self.store_up),
            (contract.LIMIT_STORE_ERRORS_TOTAL, self.store_errors),
            (contract.LIMIT_UNCHECKED_REQUESTS_TOTAL, self.unchecked),
        ):
            yield contract.spec(name).family(value=value)

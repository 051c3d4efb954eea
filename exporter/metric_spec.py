"""One exported metric, defined once: name, type, labels, HELP text, unit and what the docs say.

The specs themselves are in exporter/contract.py (and, for per-GPU readings, exporter/gpu/fields.py,
which the contract takes in). Collectors build their metric families from a spec, so the HELP text
and the label set seen on /metrics are the ones docs/metrics.md is generated from.

Standard library only at import time: rules/generate.py reads the contract with nothing but PyYAML.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["counter", "gauge", "histogram", "info"]
KINDS: tuple[Kind, ...] = ("counter", "gauge", "histogram", "info")

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


@dataclass(frozen=True)
class MetricSpec:
    """``kind`` "info" is a gauge that is always 1 and whose labels are the information.

    ``help`` may hold ``{placeholders}`` filled at collection time (``family(currency="EUR")``);
    ``doc`` is the docs' "meaning" column where it says more than the HELP text; ``section`` names
    the table of docs/metrics.md the metric is listed in.
    """

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    unit: str = "–"
    doc: str = ""
    section: str = ""

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"{self.name!r}: not a Prometheus metric name")
        if self.kind not in KINDS:
            raise ValueError(f"{self.name}: kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.kind == "counter" and not self.name.endswith("_total"):
            raise ValueError(f"{self.name}: a counter's name ends in _total")
        if self.kind == "info" and not self.name.endswith("_info"):
            raise ValueError(f"{self.name}: an info metric's name ends in _info")

    def __str__(self) -> str:
        return self.name

    def help_text(self, **values: str) -> str:
        return self.help.format(**values) if values else self.help

    def family(
        self, labels: Sequence[str] | None = None, value: float | None = None, **help_values: str
    ) -> Any:  # a Counter-, Gauge- or HistogramMetricFamily, by kind
        """An empty metric family of this spec (or, with ``value``, one unlabelled sample).

        ``labels`` narrows the label set to a subset of the spec's, in the spec's order (the usage
        counters drop ``user`` with ``proxy.metrics_labels: team``).
        """
        from prometheus_client.metrics_core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        names = self.labels if labels is None else tuple(labels)
        if labels is not None and [n for n in self.labels if n in names] != list(names):
            raise ValueError(f"{self.name}: labels {names} are not a subset of {self.labels} in order")
        doc = self.help_text(**help_values)
        if value is not None:
            if names:
                raise ValueError(f"{self.name}: a single value has no labels")
            cls = CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily
            return cls(self.name, doc, value=value)
        if self.kind == "counter":
            return CounterMetricFamily(self.name, doc, labels=names)
        if self.kind == "histogram":
            return HistogramMetricFamily(self.name, doc, labels=names)
        return GaugeMetricFamily(self.name, doc, labels=names)

    def doc_row(self) -> str:
        """This metric's row in the tables of docs/metrics.md."""
        kind = "gauge (=1)" if self.kind == "info" else self.kind
        labels = ", ".join(self.labels) or "–"
        meaning = self.doc
        if not meaning:  # the HELP text as a table cell: "Failed calls." → "failed calls"
            meaning = self.help.rstrip(".").replace("{currency}", "the configured currency")
            if meaning[1:2].islower():
                meaning = meaning[0].lower() + meaning[1:]
        return f"| `{self.name}` | {kind} | {labels} | {self.unit} | {meaning} |"

"""Prometheus versus the ledger, per user × model, for one period.

The two sources count the same requests in different ways, so small drifts have known causes:

- the counters live in the proxy's memory: a restart loses whatever was counted after the last
  scrape, and a scrape gap at a period boundary moves usage into the neighbouring period;
- the ledger is written in batches: rows still in a proxy's journal (database down) are not there
  yet, and rows that failed to write are counted by ``chargeback_ledger_write_errors_total``;
- the ledger dates a request by its start, the counters by the scrape after it completed, so a
  long request across the boundary can land in different months.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from exporter.report.inputs import Inputs, RawUsage

FIELDS = ("requests", "prompt_tokens", "completion_tokens", "cached_tokens")

EXPLAIN = {
    "prometheus_lower": (
        "Prometheus counted less than the ledger: most likely a proxy restart between two scrapes "
        "(what it counted after its last scrape is lost from the counters) or a scrape gap at the "
        "period boundary. The ledger has every request; bill from it with --source ledger."
    ),
    "ledger_lower": (
        "The ledger has fewer requests than Prometheus: rows may still wait in a proxy's journal "
        "(chargeback_ledger_journal_rows; written when the database takes them), sit in the dead-letter "
        "file (chargeback_ledger_dead_letter_rows_total) or be lost (chargeback_ledger_rows_lost_total); "
        "a request running across the period boundary is "
        "dated by its start in the ledger and by its completion in the counters."
    ),
    "only_ledger": "No Prometheus series for this user and model: the proxy replica was never scraped in the period.",
    "only_prometheus": "No ledger rows for this user and model: the proxy did not write them (check its ledger settings).",
}


@dataclass
class Drift:
    user: str
    model: str
    prometheus: dict[str, int]
    ledger: dict[str, int]
    cause: str  # key of EXPLAIN, "" when equal

    @property
    def differences(self) -> dict[str, int]:
        return {f: self.prometheus[f] - self.ledger[f] for f in FIELDS}


@dataclass
class Reconciliation:
    period: str
    compared: int
    drifts: list[Drift]
    seconds_prometheus: Decimal
    seconds_ledger: Decimal

    @property
    def ok(self) -> bool:
        return not self.drifts


def team_line(team: str) -> str:
    """The "user" of a comparison line when the counters have no user label (metrics_labels: team)."""
    return f"(all users of team {team})"


def _by_user_model_inputs(inputs: Inputs, per_user: bool) -> dict[tuple[str, str], dict[str, int]]:
    out: dict[tuple[str, str], dict[str, int]] = {}
    for u in inputs.usage:
        d = out.setdefault((u.user if per_user else team_line(u.team), u.model), dict.fromkeys(FIELDS, 0))
        d["requests"] += u.requests
        d["prompt_tokens"] += u.prompt_tokens
        d["completion_tokens"] += u.completion_tokens
        d["cached_tokens"] += u.cached_tokens
    return out


def _by_user_model_raw(
    raw: dict[tuple[str, str, str], RawUsage], team_of: Callable[[str], str] | None
) -> dict[tuple[str, str], dict[str, int]]:
    out: dict[tuple[str, str], dict[str, int]] = {}
    for (team, user, model), r in raw.items():
        who = user if team_of is None else team_line(team_of(team))
        d = out.setdefault((who, model), dict.fromkeys(FIELDS, 0))
        for f in FIELDS:
            d[f] += getattr(r, f)
    return out


def reconcile(
    inputs: Inputs,
    ledger: dict[tuple[str, str, str], RawUsage],
    team_of: Callable[[str], str] | None = None,
) -> Reconciliation:
    """Compare per user × model; with ``team_of`` (the counters carry no user label:
    ``proxy.metrics_labels: team``) per team × model instead, the ledger's team labels mapped to
    statement teams by ``team_of``."""
    prom = _by_user_model_inputs(inputs, per_user=team_of is None)
    led = _by_user_model_raw(ledger, team_of)
    drifts = []
    zero = dict.fromkeys(FIELDS, 0)
    for key in sorted(set(prom) | set(led)):
        p, lg = prom.get(key), led.get(key)
        if p == lg:
            continue
        if p is None:
            cause = "only_ledger"
        elif lg is None:
            cause = "only_prometheus"
        elif p["requests"] < lg["requests"] or (
            p["requests"] == lg["requests"] and sum(p.values()) < sum(lg.values())
        ):
            cause = "prometheus_lower"
        else:
            cause = "ledger_lower"
        drifts.append(Drift(key[0], key[1], p or zero, lg or zero, cause))
    return Reconciliation(
        period=inputs.period.label,
        compared=len(set(prom) | set(led)),
        drifts=drifts,
        seconds_prometheus=sum((u.request_seconds for u in inputs.usage), Decimal(0)),
        seconds_ledger=sum((r.request_seconds for r in ledger.values()), Decimal(0)),
    )


def render_reconcile_md(rec: Reconciliation) -> str:
    out = [f"# Reconciliation {rec.period}: Prometheus vs ledger", ""]
    out.append(f"{rec.compared} user × model pairs compared, {len(rec.drifts)} differ.")
    out.append(
        f"Request seconds: Prometheus {rec.seconds_prometheus:.3f}, ledger {rec.seconds_ledger:.3f} (timed differently; not compared)."
    )
    if rec.drifts:
        out += [
            "",
            "| user | model | field | prometheus | ledger | difference |",
            "|---|---|---|---:|---:|---:|",
        ]
        for d in rec.drifts:
            for f in FIELDS:
                if d.prometheus[f] != d.ledger[f]:
                    out.append(
                        f"| {d.user} | {d.model} | {f} | {d.prometheus[f]} | {d.ledger[f]} | {d.differences[f]:+d} |"
                    )
        out += ["", "Likely causes:", ""]
        for cause in sorted({d.cause for d in rec.drifts}):
            who = ", ".join(f"{d.user}/{d.model}" for d in rec.drifts if d.cause == cause)
            out.append(f"- {who}: {EXPLAIN[cause]}")
    return "\n".join(out) + "\n"


def render_reconcile_json(rec: Reconciliation) -> str:
    body = {
        "period": rec.period,
        "compared": rec.compared,
        "request_seconds": {
            "prometheus": f"{rec.seconds_prometheus:.3f}",
            "ledger": f"{rec.seconds_ledger:.3f}",
        },
        "drifts": [
            {
                "user": d.user,
                "model": d.model,
                "prometheus": d.prometheus,
                "ledger": d.ledger,
                "difference": d.differences,
                "cause": d.cause,
                "explanation": EXPLAIN[d.cause],
            }
            for d in rec.drifts
        ],
    }
    return json.dumps(body, sort_keys=True, indent=2) + "\n"


def render_reconcile_csv(rec: Reconciliation) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["period", "user", "model", "field", "prometheus", "ledger", "difference", "cause"])
    for d in rec.drifts:
        for f in FIELDS:
            if d.prometheus[f] != d.ledger[f]:
                w.writerow(
                    [rec.period, d.user, d.model, f, d.prometheus[f], d.ledger[f], d.differences[f], d.cause]
                )
    return buf.getvalue()

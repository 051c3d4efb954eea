"""Evaluate a recorded series' rule in a real Prometheus as an instant query at any time: its
expression with every recorded series it reads replaced by that series' own expression. Lets tests
run the real rules over backfilled data (Prometheus does not evaluate rules for the past) or at
an instant of their choosing."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from exporter.stack import rule_files


def recording_rules() -> dict[str, str]:
    out = {}
    for path in rule_files():
        for group in yaml.safe_load(Path(path).read_text())["groups"]:
            for r in group["rules"]:
                if "record" in r:
                    out[r["record"]] = r["expr"]
    return out


def inline(record: str, rules: dict[str, str] | None = None) -> str:
    rules = rules or recording_rules()
    expr = rules[record]
    for _ in range(20):
        new = re.sub(
            r"(?<![\w:])([a-z_]+:[a-z_]+:[a-z0-9_]+)(?![\w:{])",
            lambda m: f"({rules[m.group(1)]})" if m.group(1) in rules else m.group(1),
            expr,
        )
        if new == expr:
            return expr
        expr = new
    raise AssertionError("recording rules nest deeper than 20 levels")

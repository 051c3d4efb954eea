"""Write the metric tables of docs/metrics.md from the contract (exporter/contract.py).

The prose around them is written by hand; each table sits between two markers that name its section
of the contract::

    <!-- metrics:proxy-usage: generated from exporter/contract.py, do not edit -->
    | metric | type | ... |
    <!-- end metrics:proxy-usage -->

    python -m exporter.metrics_doc            # rewrite the tables (make generate)
    python -m exporter.metrics_doc --check    # exit 1 when docs/metrics.md is out of date
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from exporter import contract

DEFAULT_DOC = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"
HEADER = "| metric | type | labels | unit | meaning |\n|---|---|---|---|---|\n"
_BLOCK = re.compile(
    r"(?P<open><!-- metrics:(?P<section>[\w-]+)[^>]*-->\n)(?P<body>.*?)(?P<close><!-- end metrics:(?P=section) -->)",
    re.DOTALL,
)


def table(section: str) -> str:
    rows = [s.doc_row() for s in contract.METRICS.values() if s.section == section]
    return HEADER + "".join(row + "\n" for row in rows)


def render(text: str) -> str:
    """``text`` with every marked table rewritten; every section of the contract must have one."""
    seen: list[str] = []

    def replace(m: re.Match[str]) -> str:
        section = m.group("section")
        if section not in contract.SECTIONS:
            raise ValueError(f"docs/metrics.md: unknown metrics section {section!r}")
        seen.append(section)
        return m.group("open") + table(section) + m.group("close")

    out = _BLOCK.sub(replace, text)
    missing = [s for s in contract.SECTIONS if s not in seen]
    if missing:
        raise ValueError(f"docs/metrics.md: no table for the contract's sections {missing}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--doc", type=Path, default=DEFAULT_DOC, help="the file to rewrite (default: %(default)s)"
    )
    ap.add_argument("--check", action="store_true", help="do not write; exit 1 if the file is out of date")
    args = ap.parse_args(argv)
    current = args.doc.read_text(encoding="utf-8")
    text = render(current)
    if args.check:
        if text != current:
            print(f"{args.doc} is out of date: run python -m exporter.metrics_doc", file=sys.stderr)
            return 1
        return 0
    if text != current:
        args.doc.write_text(text, encoding="utf-8")
        print(f"wrote {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

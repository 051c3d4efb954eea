"""Run every benchmark under bench/ and write the figures to docs/performance.md.

Each bench/bench_<area>.py exposes ``run(quick: bool) -> str`` returning a Markdown section whose
figures are ratios or absolute numbers measured against a baseline in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import platform
import re
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
# a section between these markers was recorded once and is carried over by every run
RECORDED = re.compile(r"<!-- recorded:begin (\S+).*?-->.*?<!-- recorded:end \1 -->", re.S)
ORDER = ["proxy", "stream", "floor", "ledger", "gpu", "report", "scale", "series", "limits"]


def load(name: str):  # type: ignore[no-untyped-def]
    path = BENCH_DIR / f"bench_{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(BENCH_DIR.parent / "docs" / "performance.md"))
    parser.add_argument("--quick", action="store_true", help="smaller runs (for a smoke test)")
    parser.add_argument("--only", nargs="*", choices=ORDER, help="run only these benchmarks")
    args = parser.parse_args()
    names = [n for n in ORDER if (BENCH_DIR / f"bench_{n}.py").exists() and (not args.only or n in args.only)]
    sections: list[str] = []
    failed = []
    for name in names:
        started = time.monotonic()
        print(f"== bench {name} ...", flush=True)
        try:
            sections.append(load(name).run(args.quick).strip())
        except Exception:
            failed.append(name)
            sections.append(f"## {name}\n\nFAILED:\n\n```\n{traceback.format_exc()}```")
        print(f"== bench {name}: {time.monotonic() - started:.1f}s", flush=True)
    cpu = "unknown"
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )

    header = (
        "# Performance\n\n"
        "Measured by `make bench` (bench/run_all.py). Every figure is compared with a baseline measured in the\n"
        "same run on the same machine; absolute numbers depend on the machine.\n\n"
        f"- Run: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}{' (quick mode)' if args.quick else ''}\n"
        f"- Machine: {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, {platform.system()} {platform.release()}\n"
    )
    text = header + "\n" + "\n\n".join(sections) + "\n"
    with contextlib.suppress(OSError):
        previous = Path(args.out).read_text()
        # one-off comparisons (before/after a change, standalone scripts) are not rerun here: keep them
        for match in RECORDED.finditer(previous):
            text += "\n" + match.group(0) + "\n"
        # the LiteLLM comparison is written by `make bench-peers` only: keep the last one
        kept = load("peers").extract_section(previous)
        if kept:
            text += "\n" + kept + "\n"
    Path(args.out).write_text(text)
    print(f"wrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

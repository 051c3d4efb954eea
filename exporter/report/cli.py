"""``chargeback report`` and ``chargeback compare``.

Exit status: 0 done; 2 bad config, period or method parameters; 3 Prometheus (or the ledger)
failed — nothing was written or sent; 4 some (or all) emails could not be delivered.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from exporter.cliutil import add_config_flag, add_log_flag, config_from_args, setup_logging
from exporter.config import Config, ConfigError
from exporter.logs import get_logger
from exporter.report.inputs import (
    NO_USER_LABEL_NOTE,
    Inputs,
    gather_ledger,
    gather_prometheus,
    ledger_usage,
    statement_team,
)
from exporter.report.method_registry import method_names
from exporter.report.methods import CENTRAL, MethodError, allocate
from exporter.report.output import FORMATS, parse_formats, statement_dir, write_statement
from exporter.report.period import Period, PeriodError, parse_period, previous_period
from exporter.report.promql import PromClient, PromQLError
from exporter.report.statement import Previous, Statement, build_statement, previous_figures

log = get_logger(__name__)

EXIT_CONFIG = 2
EXIT_SOURCE = 3
EXIT_EMAIL = 4


class SourceError(RuntimeError):
    """Prometheus or the ledger could not deliver the inputs."""


def parse_duration(text: str) -> int:
    m = re.fullmatch(r"(\d+)([smhdw])", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"expected a duration like 62d, 12h or 900s, got {text!r}")
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]


def parse_instant(text: str) -> datetime:
    """An aware instant for ``--now``; a naive one would silently depend on the machine's zone."""
    try:
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO 8601 date-time such as 2026-12-01T00:00:00Z, got {text!r}"
        ) from None
    if dt.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no UTC offset: add Z or +HH:MM")
    return dt.astimezone(UTC)


def parse_date(text: str) -> date:
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date YYYY-MM-DD, got {text!r}") from None


def _common(p: argparse.ArgumentParser) -> None:
    add_config_flag(p)
    add_log_flag(p)
    p.add_argument(
        "--period", help="YYYY-MM, last-month (default) or month-to-date, in the configured time zone"
    )
    p.add_argument(
        "--from",
        dest="start",
        metavar="DATE",
        help="start of an explicit period (YYYY-MM-DD or ISO date-time)",
    )
    p.add_argument("--to", dest="end", metavar="DATE", help="end (exclusive) of an explicit period")
    p.add_argument(
        "--now",
        type=parse_instant,
        metavar="TIME",
        help="the instant that last-month and month-to-date are relative to, as an ISO 8601 date-time"
        " with a UTC offset (default: the current time); reruns a scheduled report exactly",
    )
    p.add_argument(
        "--source",
        choices=("prometheus", "ledger"),
        default="prometheus",
        help="where billed quantities come from (pool costs always come from Prometheus or the config)",
    )
    p.add_argument(
        "--pool-costs",
        dest="pool_costs",
        choices=("prometheus", "config"),
        default="prometheus",
        help="config: price pools from the config alone and never contact Prometheus "
        "(needs --source ledger; every pool needs its GPU count)",
    )
    p.add_argument(
        "--prometheus.url",
        dest="prometheus_url",
        metavar="URL",
        help="override prometheus.url from the config",
    )
    p.add_argument(
        "--ledger.url", dest="ledger_url", metavar="URL", help="override ledger.url from the config"
    )
    p.add_argument(
        "--lookback",
        type=parse_duration,
        default=None,
        metavar="DURATION",
        help="how far before the period start to look for a counter's last sample (default 62d)",
    )


def register(subparsers: Any) -> None:
    rp = subparsers.add_parser(
        "report",
        help="write chargeback statements for a period (and email them)",
        description="Write chargeback statements for a billing period.",
    )
    _common(rp)
    rp.add_argument("--method", choices=method_names(), help="allocation method (default: report.method)")
    rp.add_argument(
        "--format", default="csv,json,html,md", help=f"comma-separated: {', '.join(FORMATS)} (default: all)"
    )
    rp.add_argument("--out", metavar="DIR", help="output directory (default: report.output_dir)")
    rp.add_argument(
        "--issue-date",
        dest="issue_date",
        type=parse_date,
        metavar="YYYY-MM-DD",
        help="the date printed on the statements (default: the day of --now, or today, in the billing zone)",
    )
    rp.add_argument(
        "--email", action="store_true", help="email each team its statement and finance the summary"
    )
    rp.add_argument(
        "--dry-run", action="store_true", help="print what would be emailed instead of sending it"
    )
    rp.add_argument(
        "--reconcile", action="store_true", help="also compare Prometheus with the ledger per user × model"
    )
    rp.set_defaults(func=cmd_report)

    cp = subparsers.add_parser(
        "compare",
        help="what every method would charge each team, side by side",
        description="Compare the six allocation methods for a period, per team.",
    )
    _common(cp)
    cp.add_argument(
        "--format", choices=("md", "csv", "json"), default="md", help="output format (default: md)"
    )
    cp.add_argument("--out", metavar="FILE", help="write the comparison to FILE instead of standard output")
    cp.set_defaults(func=cmd_compare)


def _fail(code: int, message: str) -> int:
    print(f"chargeback: {message}", file=sys.stderr)
    return code


def _client(cfg: Config, args: argparse.Namespace) -> PromClient:
    url = (args.prometheus_url or cfg.prometheus.url).rstrip("/")
    return PromClient(url, cfg.prometheus.timeout_seconds, cfg.prometheus.selector)


def _open_ledger(cfg: Config, args: argparse.Namespace) -> Any:
    from exporter.ledger.store import StoreError, open_store, redact_url
    from exporter.ledger.url import LedgerUrlError, parse_ledger_url

    url = args.ledger_url or cfg.ledger.url
    try:
        parsed = parse_ledger_url(url)
    except LedgerUrlError:
        parsed = None  # open_store names the problem
    if parsed and parsed.backend == "sqlite" and not parsed.memory and not Path(parsed.path).exists():
        raise SourceError(f"ledger {url}: no such database file")
    try:
        return open_store(url)
    except StoreError as exc:
        raise SourceError(f"ledger {redact_url(url)}: {exc}") from None


def gather(cfg: Config, args: argparse.Namespace, period: Period) -> Inputs:
    if getattr(args, "pool_costs", "prometheus") == "config":
        from exporter.report.ledger_only import gather_ledger_only

        if args.source != "ledger":
            raise ConfigError("--pool-costs config needs --source ledger (quantities from the ledger)")
        if getattr(args, "reconcile", False):
            raise ConfigError("--reconcile compares with Prometheus; it cannot go with --pool-costs config")
        store = _open_ledger(cfg, args)
        try:
            return gather_ledger_only(cfg, store, period)
        finally:
            store.close()
    client = _client(cfg, args)
    try:
        if args.source == "ledger":
            store = _open_ledger(cfg, args)
            try:
                return gather_ledger(cfg, client, store, period, args.lookback)
            finally:
                store.close()
        return gather_prometheus(cfg, client, period, args.lookback)
    except PromQLError as exc:
        raise SourceError(str(exc)) from None


def _setup(args: argparse.Namespace) -> tuple[Config, Period]:
    setup_logging(args.log_level)
    cfg = config_from_args(args)
    try:
        period = parse_period(args.period, cfg.timezone, now=args.now, start=args.start, end=args.end)
    except PeriodError as exc:
        raise SystemExit(_fail(EXIT_CONFIG, str(exc))) from None
    return cfg, period


def _previous(cfg: Config, args: argparse.Namespace, period: Period, method: str) -> Previous | None:
    """The period before, queried the same way (source, pool costs, method), for "this month
    against last month". None when it has no data at all (no usage and no GPU exporter data: the
    chargeback stack did not run yet) or its method cannot run (e.g. parameters for a new team)."""
    prev = previous_period(period)
    inputs = gather(cfg, args, prev)
    if not inputs.usage and all(p.cost_source == "config" for p in inputs.pools.values()):
        return None
    try:
        return previous_figures(build_statement(cfg, inputs, allocate(inputs, cfg, method)))
    except MethodError as exc:
        log.warning("previous period %s: %s; no comparison", prev.title, exc)
        return None


def _summary_line(st: Statement) -> str:
    teams = ", ".join(f"{t.team} {st.money(t.total)}" for t in st.teams)
    return (
        f"{st.period.title} {st.method}: pool cost {st.money(st.total_pool_cost)} {st.currency}, "
        f"recovered {st.money(st.recovered)}, central IT {st.money(st.unrecovered)} ({teams})"
    )


def cmd_report(args: argparse.Namespace) -> int:
    started = time.monotonic()
    cfg, period = _setup(args)
    try:
        formats = parse_formats(args.format)
    except ValueError as exc:
        return _fail(EXIT_CONFIG, str(exc))
    email = args.email or args.dry_run
    if email:  # emails carry the HTML and CSV statements; they are on disk before anything is sent
        formats = tuple(dict.fromkeys((*formats, "html", "csv")))
    issue_date = args.issue_date or (args.now or datetime.now(UTC)).astimezone(ZoneInfo(cfg.timezone)).date()
    try:
        inputs = gather(cfg, args, period)
        alloc = allocate(inputs, cfg, args.method)
        previous = _previous(cfg, args, period, alloc.method)
        st = build_statement(cfg, inputs, alloc, issue_date=issue_date, previous=previous)
        if previous is None:
            st.notes.append(
                f"no figures for the previous period ({previous_period(period).title}) to compare with"
            )
    except SourceError as exc:
        return _fail(EXIT_SOURCE, f"{exc}\nno statement written, nothing sent")
    except (MethodError, ConfigError) as exc:
        return _fail(EXIT_CONFIG, f"config error: {exc}")

    if NO_USER_LABEL_NOTE in inputs.notes:  # said up front, not only among the notes
        print(f"chargeback: warning: {NO_USER_LABEL_NOTE}", file=sys.stderr)
    out = Path(args.out or cfg.report.output_dir)
    target, written = write_statement(st, out, formats)
    print(_summary_line(st))
    print(f"wrote {len(written)} files to {target} in {time.monotonic() - started:.2f}s")
    for note in st.notes:
        print(f"note: {note}")

    if args.reconcile:
        code = _reconcile(cfg, args, inputs, period, target)
        if code:
            return code

    if email:
        return _email(cfg, st, args.dry_run)
    return 0


def _reconcile(cfg: Config, args: argparse.Namespace, inputs: Inputs, period: Period, target: Path) -> int:
    from exporter.report.reconcile import (
        reconcile,
        render_reconcile_csv,
        render_reconcile_json,
        render_reconcile_md,
    )

    try:
        prom_inputs = inputs
        if args.source == "ledger":  # compare against Prometheus then
            prom_inputs = gather_prometheus(cfg, _client(cfg, args), period, args.lookback)
        store = _open_ledger(cfg, args)
        try:
            ledger = ledger_usage(store, period)
        finally:
            store.close()
    except (PromQLError, SourceError) as exc:
        return _fail(EXIT_SOURCE, str(exc))
    team_mode = cfg.proxy.metrics_labels == "team"
    rec = reconcile(prom_inputs, ledger, (lambda t: statement_team(cfg, t)) if team_mode else None)
    for name, content in (
        ("reconcile.md", render_reconcile_md(rec)),
        ("reconcile.json", render_reconcile_json(rec)),
        ("reconcile.csv", render_reconcile_csv(rec)),
    ):
        (target / name).write_text(content, encoding="utf-8")
    print(render_reconcile_md(rec), end="")
    return 0


def _email(cfg: Config, st: Statement, dry_run: bool) -> int:
    from exporter.report.email import build_messages, describe, send_messages

    messages, notes = build_messages(st)
    for note in notes:
        print(f"note: {note}")
    if dry_run:
        print(f"dry run: {len(messages)} emails would be sent through {cfg.smtp.host}:{cfg.smtp.port}\n")
        print(describe(messages), end="")
        return 0
    delivered, failures = send_messages(messages, cfg.smtp)
    print(
        f"emailed {len(delivered)} recipients in {len(messages)} messages through {cfg.smtp.host}:{cfg.smtp.port}"
    )
    if failures:
        for f in failures:
            print(f"chargeback: email to {f.recipient} ({f.message}) failed: {f.error}", file=sys.stderr)
        print(f"chargeback: {email_outcome(len(delivered), len(failures))}", file=sys.stderr)
        return EXIT_EMAIL
    return 0


def email_outcome(delivered: int, failed: int) -> str:
    """What to say when some recipients failed: never that others were delivered when none was."""
    total = delivered + failed
    if delivered == 0:
        return f"no email was delivered: all {total} recipient{'s' if total != 1 else ''} failed"
    return (
        f"{failed} of {total} recipients failed; "
        f"the other {delivered} {'was' if delivered == 1 else 'were'} delivered"
    )


# --------------------------------------------------------------------------- compare


def compare(cfg: Config, inputs: Inputs) -> tuple[list[str], dict[str, dict[str, str]], dict[str, str]]:
    """(methods, {team: {method: total}}, {method: reason it could not run})."""
    table: dict[str, dict[str, str]] = {}
    skipped: dict[str, str] = {}
    for method in method_names():
        try:
            st = build_statement(cfg, inputs, allocate(inputs, cfg, method))
        except MethodError as exc:
            skipped[method] = str(exc)
            continue
        for t in [*st.teams, st.central]:
            table.setdefault(t.team, {})[method] = st.money(t.total)
        table.setdefault("total pool cost", {})[method] = st.money(st.total_pool_cost)
    return list(method_names()), table, skipped


def _team_order(table: dict[str, dict[str, str]]) -> list[str]:
    special = [CENTRAL, "total pool cost"]
    return sorted(t for t in table if t not in special) + [t for t in special if t in table]


def render_compare(
    fmt: str,
    period: Period,
    currency: str,
    methods: list[str],
    table: dict[str, dict[str, str]],
    skipped: dict[str, str],
) -> str:
    teams = _team_order(table)
    if fmt == "json":
        return (
            json.dumps(
                {"period": period.label, "currency": currency, "teams": table, "skipped": skipped},
                sort_keys=True,
                indent=2,
            )
            + "\n"
        )
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["period", "currency", "team", *methods])
        for t in teams:
            w.writerow([period.label, currency, t, *(table[t].get(m, "") for m in methods)])
        return buf.getvalue()
    out = [
        f"# Method comparison {period.title} ({currency})",
        "",
        "| team | " + " | ".join(methods) + " |",
        "|---|" + "---:|" * len(methods),
    ]
    for t in teams:
        out.append(f"| {t} | " + " | ".join(table[t].get(m, "n/a") for m in methods) + " |")
    if skipped:
        out += ["", *[f"- {m}: n/a — {reason}" for m, reason in sorted(skipped.items())]]
    return "\n".join(out) + "\n"


def cmd_compare(args: argparse.Namespace) -> int:
    cfg, period = _setup(args)
    try:
        inputs = gather(cfg, args, period)
    except SourceError as exc:
        return _fail(EXIT_SOURCE, str(exc))
    except ConfigError as exc:
        return _fail(EXIT_CONFIG, f"config error: {exc}")
    methods, table, skipped = compare(cfg, inputs)
    text = render_compare(args.format, period, cfg.currency, methods, table, skipped)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"wrote {args.out}")
    else:
        sys.stdout.write(text)
    return 0


__all__ = ["cmd_compare", "cmd_report", "register", "statement_dir"]

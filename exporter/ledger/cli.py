"""``chargeback keys ...`` and ``chargeback ledger ...``: API key lifecycle and ledger queries.

The ledger URL comes from the config's ``ledger.url``; ``--ledger.url`` overrides it (and then the
config file may be absent, in which case users and teams are not checked against it).
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import sys
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, TextIO, TypeAlias
from zoneinfo import ZoneInfo

from exporter.cliutil import add_config_flag, add_log_flag, config_from_args
from exporter.config import EMAIL_PATTERN, Config
from exporter.ledger.keys import KeyRecord
from exporter.ledger.store import (
    SUMMARY_COLUMNS,
    LedgerStore,
    QueryError,
    ReadOnlyError,
    StoreError,
    open_store,
)

SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def register(subparsers: SubParsers) -> tuple[SubParsers, SubParsers]:
    """``keys`` and ``ledger`` with their basic actions; returns both action lists so that
    ``commands`` can add the bulk ones from ``scale_cli`` (which imports this module)."""
    keys = subparsers.add_parser("keys", help="create, list and revoke personal API keys")
    ksub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)

    p = ksub.add_parser("create", help="create a key for a user and print its token (shown once)")
    _common(p)
    p.add_argument("--user", required=True, metavar="EMAIL", help="the person the key belongs to")
    p.add_argument("--team", metavar="TEAM", help="their team (default: the user's team in the config)")
    p.add_argument("--token-only", action="store_true", help="print only the token (for scripts)")
    p.add_argument(
        "--expires",
        metavar="DURATION|DATE",
        help="the key stops working after this long (90d, 12h, 2w) or at this UTC date/time",
    )
    p.set_defaults(func=cmd_keys_create)

    p = ksub.add_parser("rotate", help="a new token for a key's holder; the old one works for --overlap more")
    _common(p)
    p.add_argument("key", metavar="KEY_ID", help="the key to replace (key_...)")
    p.add_argument(
        "--overlap",
        default="24h",
        metavar="DURATION",
        help="how long the old token stays valid (default 24h; 0 stops it now)",
    )
    p.add_argument("--token-only", action="store_true", help="print only the new token (for scripts)")
    p.set_defaults(func=cmd_keys_rotate)

    p = ksub.add_parser("list", help="list keys (never shows tokens)")
    _common(p)
    p.add_argument("--user", metavar="EMAIL", help="only this user's keys")
    p.add_argument("--active", action="store_true", help="only keys that are not revoked")
    p.add_argument("--csv", action="store_true", help="CSV instead of a table")
    p.set_defaults(func=cmd_keys_list)

    p = ksub.add_parser("revoke", help="revoke a key (by id or prefix) or all keys of a user")
    _common(p)
    p.add_argument("key", nargs="?", metavar="KEY_ID", help="key id (key_...) or token prefix (cbk_...)")
    p.add_argument("--user", metavar="EMAIL", help="revoke every active key of this user")
    p.set_defaults(func=cmd_keys_revoke)

    ledger = subparsers.add_parser("ledger", help="query the request ledger")
    lsub = ledger.add_subparsers(dest="ledger_command", metavar="ACTION", required=True)

    p = lsub.add_parser("query", help="run one read-only SQL statement and print the result")
    _common(p)
    p.add_argument(
        "sql",
        metavar="SQL",
        help="e.g. 'SELECT user_email, SUM(total_tokens) FROM public.http_analytics GROUP BY 1'",
    )
    p.add_argument("--csv", action="store_true", help="CSV instead of a table")
    p.add_argument(
        "--allow-superuser",
        action="store_true",
        help="run even when the PostgreSQL role can run programs or read server files (a superuser); "
        "the statement then runs as pg_read_all_data",
    )
    p.set_defaults(func=cmd_ledger_query)

    p = lsub.add_parser("summary", help="requests and tokens per user, team and model")
    _common(p)
    p.add_argument(
        "--since", metavar="ISO", help="start (inclusive), e.g. 2024-05-01 or 2024-05-01T08:00:00Z"
    )
    p.add_argument("--until", metavar="ISO", help="end (exclusive)")
    p.add_argument("--csv", action="store_true", help="CSV instead of a table")
    p.set_defaults(func=cmd_ledger_summary)
    return ksub, lsub


def _common(p: argparse.ArgumentParser) -> None:
    add_config_flag(p)
    add_log_flag(p)
    p.add_argument(
        "--ledger.url",
        dest="ledger_url",
        metavar="URL",
        help="ledger database (default: ledger.url from the config)",
    )


def _fail(message: str, code: int = 1) -> int:
    print(f"chargeback: {message}", file=sys.stderr)
    return code


def _config(args: argparse.Namespace) -> Config | None:
    """The config, or None when --ledger.url is given and the config file does not exist."""
    if args.ledger_url and not os.path.exists(args.config_file):
        return None
    return config_from_args(args)


def _open(args: argparse.Namespace, cfg: Config | None, existing: bool = False) -> LedgerStore:
    url = args.ledger_url or (cfg.ledger.url if cfg else None)
    if not url:
        raise StoreError("no ledger URL: set ledger.url in the config or pass --ledger.url")
    if existing and url.startswith("sqlite:"):
        # A command that only reads or changes what is there must not create an empty ledger at a
        # mistyped path and then report that it found nothing.
        from exporter.ledger.sqlite_store import existing_file, parse_sqlite_url

        path, memory, _ = parse_sqlite_url(url)
        if not memory:
            existing_file(path, "; check ledger.url or --ledger.url")
    return open_store(url)


def _store_error(exc: StoreError) -> str:
    """What a ledger command fails with: a statement the database rejected says so; a refused
    (not read-only) statement or a store problem speaks for itself."""
    if isinstance(exc, QueryError) and not isinstance(exc, ReadOnlyError):
        return f"query failed: {exc}"
    return str(exc)


def _run(args: argparse.Namespace, body: Any, existing: bool = False) -> int:
    try:
        cfg = _config(args)
        store = _open(args, cfg, existing)
    except StoreError as exc:
        return _fail(str(exc))
    try:
        return int(body(cfg, store))
    except StoreError as exc:
        return _fail(_store_error(exc))
    except Exception as exc:  # database driver errors: say what failed, no traceback
        return _fail(f"ledger database error: {type(exc).__name__}: {exc}")
    finally:
        store.close()


# --------------------------------------------------------------------------- keys


def check_user_team(cfg: Config | None, user: str, team: str | None) -> str:
    """The team to use for a new key; raises ValueError with a clear message when the config disagrees."""
    if not EMAIL_PATTERN.match(user):
        raise ValueError(f"--user {user!r} is not an email address")
    known_team = cfg.team_of(user) if cfg else None
    if team is None:
        if known_team is None:
            where = f" in {cfg.path}" if cfg else ""
            raise ValueError(f"--team is required ({user} has no team{where})")
        return known_team
    if cfg is not None and cfg.teams and team not in cfg.teams:
        raise ValueError(f"unknown team {team!r} (teams in {cfg.path}: {', '.join(sorted(cfg.teams))})")
    if cfg is not None and cfg.users:
        if known_team is None:
            raise ValueError(f"unknown user {user!r}: add it under users: in {cfg.path} first")
        if known_team != team:
            raise ValueError(f"{user} belongs to team {known_team!r} in {cfg.path}, not {team!r}")
    return team


_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(value: str, flag: str) -> float:
    """'90d', '12h', '30m', '2w', '45s' or '0' → seconds."""
    text = value.strip()
    if text == "0":
        return 0.0
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"{flag} {value!r}: expected a duration such as 90d, 12h, 30m or 2w")
    return float(int(m.group(1)) * _UNIT_SECONDS[m.group(2)])


def parse_expiry(value: str | None, flag: str, now: datetime | None = None) -> str | None:
    """A key expiry (duration from now, or an ISO date/time in UTC) as 'YYYY-MM-DDTHH:MM:SSZ'."""
    if not value:
        return None
    now = now or datetime.now(UTC)
    if _DURATION.match(value.strip()):
        seconds = parse_duration(value, flag)
        if seconds <= 0:
            raise ValueError(f"{flag} {value!r}: must be longer than 0")
        when = now + timedelta(seconds=seconds)
    else:
        try:
            when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(
                f"{flag} {value!r}: expected a duration (90d, 12h, 2w) or a date (2027-03-31)"
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        if when <= now:
            raise ValueError(f"{flag} {value!r} is in the past")
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _print_new_key(token_only: bool, token: str, rec: KeyRecord, key_line: str, notice: str) -> None:
    """A new token: alone (``--token-only``, for scripts) or with its key's details; the notice on stderr."""
    if token_only:
        print(token)
        return
    print(f"key id: {key_line}")
    print(f"user:   {rec.user_email}")
    print(f"team:   {rec.team}")
    print(f"expires: {rec.expires_at or 'never'}")
    print(f"token:  {token}")
    print(notice, file=sys.stderr)


def cmd_keys_create(args: argparse.Namespace) -> int:
    def body(cfg: Config | None, store: LedgerStore) -> int:
        try:
            team = check_user_team(cfg, args.user, args.team)
            expires = parse_expiry(args.expires, "--expires")
        except ValueError as exc:
            return _fail(str(exc), 2)
        token, rec = store.create_key(args.user, team, expires)
        _print_new_key(
            args.token_only,
            token,
            rec,
            rec.key_id,
            "The token is shown only this once; only its hash is stored. Give it to the user as their API key.",
        )
        return 0

    return _run(args, body)


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    try:
        overlap = parse_duration(args.overlap, "--overlap")
    except ValueError as exc:
        return _fail(str(exc), 2)

    def body(cfg: Config | None, store: LedgerStore) -> int:
        token, new, old = store.rotate_key(args.key, overlap)
        _print_new_key(
            args.token_only,
            token,
            new,
            f"{new.key_id} (replaces {old.key_id}, which works until {old.expires_at})",
            "The token is shown only this once; only its hash is stored.",
        )
        return 0

    return _run(args, body, existing=True)


KEY_LIST_COLUMNS = [
    "key_id", "prefix", "user_email", "team", "created_at", "revoked_at", "expires_at", "last_used_at",
    "rotated_to",
]  # fmt: skip


def cmd_keys_list(args: argparse.Namespace) -> int:
    def body(cfg: Config | None, store: LedgerStore) -> int:
        keys = store.list_keys(include_revoked=not args.active)
        if args.user:
            keys = [k for k in keys if k.user_email == args.user]
        rows = [
            (
                k.key_id, k.prefix + "…", k.user_email, k.team, k.created_at, k.revoked_at or "",
                k.expires_at or "", k.last_used_at or "", k.rotated_to,
            )
            for k in keys
        ]  # fmt: skip
        print_result(KEY_LIST_COLUMNS, rows, csv_out=args.csv)
        return 0

    return _run(args, body, existing=True)


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    if bool(args.key) == bool(args.user):
        return _fail("give either a KEY_ID (or token prefix) or --user EMAIL", 2)

    def body(cfg: Config | None, store: LedgerStore) -> int:
        revoked = store.revoke_user_keys(args.user) if args.user else store.revoke_key(args.key)
        if not revoked:
            what = f"user {args.user}" if args.user else repr(args.key)
            known = [
                k for k in store.list_keys() if args.key in (k.key_id, k.prefix) or k.user_email == args.user
            ]
            if known:
                return _fail(f"no active key for {what}: already revoked")
            return _fail(f"no key matches {what}")
        for k in revoked:
            print(f"revoked {k.key_id} ({k.prefix}…) of {k.user_email}, team {k.team}, at {k.revoked_at}")
        return 0

    return _run(args, body, existing=True)


# --------------------------------------------------------------------------- ledger


def cmd_ledger_query(args: argparse.Namespace) -> int:
    """One read-only statement on its own read-only connection (exporter/ledger/adhoc.py): the
    ledger is neither created nor migrated, and ``ledger.query_url`` (a read-only role) is preferred."""
    from exporter.ledger.adhoc import open_adhoc

    try:
        cfg = _config(args)
        if args.ledger_url:
            url, source = args.ledger_url, "--ledger.url"
        elif cfg is not None and cfg.ledger.query_url:
            url, source = cfg.ledger.query_url, f"{cfg.path}: ledger.query_url"
        elif cfg is not None:
            url, source = cfg.ledger.url, f"{cfg.path}: ledger.url"
        else:
            return _fail("no ledger URL: set ledger.url in the config or pass --ledger.url")
        query = open_adhoc(url, source, allow_superuser=args.allow_superuser)
    except StoreError as exc:
        return _fail(str(exc))
    try:
        cols, rows = query.query(args.sql)
    except StoreError as exc:
        return _fail(_store_error(exc))
    finally:
        query.close()
    print_result(cols, rows, csv_out=args.csv)
    return 0


def parse_when(value: str | None, tz: ZoneInfo, flag: str) -> datetime | None:
    """ISO date or datetime; without an offset it is read in the config's timezone."""
    if value is None:
        return None
    try:
        if len(value) == 10:
            dt = datetime.combine(date.fromisoformat(value), time())
        else:
            dt = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{flag} {value!r} is not an ISO date or date-time (e.g. 2024-05-01 or 2024-05-01T08:00:00Z)"
        ) from None
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=tz)


def cmd_ledger_summary(args: argparse.Namespace) -> int:
    def body(cfg: Config | None, store: LedgerStore) -> int:
        tz = cfg.tz if cfg else ZoneInfo("UTC")
        try:
            since = parse_when(args.since, tz, "--since")
            until = parse_when(args.until, tz, "--until")
        except ValueError as exc:
            return _fail(str(exc), 2)
        if since and until and until <= since:
            return _fail(f"--until ({args.until}) must be after --since ({args.since})", 2)
        cols, rows = store.summary(since, until)  # counts are int on both backends
        if rows and not args.csv:
            totals = tuple(sum(r[i] for r in rows) for i in range(3, len(SUMMARY_COLUMNS)))
            rows.append(("TOTAL", "", "", *totals))
        print_result(cols, rows, csv_out=args.csv)
        return 0

    return _run(args, body, existing=True)


# --------------------------------------------------------------------------- output


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") if value != int(value) else str(int(value))
    if isinstance(value, Decimal):
        return format(value.normalize(), "f") if value == value.to_integral() else str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool)


def print_result(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], csv_out: bool = False, out: TextIO | None = None
) -> None:
    out = out or sys.stdout
    if csv_out:
        w = csv.writer(out, lineterminator="\n")
        w.writerow(columns)
        for r in rows:
            w.writerow([_cell(v) for v in r])
        return
    if not columns:
        print("(no result)", file=out)
        return
    cells = [[_cell(v) for v in r] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    right = [
        any(_numeric(r[i]) for r in rows) and all(_numeric(r[i]) or r[i] is None for r in rows)
        for i in range(len(columns))
    ]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if right[i] else v.ljust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ).rstrip()

    print(line(list(columns)), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for r in cells:
        print(line(r), file=out)
    print(f"({len(rows)} row{'s' if len(rows) != 1 else ''})", file=out)

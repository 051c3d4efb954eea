"""``chargeback keys import`` (keys in bulk) and ``chargeback ledger maintain`` (partitions, retention).

``keys import FILE --out TOKENS``: FILE is CSV with the columns user, team[, expires] (a header
line naming them is optional). Every line is checked first, against the config's users and teams
when it has them; any bad line stops the import before anything is stored, and every bad line is
named. The tokens go once to TOKENS, created new with mode 0600 (never overwritten), written and
synced before the keys are committed in one transaction, so no stored key lacks its token on disk.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import sys
from datetime import UTC, datetime
from typing import Any

from exporter.config import Config
from exporter.ledger.cli import _common, _fail, _run, check_user_team, parse_when, print_result
from exporter.ledger.store import LedgerStore

IMPORT_COLUMNS = ("user", "team", "expires")
TOKEN_FILE_COLUMNS = ("user_email", "team", "key_id", "token")


def register_keys(ksub: Any) -> None:
    p = ksub.add_parser(
        "import", help="create keys in bulk from a CSV of user,team; tokens go once to a 0600 file"
    )
    _common(p)
    p.add_argument("file", metavar="FILE", help="CSV: user,team[,expires] per line (header optional)")
    p.add_argument(
        "--out",
        required=True,
        metavar="TOKENS.csv",
        help="new file for the tokens (user_email,team,key_id,token), created with mode 0600",
    )
    p.set_defaults(func=cmd_keys_import)


def register_ledger(lsub: Any) -> None:
    p = lsub.add_parser(
        "maintain",
        help="create the coming months' partitions and apply ledger.retention_months (run daily)",
    )
    _common(p)
    p.add_argument(
        "--retention-months",
        type=int,
        metavar="N",
        help="keep raw rows of the last N months, this one included (default: ledger.retention_months)",
    )
    p.add_argument(
        "--detach-only",
        action="store_true",
        help="PostgreSQL: detach old partitions but keep them as tables (for an archive job)",
    )
    p.add_argument("--now", metavar="ISO", help="act as if it were this UTC time (back-fills, tests)")
    p.set_defaults(func=cmd_ledger_maintain)


# --------------------------------------------------------------------------- keys import


def read_import(path: str, cfg: Config | None) -> tuple[list[tuple[str, str, str | None]], list[str]]:
    """((user, team, expires_at or None) per line, errors naming file and line). ``expires`` is a
    duration from now (90d) or a UTC date/time, as for ``keys create --expires``."""
    from exporter.ledger.cli import parse_expiry

    entries: list[tuple[str, str, str | None]] = []
    errors: list[str] = []
    try:
        f = open(path, encoding="utf-8", newline="")  # noqa: SIM115 - closed below
    except OSError as exc:
        return [], [f"{path}: cannot read: {exc.strerror or exc}"]
    with f:
        for n, line in enumerate(csv.reader(f), start=1):
            cells = [c.strip() for c in line]
            if not cells or all(not c for c in cells) or cells[0].startswith("#"):
                continue
            if n == 1 and cells[0].lower() in ("user", "user_email", "email"):
                continue  # header
            where = f"{path} line {n}"
            if len(cells) > len(IMPORT_COLUMNS):
                errors.append(f"{where}: expected user,team[,expires], got {len(cells)} columns")
                continue
            user, team = cells[0], (cells[1] if len(cells) > 1 and cells[1] else None)
            try:
                expires = parse_expiry(cells[2] if len(cells) > 2 else None, "expires")
                entries.append((user, check_user_team(cfg, user, team), expires))
            except ValueError as exc:
                errors.append(f"{where}: {str(exc).replace('--user ', 'user ').replace('--team', 'team')}")
    return entries, errors


def cmd_keys_import(args: argparse.Namespace) -> int:
    def body(cfg: Config | None, store: LedgerStore) -> int:
        entries, errors = read_import(args.file, cfg)
        if errors:
            shown = errors[:50]
            more = f"\n... and {len(errors) - len(shown)} more" if len(errors) > len(shown) else ""
            return _fail("no keys created:\n" + "\n".join(shown) + more, 2)
        if not entries:
            return _fail(f"{args.file}: no users to create keys for", 2)
        try:
            fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return _fail(f"--out {args.out} exists; tokens are written to a new file only", 2)
        except OSError as exc:
            return _fail(f"--out {args.out}: {exc.strerror or exc}", 2)
        try:
            created = _create_and_write(store, entries, fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(args.out)  # nothing was stored: no token file either
            raise
        print(f"created {len(created)} keys; tokens written to {args.out} (mode 0600, shown nowhere else)")
        return 0

    return _run(args, body)


def _create_and_write(store: LedgerStore, entries: list[tuple[str, str, str | None]], fd: int) -> list[Any]:
    def save(created: list[Any]) -> None:  # runs before the keys are stored
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
            w = csv.writer(out, lineterminator="\n")
            w.writerow(TOKEN_FILE_COLUMNS)
            for token, rec in created:
                w.writerow((rec.user_email, rec.team, rec.key_id, token))
            out.flush()
            os.fsync(out.fileno())

    return store.create_keys(entries, before_store=save)


# --------------------------------------------------------------------------- ledger maintain


def cmd_ledger_maintain(args: argparse.Namespace) -> int:
    try:
        now = parse_when(args.now, UTC, "--now") if args.now else None  # type: ignore[arg-type]
    except ValueError as exc:
        return _fail(str(exc), 2)
    if args.retention_months is not None and args.retention_months < 1:
        return _fail(f"--retention-months must be at least 1, got {args.retention_months}", 2)

    def body(cfg: Config | None, store: LedgerStore) -> int:
        keep = args.retention_months or (cfg.ledger.retention_months if cfg else None)
        when = now or datetime.now(UTC)
        if store.backend == "postgresql":
            from exporter.ledger.pg_partitions import months_to_ensure

            made = store.ensure_partitions(months_to_ensure(when))  # type: ignore[attr-defined]
            for m in made:
                print(f"created partition for {m:%Y-%m}")
        if keep is None:
            print("retention: keep everything (set ledger.retention_months to drop old raw rows)")
        else:
            done = store.apply_retention(keep, drop=not args.detach_only, now=when)
            verb = "detached" if args.detach_only else "dropped"
            print(
                f"retention: keep {keep} months (rows from {done['cutoff']:%Y-%m-%d}); {verb} "
                f"{len(done['partitions'])} partitions{': ' + ', '.join(done['partitions']) if done['partitions'] else ''};"
                f" deleted {done['default_rows_deleted']} older rows; the daily rollup is kept"
            )
        if store.backend == "postgresql":
            store.analyze()  # type: ignore[attr-defined]
            parts = store.partitions()  # type: ignore[attr-defined]
            print_result(["partition", "month"], [(n, f"{m:%Y-%m}" if m else "default") for n, m in parts])
        sys.stdout.flush()
        return 0

    return _run(args, body)

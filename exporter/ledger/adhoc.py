"""``chargeback ledger query``: one ad-hoc SQL statement that can only read the ledger.

People type these statements, so they are treated as hostile, whatever role the URL connects as:

- SQLite: the file is opened read-only (``mode=ro``; a path that does not exist is an error, never a
  new empty database) and an authorizer refuses anything but reading.
- PostgreSQL, in layers:
  1. ``check_statement``: one statement, starting with SELECT, WITH, VALUES, TABLE, EXPLAIN or
     SHOW (so no COPY, DO, CALL, SET ...), calling none of the functions that reach files, programs,
     other servers or settings (``pg_read_file``, ``lo_export``, ``dblink``, ``set_config`` ...);
  2. a read-only transaction (``default_transaction_read_only`` and ``BEGIN READ ONLY``), the
     statement sent as one prepared statement (PostgreSQL refuses a second one);
  3. a superuser (or a member of ``pg_execute_server_program``, ``pg_read_server_files`` or
     ``pg_write_server_files``) is refused unless ``allow_superuser``; and then the statement runs
     as the predefined role ``pg_read_all_data``, which can read every table and nothing else.
  ``ledger.query_url`` names a separate, read-only role for these queries (docs/ledger.md).
"""

from __future__ import annotations

import contextlib
import re
from typing import Any, Protocol
from urllib.parse import quote

from exporter.ledger.store import QueryError, ReadOnlyError, StoreError, redact_url

READ_STATEMENTS = ("select", "with", "values", "table", "explain", "show")
# Functions that touch server files or programs, other servers, settings or other sessions. Names
# ending in "_" are prefixes (lo_import, lo_export ...; pg_ls_dir, pg_ls_logdir ...).
DENIED_FUNCTIONS = (
    "pg_read_file", "pg_read_binary_file", "pg_stat_file", "pg_ls_", "pg_file_", "pg_logdir_ls",
    "lo_", "loread", "lowrite", "dblink", "set_config", "query_to_xml", "query_to_xmlschema",
    "query_to_xml_and_xmlschema", "cursor_to_xml", "table_to_xml", "schema_to_xml", "database_to_xml",
    "pg_terminate_backend", "pg_cancel_backend", "pg_reload_conf", "pg_rotate_logfile", "pg_promote",
    "pg_switch_wal", "pg_create_restore_point", "pg_backup_", "pg_start_backup", "pg_stop_backup",
    "pg_import_system_collations", "pg_log_backend_memory_contexts", "pg_replication_origin_",
    "pg_create_", "pg_drop_replication_slot", "pg_logical_", "pg_copy_", "pg_wal_replay_",
)  # fmt: skip
PRIVILEGED_ROLES = ("pg_execute_server_program", "pg_read_server_files", "pg_write_server_files")
STATEMENT_TIMEOUT_MS = 300_000  # an ad-hoc query that runs longer than 5 minutes is cancelled

_WORD = re.compile(r"[A-Za-z_\x80-\uffff][A-Za-z0-9_$\x80-\uffff]*")
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\x80-\uffff][A-Za-z0-9_\x80-\uffff]*)?\$")


def _refuse(what: str) -> ReadOnlyError:
    return ReadOnlyError(f"the ledger query is read-only; refused: {what}")


def sql_words(sql: str) -> list[str]:
    """The identifiers and keywords of ``sql``, lower-cased, with quoted identifiers unquoted;
    strings and comments are skipped exactly as PostgreSQL reads them (with
    standard_conforming_strings on, which the query connection sets)."""
    words: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c == "-" and sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end == -1 else end + 1
        elif c == "/" and sql.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if sql.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif sql.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif c in "eE" and sql.startswith("'", i + 1) and not (i and _WORD.match(sql[i - 1])):
            i += 2  # E'...': backslash escapes
            while i < n and sql[i] != "'":
                i += 2 if sql[i] == "\\" else 1
            i += 1
            while sql.startswith("'", i):  # '' inside E'...'
                i += 1
                while i < n and sql[i] != "'":
                    i += 2 if sql[i] == "\\" else 1
                i += 1
        elif c in "uU" and sql.startswith('&"', i + 1):
            raise _refuse('Unicode-escaped identifiers (U&"...") are not allowed')
        elif c == "'":
            end = i
            while True:  # '' is a quote inside the string
                end = sql.find("'", end + 1)
                if end == -1 or not sql.startswith("'", end + 1):
                    break
                end += 1
            i = n if end == -1 else end + 1
        elif c == '"':
            end = i
            while True:
                end = sql.find('"', end + 1)
                if end == -1 or not sql.startswith('"', end + 1):
                    break
                end += 1
            words.append(sql[i + 1 : end if end != -1 else n].replace('""', '"').lower())
            i = n if end == -1 else end + 1
        elif c == "$" and (tag := _DOLLAR_TAG.match(sql, i)) is not None:
            end = sql.find(tag.group(), tag.end())
            i = n if end == -1 else end + len(tag.group())
        elif (word := _WORD.match(sql, i)) is not None:
            words.append(word.group().lower())
            i = word.end()
        else:
            i += 1
    return words


def check_statement(sql: str) -> None:
    """Raise ReadOnlyError unless ``sql`` only reads (see the module docstring)."""
    words = sql_words(sql)
    if not words:
        raise QueryError("the query is empty")
    if words[0] not in READ_STATEMENTS:
        raise _refuse(
            f"{words[0].upper()} (a query starts with {', '.join(w.upper() for w in READ_STATEMENTS)})"
        )
    for word in words:
        for denied in DENIED_FUNCTIONS:
            if word == denied or (denied.endswith("_") and word.startswith(denied)):
                raise _refuse(f"{word}() reaches beyond the ledger")


class AdhocQuery(Protocol):
    backend: str

    def query(self, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]: ...

    def close(self) -> None: ...


def open_adhoc(url: str, source: str = "ledger.url", allow_superuser: bool = False) -> AdhocQuery:
    """A read-only query connection to the ledger at ``url`` (``source`` names where the URL came
    from, for messages). Nothing is created or migrated."""
    from exporter.ledger.url import LedgerUrlError, parse_ledger_url

    try:
        backend = parse_ledger_url(url).backend
    except LedgerUrlError:
        if url.startswith("sqlite:"):
            return SqliteAdhoc(url, source)  # names the bad SQLite URL itself
        raise StoreError(f"{source}: unsupported ledger URL {redact_url(url)!r}") from None
    if backend == "sqlite":
        return SqliteAdhoc(url, source)
    return PostgresAdhoc(url, source, allow_superuser)


class SqliteAdhoc:
    backend = "sqlite"

    def __init__(self, url: str, source: str) -> None:
        from exporter.ledger.sqlite_store import existing_file, parse_sqlite_url, read_only_connection

        path, memory, opts = parse_sqlite_url(url)
        busy = int(opts.get("busy_timeout_ms", 5000))
        if memory:
            self._conn = read_only_connection(path, busy)
            return
        p = existing_file(path, f" (from {source}); check the path")
        self._conn = read_only_connection("file:" + quote(str(p.resolve())) + "?mode=ro", busy)

    def query(self, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        from exporter.ledger.sqlite_store import run_read_query

        return run_read_query(self._conn, sql, ())

    def close(self) -> None:
        self._conn.close()


class PostgresAdhoc:
    backend = "postgresql"

    def __init__(self, url: str, source: str, allow_superuser: bool, connect_timeout: int = 10) -> None:
        import psycopg

        from exporter.ledger.url import parse_ledger_url

        url = parse_ledger_url(url).url  # postgres:// → postgresql://
        kwargs: dict[str, Any] = {"autocommit": True}
        if "connect_timeout" not in url:
            kwargs["connect_timeout"] = connect_timeout
        try:
            self._conn = psycopg.connect(url, **kwargs)
        except psycopg.Error as exc:
            raise StoreError(
                f"cannot connect to the PostgreSQL ledger {redact_url(url)}: {exc}".strip()
            ) from exc
        try:
            self._demote = self._check_role(source, allow_superuser)
            for setting in (
                "default_transaction_read_only = on",
                "standard_conforming_strings = on",  # strings are read as check_statement reads them
                f"statement_timeout = {STATEMENT_TIMEOUT_MS}",
            ):
                self._conn.execute(f"SET {setting}")
        except BaseException:
            self._conn.close()
            raise
        self._conn.read_only = True  # every transaction psycopg opens is BEGIN READ ONLY

    def _check_role(self, source: str, allow_superuser: bool) -> bool:
        """True when the statement must run as pg_read_all_data (a privileged role, allowed)."""
        user, superuser = self._conn.execute(
            "SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user"
        ).fetchone() or ("?", False)
        privileged = [
            r[0]
            for r in self._conn.execute(
                "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s) AND pg_has_role(current_user, oid, 'MEMBER')",
                (list(PRIVILEGED_ROLES),),
            ).fetchall()
        ]
        if not superuser and not privileged:
            return False
        what = "a superuser" if superuser else f"a member of {', '.join(privileged)}"
        if not allow_superuser:
            raise StoreError(
                f"refusing to run an ad-hoc query as PostgreSQL role {user!r} ({source}), {what} that can "
                "run programs and read server files: set ledger.query_url to a read-only role "
                "(docs/ledger.md), or pass --allow-superuser"
            )
        has_reader = self._conn.execute(
            "SELECT 1 FROM pg_roles WHERE rolname = 'pg_read_all_data'"
        ).fetchone()
        return bool(superuser and has_reader)

    def query(self, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        import psycopg
        from psycopg import errors as pg_errors

        check_statement(sql)
        try:
            with self._conn.transaction():
                if self._demote:  # read every table, and nothing else, whatever slips past the check
                    self._conn.execute("SET LOCAL ROLE pg_read_all_data")
                cur = self._conn.execute(sql, prepare=True)  # the extended protocol: one statement only
                if cur.description is None:
                    return [], []
                return [d.name for d in cur.description], cur.fetchall()
        except (pg_errors.ReadOnlySqlTransaction, pg_errors.InsufficientPrivilege) as exc:
            raise _refuse(str(exc).strip()) from None
        except psycopg.OperationalError as exc:
            raise StoreError(f"ledger database error: {str(exc).strip()}") from exc
        except psycopg.Error as exc:
            raise QueryError(str(exc).strip()) from None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._conn.close()

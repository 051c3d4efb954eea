"""Personal API keys: records, token generation and hashing, and the key SQL both backends run.

A token is ``cbk_`` followed by 43 URL-safe characters (32 random bytes = 256 bits). Only its
SHA-256 hash is stored. A plain, unsalted hash is enough here because tokens are random and
high-entropy: salts and slow KDFs exist to stop dictionary and brute-force attacks on
*guessable* secrets such as passwords, and there is nothing to guess in 256 random bits.
A fast hash also keeps the per-request lookup cheap (one SHA-256, one dict lookup).

The proxy's in-memory cache of active keys is ``exporter.proxy.key_cache``.
"""

from __future__ import annotations

import abc
import hashlib
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from exporter.ledger.backend import StoreError, check_ident, iso_seconds, parse_timestamp, utc_now_iso

TOKEN_PREFIX = "cbk_"
# Characters of the token shown in `keys list` so people can tell their keys apart:
# "cbk_" + 8 characters = 48 of the 256 random bits, the remaining 208 stay secret.
DISPLAY_PREFIX_LEN = len(TOKEN_PREFIX) + 8


@dataclass(frozen=True)
class KeyRecord:
    key_id: str
    user_email: str
    team: str
    created_at: str  # ISO 8601 UTC
    revoked_at: str | None  # None while the key is active
    prefix: str = ""  # first characters of the token, shown in `keys list` (never the whole token)
    expires_at: str | None = None  # ISO 8601 UTC; None: never
    rotated_to: str = ""  # the key id that replaced this one (`keys rotate`)
    last_used_at: str | None = None  # updated in batches by the proxies (exporter.proxy.key_cache)
    expires_ts: float | None = field(default=None, compare=False, repr=False)  # expires_at as Unix seconds

    def __post_init__(self) -> None:
        if self.expires_at and self.expires_ts is None:
            ts = datetime.fromisoformat(self.expires_at.replace("Z", "+00:00")).timestamp()
            object.__setattr__(self, "expires_ts", ts)


def expired_message(record: KeyRecord, now: float) -> str | None:
    """Why the key no longer works, or None while it is valid."""
    if record.expires_ts is None or now < record.expires_ts:
        return None
    if record.rotated_to:
        return (
            f"API key {record.key_id} expired at {record.expires_at}: it was rotated to"
            f" {record.rotated_to}; use the new key"
        )
    return f"API key {record.key_id} expired at {record.expires_at}; ask your administrator for a new key"


def generate_token() -> str:
    """A new random token: the recognisable prefix plus 256 bits from the OS CSPRNG."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def generate_key_id() -> str:
    """A short public identifier for a key (safe to log and show; says nothing about the token)."""
    return "key_" + secrets.token_hex(6)


def hash_token(token: str) -> str:
    """SHA-256 of the token, hex. See the module docstring for why no salt or KDF is needed."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def display_prefix(token: str) -> str:
    return token[:DISPLAY_PREFIX_LEN]


class KeyOps(abc.ABC):
    """The ``api_keys`` SQL, shared by both backends. Internal SQL uses '?' placeholders; a backend
    provides ``_exec_write`` (one transaction, returns fetched rows), ``_exec_read``,
    ``_exec_write_many`` and, where its column type needs it, ``_key_time``."""

    @abc.abstractmethod
    def _exec_write(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]: ...

    @abc.abstractmethod
    def _exec_read(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]: ...

    @abc.abstractmethod
    def _exec_write_many(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        """The statement once per parameter set, all in one transaction."""

    _KEY_COLUMNS = (
        "key_id, user_email, team, created_at, revoked_at, prefix, expires_at, rotated_to, last_used_at"
    )
    _INSERT_KEY = (
        "INSERT INTO api_keys (key_id, prefix, token_hash, user_email, team, created_at, revoked_at,"
        " expires_at, rotated_to) VALUES (?, ?, ?, ?, ?, ?, NULL, ?, '')"
    )

    @staticmethod
    def _record(r: tuple[Any, ...]) -> KeyRecord:
        return KeyRecord(
            key_id=r[0],
            user_email=r[1],
            team=r[2],
            created_at=iso_seconds(r[3]) or "",
            revoked_at=iso_seconds(r[4]),
            prefix=r[5],
            expires_at=iso_seconds(r[6]),
            rotated_to=r[7] or "",
            last_used_at=iso_seconds(r[8]),
        )

    def create_key(self, user_email: str, team: str, expires_at: str | None = None) -> tuple[str, KeyRecord]:
        """A new key; ``expires_at`` (ISO UTC, 'YYYY-MM-DDTHH:MM:SSZ') or None for one that never expires."""
        check_ident(user_email, "user email")
        check_ident(team, "team")
        token = generate_token()
        key_id = generate_key_id()
        now = utc_now_iso()
        expires = self._key_time(expires_at) if expires_at else None
        self._exec_write(
            self._INSERT_KEY,
            (
                key_id,
                display_prefix(token),
                hash_token(token),
                user_email,
                team,
                self._key_time(now),
                expires,
            ),
        )
        return token, KeyRecord(key_id, user_email, team, now, None, display_prefix(token), expires_at)

    def rotate_key(self, key_id: str, overlap_seconds: float) -> tuple[str, KeyRecord, KeyRecord]:
        """A new key for the same user and team (same lifetime as the old one had, if it expires);
        the old key stays valid for ``overlap_seconds`` more (or until it expires anyway).
        Returns (new token, new key, old key as updated)."""
        rows = self._exec_read(f"SELECT {self._KEY_COLUMNS} FROM api_keys WHERE key_id = ?", (key_id,))
        if not rows:
            raise StoreError(f"no key {key_id!r}")
        old = self._record(rows[0])
        if old.revoked_at is not None:
            raise StoreError(f"key {key_id} was revoked at {old.revoked_at}; create a new one instead")
        now = datetime.now(UTC)
        if old.expires_ts is not None and old.expires_ts <= now.timestamp():
            raise StoreError(f"key {key_id} expired at {old.expires_at}; create a new one instead")
        new_expiry = None
        if old.expires_ts is not None:
            created = parse_timestamp(old.created_at)
            lifetime = old.expires_ts - created.timestamp()
            new_expiry = datetime.fromtimestamp(now.timestamp() + lifetime, UTC).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            )
        token, new = self.create_key(old.user_email, old.team, new_expiry)
        cut = now.timestamp() + overlap_seconds
        if old.expires_ts is not None:
            cut = min(cut, old.expires_ts)
        cut_iso = datetime.fromtimestamp(cut, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        got = self._exec_write(
            f"UPDATE api_keys SET expires_at = ?, rotated_to = ? WHERE key_id = ? RETURNING {self._KEY_COLUMNS}",
            (self._key_time(cut_iso), new.key_id, key_id),
        )
        return token, new, self._record(got[0])

    def touch_keys(self, used: dict[str, str]) -> None:
        """Set last use (ISO UTC) of many keys in one transaction; never moves a time backwards."""
        if not used:
            return
        self._exec_write_many(
            "UPDATE api_keys SET last_used_at = ? WHERE key_id = ? AND (last_used_at IS NULL OR last_used_at < ?)",
            [(self._key_time(t), k, self._key_time(t)) for k, t in sorted(used.items())],
        )

    def create_keys(
        self,
        entries: Sequence[tuple[str, str] | tuple[str, str, str | None]],
        before_store: Callable[[list[tuple[str, KeyRecord]]], None] | None = None,
    ) -> list[tuple[str, KeyRecord]]:
        """One new key per (user_email, team[, expires_at ISO UTC or None]), all in one transaction (bulk import): either every
        key is stored or none is. ``before_store`` gets the tokens first (to save them where the
        caller wants them: a key whose token was never saved is useless). Returns (token, record)
        in the order given."""
        now = utc_now_iso()
        when = self._key_time(now)
        out: list[tuple[str, KeyRecord]] = []
        params: list[tuple[Any, ...]] = []
        for entry in entries:
            user_email, team = entry[0], entry[1]
            expires_at = entry[2] if len(entry) > 2 else None  # type: ignore[misc]
            check_ident(user_email, "user email")
            check_ident(team, "team")
            token, key_id = generate_token(), generate_key_id()
            prefix = display_prefix(token)
            expires = self._key_time(expires_at) if expires_at else None
            params.append((key_id, prefix, hash_token(token), user_email, team, when, expires))
            out.append((token, KeyRecord(key_id, user_email, team, now, None, prefix, expires_at)))
        if before_store is not None:
            before_store(out)
        if params:
            self._exec_write_many(self._INSERT_KEY, params)
        return out

    def _key_time(self, iso: str) -> Any:
        return iso

    def list_keys(self, include_revoked: bool = True) -> list[KeyRecord]:
        sql = f"SELECT {self._KEY_COLUMNS} FROM api_keys"
        if not include_revoked:
            sql += " WHERE revoked_at IS NULL"
        sql += " ORDER BY created_at, key_id"
        return [self._record(r) for r in self._exec_read(sql, ())]

    def revoke_key(self, key_id_or_prefix_or_user: str) -> list[KeyRecord]:
        """Revoke the active key(s) matching a key id, a display prefix or a user email."""
        ident = key_id_or_prefix_or_user
        return self._revoke("key_id = ? OR prefix = ? OR user_email = ?", (ident, ident, ident))

    def revoke_user_keys(self, user_email: str) -> list[KeyRecord]:
        return self._revoke("user_email = ?", (user_email,))

    def _revoke(self, cond: str, params: Sequence[Any]) -> list[KeyRecord]:
        now = self._key_time(utc_now_iso())
        rows = self._exec_write(
            f"UPDATE api_keys SET revoked_at = ? WHERE revoked_at IS NULL AND ({cond})"
            f" RETURNING {self._KEY_COLUMNS}",
            (now, *params),
        )
        return sorted((self._record(r) for r in rows), key=lambda k: (k.created_at, k.key_id))

    def load_active_keys(self) -> list[tuple[str, KeyRecord]]:
        rows = self._exec_read(
            f"SELECT token_hash, {self._KEY_COLUMNS} FROM api_keys WHERE revoked_at IS NULL", ()
        )
        return [(r[0], self._record(r[1:])) for r in rows]

"""The proxy's in-memory cache of active API keys: lookup per request, background refresh, expiry,
rotation and last use. Tokens, hashing and the key records themselves are ``exporter.ledger.keys``."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from exporter.ledger.keys import TOKEN_PREFIX, KeyRecord, hash_token
from exporter.ledger.store import LedgerStore, open_store, redact_url
from exporter.logs import get_logger

log = get_logger(__name__)
T = TypeVar("T")


class KeyCache:
    """The set of active keys, held in memory by the proxy and refreshed in the background.

    ``lookup`` is synchronous and O(1); database reads run in a worker thread so the event loop
    never blocks. When the database is unreachable the last good set stays in force (new keys
    and revocations are then seen as soon as it is back).
    """

    def __init__(self, ledger_url: str, refresh_seconds: float) -> None:
        self.ledger_url = ledger_url
        self.refresh_seconds = max(0.05, float(refresh_seconds))
        self._by_hash: dict[str, KeyRecord] = {}
        self._store: LedgerStore | None = None
        self._task: asyncio.Task[None] | None = None
        self.loaded_at: float | None = None  # time.time() of the last successful load
        self.last_error: str | None = None
        self.refresh_errors = 0
        # key id → last use (ISO, UTC seconds), written in one batch per refresh, not per request
        self._used: dict[str, str] = {}
        self._second = -1
        self._second_text = ""

    def __len__(self) -> int:
        return len(self._by_hash)

    async def start(self, require: bool = False) -> None:
        """Load the keys once, then keep refreshing them in the background.

        With ``require=True`` a failing first load raises (use it to fail fast at startup);
        otherwise the failure is logged and the cache starts empty and keeps retrying.
        """
        ok = await self.refresh()
        if not ok and require:
            raise RuntimeError(f"cannot load API keys from the ledger database: {self.last_error}")
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="chargeback-key-refresh")

    async def refresh(self) -> bool:
        """Reload the active keys now; returns False (and keeps the last good set) on failure."""
        try:
            loaded = await daemon_call(self._load)
        except Exception as exc:
            self.refresh_errors += 1
            msg = f"{type(exc).__name__}: {exc}"
            if msg != self.last_error:  # log each distinct failure once, not every refresh
                log.error(
                    "API key refresh from %s failed (keeping %d known keys): %s",
                    redact_url(self.ledger_url),
                    len(self._by_hash),
                    msg,
                )
            self.last_error = msg
            return False
        if self.last_error is not None:
            log.info("API key refresh works again (%d active keys)", len(loaded))
        self.last_error = None
        self._by_hash = loaded  # one atomic swap: lookups see either the old or the new set
        self.loaded_at = time.time()
        return True

    def _touch(self, record: KeyRecord, now: int) -> None:
        """Note that a key was used now (one dict write; flushed with the next refresh)."""
        if now != self._second:
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
            self._second = now
        self._used[record.key_id] = self._second_text

    def _flush_used(self) -> None:
        if not self._used or self._store is None:
            return
        used, self._used = self._used, {}
        try:
            self._store.touch_keys(used)
        except Exception:
            for k, v in used.items():  # keep them for the next try
                self._used.setdefault(k, v)
            raise

    def _load(self) -> dict[str, KeyRecord]:
        if self._store is None:
            self._store = open_store(self.ledger_url)
        try:
            self._flush_used()
            return dict(self._store.load_active_keys())
        except Exception:
            store, self._store = self._store, None  # reconnect next time
            with contextlib.suppress(Exception):
                store.close()
            raise

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_seconds)
            await self.refresh()

    def lookup(self, token: str) -> KeyRecord | None:
        """The key for this token, or None (unknown or revoked). An expired key is returned: the caller
        tells its holder so (see ``expired_message``)."""
        if not token.startswith(TOKEN_PREFIX) or not token.isascii():
            return None  # tokens are ASCII: a header byte like \xff is no key (and cannot be hashed)
        # No secret is compared byte by byte: the lookup is keyed by the token's SHA-256, and how
        # long it takes depends only on that digest, which a caller cannot steer towards a stored
        # one (preimage resistance). So response timing tells nothing about how close a guess was.
        record = self._by_hash.get(hash_token(token))
        if record is None or record.revoked_at is not None:
            return None
        now = time.time()
        if record.expires_ts is None or now < record.expires_ts:
            self._touch(record, int(now))  # last use: only of keys that still work
        return record

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._store is not None:
            # Last-use times are a convenience: bounded like the close, never worth a hung shutdown.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(daemon_call(self._flush_used), CLOSE_TIMEOUT)
            store, self._store = self._store, None
            # A refresh stuck on a frozen database holds the store's lock: never wait for it here.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(daemon_call(store.close), CLOSE_TIMEOUT)


CLOSE_TIMEOUT = 1.0  # the key store at shutdown: the ledger has been closed already


async def daemon_call(fn: Callable[[], T]) -> T:
    """``fn()`` in a daemon thread of its own. Unlike ``asyncio.to_thread`` (the default executor,
    which ``asyncio.run`` waits for at exit), a call stuck on a hung database cannot hold up the
    process's exit; the database's own timeouts end it soon after anyway."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if fut.done():
            return
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)

    def run() -> None:
        try:
            result: Any = fn()
            ok = True
        except BaseException as exc:  # handed to the awaiting task
            result, ok = exc, False
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(settle, ok, result)

    threading.Thread(target=run, name="chargeback-db-call", daemon=True).start()
    return await fut

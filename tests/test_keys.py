"""API tokens and the proxy's KeyCache: new keys and revocations are seen without a restart, the
last good key set survives a database outage, and only hashes are stored."""

from __future__ import annotations

import hashlib

import pytest

from exporter.ledger.keys import TOKEN_PREFIX, generate_token, hash_token
from exporter.ledger.store import open_store
from exporter.ledger.testing import (
    async_wait_for,
    block_pg_database,
    pg_available,
    temp_pg_database,
    unblock_pg_database,
)
from exporter.proxy.key_cache import KeyCache


def test_tokens_are_prefixed_random_and_hashed():
    tokens = {generate_token() for _ in range(1000)}
    assert len(tokens) == 1000
    for t in list(tokens)[:20]:
        assert t.startswith(TOKEN_PREFIX)
        body = t[len(TOKEN_PREFIX) :]
        assert len(body) == 43  # 32 bytes, base64url without padding = 256 bits
        assert hash_token(t) == hashlib.sha256(t.encode()).hexdigest()


async def test_cache_sees_new_and_revoked_keys_without_restart(ledger_url):
    store = open_store(ledger_url)
    old_token, old = store.create_key("alice@corp.example", "research")
    cache = KeyCache(ledger_url, refresh_seconds=0.1)
    await cache.start(require=True)
    try:
        assert cache.lookup(old_token) == old
        new_token, new = store.create_key("bob@corp.example", "support")
        assert cache.lookup(new_token) is None  # not yet refreshed
        await async_wait_for(lambda: cache.lookup(new_token) is not None, what="the new key")
        rec = cache.lookup(new_token)
        assert (rec.key_id, rec.user_email, rec.team, rec.revoked_at) == (
            new.key_id,
            "bob@corp.example",
            "support",
            None,
        )
        store.revoke_key(old.key_id)
        await async_wait_for(lambda: cache.lookup(old_token) is None, what="the revocation")
        assert cache.lookup(new_token) is not None and len(cache) == 1
    finally:
        await cache.close()
        store.close()


async def test_lookup_rejects_unknown_and_malformed_tokens(tmp_path):
    url = f"sqlite:///{tmp_path}/ledger.db"
    store = open_store(url)
    token, _ = store.create_key("alice@corp.example", "research")
    store.close()
    cache = KeyCache(url, refresh_seconds=60)
    await cache.start()
    try:
        assert cache.lookup(token) is not None
        for bad in (
            "",
            "Bearer " + token,
            token[:-1],
            token + "x",
            token.upper(),
            generate_token(),
            hash_token(token),
            token[len(TOKEN_PREFIX) :],
        ):
            assert cache.lookup(bad) is None, bad
    finally:
        await cache.close()


async def test_cache_keeps_last_good_set_during_outage():
    reason = pg_available()
    if reason:
        pytest.skip(reason)
    with temp_pg_database() as url:
        store = open_store(url)
        token, _ = store.create_key("alice@corp.example", "research")
        store.close()
        cache = KeyCache(url, refresh_seconds=0.05)
        await cache.start(require=True)
        try:
            block_pg_database(url)
            try:
                await async_wait_for(lambda: cache.refresh_errors >= 2, what="failing refreshes")
                assert cache.last_error is not None
                assert cache.lookup(token) is not None  # still served from the last good set
            finally:
                unblock_pg_database(url)
            store = open_store(url)
            store.revoke_user_keys("alice@corp.example")
            store.close()
            await async_wait_for(lambda: cache.lookup(token) is None, what="the revocation after recovery")
            assert cache.last_error is None
        finally:
            await cache.close()


async def test_cache_start_with_database_down(tmp_path):
    cache = KeyCache("postgresql://postgres@127.0.0.1:1/none", refresh_seconds=60)
    with pytest.raises(RuntimeError, match="cannot load API keys"):
        await cache.start(require=True)
    await cache.close()
    lenient = KeyCache("postgresql://postgres@127.0.0.1:1/none", refresh_seconds=60)
    await lenient.start()  # logs, starts empty, keeps retrying
    assert len(lenient) == 0 and lenient.last_error
    await lenient.close()

"""The counters limits act on: per billing month (spend, weighted tokens, requests; per model for
users) and per minute window (requests, tokens), for teams and users.

``RedisStore`` shares them between proxy replicas: every check is one Lua script (read the counters,
decide, count the request, all atomic on the server), every record one more. ``MemoryStore`` does
the same in-process for a single replica without Redis. Both follow the same rules:

- a request is refused when, before it, a counter has already reached its limit (``used >= limit``);
  the request that crosses the line passes, the next one is refused;
- rate windows are fixed calendar minutes; a refused request is not counted in them, nor is a
  request in the window of a scope without a rate limit;
- keys: ``{namespace}:{YYYY-MM}:{team|user}:{name}`` (a hash) for the billing month, whose
  ``YYYY-MM`` is the month in the config's ``timezone:``, and ``{namespace}:w:{minute}:{team|user}:{name}``
  for the minute window (expires after two minutes).

Amounts are integers: spend in nano-units of the currency, weighted tokens in thousandths.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from exporter.limits.resp import RedisClient, RedisError
from exporter.limits.settings import BUDGET, MONTHLY_TOKENS, REQUESTS_PER_MINUTE, TOKENS_PER_MINUTE
from exporter.logs import get_logger

log = get_logger(__name__)

KIND_BY_CODE = {1: BUDGET, 2: MONTHLY_TOKENS, 3: REQUESTS_PER_MINUTE, 4: TOKENS_PER_MINUTE}
MONTH_TTL_SECONDS = 100 * 86400  # the current and the two previous months stay readable
WINDOW_TTL_SECONDS = 120


@dataclass(frozen=True, slots=True)
class Scope:
    """One team's or user's limits as the store compares them (0 = not enforced)."""

    kind: str  # "team" | "user"
    name: str
    budget_nano: int = 0
    tokens_milli: int = 0
    rpm: int = 0
    tpm: int = 0


@dataclass(slots=True)
class Counters:
    spend_nano: int = 0
    tokens_milli: int = 0
    requests: int = 0
    window_requests: int = 0
    window_tokens: int = 0
    models: dict[str, dict[str, int]] = field(default_factory=dict)  # users only


@dataclass(slots=True)
class CheckResult:
    blocked_scope: int  # index into the scopes, -1 when the request may pass
    blocked_kind: str
    counters: list[Counters]


@dataclass(frozen=True, slots=True)
class Usage:
    """One finished request, as the store counts it."""

    team: str
    user: str
    model: str
    spend_nano: int
    tokens_milli: int
    raw_tokens: int
    prompt: int
    completion: int


class LimitStore(Protocol):
    backend: str  # "redis" | "memory"

    async def check(self, month: str, window: int, scopes: Sequence[Scope]) -> CheckResult: ...

    def record(
        self, month: str, window: int, usage: Usage, done: Callable[[Counters | None], None]
    ) -> None: ...

    async def read(self, month: str, window: int, kind: str, name: str) -> Counters: ...

    async def read_teams(self, month: str, teams: Sequence[str]) -> dict[str, Counters]: ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


def _previous(month: str) -> str:
    """'2027-01' → '2026-12'."""
    year, mon = int(month[:4]), int(month[5:7])
    return f"{year - 1:04d}-12" if mon == 1 else f"{year:04d}-{mon - 1:02d}"


def _month_key(ns: str, month: str, kind: str, name: str) -> str:
    return f"{ns}:{month}:{kind}:{name}"


def _window_key(ns: str, window: int, kind: str, name: str) -> str:
    return f"{ns}:w:{window}:{kind}:{name}"


# --------------------------------------------------------------------------- in-process


class MemoryStore:
    """Counters in this process (one replica, no Redis). Lost on restart: the proxy seeds the month
    from the ledger when it starts (see ``Limiter.seed``)."""

    backend = "memory"

    def __init__(self) -> None:
        self.months: dict[tuple[str, str, str], Counters] = {}
        self.windows: dict[tuple[str, str], tuple[int, Counters]] = {}
        self._latest = ""

    def _month(self, month: str, kind: str, name: str) -> Counters:
        key = (month, kind, name)
        c = self.months.get(key)
        if c is None:
            if month > self._latest:  # a new billing month: keep only it and the previous one
                self._latest = month
                self.months = {k: v for k, v in self.months.items() if k[0] >= _previous(month)}
            c = self.months[key] = Counters()
        return c

    def _window(self, window: int, kind: str, name: str) -> Counters:
        got = self.windows.get((kind, name))
        if got is None or got[0] != window:
            got = self.windows[(kind, name)] = (window, Counters())
        return got[1]

    async def check(self, month: str, window: int, scopes: Sequence[Scope]) -> CheckResult:
        out: list[Counters] = []
        blocked, kind = -1, ""
        for i, s in enumerate(scopes):
            m = self._month(month, s.kind, s.name)
            w = self._window(window, s.kind, s.name)
            out.append(Counters(m.spend_nano, m.tokens_milli, m.requests, w.window_requests, w.window_tokens))
            if blocked >= 0:
                continue
            if s.budget_nano and m.spend_nano >= s.budget_nano:
                blocked, kind = i, BUDGET
            elif s.tokens_milli and m.tokens_milli >= s.tokens_milli:
                blocked, kind = i, MONTHLY_TOKENS
            elif s.rpm and w.window_requests >= s.rpm:
                blocked, kind = i, REQUESTS_PER_MINUTE
            elif s.tpm and w.window_tokens >= s.tpm:
                blocked, kind = i, TOKENS_PER_MINUTE
        if blocked < 0:
            for s, c in zip(scopes, out, strict=True):
                if s.rpm or s.tpm:
                    self._window(window, s.kind, s.name).window_requests += 1
                    c.window_requests += 1
        return CheckResult(blocked, kind, out)

    def record(self, month: str, window: int, usage: Usage, done: Callable[[Counters | None], None]) -> None:
        for kind, name in (("team", usage.team), ("user", usage.user)):
            m = self._month(month, kind, name)
            m.spend_nano += usage.spend_nano
            m.tokens_milli += usage.tokens_milli
            m.requests += 1
            self._window(window, kind, name).window_tokens += usage.raw_tokens
        per = self._month(month, "user", usage.user).models.setdefault(
            usage.model, {"requests": 0, "prompt": 0, "completion": 0, "tokens": 0, "spend": 0}
        )
        per["requests"] += 1
        per["prompt"] += usage.prompt
        per["completion"] += usage.completion
        per["tokens"] += usage.tokens_milli
        per["spend"] += usage.spend_nano
        team = self._month(month, "team", usage.team)
        done(Counters(team.spend_nano, team.tokens_milli, team.requests))

    async def read(self, month: str, window: int, kind: str, name: str) -> Counters:
        m = self._month(month, kind, name)
        w = self._window(window, kind, name)
        return Counters(
            m.spend_nano,
            m.tokens_milli,
            m.requests,
            w.window_requests,
            w.window_tokens,
            {k: dict(v) for k, v in m.models.items()},
        )

    async def read_teams(self, month: str, teams: Sequence[str]) -> dict[str, Counters]:
        return {t: self._month(month, "team", t) for t in teams}

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


# --------------------------------------------------------------------------- Redis

_CHECK = """
-- only what the scope's limits need is read: monthly counters for a budget or quota, the minute
-- window for a rate limit
local n = tonumber(ARGV[1])
local out = {0, 0}
local windowed = {}
for i = 0, n - 1 do
  local a = 3 + 4 * i
  local b, q, rl, tl = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local m = {false, false, false}
  local w = {false, false}
  if b > 0 or q > 0 then m = redis.call('HMGET', KEYS[2 * i + 1], 'spend', 'tokens', 'requests') end
  if rl > 0 or tl > 0 then
    w = redis.call('HMGET', KEYS[2 * i + 2], 'r', 't')
    windowed[#windowed + 1] = KEYS[2 * i + 2]
  end
  local spend, tokens = tonumber(m[1]) or 0, tonumber(m[2]) or 0
  local r, t = tonumber(w[1]) or 0, tonumber(w[2]) or 0
  if out[1] == 0 then
    if b > 0 and spend >= b then out[1] = i + 1; out[2] = 1
    elseif q > 0 and tokens >= q then out[1] = i + 1; out[2] = 2
    elseif rl > 0 and r >= rl then out[1] = i + 1; out[2] = 3
    elseif tl > 0 and t >= tl then out[1] = i + 1; out[2] = 4 end
  end
  out[#out + 1] = m[1] or '0'
  out[#out + 1] = m[2] or '0'
  out[#out + 1] = tonumber(m[3]) or 0
  out[#out + 1] = r
  out[#out + 1] = t
end
if out[1] == 0 then
  for _, key in ipairs(windowed) do
    if redis.call('HINCRBY', key, 'r', 1) == 1 then redis.call('EXPIRE', key, ARGV[2]) end
  end
end
return out
"""

_RECORD = """
-- a key's expiry is set when it is created (its first increment), not on every request
for i = 1, 2 do
  redis.call('HINCRBY', KEYS[i], 'spend', ARGV[1])
  redis.call('HINCRBY', KEYS[i], 'tokens', ARGV[2])
  if redis.call('HINCRBY', KEYS[i], 'requests', 1) == 1 then redis.call('EXPIRE', KEYS[i], ARGV[7]) end
  if redis.call('HINCRBY', KEYS[i + 2], 't', ARGV[3]) == tonumber(ARGV[3]) then
    redis.call('EXPIRE', KEYS[i + 2], ARGV[8])
  end
end
local p = 'm:' .. ARGV[4] .. ':'
redis.call('HINCRBY', KEYS[2], p .. 'requests', 1)
redis.call('HINCRBY', KEYS[2], p .. 'prompt', ARGV[5])
redis.call('HINCRBY', KEYS[2], p .. 'completion', ARGV[6])
redis.call('HINCRBY', KEYS[2], p .. 'tokens', ARGV[2])
redis.call('HINCRBY', KEYS[2], p .. 'spend', ARGV[1])
return redis.call('HMGET', KEYS[1], 'spend', 'tokens', 'requests')
"""

_READ = """
return {redis.call('HGETALL', KEYS[1]), redis.call('HMGET', KEYS[2], 'r', 't')}
"""

_READ_TEAMS = """
local out = {}
for i = 1, #KEYS do
  local m = redis.call('HMGET', KEYS[i], 'spend', 'tokens', 'requests')
  out[i] = {m[1] or '0', m[2] or '0', m[3] or '0'}
end
return out
"""


def _int(value: Any) -> int:
    if value is None:
        return 0
    return int(value)


class _Script:
    def __init__(self, source: str) -> None:
        import hashlib

        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


class RedisStore:
    backend = "redis"

    def __init__(self, url: str, namespace: str, timeout: float) -> None:
        self.client = RedisClient(url, timeout=timeout)
        self.ns = namespace
        self._check = _Script(_CHECK)
        self._record = _Script(_RECORD)
        self._read = _Script(_READ)
        self._read_teams = _Script(_READ_TEAMS)
        self._tasks: set[asyncio.Task[Any]] = set()  # records sent while (re)connecting

    async def _eval(self, script: _Script, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        try:
            return await self.client.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except RedisError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            return await self.client.execute("EVAL", script.source, len(keys), *keys, *args)

    async def check(self, month: str, window: int, scopes: Sequence[Scope]) -> CheckResult:
        keys: list[str] = []
        args: list[str | int] = [len(scopes), WINDOW_TTL_SECONDS]
        for s in scopes:
            keys.append(_month_key(self.ns, month, s.kind, s.name))
            keys.append(_window_key(self.ns, window, s.kind, s.name))
            args += (s.budget_nano, s.tokens_milli, s.rpm, s.tpm)
        reply = await self._eval(self._check, keys, args)
        counters = []
        passed = reply[0] == 0
        for i in range(len(scopes)):
            v = reply[2 + 5 * i : 7 + 5 * i]
            counters.append(Counters(_int(v[0]), _int(v[1]), _int(v[2]), _int(v[3]) + passed, _int(v[4])))
        return CheckResult(reply[0] - 1, KIND_BY_CODE.get(reply[1], ""), counters)

    def record(self, month: str, window: int, usage: Usage, done: Callable[[Counters | None], None]) -> None:
        """Sent without waiting: the request's response does not wait for its bookkeeping."""
        keys = (
            _month_key(self.ns, month, "team", usage.team),
            _month_key(self.ns, month, "user", usage.user),
            _window_key(self.ns, window, "team", usage.team),
            _window_key(self.ns, window, "user", usage.user),
        )
        args = (
            usage.spend_nano,
            usage.tokens_milli,
            usage.raw_tokens,
            usage.model,
            usage.prompt,
            usage.completion,
            MONTH_TTL_SECONDS,
            WINDOW_TTL_SECONDS,
        )
        fut = self.client.execute_nowait("EVALSHA", self._record.sha, len(keys), *keys, *args)
        if fut is None:  # not connected: connect and send in a task
            self._spawn(keys, args, done)
            return

        def finished(f: asyncio.Future[Any]) -> None:
            exc = None if f.cancelled() else f.exception()
            if isinstance(exc, RedisError) and str(exc).startswith("NOSCRIPT"):
                self._spawn(keys, args, done)
                return
            done(self._team_counters(f))

        fut.add_done_callback(finished)

    def _spawn(
        self, keys: Sequence[str], args: Sequence[str | int], done: Callable[[Counters | None], None]
    ) -> None:
        task = asyncio.ensure_future(self._eval(self._record, keys, args))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda t: done(self._team_counters(t)))

    @staticmethod
    def _team_counters(f: asyncio.Future[Any]) -> Counters | None:
        if f.cancelled() or f.exception() is not None:
            if not f.cancelled():
                log.debug("limit store record failed: %s", f.exception())
            return None
        v = f.result()
        return Counters(_int(v[0]), _int(v[1]), _int(v[2]))

    async def read(self, month: str, window: int, kind: str, name: str) -> Counters:
        keys = (_month_key(self.ns, month, kind, name), _window_key(self.ns, window, kind, name))
        flat, win = await self._eval(self._read, keys, ())
        fields = {flat[i].decode(): int(flat[i + 1]) for i in range(0, len(flat), 2)}
        models: dict[str, dict[str, int]] = {}
        for k, v in fields.items():
            if k.startswith("m:"):
                model, _, what = k[2:].rpartition(":")
                models.setdefault(model, {})[what] = v
        return Counters(
            fields.get("spend", 0),
            fields.get("tokens", 0),
            fields.get("requests", 0),
            _int(win[0]),
            _int(win[1]),
            models,
        )

    async def read_teams(self, month: str, teams: Sequence[str]) -> dict[str, Counters]:
        if not teams:
            return {}
        keys = [_month_key(self.ns, month, "team", t) for t in teams]
        reply = await self._eval(self._read_teams, keys, ())
        return {t: Counters(_int(v[0]), _int(v[1]), _int(v[2])) for t, v in zip(teams, reply, strict=True)}

    async def ping(self) -> None:
        await self.client.execute("PING")

    async def close(self) -> None:
        await self.client.close()


def open_limit_store(url: str | None, namespace: str, timeout: float) -> LimitStore:
    if url:
        return RedisStore(url, namespace, timeout)
    return MemoryStore()

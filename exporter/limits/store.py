"""The counters limits act on: per billing month (spend, weighted tokens, requests; per model for
users) and per minute window (requests, tokens), for teams and users.

``RedisStore`` shares them between proxy replicas: every exact check is one Lua script (read the
counters, decide, count the request, grant a lease, all atomic on the server), every record one more. ``MemoryStore`` does
the same in-process for a single replica without Redis. Both follow the same rules:

- a request is refused when, before it, a counter has already reached its limit (``used >= limit``);
  the request that crosses the line passes, the next one is refused;
- rate windows are fixed calendar minutes; a refused request is not counted in them, nor is a
  request in the window of a scope without a rate limit;
- keys: ``{namespace}:{YYYY-MM}:{team|user}:{name}`` (a hash) for the billing month, whose
  ``YYYY-MM`` is the month in the config's ``timezone:``, and ``{namespace}:w:{minute}:{team|user}:{name}``
  for the minute window (expires after two minutes); next to each, ``{key}:l`` holds the replicas'
  leases on it (exporter/limits/leases.py), which the exact check counts as used.

Amounts are integers: spend in nano-units of the currency, weighted tokens in thousandths.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from exporter.limits.leases import LEASE_MIN_REQUESTS, LEASE_SHARE, LEASE_TTL_SECONDS
from exporter.limits.resp import RedisClient, RedisError, encode_bulk
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
    # per scope: what the other replicas hold in leases (added to the counters the decision compared)
    reserved: list[Counters] = field(default_factory=list)
    # per scope: (month grant, window grant), each (a, b) or None; see ``Grant``
    grants: list[tuple[Grant | None, Grant | None]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Grant:
    """A lease the store granted: month (spend nano, tokens milli) or window (requests, tokens)."""

    a: int
    b: int


@dataclass(frozen=True, slots=True)
class LeaseArgs:
    """Who asks (a replica id), when (for lease expiry), and what it admitted on its window leases
    since it last said so (one number per scope, 0 when it holds none for this window)."""

    replica: str
    now: float
    reported: tuple[int, ...]
    ttl: int = LEASE_TTL_SECONDS  # a lease nobody renews within this many seconds is freed
    share: int = LEASE_SHARE  # a grant takes at most 1/share of what is neither used nor leased
    min_requests: int = LEASE_MIN_REQUESTS  # a grant must cover this many average requests, else none


@dataclass(frozen=True, slots=True)
class Usage:
    """One finished request (or several, summed), as the store counts it."""

    team: str
    user: str
    model: str
    spend_nano: int
    tokens_milli: int
    raw_tokens: int
    prompt: int
    completion: int
    requests: int = 1  # several requests of one team, user, model and minute, recorded together


# called once a record is counted: the team's month counters after it, or None when it failed
RecordDone = Callable[[Counters | None], None]


class LimitStore(Protocol):
    backend: str  # "redis" | "memory"

    async def check(
        self, month: str, window: int, scopes: Sequence[Scope], lease: LeaseArgs | None = None
    ) -> CheckResult: ...

    def record(self, month: str, window: int, usage: Usage, done: RecordDone, replica: str = "") -> None: ...

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

    async def check(
        self, month: str, window: int, scopes: Sequence[Scope], lease: LeaseArgs | None = None
    ) -> CheckResult:
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

    def record(self, month: str, window: int, usage: Usage, done: RecordDone, replica: str = "") -> None:
        for kind, name in (("team", usage.team), ("user", usage.user)):
            m = self._month(month, kind, name)
            m.spend_nano += usage.spend_nano
            m.tokens_milli += usage.tokens_milli
            m.requests += usage.requests
            self._window(window, kind, name).window_tokens += usage.raw_tokens
        per = self._month(month, "user", usage.user).models.setdefault(
            usage.model, {"requests": 0, "prompt": 0, "completion": 0, "tokens": 0, "spend": 0}
        )
        per["requests"] += usage.requests
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

# Leases (see exporter/limits/leases.py): a lease hash per counter hash, ``{key}:l``, one field per
# replica, "A B EXPIRY": month leases hold spend (nano) and weighted tokens (milli), window leases
# requests and tokens. Numbers are written with %.0f: Lua's tostring turns 5e12 into "5e+12".
_LEASE_LIB = """
local function parse(v)
  local a, b, x = string.match(v, '^(%S+) (%S+) (%S+)$')
  return tonumber(a), tonumber(b), tonumber(x)
end
local function fmt(a, b, x) return string.format('%.0f %.0f %.0f', a, b, x) end
-- what the other replicas hold; a lease past its expiry (its replica stopped renewing) is freed
local function others(key, rid, now)
  local f = redis.call('HGETALL', key)
  local sa, sb = 0, 0
  for i = 1, #f, 2 do
    local a, b, x = parse(f[i + 1])
    if x < now then redis.call('HDEL', key, f[i])
    elseif f[i] ~= rid then sa = sa + a; sb = sb + b end
  end
  return sa, sb
end
-- how much of (limit - used - held by others) one grant may take: a 1/share slice, and only when
-- that slice covers min_requests average requests; 0 when the limit is not enforced, -1 when no grant
local function slice(limit, used, held, share, need)
  if limit <= 0 then return 0 end
  local g = math.floor((limit - used - held) / share)
  if g <= 0 or g < need then return -1 end
  return g
end
"""

_CHECK = (
    _LEASE_LIB
    + """
-- only what the scope's limits need is read: monthly counters for a budget or quota, the minute
-- window for a rate limit. The caller's own leases end here (it asks because they are used up or
-- gone); the requests it admitted on its window lease become counted requests.
local n, rid, now = tonumber(ARGV[1]), ARGV[4], tonumber(ARGV[5])
local ttl, share, minreq = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local out = {0, 0}
local s = {}
for i = 0, n - 1 do
  local a = 9 + 5 * i
  local b, q, rl, tl = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local rep = tonumber(ARGV[a + 4])
  local mk, wk, mlk, wlk = KEYS[4 * i + 1], KEYS[4 * i + 2], KEYS[4 * i + 3], KEYS[4 * i + 4]
  local monthly, windowed = b > 0 or q > 0, rl > 0 or tl > 0
  local m = {false, false, false}
  local w = {false, false}
  local os, ot, orq, ott = 0, 0, 0, 0
  if monthly then
    m = redis.call('HMGET', mk, 'spend', 'tokens', 'requests')
    if rid ~= '' then redis.call('HDEL', mlk, rid) end
    os, ot = others(mlk, rid, now)
  end
  if windowed then
    if rep > 0 and redis.call('HINCRBY', wk, 'r', rep) == rep then redis.call('EXPIRE', wk, ARGV[2]) end
    w = redis.call('HMGET', wk, 'r', 't')
    if rid ~= '' then redis.call('HDEL', wlk, rid) end
    orq, ott = others(wlk, rid, now)
  end
  local spend, tokens, reqs = tonumber(m[1]) or 0, tonumber(m[2]) or 0, tonumber(m[3]) or 0
  local r, t = tonumber(w[1]) or 0, tonumber(w[2]) or 0
  if out[1] == 0 then
    if b > 0 and spend + os >= b then out[1] = i + 1; out[2] = 1
    elseif q > 0 and tokens + ot >= q then out[1] = i + 1; out[2] = 2
    elseif rl > 0 and r + orq >= rl then out[1] = i + 1; out[2] = 3
    elseif tl > 0 and t + ott >= tl then out[1] = i + 1; out[2] = 4 end
  end
  s[i + 1] = {b, q, rl, tl, monthly, windowed, spend, tokens, reqs, r, t, os, ot, orq, ott, mk, wk, mlk, wlk}
  out[#out + 1] = m[1] or '0'
  out[#out + 1] = m[2] or '0'
  out[#out + 1] = reqs
  out[#out + 1] = r
  out[#out + 1] = t
  out[#out + 1] = os
  out[#out + 1] = ot
  out[#out + 1] = orq
  out[#out + 1] = ott
end
-- a grant of both parts (a, b) becomes the caller's lease in lease hash lk, kept for expire seconds
local function lease_out(lk, a, b, expire)
  if a < 0 or b < 0 then return {-1, -1} end
  redis.call('HSET', lk, rid, fmt(a, b, now + ttl))
  redis.call('EXPIRE', lk, expire)
  return {a, b}
end
local passed = out[1] == 0
for i = 1, n do
  local v = s[i]
  local gm, gw = {-1, -1}, {-1, -1}
  if passed and v[6] then
    if redis.call('HINCRBY', v[17], 'r', 1) == 1 then redis.call('EXPIRE', v[17], ARGV[2]) end
    v[10] = v[10] + 1
  end
  if passed and rid ~= '' then
    local reqs, r = v[9], v[10]
    if v[5] and reqs > 0 then
      local gs = slice(v[1], v[7], v[12], share, minreq * v[7] / reqs)
      gm = lease_out(v[18], gs, slice(v[2], v[8], v[13], share, minreq * v[8] / reqs), ARGV[3])
    end
    if v[6] then
      local gt = -1
      if v[4] <= 0 then gt = 0 elseif v[11] > 0 then gt = slice(v[4], v[11], v[15], share, minreq * v[11] / r) end
      gw = lease_out(v[19], slice(v[3], r, v[14], share, minreq), gt, ARGV[2])
    end
  end
  out[#out + 1] = gm[1]
  out[#out + 1] = gm[2]
  out[#out + 1] = gw[1]
  out[#out + 1] = gw[2]
end
return out
"""
)

# Top up a lease (or give it back): KEYS counters hash, lease hash. ARGV: 'm'|'w', limit a, limit b,
# replica, now, ttl, share, min requests, requests admitted on the window lease since last said,
# '1' to give the lease back, the window's expiry. Returns what was added, or {-1, -1} when the lease ended.
_LEASE = (
    _LEASE_LIB
    + """
local monthly, la, lb = ARGV[1] == 'm', tonumber(ARGV[2]), tonumber(ARGV[3])
local rid, now, ttl, share, minreq = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local rep = tonumber(ARGV[9])
local own = redis.call('HGET', KEYS[2], rid)
local oa, ob = 0, 0
if own then oa, ob = parse(own) end
if rep > 0 then
  if redis.call('HINCRBY', KEYS[1], 'r', rep) == rep then redis.call('EXPIRE', KEYS[1], ARGV[11]) end
  oa = math.max(0, oa - rep)
end
if ARGV[10] == '1' or not own then
  redis.call('HDEL', KEYS[2], rid)
  return {-1, -1}
end
local ua, ub, n
if monthly then
  local m = redis.call('HMGET', KEYS[1], 'spend', 'tokens', 'requests')
  ua, ub, n = tonumber(m[1]) or 0, tonumber(m[2]) or 0, tonumber(m[3]) or 0
else
  local w = redis.call('HMGET', KEYS[1], 'r', 't')
  ua, ub = tonumber(w[1]) or 0, tonumber(w[2]) or 0
  n = ua
end
local xa, xb = others(KEYS[2], rid, now)
local ga, gb = -1, -1
if n > 0 then
  ga = slice(la, ua, xa, share, monthly and minreq * ua / n or minreq)
  if lb <= 0 then gb = 0 elseif ub > 0 or monthly then gb = slice(lb, ub, xb, share, minreq * ub / n) end
end
if ga < 0 or gb < 0 then
  redis.call('HDEL', KEYS[2], rid)
  return {-1, -1}
end
local aa, ab = math.max(0, ga - oa), math.max(0, gb - ob)
redis.call('HSET', KEYS[2], rid, fmt(oa + aa, ob + ab, now + ttl))
return {string.format('%.0f', aa), string.format('%.0f', ab)}
"""
)

_RECORD = """
-- a key's expiry is set when it is created (its first increment), not on every request; what the
-- recording replica holds in leases shrinks by what it used (the usage is counted now)
local rid = ARGV[9]
for i = 1, 2 do
  redis.call('HINCRBY', KEYS[i], 'spend', ARGV[1])
  redis.call('HINCRBY', KEYS[i], 'tokens', ARGV[2])
  if redis.call('HINCRBY', KEYS[i], 'requests', ARGV[10]) == tonumber(ARGV[10]) then
    redis.call('EXPIRE', KEYS[i], ARGV[7])
  end
  if redis.call('HINCRBY', KEYS[i + 2], 't', ARGV[3]) == tonumber(ARGV[3]) then
    redis.call('EXPIRE', KEYS[i + 2], ARGV[8])
  end
  if rid ~= '' then
    local own = redis.call('HGET', KEYS[i + 4], rid)
    if own then
      local a, b, x = string.match(own, '^(%S+) (%S+) (%S+)$')
      a = math.max(0, tonumber(a) - tonumber(ARGV[1]))
      b = math.max(0, tonumber(b) - tonumber(ARGV[2]))
      redis.call('HSET', KEYS[i + 4], rid, string.format('%.0f %.0f %s', a, b, x))
    end
    own = redis.call('HGET', KEYS[i + 6], rid)
    if own then
      local a, b, x = string.match(own, '^(%S+) (%S+) (%S+)$')
      b = math.max(0, tonumber(b) - tonumber(ARGV[3]))
      redis.call('HSET', KEYS[i + 6], rid, a .. ' ' .. string.format('%.0f', b) .. ' ' .. x)
    end
  end
end
local p = 'm:' .. ARGV[4] .. ':'
redis.call('HINCRBY', KEYS[2], p .. 'requests', ARGV[10])
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
        self._lease = _Script(_LEASE)
        # (team, user) → ((month, window), the record's keys, their encoding): see _record_keys
        self._record_heads: dict[tuple[str, str], tuple[tuple[str, int], tuple[str, ...], bytes]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()  # records sent while (re)connecting

    async def _eval(self, script: _Script, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        try:
            return await self.client.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except RedisError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            return await self.client.execute("EVAL", script.source, len(keys), *keys, *args)

    async def check(
        self, month: str, window: int, scopes: Sequence[Scope], lease: LeaseArgs | None = None
    ) -> CheckResult:
        keys: list[str] = []
        args: list[str | int] = [len(scopes), WINDOW_TTL_SECONDS, MONTH_TTL_SECONDS]
        if lease is None:
            args += ("", 0, 0, 1, 0)
        else:
            args += (lease.replica, int(lease.now), lease.ttl, lease.share, lease.min_requests)
        for i, s in enumerate(scopes):
            mk = _month_key(self.ns, month, s.kind, s.name)
            wk = _window_key(self.ns, window, s.kind, s.name)
            keys += (mk, wk, mk + ":l", wk + ":l")
            reported = lease.reported[i] if lease is not None else 0
            args += (s.budget_nano, s.tokens_milli, s.rpm, s.tpm, reported)
        reply = await self._eval(self._check, keys, args)
        counters, reserved, grants = [], [], []
        passed = reply[0] == 0
        n = len(scopes)
        for i in range(n):
            v = reply[2 + 9 * i : 11 + 9 * i]
            counters.append(Counters(_int(v[0]), _int(v[1]), _int(v[2]), _int(v[3]) + passed, _int(v[4])))
            reserved.append(Counters(_int(v[5]), _int(v[6]), 0, _int(v[7]), _int(v[8])))
            g = reply[2 + 9 * n + 4 * i : 6 + 9 * n + 4 * i]
            gm, gw = (_int(g[0]), _int(g[1])), (_int(g[2]), _int(g[3]))
            grants.append((Grant(*gm) if gm[0] >= 0 else None, Grant(*gw) if gw[0] >= 0 else None))
        return CheckResult(reply[0] - 1, KIND_BY_CODE.get(reply[1], ""), counters, reserved, grants)

    def lease(
        self, period: str | int, scope: Scope, lease: LeaseArgs, give_back: bool = False
    ) -> Awaitable[Grant | None] | None:
        """Top up this replica's lease of one scope for a month (``period`` 'YYYY-MM') or a minute
        window (an int), or give it back. Sent at once, in order with the checks and records on the
        same connection (None when not connected); the awaitable gives what was added, or None when
        the lease has ended (near the limit, or given back). EVAL, not EVALSHA: top-ups are rare,
        and a Redis that restarted (its script cache empty) must not turn one into an error."""
        if isinstance(period, str):
            key = _month_key(self.ns, period, scope.kind, scope.name)
            kind, la, lb = "m", scope.budget_nano, scope.tokens_milli
        else:
            key = _window_key(self.ns, period, scope.kind, scope.name)
            kind, la, lb = "w", scope.rpm, scope.tpm
        args = (kind, la, lb, lease.replica, int(lease.now), lease.ttl, lease.share, lease.min_requests)
        args += (lease.reported[0], "1" if give_back else "0", WINDOW_TTL_SECONDS)
        fut = self.client.execute_nowait("EVAL", self._lease.source, 2, key, key + ":l", *args)
        if fut is None:
            return None
        return _grant(fut)

    def record(self, month: str, window: int, usage: Usage, done: RecordDone, replica: str = "") -> None:
        """Sent without waiting: the request's response does not wait for its bookkeeping."""
        keys, head = self._record_keys(month, window, usage.team, usage.user)
        args = (
            usage.spend_nano,
            usage.tokens_milli,
            usage.raw_tokens,
            usage.model,
            usage.prompt,
            usage.completion,
            MONTH_TTL_SECONDS,
            WINDOW_TTL_SECONDS,
            replica,
            usage.requests,
        )
        fut = self.client.send_nowait(b"*%d\r\n" % (3 + len(keys) + len(args)) + head + encode_bulk(args))
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

    def _record_keys(self, month: str, window: int, team: str, user: str) -> tuple[tuple[str, ...], bytes]:
        """The record's keys, and the encoded start of its EVALSHA (command, script, keys): the same
        for every request of a team and user within a minute, so encoded once (CPU per request)."""
        got = self._record_heads.get((team, user))
        if got is not None and got[0] == (month, window):
            return got[1], got[2]
        tm, um = _month_key(self.ns, month, "team", team), _month_key(self.ns, month, "user", user)
        tw, uw = _window_key(self.ns, window, "team", team), _window_key(self.ns, window, "user", user)
        keys = (tm, um, tw, uw, tm + ":l", um + ":l", tw + ":l", uw + ":l")
        head = encode_bulk(("EVALSHA", self._record.sha, len(keys), *keys))
        if len(self._record_heads) >= 10_000:  # many users: start over rather than grow without end
            self._record_heads.clear()
        self._record_heads[(team, user)] = ((month, window), keys, head)
        return keys, head

    def _spawn(self, keys: Sequence[str], args: Sequence[str | int], done: RecordDone) -> None:
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


async def _grant(fut: Awaitable[Any]) -> Grant | None:
    reply = await fut
    a, b = _int(reply[0]), _int(reply[1])
    return None if a < 0 else Grant(a, b)


def open_limit_store(url: str | None, namespace: str, timeout: float) -> LimitStore:
    if url:
        return RedisStore(url, namespace, timeout)
    return MemoryStore()

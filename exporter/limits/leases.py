"""Per-replica leases: a replica admits most requests without a Redis round trip.

Far from a limit, a replica holds a *lease* for each limited team and user: a slice of what is left
of the month's budget or quota, and of the current minute's requests and tokens, reserved for it in
Redis (the lease hash next to the counters) so that no other replica can hand it out. A request whose
team and user both hold a lease that is not used up is admitted locally, with no await at all; its
usage is still recorded in Redis at once (without waiting), which shrinks the lease there too.

- Granting: the exact check (one Lua script, as without leases) grants a lease in the same round
  trip when the request passes. A grant takes ``1/LEASE_SHARE`` of what is neither used nor leased to
  other replicas, and only if that covers ``LEASE_MIN_REQUESTS`` average requests (the month's or
  the minute's spend, tokens or requests per request so far); otherwise there is no lease.
- Refill: when half of a lease is used, it is topped up in the background (off the request path);
  when a top-up is refused because the scope is now near its limit, the lease is given back and
  every later request of that scope takes the exact path.
- Giving back: leases idle for ``LEASE_IDLE_SECONDS`` and all leases at shutdown; a lease of a
  past minute window or billing month simply stops counting. A lease its replica stops renewing
  (a crash) is freed after ``LEASE_TTL_SECONDS``.
- The exact path counts other replicas' leases as used, and ends the asking replica's own.

Near the limit (no grant possible: less than ``LEASE_SHARE × LEASE_MIN_REQUESTS`` average requests
left beyond what others hold) every request takes the exact path, so "a quota lets exactly as many
requests through as fit" holds as it does without leases. docs/operations.md explains the tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# documented defaults (docs/operations.md); constructor parameters of Limiter, not config keys
LEASE_SHARE = 16  # a grant takes at most 1/16 of what is neither used nor leased
LEASE_MIN_REQUESTS = 8  # a grant must cover at least 8 average requests
LEASE_TTL_SECONDS = 30  # an unrenewed lease (its replica died) is freed after this
LEASE_IDLE_SECONDS = 2.0  # a lease unused this long is given back
LEASE_SYNC_SECONDS = 1.0  # how often leases are renewed, and idle ones given back
# usage covered by leases is summed and sent this often (one script for many requests); usage of a
# scope without a lease is sent at once, as the exact check of another replica may need it next
RECORD_FLUSH_SECONDS = 0.02


@dataclass(slots=True)
class Lease:
    """One scope's lease for one period: a month ('YYYY-MM') or a minute window (an int).

    ``granted``/``used``: month (spend nano, tokens milli), window (requests, tokens); a granted 0
    means that limit is not enforced for the scope, so it never runs out."""

    period: str | int
    granted: list[int]
    used: list[int] = field(default_factory=lambda: [0, 0])
    reported: int = 0  # window leases: requests admitted on it that Redis has been told about
    renewed: float = 0.0
    last_use: float = 0.0
    busy: bool = False  # a top-up is in flight

    def open(self) -> bool:
        g, u = self.granted, self.used
        return (g[0] == 0 or u[0] < g[0]) and (g[1] == 0 or u[1] < g[1])

    def half_used(self) -> bool:
        g, u = self.granted, self.used
        return (g[0] > 0 and 2 * u[0] >= g[0]) or (g[1] > 0 and 2 * u[1] >= g[1])

    def unreported(self) -> int:
        return self.used[0] - self.reported if isinstance(self.period, int) else 0

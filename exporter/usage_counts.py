"""Usage counts: how many requests, and the prompt and completion tokens they used.

The ledger's rollup sums, the reporter's raw usage (before weights and pools), the simulated
upstream's per-model counters and the traffic generator's totals all count these per user and
model; each subclass adds what its own source counts as well (total and cached tokens, durations,
what the simulator reported back). Cached and total tokens stay in the subclasses because each
class's field order is fixed elsewhere: the rollup's by its table's columns, the others by callers
that construct them positionally or print them.

A leaf module (it imports nothing from the package), so the ledger, the reporter and the simulator
can all use it without tying themselves to each other.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Self


@dataclass
class UsageCounts:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def merge(self, other: Self) -> None:
        """Add ``other``'s counts to these, every field (a subclass's too)."""
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

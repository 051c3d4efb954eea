"""Limits that act: monthly budgets and token quotas, requests and tokens per minute, per team and
user, enforced across proxy replicas through a shared store (Redis) or in-process.

- ``settings``: the ``limits:`` config section's schema (``exporter.config`` loads the file).
- ``store``: the counters (``MemoryStore`` in-process, ``RedisStore`` shared).
- ``limiter``: the decision before forwarding and the record after usage is known.
- ``messages``: what a blocked client reads.
"""

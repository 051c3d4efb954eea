"""The reporter: chargeback statements from PromQL (or the ledger) under six allocation methods.

``chargeback report`` and ``chargeback compare`` (see :mod:`exporter.report.cli`) drive it; the
pieces are importable on their own:

- :mod:`~exporter.report.promql` — PromQL HTTP client and exact counter deltas
- :mod:`~exporter.report.period` — billing periods in the configured time zone
- :mod:`~exporter.report.inputs` — per-pool cost, weighted tokens, request seconds, idle/busy time
- :mod:`~exporter.report.methods` — the allocation methods (exact amounts), one module each,
  listed by :mod:`~exporter.report.method_registry` with the parameters each owns
- :mod:`~exporter.report.settings` — the ``report``, ``prometheus`` and ``smtp`` sections
- :mod:`~exporter.report.money` — rounding to minor units by largest remainder
- :mod:`~exporter.report.statement` — the statement model
- ``render_csv``/``render_json``/``render_html``/``render_md`` — output formats
- :mod:`~exporter.report.email` — SMTP delivery
- :mod:`~exporter.report.reconcile` — Prometheus versus ledger
"""

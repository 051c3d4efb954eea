"""The test kit: stand-ins and fixtures shared by the tests and the benchmarks, never shipped in the wheel.

``fakenvml``      a scripted NVIDIA driver at the level of pynvml's functions
``ledger``        throw-away PostgreSQL databases, outages, deterministic ledger rows
``prom_history``  counters built from usage events, backfilled into a Prometheus TSDB
``proxies``       a simulator and a proxy config document pointing at it
"""

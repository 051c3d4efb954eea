"""A simulated OpenAI-compatible upstream, a traffic generator and helpers that start the proxy stack
as real processes (used by tests, ``chargeback demo`` and ``bench/``)."""

"""The chargeback proxy: an OpenAI-compatible sidecar that attributes every request to a user and team,
counts its tokens (Prometheus counters on a separate listener) and appends it to the ledger."""

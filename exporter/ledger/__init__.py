"""The request ledger: one SQL row per request (``http_analytics``) plus the API keys table.

``store`` is the front door (``open_store``, the ``LedgerStore`` protocol, the errors); the
backends are ``sqlite_store`` and ``pg_store``, built on ``backend`` (what both share) and
``keys`` (key records, tokens and hashing, key SQL). ``writer`` is the asynchronous batching
writer with its in-memory queue and on-disk journal; ``commands`` registers the ``keys`` and
``ledger`` commands of ``cli`` and ``scale_cli``. Imports point one way: the proxy uses the
ledger (its key cache is ``exporter.proxy.key_cache``), the ledger never imports the proxy.
"""

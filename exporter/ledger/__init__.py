"""The request ledger: one SQL row per request (``http_analytics``) plus the API keys table.

``store`` holds the database backends (SQLite, PostgreSQL), ``writer`` the asynchronous batching
writer with its in-memory queue and on-disk spool, ``cli`` the ``keys`` and ``ledger`` commands.
"""

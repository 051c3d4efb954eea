"""URLs as messages may show them: without their userinfo (the proxy, the ledger and the config
loader all print URLs that may carry a credential)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

REDACTED = "[redacted]"
_USERINFO = re.compile(r"(?<=://)[^/@\s'\"]+@")


def public_url(url: str) -> str:
    """``url`` without its userinfo (``http://user:pass@host/v1`` → ``http://[redacted]@host/v1``)."""
    if "@" not in url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return _USERINFO.sub(REDACTED + "@", url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{REDACTED}@{host}"))

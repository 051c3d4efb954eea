"""Keeping credentials in.

- A model's upstream credential (its ``api_key``, and any ``user:password@`` in its upstream or
  tokenize URLs, which aiohttp sends as Basic auth) never reaches a client: the proxy replaces it by
  ``[redacted]`` in every response body and header it passes on from an upstream, and in its own
  error messages (``Redactor``).
- URL userinfo is never printed: ledger rows, error messages and logs show ``public_url(url)``.
- No log line carries a credential or a client's API key, whatever produced it (aiohttp's own
  loggers included): ``install_log_redaction`` scrubs every log record when it is made.

A credential shorter than ``MIN_SECRET_LEN`` characters is not looked for (replacing every ``ab`` in
every answer would garble them); docs/proxy.md asks for real, long credentials.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from multidict import CIMultiDict

# public_url lives below the proxy so the config schema and the ledger can use it too
from exporter.urls import _USERINFO, REDACTED
from exporter.urls import public_url as public_url  # its callers import it from here

MIN_SECRET_LEN = 4
# a client API key as `chargeback keys create` makes them (cbk_ + 43 URL-safe base64 characters);
# anything from 16 characters on is treated as one, so a cut or mangled key is hidden as well
_CLIENT_TOKEN = re.compile(r"cbk_[A-Za-z0-9_\-]{16,}")


def url_secrets(url: str) -> list[str]:
    """The credentials in a URL's userinfo, in every form they may come back in: as written, decoded,
    the password alone and the Basic auth value aiohttp sends for them."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    if "@" not in parts.netloc:
        return []
    userinfo = parts.netloc.rsplit("@", 1)[0]
    user, _, password = userinfo.partition(":")
    decoded = f"{unquote(user)}:{unquote(password)}"
    out = [userinfo, decoded, base64.b64encode(decoded.encode()).decode()]
    if password:
        out += [password, unquote(password)]
    return out


def _variants(secret: str) -> set[str]:
    """The forms a secret takes when an upstream echoes it: as it is, JSON-escaped, URL-quoted."""
    return {secret, json.dumps(secret)[1:-1], quote(secret, safe="")}


class Redactor:
    """Replaces a fixed set of secrets in text, bytes and headers. With no secrets, it is a no-op."""

    __slots__ = ("_bytes", "_text")

    def __init__(self, secrets: Iterable[str]) -> None:
        found: set[str] = set()
        for s in secrets:
            if s and len(s) >= MIN_SECRET_LEN:
                found |= _variants(s)
        ordered = sorted(found, key=len, reverse=True)  # a longer form first: it may contain a shorter one
        self._text = tuple(ordered)
        self._bytes = tuple(s.encode("utf-8", "surrogatepass") for s in ordered)

    def __bool__(self) -> bool:
        return bool(self._text)

    def text(self, value: str) -> str:
        for s in self._text:
            if s in value:
                value = value.replace(s, REDACTED)
        return value

    def data(self, value: bytes) -> bytes:
        for s in self._bytes:
            if value.find(s) != -1:  # not ``in``: see SSEFilter.feed (every streamed event comes here)
                value = value.replace(s, REDACTED.encode())
        return value

    def headers(self, headers: CIMultiDict[str]) -> CIMultiDict[str]:
        """The headers with every secret replaced, in names and values (a new multidict if any was)."""
        if not self._text or not any(s in k or s in v for k, v in headers.items() for s in self._text):
            return headers
        return CIMultiDict([(self.text(k), self.text(v)) for k, v in headers.items()])


NO_SECRETS = Redactor(())


@functools.lru_cache(maxsize=1024)
def _redactor(api_key: str | None, urls: tuple[str, ...]) -> Redactor:
    secrets = [api_key] if api_key else []
    for url in urls:
        secrets += url_secrets(url)
    return Redactor(secrets)


# model object's id -> (the model, its redactor): several look-ups per request, each otherwise a
# tuple of the model's URLs and an lru_cache probe. The model is kept with its redactor, so an id is
# never reused while its entry exists, and a reloaded config's models get their own entries.
_BY_MODEL: dict[int, tuple[Any, Redactor]] = {}


def model_redactor(model: Any) -> Redactor:
    """The redactor for a configured model: its api_key and the userinfo of its URLs."""
    if model is None:
        return NO_SECRETS
    hit = _BY_MODEL.get(id(model))
    if hit is not None and hit[0] is model:
        return hit[1]
    redactor = _redactor(model.api_key, _model_urls(model))
    if len(_BY_MODEL) >= 1024:
        _BY_MODEL.clear()
    _BY_MODEL[id(model)] = (model, redactor)
    return redactor


def _model_urls(model: Any) -> tuple[str, ...]:
    urls = tuple(model.upstreams)
    if model.tokenize is not None and model.tokenize.url:
        urls += (model.tokenize.url,)
    return urls


def clean_message(model: Any, text: str) -> str:
    """An error message for a client or the ledger: no credential of ``model``, no URL userinfo."""
    text = model_redactor(model).text(text)
    return _USERINFO.sub(REDACTED + "@", text) if "@" in text else text


# --------------------------------------------------------------------------- logs

_log_secret_list: list[str] = []
_log_secrets: Redactor = NO_SECRETS
_installed = False


def scrub_log_text(text: str) -> str:
    """A log message without credentials, URL userinfo or client API keys."""
    text = _log_secrets.text(text)
    if "cbk_" in text:
        text = _CLIENT_TOKEN.sub("cbk_" + REDACTED, text)
    if "@" in text:
        text = _USERINFO.sub(REDACTED + "@", text)
    return text


def install_log_redaction(models: Iterable[Any] = ()) -> None:
    """Scrub every log record from now on (its message, exception text and stack), for every logger
    and handler; ``models``: whose credentials to look for. Calling it again adds models."""
    global _log_secrets, _installed
    for model in models:
        if model.api_key:
            _log_secret_list.append(model.api_key)
        for url in _model_urls(model):
            _log_secret_list.extend(url_secrets(url))
    _log_secrets = Redactor(_log_secret_list)
    if _installed:
        return
    _installed = True
    make = logging.getLogRecordFactory()
    formatter = logging.Formatter()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep the record as it is, logging reports it
            return record
        record.msg, record.args = scrub_log_text(message), ()
        if record.exc_info:
            record.exc_text = scrub_log_text(formatter.formatException(record.exc_info))
        if record.stack_info:
            record.stack_info = scrub_log_text(record.stack_info)
        return record

    logging.setLogRecordFactory(factory)

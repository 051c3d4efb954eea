"""TLS and basic auth for every HTTP listener, from a ``--web.config.file`` in the Prometheus
ecosystem's format (exporter-toolkit's web configuration):

    tls_server_config:
      cert_file: /etc/chargeback/tls.crt
      key_file: /etc/chargeback/tls.key
      client_ca_file: /etc/chargeback/ca.crt          # optional: verify client certificates
      client_auth_type: RequireAndVerifyClientCert     # optional (default NoClientCert)
      min_version: TLS12                               # optional: TLS10..TLS13 (default TLS12)
      max_version: TLS13                               # optional
    http_server_config:
      headers: {Strict-Transport-Security: max-age=31536000}   # optional, added to every response
    basic_auth_users:
      prometheus: $2y$10$...                           # bcrypt hash (htpasswd -nBC 10 "" | tr -d ':\\n')

The same file works for node_exporter or Prometheus itself. Keys this implementation cannot honour
(``cipher_suites``, ``curve_preferences``, ``http2`` …) are an error naming the file and key rather
than being ignored. Checked passwords are cached (keyed by a SHA-256 of the credentials), so a
scrape every few seconds does not pay bcrypt's deliberate slowness each time.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import yaml
from aiohttp import web

TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_OPTIONAL,  # Python cannot request without verifying: verifies if sent
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
REALM = "chargeback"


class WebConfigError(ValueError):
    """A bad web config file: the message names the file and the key."""


@dataclass(frozen=True)
class WebConfig:
    path: str
    ssl_context: ssl.SSLContext | None = None
    users: Mapping[str, bytes] = field(default_factory=dict)  # user → bcrypt hash
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_context else "http"


def _err(path: str, key: str, message: str) -> WebConfigError:
    return WebConfigError(f"{path}: {key}: {message}" if key else f"{path}: {message}")


def _mapping(value: Any, path: str, key: str, allowed: set[str]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _err(path, key, f"expected a mapping, got {type(value).__name__}")
    for k in value:
        if k not in allowed:
            raise _err(
                path,
                f"{key}.{k}" if key else str(k),
                f"unknown or unsupported key (supported: {', '.join(sorted(allowed))})",
            )
    return value


def _file(value: Any, path: str, key: str, base: Path) -> str:
    if not isinstance(value, str) or not value:
        raise _err(path, key, "expected a file path")
    p = Path(value) if Path(value).is_absolute() else base / value  # relative to the web config, as in Go
    if not p.is_file():
        raise _err(path, key, f"no such file: {p}")
    return str(p)


def _tls(doc: dict[str, Any], path: str, base: Path) -> ssl.SSLContext | None:
    allowed = {"cert_file", "key_file", "client_ca_file", "client_auth_type", "min_version", "max_version"}
    tls = _mapping(doc.get("tls_server_config"), path, "tls_server_config", allowed)
    if not tls:
        return None
    k = "tls_server_config"
    if "cert_file" not in tls or "key_file" not in tls:
        missing = "cert_file" if "cert_file" not in tls else "key_file"
        raise _err(path, f"{k}.{missing}", "required when tls_server_config is set")
    cert = _file(tls["cert_file"], path, f"{k}.cert_file", base)
    key = _file(tls["key_file"], path, f"{k}.key_file", base)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise _err(path, f"{k}.cert_file", f"cannot load certificate and key: {exc}") from None
    versions = {}
    for v in ("min_version", "max_version"):
        if v in tls:
            if tls[v] not in TLS_VERSIONS:
                raise _err(path, f"{k}.{v}", f"expected one of {', '.join(TLS_VERSIONS)}, got {tls[v]!r}")
            versions[v] = TLS_VERSIONS[tls[v]]
    ctx.minimum_version = versions.get("min_version", ssl.TLSVersion.TLSv1_2)
    if "max_version" in versions:
        ctx.maximum_version = versions["max_version"]
    auth = tls.get("client_auth_type", "NoClientCert")
    if auth not in CLIENT_AUTH:
        raise _err(path, f"{k}.client_auth_type", f"expected one of {', '.join(CLIENT_AUTH)}, got {auth!r}")
    if CLIENT_AUTH[auth] != ssl.CERT_NONE:
        if "client_ca_file" not in tls:
            raise _err(path, f"{k}.client_ca_file", f"required with client_auth_type {auth}")
        ctx.load_verify_locations(_file(tls["client_ca_file"], path, f"{k}.client_ca_file", base))
        ctx.verify_mode = CLIENT_AUTH[auth]
    elif "client_ca_file" in tls:
        raise _err(
            path, f"{k}.client_auth_type", "client_ca_file is set but client certificates are not checked"
        )
    return ctx


def _users(doc: dict[str, Any], path: str) -> dict[str, bytes]:
    users = doc.get("basic_auth_users")
    if users is None:
        return {}
    if not isinstance(users, dict):
        raise _err(path, "basic_auth_users", "expected a mapping of user name to bcrypt hash")
    out = {}
    for user, hashed in users.items():
        key = f"basic_auth_users.{user}"
        if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            raise _err(path, key, "expected a bcrypt hash ($2y$…, e.g. from htpasswd -nBC 10)")
        try:  # a malformed hash must fail here, not on the first request
            bcrypt.checkpw(b"", hashed.encode())
        except ValueError:
            raise _err(path, key, "not a valid bcrypt hash") from None
        out[str(user)] = hashed.encode()
    return out


def load_web_config(path: str | None) -> WebConfig | None:
    """None without a path; raises :class:`WebConfigError` for anything it cannot honour."""
    if not path:
        return None
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise WebConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise WebConfigError(f"{path}: not valid YAML: {exc}") from None
    doc = _mapping(doc, path, "", {"tls_server_config", "http_server_config", "basic_auth_users"})
    http = _mapping(doc.get("http_server_config"), path, "http_server_config", {"headers"})
    headers = _mapping(
        http.get("headers"), path, "http_server_config.headers", set(http.get("headers") or {})
    )
    base = Path(path).resolve().parent
    return WebConfig(
        path=path,
        ssl_context=_tls(doc, path, base),
        users=_users(doc, path),
        headers={str(k): str(v) for k, v in headers.items()},
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _unauthorized() -> web.Response:
    return web.Response(
        status=401,
        text="401 Unauthorized\n",
        headers={"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'},
    )


def middleware(cfg: WebConfig, basic_auth: bool = True) -> Any:
    """aiohttp middleware: basic auth (when users are configured and ``basic_auth``) and headers."""
    users = dict(cfg.users) if basic_auth else {}
    ok: set[bytes] = set()  # SHA-256 of "user:password" pairs that passed bcrypt

    def parse(header: str) -> tuple[str, str] | None:
        if not header.startswith("Basic "):
            return None
        try:
            user, sep, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return (user, password) if sep else None

    def digest(user: str, password: str) -> bytes:
        return hashlib.sha256(f"{user}\0{password}".encode()).digest()

    def slow_check(user: str, password: str) -> bool:
        hashed = users.get(user)
        if hashed is None:
            bcrypt.checkpw(password.encode(), next(iter(users.values())))  # same time for unknown users
            return False
        if bcrypt.checkpw(password.encode(), hashed):
            ok.add(digest(user, password))
            return True
        return False

    @web.middleware
    async def mw(request: web.Request, handler: Handler) -> web.StreamResponse:
        if users:
            creds = parse(request.headers.get("Authorization", ""))
            allowed = False
            if creds is not None:
                d = digest(*creds)
                allowed = any(
                    hmac.compare_digest(d, x) for x in ok
                ) or await asyncio.get_running_loop().run_in_executor(
                    None, slow_check, *creds
                )  # bcrypt is slow on purpose: off the event loop
            if not allowed:
                resp: web.StreamResponse = _unauthorized()
                for k, v in cfg.headers.items():
                    resp.headers[k] = v
                return resp
        resp = await handler(request)
        for k, v in cfg.headers.items():
            resp.headers[k] = v
        return resp

    return mw


def protect(app: web.Application, cfg: WebConfig | None, basic_auth: bool = True) -> web.Application:
    """Add the web config's middleware to ``app`` (before it starts); returns ``app``."""
    if cfg is not None and (cfg.headers or (cfg.users and basic_auth)):
        app.middlewares.insert(0, middleware(cfg, basic_auth))
    return app


def ssl_context(cfg: WebConfig | None) -> ssl.SSLContext | None:
    return cfg.ssl_context if cfg else None

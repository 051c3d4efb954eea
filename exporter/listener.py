"""HTTP listeners that never echo what aiohttp's parser refused, shared by the proxy's listeners
and the GPU exporter's.

aiohttp's own answer to a request its parser refuses quotes the offending bytes (a whole
Authorization header, a client's API token or basic-auth password with it) in the log, with a
traceback, and in the response body. ``QuietAppRunner`` serves an app with a connection handler
that logs one line quoting nothing from the request and answers a fixed OpenAI-style 400.
"""

from __future__ import annotations

import logging

from aiohttp import http_exceptions, web
from aiohttp.web_protocol import RequestHandler

from exporter.logs import get_logger
from exporter.proxy.errors import error_body

log = get_logger(__name__)


# What a request the HTTP parser refused is told, by the parser's exception class. aiohttp's own
# message quotes the offending bytes (a whole Authorization header, say) and would be logged with a
# traceback and sent back in the body: neither happens here.
_PARSE_ERRORS: tuple[tuple[type[Exception], str], ...] = (
    (http_exceptions.LineTooLong, "a header or the request line is too long"),
    (http_exceptions.InvalidHeader, "a header is malformed"),
    (http_exceptions.BadStatusLine, "the request line is malformed"),
    (http_exceptions.InvalidURLError, "the request target is malformed"),
    (http_exceptions.PayloadEncodingError, "the request body's framing is malformed"),
)


def parse_error_reason(exc: BaseException) -> str:
    """A description of why the parser refused a request that quotes nothing from it."""
    for cls, reason in _PARSE_ERRORS:
        if isinstance(exc, cls):
            return reason
    # the C parser's messages start with a fixed text (what follows quotes the request)
    if str(getattr(exc, "message", "")).startswith("Invalid header"):
        return "a header is malformed"
    return "the request is not valid HTTP"


class QuietRequestHandler(RequestHandler):
    """aiohttp's connection handler, minus the echo: a request its parser refuses is logged as one
    line without the request's bytes, and answered with a fixed OpenAI-style 400."""

    __slots__ = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if not isinstance(exc, http_exceptions.HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        reason = parse_error_reason(exc)
        # a bad request line is what scanners and TLS clients on a plain port send: debug, like aiohttp
        level = logging.DEBUG if isinstance(exc, http_exceptions.BadStatusLine) else logging.INFO
        log.log(level, "refused a malformed HTTP request from %s: %s", request.remote, reason)
        if request.writer.output_size > 0:  # as aiohttp does: too late for an answer
            raise ConnectionError("response already started; cannot send the error")
        resp = web.Response(
            status=status,
            body=error_body(f"malformed HTTP request: {reason}", "invalid_request_error", "bad_http_request"),
            content_type="application/json",
        )
        resp.force_close()
        return resp


class QuietServer(web.Server):
    __slots__ = ()

    def __call__(self) -> RequestHandler:
        return QuietRequestHandler(self, loop=self._loop, **self._kwargs)


class QuietAppRunner(web.AppRunner):
    """An AppRunner whose connections are handled by ``QuietRequestHandler``."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = QuietServer  # same object and state; only new connections' handler differs
        return server

"""Hostile input at the proxy's edge (issue 11, items 1, 2, 5, 6 and part of 9), with real processes:
the proxy (a child process) in front of a misbehaving upstream (tests/hostile_upstream.py, real
HTTP), on an SQLite and on a PostgreSQL ledger.

- Absurd usage from the upstream (2**63, 1e19, negative, more cached than prompted, not a number)
  makes the request count as estimated, with a reason naming the field; rows and counters are exact.
- Text a client sends (a lone surrogate, NUL) is stored escaped/marked, and never blocks the ledger.
- The upstream's credential (api_key, URL userinfo) never reaches a client, the ledger or the log.
- A client's token never reaches the log, however broken its Authorization header is.
Every check finds its row by the request id the client was answered with.
"""

from __future__ import annotations

import json
import math
import socket
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
import requests
from hostile_upstream import TEXT, HostileUpstream
from support.ledger import pg_available, temp_pg_database

from exporter import contract
from exporter.proxy.usage import prompt_chars
from exporter.sim.harness import (
    ProxyProcess,
    metric,
    proxy_config,
    read_metrics,
    running_proxy,
    wait_for_rows,
)
from exporter.stack import free_port

UPSTREAM_KEY = "sk-hostile-upstream-credential-7f3a9c"
USERINFO_PASSWORD = "s3cr3t-pw"
USERS = {f"edge{i:02d}@corp.example": "research" for i in range(24)}
COMPLETION_ESTIMATE = math.ceil(len(TEXT) / 4)


@dataclass
class Edge:
    proxy: ProxyProcess
    ledger_url: str
    upstream_url: str
    tokens: dict[str, str]
    log_path: Path
    dead_port: int
    users: Iterator[str]

    def user(self) -> str:
        return next(self.users)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def edge(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    if request.param == "postgresql":
        reason = pg_available()
        if reason:
            pytest.skip(reason)
    workdir = tmp_path_factory.mktemp(f"edge-{request.param}")
    with HostileUpstream() as up:
        if request.param == "postgresql":
            with temp_pg_database("cb_edge") as url:
                yield from _stack(workdir, up, url)
        else:
            yield from _stack(workdir, up, f"sqlite:///{workdir / 'ledger.db'}")


def _stack(workdir: Path, up: HostileUpstream, ledger_url: str) -> Iterator[Edge]:
    dead = free_port()
    doc = proxy_config(
        upstreams={
            "hostile": [f"{up.url}/v1"],
            "userinfo": [f"http://alice:{USERINFO_PASSWORD}@127.0.0.1:{up.port}/v1"],
            "userinfo-dead": [f"http://alice:{USERINFO_PASSWORD}@127.0.0.1:{dead}/v1"],
        },
        ledger_url=ledger_url,
        spool_dir=str(workdir / "spool"),
        api_key=UPSTREAM_KEY,
    )
    for name in ("userinfo", "userinfo-dead"):  # credentials in the URL (sent as Basic auth) instead
        del doc["models"][name]["api_key"]
    with running_proxy(workdir, doc, USERS) as (proxy, tokens):
        yield Edge(proxy, ledger_url, up.url, tokens, proxy.process.log_path, dead, iter(USERS))


def chat_body(spec: dict[str, Any], model: str = "hostile", stream: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": json.dumps(spec)}]}
    if stream:
        body["stream"] = True
    return body


def row_of(edge: Edge, request_id: str) -> dict[str, Any]:
    (row,) = wait_for_rows(edge.ledger_url, 1, request_id=request_id)
    return row


def sdk(edge: Edge, user: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=edge.proxy.url + "/v1", api_key=edge.tokens[user], max_retries=0)


# --------------------------------------------------------------------------- absurd usage

LIMIT = "(at most 2147483647)"
ABSURD = {
    "2**63": (
        {"prompt_tokens": 2**63, "completion_tokens": 2, "total_tokens": 2**63 + 2},
        f"usage.prompt_tokens: 9223372036854775808 is out of range {LIMIT}",
    ),
    "1e19": (
        {"prompt_tokens": 1e19, "completion_tokens": 2, "total_tokens": 1e19},
        "usage.prompt_tokens: expected an integer, got a float 1e+19",
    ),
    "negative": (
        {"prompt_tokens": 10, "completion_tokens": -5, "total_tokens": 5},
        "usage.completion_tokens: -5 is negative",
    ),
    "cached>prompt": (
        {
            "prompt_tokens": 10,
            "completion_tokens": 2,
            "total_tokens": 12,
            "prompt_tokens_details": {"cached_tokens": 12},
        },
        "usage.prompt_tokens_details.cached_tokens (12) exceeds usage.prompt_tokens (10)",
    ),
    "bool": (
        {"prompt_tokens": True, "completion_tokens": 2, "total_tokens": 3},
        "usage.prompt_tokens: expected an integer, got a boolean True",
    ),
    "string": (
        {"prompt_tokens": "12", "completion_tokens": 2, "total_tokens": 14},
        "usage.prompt_tokens: expected an integer, got a str '12'",
    ),
    "total 2**31": (
        {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 2**31},
        f"usage.total_tokens: 2147483648 is out of range {LIMIT}",
    ),
}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("case", list(ABSURD))
def test_absurd_usage_is_estimated_with_a_reason(edge: Edge, case: str, stream: bool) -> None:
    usage, reason = ABSURD[case]
    user = edge.user()
    body = chat_body({"usage": usage}, stream=stream)
    resp = requests.post(
        f"{edge.proxy.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {edge.tokens[user]}"},
        json=body,
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    prompt = math.ceil(prompt_chars(body) / 4)
    row = row_of(edge, resp.headers["X-Request-Id"])
    assert {k: row[k] for k in ROW_KEYS} == {
        "user_email": user,
        "model": "hostile",
        "status_code": 200,
        "prompt_tokens": prompt,
        "completion_tokens": COMPLETION_ESTIMATE,
        "total_tokens": prompt + COMPLETION_ESTIMATE,
        "cached_tokens": 0,
        "estimated": True,
        "stream": stream,
        "error": "",
        "usage_source": "estimate",
        "usage_reason": f"upstream usage is invalid: {reason}",
    }
    # the counters moved by the estimate, not by 9.2e18
    samples = read_metrics(edge.proxy.metrics_url)
    labels = {"user": user, "model": "hostile"}
    assert metric(samples, contract.PROMPT_TOKENS_TOTAL, **labels) == prompt
    assert metric(samples, contract.COMPLETION_TOKENS_TOTAL, **labels) == COMPLETION_ESTIMATE
    assert metric(samples, contract.CACHED_PROMPT_TOKENS_TOTAL, **labels) == 0
    assert metric(samples, contract.USAGE_ESTIMATED_TOTAL, **labels) == 1
    assert metric(samples, contract.REQUESTS_TOTAL, **labels) == 1  # no code label since the by-code counter


ROW_KEYS = (
    "user_email", "model", "status_code", "prompt_tokens", "completion_tokens", "total_tokens",
    "cached_tokens", "estimated", "stream", "error", "usage_source", "usage_reason",
)  # fmt: skip


def test_valid_usage_is_taken_as_it_is(edge: Edge) -> None:
    user = edge.user()
    usage = {"prompt_tokens": 2**31 - 1, "completion_tokens": 0, "total_tokens": 2**31 - 1,
             "prompt_tokens_details": {"cached_tokens": 2**31 - 1}}  # fmt: skip
    raw = sdk(edge, user).chat.completions.with_raw_response.create(
        model="hostile", messages=[{"role": "user", "content": json.dumps({"usage": usage})}]
    )
    assert raw.parse().usage.prompt_tokens == 2**31 - 1
    row = row_of(edge, raw.headers["X-Request-Id"])
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"], row["cached_tokens"]) == (
        2**31 - 1, 0, 2**31 - 1, 2**31 - 1,
    )  # fmt: skip
    assert (bool(row["estimated"]), row["usage_source"], row["usage_reason"]) == (False, "upstream", "")


# --------------------------------------------------------------------------- text the database refuses


def test_unstorable_text_is_escaped_and_never_blocks_the_ledger(edge: Edge) -> None:
    user = edge.user()
    headers = {"Authorization": f"Bearer {edge.tokens[user]}", "Content-Type": "application/json"}
    url = f"{edge.proxy.url}/v1/chat/completions"
    sent = {
        # a lone surrogate, as the JSON escape a client sends
        "surrogate": b'{"model": "\\ud800", "messages": []}',
        "nul": b'{"model": "a\\u0000b", "messages": []}',
        "both": b'{"model": "x\\udfff\\u0000\\ud83d\\ude00y", "messages": []}',
    }
    ids = {}
    for name, data in sent.items():
        resp = requests.post(url, headers=headers, data=data, timeout=10)
        assert resp.status_code == 404, resp.text
        ids[name] = resp.headers["X-Request-Id"]
    # NUL and a lone surrogate in fields the proxy forwards but does not record: served and billed
    spec = json.dumps({"usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}})
    data = (
        b'{"model": "hostile", "user": "u\\u0000\\ud800", "messages": ['
        b'{"role": "system", "content": "nul \\u0000 and \\udc00"}, {"role": "user", "content": '
        + json.dumps(spec).encode()
        + b"}]}"
    )
    ok = requests.post(url, headers=headers, data=data, timeout=10)
    assert ok.status_code == 200, ok.text

    want = {
        "surrogate": ("\\ud800", "The model '\\ud800' does not exist"),
        "nul": ("a\u2400b", "The model 'a\u2400b' does not exist"),
        "both": ("x\\udfff\u2400\U0001f600y", "The model 'x\\udfff\u2400\U0001f600y' does not exist"),
    }
    for name, (model, error) in want.items():
        row = row_of(edge, ids[name])
        assert (row["model"], row["error"], row["status_code"], row["user_email"]) == (
            model,
            error,
            404,
            user,
        )
    row = row_of(edge, ok.headers["X-Request-Id"])
    assert (row["status_code"], row["prompt_tokens"], row["completion_tokens"], bool(row["estimated"])) == (
        200, 7, 3, False,
    )  # fmt: skip
    # the rows behind them were written too: the ledger went on
    assert wait_for_rows(edge.ledger_url, 4, user_email=user)


# --------------------------------------------------------------------------- credentials stay in


def test_upstream_credential_never_reaches_the_client(edge: Edge) -> None:
    user = edge.user()
    headers = {"Authorization": f"Bearer {edge.tokens[user]}"}
    url = f"{edge.proxy.url}/v1/chat/completions"
    echoed = requests.post(url, headers=headers, json=chat_body({"echo": True}), timeout=10)
    assert echoed.status_code == 401
    assert echoed.json()["error"]["message"] == "rejected credential Bearer [redacted]"
    assert echoed.headers["X-Upstream-Auth"] == "Bearer [redacted]"
    assert echoed.headers["X-Debug"] == "got=Bearer [redacted]"
    answered = requests.post(url, headers=headers, json=chat_body({"echo_ok": True}), timeout=10)
    assert answered.json()["choices"][0]["message"]["content"] == "you sent Bearer [redacted]"
    assert answered.headers["X-Upstream-Auth"] == "Bearer [redacted]"
    streamed = requests.post(url, headers=headers, json=chat_body({"echo_ok": True}, stream=True), timeout=10)
    assert streamed.status_code == 200 and "you sent Bearer [redacted]" in streamed.text
    for resp in (echoed, answered, streamed):
        everything = resp.text + json.dumps(dict(resp.headers))
        assert UPSTREAM_KEY not in everything and UPSTREAM_KEY[3:20] not in everything
    row = row_of(edge, echoed.headers["X-Request-Id"])
    assert (row["status_code"], row["error"]) == (401, "upstream returned 401")
    assert UPSTREAM_KEY not in edge.log()


def test_url_userinfo_is_never_printed(edge: Edge) -> None:
    user = edge.user()
    headers = {"Authorization": f"Bearer {edge.tokens[user]}"}
    url = f"{edge.proxy.url}/v1/chat/completions"
    # aiohttp sends the URL's userinfo as Basic auth: the upstream echoing it gets it redacted
    echoed = requests.post(url, headers=headers, json=chat_body({"echo": True}, "userinfo"), timeout=10)
    assert echoed.status_code == 401
    assert echoed.json()["error"]["message"] == "rejected credential Basic [redacted]"
    assert echoed.headers["X-Upstream-Auth"] == "Basic [redacted]"
    dead = requests.post(url, headers=headers, json=chat_body({}, "userinfo-dead"), timeout=10)
    assert dead.status_code == 502
    message = dead.json()["error"]["message"]
    assert message.startswith(
        f"no upstream for model 'userinfo-dead' is reachable (http://[redacted]@127.0.0.1:{edge.dead_port}/v1: "
    ), message
    for resp in (echoed, dead):
        everything = resp.text + json.dumps(dict(resp.headers))
        assert USERINFO_PASSWORD not in everything and "alice" not in everything
    up = edge.upstream_url.replace("http://", "http://[redacted]@")
    row = row_of(edge, echoed.headers["X-Request-Id"])
    assert (row["upstream"], row["error"]) == (f"{up}/v1", "upstream returned 401")
    row = row_of(edge, dead.headers["X-Request-Id"])
    assert (row["status_code"], row["upstream"], row["error"]) == (502, "", message)
    log = edge.log()
    assert "upstream http://[redacted]@127.0.0.1" in log  # the warning was logged, without userinfo
    assert USERINFO_PASSWORD not in log and "alice:" not in log


# --------------------------------------------------------------------------- client tokens and the parser


def raw_request(url: str, head: bytes, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are (no client library would send these headers); (status, headers, body)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(head + b"\r\n" + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    header, _, payload = data.partition(b"\r\n\r\n")
    lines = header.decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), fields, payload


def post_head(token: bytes, length: int) -> bytes:
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nContent-Length: " + str(length).encode() + b"\r\n"
        b"Authorization: Bearer " + token + b"\r\n"
    )


def test_client_token_never_reaches_the_log_or_an_error_body(edge: Edge) -> None:
    user = edge.user()
    token = edge.tokens[user].encode()
    body = json.dumps(chat_body({})).encode()
    before = edge.log().count("refused a malformed HTTP request")
    refused = {
        "nul": post_head(token + b"\x00tail", len(body)),
        "over 8 KiB": post_head(token + b"A" * 9000, len(body)),
    }
    for name, head in refused.items():
        status, _, payload = raw_request(edge.proxy.url, head, body)
        assert status == 400, name
        err = json.loads(payload)["error"]
        assert err["code"] == "bad_http_request" and err["message"].startswith("malformed HTTP request: ")
        assert token[4:] not in payload and b"AAAA" not in payload
    # a byte that is not UTF-8: no such key, 401 (not 500), and recorded as 401
    status, fields, payload = raw_request(edge.proxy.url, post_head(token + b"\xff", len(body)), body)
    assert status == 401, payload
    assert json.loads(payload)["error"]["code"] == "invalid_api_key"
    row = row_of(edge, fields["X-Request-Id"])
    assert (row["status_code"], row["user_email"], row["error"]) == (401, "", "invalid or revoked API key")
    log = edge.log()
    assert log.count("refused a malformed HTTP request") - before == 2
    secret = edge.tokens[user][4:]
    assert secret not in log and secret[:16] not in log


def test_deeply_nested_json_is_400(edge: Edge) -> None:
    user = edge.user()
    headers = {"Authorization": f"Bearer {edge.tokens[user]}", "Content-Type": "application/json"}
    nested = b"[" * 100_000 + b"]" * 100_000
    for data in (nested, b'{"model": "hostile", "messages": ' + nested + b"}"):
        resp = requests.post(f"{edge.proxy.url}/v1/chat/completions", headers=headers, data=data, timeout=10)
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"] == {
            "message": "malformed JSON body: nested too deeply",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_json",
        }
        row = row_of(edge, resp.headers["X-Request-Id"])
        assert (row["status_code"], row["user_email"], row["error"]) == (
            400, user, "malformed JSON body: nested too deeply",
        )  # fmt: skip


def test_ledger_files_are_private(edge: Edge) -> None:
    if not edge.ledger_url.startswith("sqlite"):
        pytest.skip("the database files are PostgreSQL's")
    db = Path(edge.ledger_url.removeprefix("sqlite:///"))
    files = {p.name: stat.S_IMODE(p.stat().st_mode) for p in db.parent.glob("ledger.db*")}
    assert files == {"ledger.db": 0o600, "ledger.db-wal": 0o600, "ledger.db-shm": 0o600}
    assert stat.S_IMODE((db.parent / "spool").stat().st_mode) == 0o700

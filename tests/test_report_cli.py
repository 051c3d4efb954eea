"""``chargeback report`` / ``chargeback compare`` as real processes, against a real Prometheus holding
the backfilled scenario (report_scenario), a real SMTP server (aiosmtpd) and an SQLite ledger."""

from __future__ import annotations

import email
import email.policy
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import report_scenario as sc
from aiosmtpd.controller import Controller

from exporter.ledger.row import LedgerRow
from exporter.ledger.store import open_store
from exporter.stack import ManagedProcess, free_port


@pytest.fixture(scope="module")
def prom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    work = tmp_path_factory.mktemp("report-cli-prom")
    with sc.scenario_prometheus(work) as p:
        yield p


@dataclass
class Mailbox:
    """aiosmtpd handler: keeps every message; refuses the recipients in ``reject`` with 550."""

    reject: set[str] = field(default_factory=set)
    messages: list[tuple[list[str], Any]] = field(default_factory=list)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # type: ignore[no-untyped-def]
        if address in self.reject:
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append((list(envelope.rcpt_tos), msg))
        return "250 Message accepted"

    def by_recipient(self) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {}
        for rcpts, msg in self.messages:
            for r in rcpts:
                out.setdefault(r, []).append(msg)
        return out


@pytest.fixture
def smtp() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    yield box, port
    controller.stop()


def write_config(tmp_path: Path, prom_url: str, smtp_port: int = 25, **kw: str) -> Path:
    path = tmp_path / "chargeback.yaml"
    text = sc.config_text(prom_url, out=str(tmp_path / "statements"), smtp_port=smtp_port,
                          ledger_url=f"sqlite:///{tmp_path / 'ledger.db'}", **kw)  # fmt: skip
    path.write_text(text)
    return path


run = sc.run


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_report_files_all_formats_and_byte_identical(prom: ManagedProcess, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, prom.url or "")
    # --now fixes the issue date printed on the statements (the day of --now in the billing zone)
    now = ("--now", "2026-11-02T09:00:00Z")
    r1 = run(cfg, "report", "--period", "2026-10", *now, "--out", str(tmp_path / "a"))
    assert r1.returncode == 0, r1.stderr
    r2 = run(cfg, "report", "--period", "2026-10", *now, "--out", str(tmp_path / "b"))
    assert r2.returncode == 0, r2.stderr
    a, b = tree(tmp_path / "a"), tree(tmp_path / "b")
    assert a == b  # same inputs → byte-identical statements
    assert sorted(a) == sorted(
        [
            f"2026-10/token-share/{n}"
            for n in ("statement.json", "lines.csv", "teams.csv", "pools.csv", "summary.html", "summary.md")
        ]
        + [
            f"2026-10/token-share/teams/{t}.{ext}"
            for t in ("alpha", "beta", "gamma", "unassigned")
            for ext in ("csv", "json", "html", "md")
        ]
    )
    alpha = a["2026-10/token-share/teams/alpha.csv"].decode().splitlines()
    assert alpha[0].startswith("period,period_start,period_end,currency,method,team,")
    # period start in Berlin time; the two alpha lines (token-share amounts from test_report.test_token_share)
    assert alpha[1].startswith(
        "2026-10,2026-10-01T00:00:00+02:00,2026-11-01T00:00:00+01:00,EUR,token-share,alpha,R&D,CC-1,usage,"
    )
    # the lines (rounded per team and per pool: see test_report.test_token_share), then the totals row
    assert [row.rsplit(",", 1)[1] for row in alpha[1:]] == ["507.96", "1181.72", "1689.68"]
    assert "al@corp.test,m-small,small,,80,600000,150000,0,750000,1500.000,507.96" in alpha[1]
    number = json.loads(a["2026-10/token-share/teams/alpha.json"])["statement_number"]
    assert alpha[3].endswith(
        f",total,,,,statement {number},235,2000000,450000,100000,3050000,3000.000,1689.68"
    )
    assert json.loads(a["2026-10/token-share/teams/alpha.json"])["issue_date"] == "2026-11-02"
    html = a["2026-10/token-share/summary.html"].decode()
    assert "<svg" in html and "<script" not in html and "€3,725.00" in html  # en_US by default
    summary = json.loads(a["2026-10/token-share/statement.json"])
    assert summary["summary"]["teams"] == {
        "alpha": "1689.68",
        "beta": "1967.59",
        "gamma": "0.00",
        "unassigned": "67.73",
    }
    assert "pool cost 3725.00 EUR" in r1.stdout


def test_email_statements_to_billing_contacts_and_finance(prom: ManagedProcess, tmp_path: Path, smtp) -> None:  # type: ignore[no-untyped-def]
    box, port = smtp
    cfg = write_config(tmp_path, prom.url or "", smtp_port=port)
    r = run(cfg, "report", "--period", "2026-10", "--email", "--format", "json")
    assert r.returncode == 0, r.stderr
    got = box.by_recipient()
    # every team to its billing contacts, the summary to finance; unassigned has nobody to send to
    assert sorted(got) == [
        "alpha-lead@corp.test",
        "b1@corp.test",
        "b2@corp.test",
        "finops@corp.test",
        "gamma@corp.test",
    ]
    (alpha,) = got["alpha-lead@corp.test"]
    assert alpha["Subject"] == "Chargeback statement October 2026: alpha — €1,689.68"
    # headers without which relays and clients score a message as spam
    assert re.fullmatch(r"<[^@<>\s]+@corp\.test>", alpha["Message-ID"]), alpha["Message-ID"]
    assert alpha["Date"].datetime.tzinfo is not None
    ids = {m["Message-ID"] for _, m in box.messages}
    assert len(ids) == len(box.messages) == 4  # alpha, beta, gamma, summary: every id unique
    html = alpha.get_body(("html",)).get_content()
    assert "Chargeback statement: alpha" in html and "<svg" in html
    atts = [(p.get_filename(), p.get_content()) for p in alpha.iter_attachments()]
    assert [n for n, _ in atts] == ["chargeback-2026-10-alpha.csv"]
    # the attachment is the file written to disk before sending
    written = (tmp_path / "statements/2026-10/token-share/teams/alpha.csv").read_text()
    content = atts[0][1]
    assert (content.decode() if isinstance(content, bytes) else content) == written
    (beta,) = got["b1@corp.test"]
    assert beta is got["b2@corp.test"][0]  # one message to both contacts
    assert [p.get_filename() for p in beta.iter_attachments()] == ["chargeback-2026-10-beta.csv"]
    (summary,) = got["finops@corp.test"]
    assert [p.get_filename() for p in summary.iter_attachments()] == [
        "chargeback-2026-10-lines.csv", "chargeback-2026-10-teams.csv", "chargeback-2026-10-pools.csv",
    ]  # fmt: skip
    assert "no billing_contacts" in r.stdout and "unassigned" in r.stdout


def test_one_recipient_failing(prom: ManagedProcess, tmp_path: Path, smtp) -> None:  # type: ignore[no-untyped-def]
    box, port = smtp
    box.reject = {"b2@corp.test"}
    cfg = write_config(tmp_path, prom.url or "", smtp_port=port)
    r = run(cfg, "report", "--period", "2026-10", "--email")
    assert r.returncode == 4
    assert "email to b2@corp.test (team beta) failed: 550" in r.stderr
    assert "chargeback: 1 of 5 recipients failed; the other 4 were delivered\n" in r.stderr
    # the others were delivered, b1 included (same message as b2)
    assert sorted(box.by_recipient()) == [
        "alpha-lead@corp.test",
        "b1@corp.test",
        "finops@corp.test",
        "gamma@corp.test",
    ]


def test_no_recipient_delivered_says_so(prom: ManagedProcess, tmp_path: Path, smtp) -> None:  # type: ignore[no-untyped-def]
    box, port = smtp
    box.reject = {
        "alpha-lead@corp.test",
        "b1@corp.test",
        "b2@corp.test",
        "finops@corp.test",
        "gamma@corp.test",
    }
    cfg = write_config(tmp_path, prom.url or "", smtp_port=port)
    r = run(cfg, "report", "--period", "2026-10", "--email")
    assert r.returncode == 4
    assert r.stderr.endswith("chargeback: no email was delivered: all 5 recipients failed\n"), r.stderr
    assert "delivered" not in r.stderr.replace("no email was delivered", "")
    assert box.by_recipient() == {}


def test_dry_run_sends_nothing(prom: ManagedProcess, tmp_path: Path, smtp) -> None:  # type: ignore[no-untyped-def]
    box, port = smtp
    cfg = write_config(tmp_path, prom.url or "", smtp_port=port)
    r = run(cfg, "report", "--period", "2026-10", "--email", "--dry-run", "--method", "tiered")
    assert r.returncode == 0, r.stderr
    assert box.messages == []
    assert "To: b1@corp.test, b2@corp.test" in r.stdout
    assert "Subject: Chargeback statement October 2026: beta — €215.00" in r.stdout
    assert "Attachment: chargeback-2026-10-beta.csv" in r.stdout


def test_prometheus_down_nothing_written_nothing_sent(tmp_path: Path, smtp) -> None:  # type: ignore[no-untyped-def]
    box, port = smtp
    dead = f"http://127.0.0.1:{free_port()}"
    cfg = write_config(tmp_path, dead, smtp_port=port)
    r = run(cfg, "report", "--period", "2026-10", "--email")
    assert r.returncode == 3
    assert f"Prometheus at {dead} is unreachable" in r.stderr
    assert "query: last_over_time(chargeback_" in r.stderr
    assert "nothing sent" in r.stderr
    assert not (tmp_path / "statements").exists()
    assert box.messages == []


def test_prometheus_query_error_names_query(prom: ManagedProcess, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, prom.url or "")
    cfg.write_text(
        cfg.read_text().replace("timeout_seconds: 20", "timeout_seconds: 20\n  selector: 'cluster=~\"(\"'")
    )
    r = run(cfg, "report", "--period", "2026-10")
    assert r.returncode == 3
    assert f"Prometheus at {prom.url} returned HTTP 400 bad_data" in r.stderr
    assert 'cluster=~"("' in r.stderr


def test_compare_every_method(prom: ManagedProcess, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, prom.url or "")
    r = run(cfg, "compare", "--period", "2026-10", "--format", "csv")
    assert r.returncode == 0, r.stderr
    rows = {line.split(",")[2]: line.split(",")[3:] for line in r.stdout.splitlines()[1:]}
    # columns: proxy-price-per-token, token-share, time-based, hybrid, tiered, flat-fee-with-overages
    assert rows["alpha"] == ["847.22", "1689.68", "1552.08", "1863.01", "201.00", "500.00"]
    assert rows["beta"] == ["1041.67", "1967.59", "2079.79", "1778.46", "215.00", "127.50"]
    assert rows["central-it"] == ["1808.33", "0.00", "0.00", "0.00", "3299.00", "2897.50"]
    assert rows["total pool cost"] == ["3725.00"] * 6
    md = run(cfg, "compare", "--period", "2026-10")
    assert "| alpha | 847.22 | 1689.68 |" in md.stdout


def test_bad_method_parameters_exit_2(prom: ManagedProcess, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, prom.url or "")
    cfg.write_text(
        cfg.read_text().replace(
            "price_per_million: 50}", "price_per_million: 50}\n    - {up_to_tokens: 10, price_per_million: 1}"
        )
    )
    r = run(cfg, "report", "--period", "2026-10")
    assert r.returncode == 2
    assert "report.tiers[2].up_to_tokens" in r.stderr


# --------------------------------------------------------------------------- ledger


def ledger_rows(drift: bool) -> list[LedgerRow]:
    """Rows matching the scenario's Berlin October per user × model; with ``drift``, al has two
    more requests (1,000 prompt tokens) than Prometheus saw — lost in proxy-a's restart."""
    rows = []
    for (team, user, model), (requests, prompt, completion, cached, seconds, _) in sc.EXPECTED_USAGE.items():
        if drift and user == "al@corp.test":
            requests, prompt = requests + 2, prompt + 1000
        label = "ghost" if team == "unassigned" else team
        for i in range(requests):
            first = i == 0
            rows.append(
                LedgerRow(
                    request_id=f"{user}-{model}-{i}", timestamp=f"2026-10-10T12:{i // 60:02d}:{i % 60:02d}.000000Z",
                    user_email=user, team=label, model=model, endpoint="/v1/chat/completions", status_code=200,
                    prompt_tokens=prompt if first else 0, completion_tokens=completion if first else 0,
                    total_tokens=(prompt + completion) if first else 0, cached_tokens=cached if first else 0,
                    estimated=False, stream=False, duration_ms=float(seconds * 1000) if first else 0.0, ttft_ms=None,
                    api_key_id="k", upstream="http://127.0.0.1:1/v1",
                )
            )  # fmt: skip
    # a September row (Berlin) that must not count: 2026-09-30T21:59Z is 23:59 in Berlin
    rows.append(LedgerRow("sept", "2026-09-30T21:59:00.000000Z", "al@corp.test", "alpha", "m-small", "/v1/chat/completions",
                          200, 5, 5, 10, 0, False, False, 1.0, None, "k", ""))  # fmt: skip
    return rows


def test_reconcile_with_ledger_and_source_ledger(prom: ManagedProcess, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, prom.url or "")
    store = open_store(f"sqlite:///{tmp_path / 'ledger.db'}")
    store.insert_rows(ledger_rows(drift=True))
    store.close()
    r = run(cfg, "report", "--period", "2026-10", "--reconcile", "--format", "json")
    assert r.returncode == 0, r.stderr
    assert "5 user × model pairs compared, 1 differ." in r.stdout
    assert "| al@corp.test | m-small | requests | 80 | 82 | -2 |" in r.stdout
    assert "| al@corp.test | m-small | prompt_tokens | 600000 | 601000 | -1000 |" in r.stdout
    assert "proxy restart between two scrapes" in r.stdout
    rec = json.loads((tmp_path / "statements/2026-10/token-share/reconcile.json").read_text())
    assert [d["cause"] for d in rec["drifts"]] == ["prometheus_lower"]

    # --source ledger: the same statement built from the ledger's (complete) quantities
    r = run(
        cfg,
        *sc.LEDGER_REPORT,
        "--format",
        "json",
        "--out",
        str(tmp_path / "led"),
    )
    assert r.returncode == 0, r.stderr
    st = json.loads((tmp_path / "led/2026-10/token-share/statement.json").read_text())
    assert st["source"] == "ledger"
    al = next(line for t in st["teams"] for line in t["lines"] if line["user"] == "al@corp.test")
    assert (al["requests"], al["prompt_tokens"], al["weighted_tokens"], al["request_seconds"]) == (
        82,
        601000,
        "751000",
        "1500.000",
    )
    # pool cost unchanged (from the GPU exporter / config); totals still reconcile to it
    assert st["summary"]["total_pool_cost"] == "3725.00"
    assert sum(float(v) for v in st["summary"]["teams"].values()) == pytest.approx(3725.00)


def test_relative_period_from_now_flag(prom: ManagedProcess, tmp_path: Path) -> None:
    """``--now`` fixes the instant that last-month is relative to: 00:30 on 1 November in Berlin
    is still October 31st in UTC, and the statements are October's, byte for byte."""
    cfg = write_config(tmp_path, prom.url or "")
    now = "2026-11-01T00:30:00+01:00"
    r = run(
        cfg, "report", "--period", "2026-10", "--now", now, "--format", "json", "--out", str(tmp_path / "a")
    )
    assert r.returncode == 0, r.stderr
    r = run(
        cfg,
        "report",
        "--period",
        "last-month",
        "--now",
        now,
        "--format",
        "json",
        "--out",
        str(tmp_path / "b"),
    )
    assert r.returncode == 0, r.stderr
    assert tree(tmp_path / "a") == tree(tmp_path / "b")
    r = run(cfg, "report", "--period", "last-month", "--now", "2026-11-01T00:30")
    assert r.returncode == 2
    assert "'2026-11-01T00:30' has no UTC offset" in r.stderr

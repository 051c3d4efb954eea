"""Emailing statements over SMTP (``smtplib``; the reporter is a command, so plain blocking I/O).

Each team's statement (HTML body, Markdown as the plain-text part, CSV attached) goes to its
billing contacts; the summary (HTML, with lines/teams/pools CSV attached) goes to
``report.finance_recipients``. Every message is sent on its own connection and every recipient
is accounted for: one refused recipient (or one unreachable mailbox) does not stop the others.

Every message carries ``Date:`` and ``Message-ID:`` (on the sender's domain): relays and mail
clients score messages without them as spam.
"""

from __future__ import annotations

import smtplib
import ssl
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from exporter.config import SmtpConfig
from exporter.report.output import safe_name
from exporter.report.render_csv import render_lines_csv, render_pools_csv, render_team_csv, render_teams_csv
from exporter.report.render_html import render_summary_html, render_team_html
from exporter.report.render_md import render_summary_md, render_team_md
from exporter.report.statement import Statement


@dataclass
class Outgoing:
    kind: str  # "team" | "summary"
    name: str  # team name or "summary"
    recipients: tuple[str, ...]
    subject: str
    html: str
    text: str
    attachments: list[tuple[str, str]] = field(default_factory=list)  # (filename, CSV text)

    def message(self, sender: str) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = sender
        msg["To"] = ", ".join(self.recipients)
        msg["Subject"] = self.subject
        msg["Date"] = formatdate(localtime=False, usegmt=True)
        msg["Message-ID"] = make_msgid(idstring="chargeback", domain=sender_domain(sender))
        msg.set_content(self.text)
        msg.add_alternative(self.html, subtype="html")
        for filename, content in self.attachments:
            msg.add_attachment(content.encode("utf-8"), maintype="text", subtype="csv", filename=filename)
        return msg


def sender_domain(sender: str) -> str:
    """``chargeback@corp.example`` (or ``Chargeback <chargeback@corp.example>``) → ``corp.example``."""
    address = sender.strip().rsplit("<", 1)[-1].rstrip(">").strip()
    return address.rsplit("@", 1)[1] if "@" in address else "localhost"


@dataclass
class Failure:
    recipient: str
    message: str  # which email (team or summary)
    error: str


def build_messages(st: Statement) -> tuple[list[Outgoing], list[str]]:
    """The emails for a statement, and notes about teams nobody will receive."""
    out: list[Outgoing] = []
    notes: list[str] = []
    label, title = st.period.label, st.period.title
    for t in st.teams:
        if not t.billing_contacts:
            notes.append(f"team {t.team}: no billing_contacts configured; statement written but not emailed")
            continue
        out.append(
            Outgoing(
                kind="team",
                name=t.team,
                recipients=tuple(t.billing_contacts),
                subject=f"Chargeback statement {title}: {t.team} — {st.cash(t.total)}"
                + (" (over budget)" if t.over_budget else ""),
                html=render_team_html(st, t),
                text=render_team_md(st, t),
                attachments=[
                    (f"chargeback-{safe_name(label)}-{safe_name(t.team)}.csv", render_team_csv(st, t))
                ],
            )
        )
    if st.central.billing_contacts:
        out.append(
            Outgoing(
                kind="summary",
                name="summary",
                recipients=tuple(st.central.billing_contacts),
                subject=f"Chargeback summary {title}: {st.cash(st.total_pool_cost)} pool cost, "
                f"{st.cash(st.recovered)} recovered",
                html=render_summary_html(st),
                text=render_summary_md(st),
                attachments=[
                    (f"chargeback-{safe_name(label)}-lines.csv", render_lines_csv(st)),
                    (f"chargeback-{safe_name(label)}-teams.csv", render_teams_csv(st)),
                    (f"chargeback-{safe_name(label)}-pools.csv", render_pools_csv(st)),
                ],
            )
        )
    else:
        notes.append("report.finance_recipients is empty: the summary is written but not emailed")
    return out, notes


def _connect(cfg: SmtpConfig) -> smtplib.SMTP:
    if cfg.security == "ssl":
        smtp: smtplib.SMTP = smtplib.SMTP_SSL(
            cfg.host, cfg.port, timeout=cfg.timeout_seconds, context=ssl.create_default_context()
        )
    else:
        smtp = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout_seconds)
        if cfg.security == "starttls":
            smtp.starttls(context=ssl.create_default_context())
    if cfg.username:
        smtp.login(cfg.username, cfg.password or "")
    return smtp


def send_messages(messages: list[Outgoing], cfg: SmtpConfig) -> tuple[list[str], list[Failure]]:
    """Send each message; returns (recipients delivered, failures)."""
    delivered: list[str] = []
    failures: list[Failure] = []
    for m in messages:
        where = f"{m.kind} {m.name}"
        try:
            smtp = _connect(cfg)
        except (OSError, smtplib.SMTPException) as exc:
            failures += [
                Failure(r, where, f"cannot reach SMTP server {cfg.host}:{cfg.port}: {exc}")
                for r in m.recipients
            ]
            continue
        try:
            refused = smtp.send_message(
                m.message(cfg.from_address), from_addr=cfg.from_address, to_addrs=list(m.recipients)
            )
            for r in m.recipients:
                if r in refused:
                    code, text = refused[r]
                    failures.append(
                        Failure(
                            r,
                            where,
                            f"{code} {text.decode(errors='replace') if isinstance(text, bytes) else text}",
                        )
                    )
                else:
                    delivered.append(r)
        except smtplib.SMTPRecipientsRefused as exc:
            for r in m.recipients:
                code, text = exc.recipients.get(r, (0, b"refused"))
                failures.append(
                    Failure(
                        r,
                        where,
                        f"{code} {text.decode(errors='replace') if isinstance(text, bytes) else text}",
                    )
                )
        except (OSError, smtplib.SMTPException) as exc:
            failures += [Failure(r, where, f"{type(exc).__name__}: {exc}") for r in m.recipients]
        finally:
            try:
                smtp.quit()
            except (OSError, smtplib.SMTPException):
                smtp.close()
    return delivered, failures


def describe(messages: list[Outgoing]) -> str:
    """What --dry-run prints: one block per email."""
    lines = []
    for m in messages:
        lines.append(f"To: {', '.join(m.recipients)}")
        lines.append(f"Subject: {m.subject}")
        lines.append(f"Body: HTML ({len(m.html.encode())} bytes) + text ({len(m.text.encode())} bytes)")
        for name, content in m.attachments:
            lines.append(f"Attachment: {name} ({len(content.encode())} bytes)")
        lines.append("")
    return "\n".join(lines)

"""A team statement and the summary in headless Chromium (Debian's ``chromium``): they render, show
their totals rows, highlight the team over budget and fit an A4 page's width.

The statements come from ``chargeback report --source ledger --pool-costs config`` over an SQLite
ledger (no Prometheus needed), in de_DE, with September's usage as the previous period. Each page
is measured at 794 CSS px (A4's 210 mm at 96 dpi): a copy with a small script appended reports
the document's scroll width and what it found through ``--dump-dom``; the statement itself has no
script. The screenshots land in the test's temporary directory, and in docs/img when
CHARGEBACK_UPDATE_SCREENSHOTS=1 (that is how docs/img/statement-*.png are made).
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
import report_scenario as sc

from exporter.ledger.row import LedgerRow
from exporter.ledger.store import open_store
from exporter.stack import chargeback_argv

A4_WIDTH_PX = 794
DOCS_IMG = Path(__file__).resolve().parent.parent / "docs" / "img"

# Measured inside the page: overflow of the document, and of any element past the right edge.
PROBE = """<script>
(() => {
  const doc = document.documentElement;
  let widest = 0;
  for (const el of document.querySelectorAll("body *")) {
    widest = Math.max(widest, el.getBoundingClientRect().right);
  }
  const over = [...document.querySelectorAll("tr.over td:first-child")].map(td => td.textContent);
  const totals = [...document.querySelectorAll("tfoot tr.totals")].map(tr => tr.textContent);
  document.title = JSON.stringify({
    scrollWidth: doc.scrollWidth, clientWidth: doc.clientWidth, widest: Math.ceil(widest),
    totals, over, budgetOver: document.querySelectorAll("p.budget.over").length,
  });
})();
</script>"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise RuntimeError("chromium not found: `make deps` installs Debian's chromium package")


def headless(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",  # tests may run as root in a container
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--disable-dev-shm-usage",
            f"--window-size={A4_WIDTH_PX},1123",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def measure(page: Path, tmp: Path) -> dict[str, object]:
    probe = tmp / f"probe-{page.name}"
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    r = headless("--dump-dom", probe.as_uri())
    assert r.returncode == 0, r.stderr[-2000:]
    m = re.search(r"<title>(.*?)</title>", r.stdout, re.S)
    assert m, r.stdout[:2000]
    return json.loads(html.unescape(m.group(1)))


def screenshot(page: Path, png: Path) -> tuple[int, int]:
    r = headless(f"--screenshot={png}", page.as_uri())
    assert r.returncode == 0, r.stderr[-2000:]
    head = png.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def row(rid: str, ts: str, user: str, team: str, model: str, prompt: int, completion: int) -> LedgerRow:
    return LedgerRow(rid, ts, user, team, model, "/v1/chat/completions", 200, prompt, completion,
                     prompt + completion, 0, False, False, 900.0, None, "k", "http://127.0.0.1:1/v1")  # fmt: skip


ROWS = [
    # September (Berlin): the previous period
    row("s1", "2026-09-10T10:00:00.000000Z", "ann@corp.test", "alpha", "m-big", 2_000_000, 100_000),
    row("s2", "2026-09-11T10:00:00.000000Z", "bob@corp.test", "beta", "m-big", 1_000_000, 50_000),
    row("s3", "2026-09-12T10:00:00.000000Z", "al@corp.test", "alpha", "m-small", 300_000, 20_000),
    # October (Berlin)
    row("o1", "2026-10-05T10:00:00.000000Z", "ann@corp.test", "alpha", "m-big", 1_200_000, 300_000),
    row("o2", "2026-10-06T10:00:00.000000Z", "bob@corp.test", "beta", "m-big", 2_600_000, 400_000),
    row("o3", "2026-10-07T10:00:00.000000Z", "al@corp.test", "alpha", "m-small", 450_000, 50_000),
    row("o4", "2026-10-08T10:00:00.000000Z", "bob@corp.test", "beta", "m-small", 150_000, 25_000),
]


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("screenshot")
    url = f"sqlite:///{tmp / 'ledger.db'}"
    store = open_store(url)
    assert store.insert_rows(ROWS) == len(ROWS)
    store.close()
    cfg = tmp / "chargeback.yaml"
    text = sc.config_text("http://127.0.0.1:1", out=str(tmp / "st"), ledger_url=url).replace(
        "report:\n",
        "report:\n  locale: de_DE\n  billing_contact: IT Finance, finops@corp.test, +49 30 1234 567\n",
    )
    cfg.write_text(text)
    r = subprocess.run(
        chargeback_argv(
            "report", "--period", "2026-10", "--source", "ledger", "--pool-costs", "config",
            "--format", "html,json", "--now", "2026-11-02T08:00:00Z", "--config.file", str(cfg),
        ),
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return tmp / "st/2026-10/token-share"


@pytest.mark.parametrize(
    ("page", "png", "totals"),
    [("teams/beta.html", "statement-team.png", 1), ("summary.html", "statement-summary.png", 2)],
)
def test_statement_fits_a4_width_with_totals(
    pages: Path, tmp_path: Path, page: str, png: str, totals: int
) -> None:
    doc = pages / page
    got = measure(doc, tmp_path)
    # nothing wider than the A4 page: no horizontal scrolling, no element past the right edge
    assert got["scrollWidth"] == got["clientWidth"] == A4_WIDTH_PX, got
    assert isinstance(got["widest"], int) and got["widest"] <= A4_WIDTH_PX, got
    rows = got["totals"]
    assert isinstance(rows, list) and len(rows) >= totals and all(r.startswith("Total") for r in rows), got
    shot = tmp_path / png
    assert screenshot(doc, shot) == (A4_WIDTH_PX, 1123)
    if os.environ.get("CHARGEBACK_UPDATE_SCREENSHOTS") == "1":
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, DOCS_IMG / png)


def test_over_budget_is_highlighted_and_figures_by_locale(pages: Path, tmp_path: Path) -> None:
    # 745 h in the Berlin October: big 2 GPUs × 2.50 = 3725.00, small 1 × 1.00 = 745.00
    # big by weighted tokens (prompt + 3 × completion): ann 2.1M, bob 3.8M of 5.9M
    #   ann 3725 × 2.1/5.9 = 1325.847457…, bob 3725 × 3.8/5.9 = 2399.152542…
    # small (weights 1/1): al 500k, bob 175k of 675k: al 551.851851…, bob 193.148148…
    # alpha 1877.699308… → 1877.70, beta 2592.300691… → 2592.30 (budget 1000: 259.2 %, over)
    beta = measure(pages / "teams/beta.html", tmp_path)
    assert beta["budgetOver"] == 1
    summary = measure(pages / "summary.html", tmp_path)
    assert summary["over"] == ["beta"]
    text = (pages / "teams/beta.html").read_text(encoding="utf-8")
    assert "Total: 2.592,30\xa0€" in text
    assert "Over budget by 1.592,30\xa0€: budget 1.000,00\xa0€, 259,2\xa0% used" in text
    st = json.loads((pages / "statement.json").read_text())
    assert st["summary"]["teams"] == {"alpha": "1877.70", "beta": "2592.30", "gamma": "0.00"}
    # September: the month has 720 h: big 3600.00, small 720.00; usage only by alpha and beta:
    # big ann 2.3M, bob 1.15M of 3.45M → 2400.00, 1200.00; small all al → 720.00
    assert st["previous_period"]["teams"] == {
        "alpha": "3120.00",
        "beta": "1200.00",
        "central-it": "0.00",
        "gamma": "0.00",
    }
    team = next(t for t in st["teams"] if t["team"] == "beta")
    # 2592.30 / (3.8M + 0.175M) × 1M = 652.150943…
    assert team["price_per_million_weighted_tokens"] == "652.150943"
    assert team["over_budget"] is True
    assert re.fullmatch(r"CB-2026-10-BETA-[0-9A-F]{6}", team["statement_number"])
    assert st["statement_number"] != team["statement_number"]
    assert (st["issue_date"], st["billing_contact"]) == (
        "2026-11-02",
        "IT Finance, finops@corp.test, +49 30 1234 567",
    )
    assert team["previous"]["total"] == "1200.00"

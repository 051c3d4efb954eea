"""The peers bench's report: the side-by-side table and the marked section it replaces in
docs/performance.md (the bench itself runs only under `make bench-peers`)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture(scope="module")
def peers():  # type: ignore[no-untyped-def]
    return _load_peers()


def _target(peers, name: str, pid: int | None, scale: float):  # type: ignore[no-untyped-def]
    t = peers.Target(
        name, "v", "http://x", "t", pid, startup=0.5 * scale, rss_idle=50 * scale, rss_after=60 * scale
    )
    for key, sent in (("plain", 1000), ("stream", 500), ("paced", 200)):
        lat = [0.010 * scale] * 98 + [0.030 * scale] * 2
        r = peers.Result(lat, [0.002 * scale] * 100, 2.0, 0, cpu_seconds=0.25 * scale)
        t.loads[key] = peers.Load(r, sent)
    return t


def test_table_rows(peers) -> None:  # type: ignore[no-untyped-def]
    loads = {
        "plain": peers.Workload("plain", {}, 16, 900, 100),
        "stream": peers.Workload("stream", {}, 16, 450, 50),
        "paced": peers.Workload("paced", {}, 16, 192, 8),
    }
    direct, ours, peer = (
        _target(peers, "d", None, 1.0),
        _target(peers, "o", 1, 2.0),
        _target(peers, "p", 2, 8.0),
    )
    rows = peers.table(direct, ours, peer, loads)
    assert rows[0] == "| measure | llm-chargeback v | LiteLLM v | LiteLLM / llm-chargeback |"
    assert rows[2] == (
        "| CPU per 1,000 non-streaming requests (zero-latency upstream, 16 concurrent) | 0.50 s | 2.00 s | 4.0× |"
    )
    assert rows[4] == "| CPU per 1,000 paced streams of 24 tokens (16 concurrent) | 2.50 s | 10.00 s | 4.0× |"
    assert rows[5] == "| CPU per streamed token, paced streams | 104 µs | 417 µs | 4.0× |"
    assert rows[6] == (
        "| added median latency, non-streaming (zero-latency upstream) | 10.0 ms | 70.0 ms | (direct 10.0 ms) |"
    )
    assert rows[7] == (
        "| added p99 latency, non-streaming (zero-latency upstream) | 30.0 ms | 210.0 ms | (direct 30.0 ms) |"
    )
    assert rows[8] == "| non-streaming requests/s (zero-latency upstream) | 50 | 50 | (direct 50) |"
    assert (
        rows[9]
        == "| added median TTFT, streams (zero-latency upstream) | 2.0 ms | 14.0 ms | (direct 2.0 ms) |"
    )
    assert rows[-3] == "| RSS after start-up (whole process tree) | 100 MB | 400 MB | 4.0× |"
    assert rows[-1] == "| start-up time (process start to first healthy answer) | 1.0 s | 4.0 s | 4.0× |"
    assert len(rows) == 16


def test_replace_section(peers) -> None:  # type: ignore[no-untyped-def]
    new = f"{peers.BEGIN}\nnew figures\n{peers.END}"
    doc = "# Performance\n\n## Proxy\n\ntext\n"
    once = peers.replace_section(doc, new)
    assert once == doc + "\n" + new + "\n"
    assert peers.extract_section(once) == new
    # a second run replaces the section in place and leaves everything around it
    around = once + "\n## After\n"
    newer = f"{peers.BEGIN}\nnewer\n{peers.END}"
    assert peers.replace_section(around, newer) == doc + "\n" + newer + "\n\n## After\n"
    assert peers.extract_section(doc) is None


def test_section_is_marked(peers) -> None:  # type: ignore[no-untyped-def]
    loads = {k: peers.Workload(k, {}, 16, 100, 10) for k in ("plain", "stream", "paced")}
    targets = [_target(peers, n, p, s) for n, p, s in (("d", None, 1.0), ("o", 1, 2.0), ("p", 2, 8.0))]
    text = peers.section(*targets, loads, peers.Placement({0}, {1}, {1}), 0.2)
    assert text.startswith(peers.BEGIN + "\n## Side by side with LiteLLM")
    assert text.endswith("\n" + peers.END)
    assert "proxy on CPU 0, simulator on CPU 1, load generator on CPU 1" in text
    assert "load average 0.20 at start. On a zero-latency" in text
    assert peers.extract_section("x\n" + text + "\ny") == text


def test_a_full_bench_run_keeps_recorded_sections_and_the_peers_table(tmp_path, monkeypatch):
    """`make bench` rewrites docs/performance.md; one-off comparisons marked as recorded and the
    LiteLLM table (written only by `make bench-peers`) survive it, each exactly once."""
    spec = importlib.util.spec_from_file_location("run_all", BENCH / "run_all.py")
    assert spec and spec.loader
    run_all = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_all)
    recorded = "<!-- recorded:begin before-after (note) -->\n## Before and after\n\nfigures\n<!-- recorded:end before-after -->"
    peers = _load_peers()
    peers_section = f"{peers.BEGIN}\n## Side by side\n{peers.END}"
    out = tmp_path / "performance.md"
    out.write_text(f"# Performance\n\n## Old generated\n\n{recorded}\n\n{peers_section}\n")

    class Fake:
        @staticmethod
        def run(quick: bool) -> str:
            return "## Fresh section\n\nnew figures"

    monkeypatch.setattr(run_all, "ORDER", ["gpu"])
    monkeypatch.setattr(run_all, "load", lambda name: Fake if name == "gpu" else peers)
    monkeypatch.setattr(sys, "argv", ["run_all.py", "--out", str(out)])
    assert run_all.main() == 0
    text = out.read_text()
    assert "## Old generated" not in text
    assert text.count("## Fresh section") == 1
    assert text.count(recorded) == 1
    assert text.count(peers_section) == 1
    assert text.index("## Fresh section") < text.index(recorded) < text.index(peers_section)


def _load_peers():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("bench_peers", BENCH / "bench_peers.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module

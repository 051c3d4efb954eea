"""The journal's group-commit thread (exporter/ledger/journal.py): it syncs what was written within
``fsync_seconds`` and sleeps while nothing is written (an idle proxy must not wake it 100 times a
second)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from exporter.ledger.journal import Journal, journal_lines


class CountingJournal(Journal):
    def __init__(self, directory: Path) -> None:
        super().__init__(directory, fsync_seconds=0.01, segment_bytes=64 * 1024)
        self.syncs = 0
        self.synced = threading.Event()

    def sync(self) -> None:
        super().sync()
        self.syncs += 1
        self.synced.set()


def _wait(event: threading.Event) -> None:
    assert event.wait(10), "the sync thread did not run"
    event.clear()


def test_idle_journal_thread_sleeps_and_wakes_for_a_write(tmp_path: Path) -> None:
    j = CountingJournal(tmp_path)
    j.open()
    try:
        _wait(j.synced)  # the first sync at open: the spare segment, made ahead of time
        assert j._spare is not None
        after_open = j.syncs
        time.sleep(0.3)  # 30 group-commit windows with nothing written
        assert j.syncs == after_open

        seq = j.append(b'{"n": 1}\n')
        _wait(j.synced)
        assert j.syncs == after_open + 1
        assert not j._cur.dirty  # type: ignore[union-attr]
        time.sleep(0.3)
        assert j.syncs == after_open + 1  # idle again

        # a rotation wakes it too: the old segment is finished (trimmed to its lines, closed)
        j.rotate()
        _wait(j.synced)
        old = j.segment_path(seq)
        assert old.stat().st_size == len(b'{"n": 1}\n')
        with old.open("rb") as f:
            assert [line for _, line in journal_lines(f)] == [b'{"n": 1}\n']
    finally:
        j.close(remove_lock=True)
    assert j._syncer is not None and not j._syncer.is_alive()


def test_close_wakes_a_sleeping_sync_thread(tmp_path: Path) -> None:
    j = CountingJournal(tmp_path)
    j.open()
    _wait(j.synced)
    j.append(b'{"n": 2}\n')
    _wait(j.synced)
    j.close(remove_lock=True)  # the thread sleeps on "nothing to do": close must end it, not time out
    assert j._syncer is not None and not j._syncer.is_alive()
    assert not list(tmp_path.glob("journal-*.lock"))

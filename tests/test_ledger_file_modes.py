"""The ledger's files are private to the service's user (issue 11, item 9): the SQLite database, its
WAL and shared-memory files are created 0600 (directories 0700), whatever the umask lets through;
files and directories that already exist keep the modes their operator gave them. (The journal in
``spool_dir`` sets its own modes: exporter/ledger/journal.py.)"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.ledger import make_row

from exporter.ledger.store import open_store


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    old = os.umask(0o022)  # the usual default: 0644 files, 0755 directories
    try:
        yield
    finally:
        os.umask(old)


def test_new_ledger_is_private(tmp_path: Path, permissive_umask: None) -> None:
    db = tmp_path / "data" / "ledger.db"
    store = open_store(f"sqlite:///{db}")
    store.insert_rows([make_row(1)])
    names = {p.name: mode(p) for p in db.parent.iterdir()}
    assert names == {"ledger.db": 0o600, "ledger.db-wal": 0o600, "ledger.db-shm": 0o600}
    assert mode(db.parent) == 0o700
    store.close()


def test_existing_modes_are_left_as_configured(tmp_path: Path, permissive_umask: None) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o750)
    db = shared / "ledger.db"
    open_store(f"sqlite:///{db}").close()
    db.chmod(0o640)  # the operator lets a reporting group read it
    store = open_store(f"sqlite:///{db}")
    store.insert_rows([make_row(1)])
    assert mode(shared) == 0o750 and mode(db) == 0o640
    store.close()

"""Files that hold the ledger (key hashes and everyone's usage) are created private to the service's
user: files 0600, directories 0700. Only creation sets a mode: a file or directory that already
exists keeps the mode its operator gave it (``chmod``/``chgrp`` to share read access on purpose)."""

from __future__ import annotations

import os
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700


def make_private_dir(path: Path) -> None:
    """``mkdir -p``, the last directory (when created) 0700."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)


def create_private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600 unless it exists (SQLite gives its WAL and shared-memory
    files the mode of the database file, so they are 0600 too)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return
    os.close(fd)

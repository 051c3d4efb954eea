"""The dead-letter file: rows the database refuses for good, kept for a person to look at.

One JSON object per line, ``{"reason": ..., "row": {...}}``, in ``<spool_dir>/dead-letter/``
(0600 files in a 0700 directory), fsync'ed before the row is counted as handled. A row lands here
only after it was isolated from its batch and the database refused it alone with a permanent error
(a data or encoding error, a value out of range); the rows behind it are never held up.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from exporter.ledger.journal import FILE_MODE, secure_dir
from exporter.logs import get_logger

log = get_logger(__name__)


class DeadLetters:
    def __init__(self, directory: str | os.PathLike[str], instance: str) -> None:
        self.dir = Path(directory) / "dead-letter"
        self.path = self.dir / f"dead-letter-{instance}.jsonl"
        self._lock = threading.Lock()
        self.rows = 0  # counter: rows written here by this process

    def add(self, row: dict[str, Any] | str, reason: str) -> None:
        """Keep one row; raises OSError when even this file cannot be written."""
        line = json.dumps({"reason": reason, "row": row}, ensure_ascii=True, default=str) + "\n"
        with self._lock:
            secure_dir(self.dir)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
            try:
                os.write(fd, line.encode("ascii"))
                os.fsync(fd)
            finally:
                os.close(fd)
            self.rows += 1
        log.error("ledger row moved to the dead-letter file %s: %s", self.path, reason)

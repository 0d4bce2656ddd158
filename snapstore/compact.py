"""``snap compact``: give the embedded SQLite store's free space back to the file system.

SQLite does not shrink a database file by itself (``auto_vacuum`` is off):
pages of deleted rows go to the freelist, later inserts reuse them, and the
file keeps its size. The WAL file grows to the largest run of writes between
two checkpoints and is then reused, not truncated. So after gc deletes many
objects the file stays as large as before (measured in docs/maintenance.md).

``compact`` checkpoints the WAL into the database and truncates it, runs
``VACUUM`` (which rewrites the database without free pages, through the WAL
in WAL mode) and checkpoints again. ``VACUUM`` holds the write lock while it
runs: writers wait (up to the 30 s busy timeout), readers do not.
PostgreSQL and S3 stores manage their own space (autovacuum, deleted bodies).
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .backends.base import Backend
from .errors import BackendError


@dataclass(frozen=True)
class SqliteSpace:
    """Where a SQLite store's bytes are."""

    file_bytes: int
    wal_bytes: int
    page_size: int
    pages: int
    free_pages: int

    @property
    def free_bytes(self) -> int:
        return self.free_pages * self.page_size

    def to_json(self) -> dict[str, Any]:
        return {"file_bytes": self.file_bytes, "wal_bytes": self.wal_bytes, "page_size": self.page_size,
                "pages": self.pages, "free_pages": self.free_pages, "free_bytes": self.free_bytes}


@dataclass(frozen=True)
class CompactReport:
    store: str
    applicable: bool
    dry_run: bool
    before: SqliteSpace | None = None
    after: SqliteSpace | None = None
    wal_busy: bool = False

    @property
    def reclaimed(self) -> int:
        if self.before is None or self.after is None:
            return 0
        return (self.before.file_bytes + self.before.wal_bytes) - (self.after.file_bytes + self.after.wal_bytes)

    def to_json(self) -> dict[str, Any]:
        return {"store": self.store, "applicable": self.applicable, "dry_run": self.dry_run,
                "before": self.before.to_json() if self.before else None,
                "after": self.after.to_json() if self.after else None,
                "reclaimed_bytes": self.reclaimed, "wal_busy": self.wal_busy}


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, timeout=30.0)
    db.execute("PRAGMA busy_timeout = 30000")
    return db


def sqlite_space(path: str | os.PathLike[str], counts: tuple[int, int, int] | None = None) -> SqliteSpace:
    """File and WAL sizes, pages and free pages of a SQLite database; ``counts``: its page size, page
    count and free pages as read already (:meth:`SqliteBackend.page_counts`), else read here."""
    path = Path(path)
    if counts is None:
        db = _connect(path)
        try:
            counts = (db.execute("PRAGMA page_size").fetchone()[0], db.execute("PRAGMA page_count").fetchone()[0],
                      db.execute("PRAGMA freelist_count").fetchone()[0])
        except sqlite3.DatabaseError as exc:
            raise BackendError(f"{path}: {exc}") from None
        finally:
            db.close()
    page_size, pages, free = counts
    wal = Path(f"{path}-wal")
    return SqliteSpace(path.stat().st_size, wal.stat().st_size if wal.exists() else 0, page_size, pages, free)


def compact(backend: Backend, *, dry_run: bool = False) -> CompactReport:
    """Checkpoint and truncate the WAL, VACUUM, checkpoint again; report the space before and after."""
    from .backends.sqlite import SqliteBackend

    if not isinstance(backend, SqliteBackend):
        return CompactReport(backend.description, applicable=False, dry_run=dry_run)
    before = sqlite_space(backend.path, backend.page_counts())
    if dry_run:
        return CompactReport(backend.description, True, True, before)
    backend.check_writable("`snap compact`")
    db = _connect(backend.path)
    try:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.execute("VACUUM")
        busy = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise BackendError(f"{backend.path}: cannot compact: {exc}") from None
    finally:
        db.close()
    return CompactReport(backend.description, True, False, before, sqlite_space(backend.path), bool(busy))

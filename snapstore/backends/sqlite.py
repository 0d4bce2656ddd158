"""The embedded default backend: one SQLite database in WAL mode.

Why SQLite (measured in docs/benchmarks.md): a commit is one transaction,
and in WAL mode with ``synchronous=FULL`` a transaction costs one fsync of
the WAL file however many objects it holds, where one file per object costs a
file fsync plus a directory fsync per object. SQLite also gives several
processes safe concurrent access (one writer at a time, readers never
blocked) and readers see only committed transactions, never half of one.

Ids are stored as 32 raw bytes. New stores keep objects in a rowid table
with a unique index on the id: rows go to the end of the table and only the
small index entries land at random, where a ``WITHOUT ROWID`` table keyed by
the id (stores made before) keeps whole rows in its interior pages, spills
them to overflow pages and dirties more pages per commit (docs/benchmarks.md,
"The SQLite schema"). The reflog's ``seq`` is a plain rowid (no reflog row is
ever deleted, so it only grows), which spares a commit the ``sqlite_sequence``
update. Every query works on both schemas.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from ..errors import BackendError, RefConflict, StoreNotFound
from ..objects import ObjectId
from ..timeutil import utc_now
from .base import (
    LOG_KEY_META, AppendedEntry, Backend, Capability, LogAppend, RefUpdate, ReflogEntry, StoredObject,
    check_fence, link,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    id BLOB NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    size INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS refs (
    name TEXT PRIMARY KEY,
    target BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reflog (
    seq INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    old BLOB,
    new BLOB,
    time TEXT NOT NULL,
    reason TEXT NOT NULL,
    log_sequence INTEGER,
    log_hash TEXT
);
CREATE INDEX IF NOT EXISTS reflog_name ON reflog (name, seq);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
"""

# The audit log kept in the store (snapstore/storelog.py): one row per entry,
# the exact line of the client's JSON Lines format. Created by the first
# append, so stores made before it need no upgrade.
_LOG_SCHEMA = """CREATE TABLE IF NOT EXISTS ozolith (
    sequence INTEGER PRIMARY KEY,
    entry_hash TEXT NOT NULL,
    line TEXT NOT NULL
)"""

_BATCH = 500
DB_NAME = "store.sqlite"
_INSERT_OBJECT = "INSERT OR IGNORE INTO objects (id, kind, size, data) VALUES (?, ?, ?, ?)"


def _raw(oid: str | None) -> bytes | None:
    return None if oid is None else bytes.fromhex(oid)


def _hex(raw: bytes | None) -> ObjectId | None:
    return None if raw is None else ObjectId(raw.hex())


class SqliteBackend(Backend):
    """Objects, refs, reflog and meta in one SQLite file."""

    capabilities = frozenset({Capability.DURABLE, Capability.MULTI_PROCESS})

    def __init__(self, path: str | Path, create: bool = False) -> None:
        self.path = Path(path)
        self.description = str(self.path)
        if not create and not self.path.is_file():
            raise StoreNotFound(f"{self.path} does not exist")
        self._lock = threading.RLock()
        self._log_table = False
        with self._errors():
            self._db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
            try:
                self._db.execute("PRAGMA busy_timeout = 30000")
                mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if mode.lower() != "wal":
                    raise BackendError(f"{self.path}: cannot enable WAL mode (got {mode})")
                self._db.execute("PRAGMA synchronous = FULL")
                if create:
                    self._db.executescript(_SCHEMA + ";" + _LOG_SCHEMA)
                else:
                    self._db.execute("SELECT 1 FROM objects LIMIT 1")
            except BaseException:
                self._db.close()
                raise

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.DatabaseError as exc:
            text = str(exc)
            if "file is not a database" in text or "no such table" in text:
                raise StoreNotFound(f"{self.path} is not a snapstore database ({text})") from None
            raise BackendError(f"{self.path}: {text}") from None

    def _query(self, sql: str, params: Sequence[object] = ()) -> list[tuple]:
        with self._lock, self._errors():
            return self._db.execute(sql, params).fetchall()

    # -- objects -----------------------------------------------------------

    def get_objects(self, ids: Iterable[ObjectId]) -> dict[ObjectId, StoredObject]:
        wanted = list(dict.fromkeys(ids))
        found: dict[ObjectId, StoredObject] = {}
        for start in range(0, len(wanted), _BATCH):
            batch = wanted[start : start + _BATCH]
            marks = ",".join("?" * len(batch))
            rows = self._query(
                f"SELECT id, kind, size, data FROM objects WHERE id IN ({marks})",
                [bytes.fromhex(i) for i in batch],
            )
            for raw, kind, size, data in rows:
                oid = ObjectId(raw.hex())
                found[oid] = StoredObject(oid, kind, size, data)
        return found

    def has_objects(self, ids: Iterable[ObjectId]) -> set[ObjectId]:
        wanted = list(dict.fromkeys(ids))
        found: set[ObjectId] = set()
        for start in range(0, len(wanted), _BATCH):
            batch = wanted[start : start + _BATCH]
            marks = ",".join("?" * len(batch))
            rows = self._query(
                f"SELECT id FROM objects WHERE id IN ({marks})", [bytes.fromhex(i) for i in batch]
            )
            found.update(ObjectId(r[0].hex()) for r in rows)
        return found

    def iter_objects(self, kind: str | None = None) -> Iterator[StoredObject]:
        last = b""
        while True:
            if kind is None:
                rows = self._query(
                    "SELECT id, kind, size, data FROM objects WHERE id > ? ORDER BY id LIMIT ?",
                    (last, _BATCH),
                )
            else:
                rows = self._query(
                    "SELECT id, kind, size, data FROM objects WHERE id > ? AND kind = ? "
                    "ORDER BY id LIMIT ?",
                    (last, kind, _BATCH),
                )
            if not rows:
                return
            for raw, k, size, data in rows:
                yield StoredObject(ObjectId(raw.hex()), k, size, data)
            last = rows[-1][0]

    def count_objects(self) -> tuple[int, int, int]:
        count, stored, logical = self._query(
            "SELECT count(*), coalesce(sum(length(data)), 0), coalesce(sum(size), 0) FROM objects"
        )[0]
        return count, stored, logical

    def find_ids(self, prefix: str, limit: int = 2) -> list[ObjectId]:
        low = bytes.fromhex((prefix + "0" * 64)[:64])
        high = bytes.fromhex((prefix + "f" * 64)[:64])
        rows = self._query(
            "SELECT id FROM objects WHERE id BETWEEN ? AND ? ORDER BY id LIMIT ?",
            (low, high, limit),
        )
        return [ObjectId(r[0].hex()) for r in rows]

    def delete_objects(self, ids: Iterable[ObjectId], fence: Mapping[str, tuple[ObjectId, int]] | None = None) -> int:
        wanted = [bytes.fromhex(i) for i in dict.fromkeys(ids)]
        removed = 0
        with self._lock, self._errors():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if fence is not None:
                    rows = self._db.execute(
                        "SELECT name, target, (SELECT count(*) FROM reflog WHERE reflog.name = refs.name) FROM refs"
                    ).fetchall()
                    current = {n: (ObjectId(t.hex()), c) for n, t, c in rows}
                    check_fence(current, fence)
                for start in range(0, len(wanted), _BATCH):
                    batch = wanted[start : start + _BATCH]
                    marks = ",".join("?" * len(batch))
                    cur = self._db.execute(f"DELETE FROM objects WHERE id IN ({marks})", batch)
                    removed += cur.rowcount
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return removed

    # -- refs and meta -----------------------------------------------------

    def get_ref(self, name: str) -> ObjectId | None:
        rows = self._query("SELECT target FROM refs WHERE name = ?", (name,))
        return _hex(rows[0][0]) if rows else None

    def list_refs(self, prefix: str = "") -> dict[str, ObjectId]:
        rows = self._query("SELECT name, target FROM refs ORDER BY name")
        return {n: ObjectId(t.hex()) for n, t in rows if n.startswith(prefix)}

    def reflog(self, name: str) -> list[ReflogEntry]:
        rows = self._query(
            "SELECT name, old, new, time, reason, log_sequence, log_hash FROM reflog "
            "WHERE name = ? ORDER BY seq",
            (name,),
        )
        return [ReflogEntry(n, _hex(o), _hex(w), t, r, ls, lh) for n, o, w, t, r, ls, lh in rows]

    def get_meta(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def list_meta(self, prefix: str = "") -> dict[str, str]:
        rows = self._query("SELECT key, value FROM meta ORDER BY key")
        return {k: v for k, v in rows if k.startswith(prefix)}

    def write(
        self,
        objects: Sequence[StoredObject] = (),
        ref_updates: Sequence[RefUpdate] = (),
        meta: Mapping[str, str | None] | None = None,
        append: LogAppend | None = None,
        new_ids: list[ObjectId] | None = None,
    ) -> AppendedEntry | None:
        with self._lock, self._errors():
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            entry = None
            try:
                for update in ref_updates:
                    row = db.execute(
                        "SELECT target FROM refs WHERE name = ?", (update.name,)
                    ).fetchone()
                    actual = _hex(row[0]) if row else None
                    if actual != update.old:
                        raise RefConflict(update.name, update.old, actual)
                if append is not None:
                    # BEGIN IMMEDIATE holds the database's write lock: appenders take turns.
                    entry = self._append_locked(db, append)
                    ref_updates = [link(u, entry) for u in ref_updates]
                if objects and new_ids is None:
                    db.executemany(_INSERT_OBJECT, [(bytes.fromhex(o.id), o.kind, o.size, o.data) for o in objects])
                elif objects:
                    # One statement per object: its change count says whether the object was new,
                    # inside the transaction, so a commit needs no query beforehand.
                    for o in objects:
                        if db.execute(_INSERT_OBJECT, (bytes.fromhex(o.id), o.kind, o.size, o.data)).rowcount:
                            new_ids.append(o.id)
                now = utc_now()
                for update in ref_updates:
                    if update.new is None:
                        db.execute("DELETE FROM refs WHERE name = ?", (update.name,))
                    else:
                        db.execute(
                            "INSERT INTO refs (name, target) VALUES (?, ?) "
                            "ON CONFLICT (name) DO UPDATE SET target = excluded.target",
                            (update.name, _raw(update.new)),
                        )
                    db.execute(
                        "INSERT INTO reflog (name, old, new, time, reason, log_sequence, log_hash)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            update.name, _raw(update.old), _raw(update.new), now,
                            update.reason, update.log_sequence, update.log_hash,
                        ),
                    )
                for key, value in (meta or {}).items():
                    if value is None:
                        db.execute("DELETE FROM meta WHERE key = ?", (key,))
                    else:
                        # An unchanged value writes nothing (a commit re-sends the active conversation).
                        db.execute(
                            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) "
                            "DO UPDATE SET value = excluded.value WHERE value IS NOT excluded.value",
                            (key, value),
                        )
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            if append is not None:
                self._log_table = True
        return entry

    def write_reporting_new(
        self,
        objects: Sequence[StoredObject] = (),
        ref_updates: Sequence[RefUpdate] = (),
        meta: Mapping[str, str | None] | None = None,
        append: LogAppend | None = None,
    ) -> tuple[AppendedEntry | None, list[ObjectId]]:
        new_ids: list[ObjectId] = []
        return self.write(objects, ref_updates, meta, append, new_ids=new_ids), new_ids

    def _append_locked(self, db: sqlite3.Connection, append: LogAppend) -> AppendedEntry:
        if not self._log_table:
            db.execute(_LOG_SCHEMA)
        row = db.execute("SELECT line FROM ozolith ORDER BY sequence DESC LIMIT 1").fetchone()
        key_row = db.execute("SELECT value FROM meta WHERE key = ?", (LOG_KEY_META,)).fetchone()
        entry, new_key = append.build(row[0] if row else None, key_row[0] if key_row else None)
        db.execute("INSERT INTO ozolith (sequence, entry_hash, line) VALUES (?, ?, ?)",
                   (entry.sequence, entry.entry_hash, entry.line))
        if new_key is not None:
            db.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (LOG_KEY_META, new_key))
        return entry

    def writer_lock(self, name: str) -> contextlib.AbstractContextManager[None]:
        """A byte-range lock on ``writer.lock`` in the store folder, one byte per ref name (hashed).

        POSIX record locks belong to the process, so threads of one process
        queue on the in-process lock first.
        """
        return self._writer_lock(name)

    @contextlib.contextmanager
    def _writer_lock(self, name: str) -> Iterator[None]:
        offset = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=4).digest(), "big") & 0x3FFFFFFF
        with super().writer_lock(name):
            fd = os.open(self.path.parent / "writer.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX, 1, offset)
                try:
                    yield
                finally:
                    fcntl.lockf(fd, fcntl.LOCK_UN, 1, offset)
            finally:
                os.close(fd)

    def _has_log(self) -> bool:
        if not self._log_table:
            self._log_table = bool(self._query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'ozolith'"))
        return self._log_table

    def log_lines(self, after: int = 0, limit: int | None = None) -> list[tuple[int, str]]:
        if not self._has_log():
            return []
        return [(s, line) for s, line in self._query(
            "SELECT sequence, line FROM ozolith WHERE sequence > ? ORDER BY sequence LIMIT ?",
            (after, -1 if limit is None else limit),
        )]

    def log_tail(self) -> tuple[int, str] | None:
        if not self._has_log():
            return None
        rows = self._query("SELECT sequence, line FROM ozolith ORDER BY sequence DESC LIMIT 1")
        return (rows[0][0], rows[0][1]) if rows else None

    def close(self) -> None:
        with self._lock:
            self._db.close()

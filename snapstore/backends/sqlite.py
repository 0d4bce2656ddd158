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

import bisect
import contextlib
import errno
import fcntl
import hashlib
import json
import math
import os
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from ..errors import (
    BackendError, CorruptObject, DamagedLogPack, DamagedRecord, LogError, ReadOnlyStore, RefConflict, StoreExists,
    StoreNotFound,
)
from ..objects import ObjectId, is_object_id
from ..packs import (
    Pack, decode_lines, decode_objects, encode_lines, key_prefix, prefix_key, prefix_range, raw_frame,
)
from ..timeutil import utc_now
from .base import (
    LOG_KEY_META, AppendedEntry, Backend, Capability, LogAppend, LostReflogRows, RefUpdate, ReflogEntry,
    StoredObject, check_fence, check_log_tail, link, reflog_row_damage,
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

# A log row read whatever it holds (see _log_row): a line that is not UTF-8 text fails a plain read.
_LOG_ROW = "sequence, CAST(line AS BLOB), typeof(line)"
# An append's one read: the last row's key and line (NULLs if there is none) and the log's key.
_LOG_TAIL_AND_KEY = (
    "SELECT (SELECT max(sequence) FROM ozolith), (SELECT line FROM ozolith ORDER BY sequence DESC LIMIT 1),"
    " (SELECT value FROM meta WHERE key = ?)"
)


def _log_row(row: tuple[int, bytes | None, str]) -> tuple[int, Any]:
    """``(sequence, line)`` of a row read with ``_LOG_ROW``: the line's text, else what the row holds
    (bytes or None), for the reader to name the row."""
    sequence, raw, kind = row
    if kind == "text":
        try:
            return sequence, raw.decode("utf-8")  # type: ignore[union-attr]
        except UnicodeDecodeError:
            pass
    return sequence, raw


# Packs (snapstore/packs.py), created by the first ``pack``: cold objects
# compressed together, found through ``packed`` by the first 8 bytes of their
# id (an id whose 8-byte prefix is taken by another stays loose); log lines
# compressed together by sequence range. A pack id is never reused
# (AUTOINCREMENT), so a process may cache a pack's content for good.
_PACK_SCHEMA = """
CREATE TABLE IF NOT EXISTS packs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    members INTEGER NOT NULL,
    live INTEGER NOT NULL,
    live_size INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS packed (
    prefix INTEGER PRIMARY KEY,
    pack INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS ozolith_packs (
    first INTEGER PRIMARY KEY,
    last INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS reflog_packs (
    first INTEGER PRIMARY KEY,
    last INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS reflog_packed (
    name TEXT PRIMARY KEY,
    count INTEGER NOT NULL,
    max_log_sequence INTEGER NOT NULL
) WITHOUT ROWID;
"""

# What gc's fence compares: each ref's target and how many reflog rows it has (loose and packed).
_FENCE_QUERY = "SELECT name, target, (SELECT count(*) FROM reflog WHERE reflog.name = refs.name) FROM refs"
_FENCE_QUERY_PACKED = (
    "SELECT name, target, (SELECT count(*) FROM reflog WHERE reflog.name = refs.name)"
    " + coalesce((SELECT count FROM reflog_packed WHERE reflog_packed.name = refs.name), 0) FROM refs"
)
# Packs of lines: the loose table, its key, the columns that make a line, the table of packs.
_LINE_PACKS = {
    "log": ("ozolith", "sequence", "line", "ozolith_packs"),
    "reflog": ("reflog", "seq", "name, old, new, time, reason, log_sequence, log_hash", "reflog_packs"),
}
# The tables init makes: a database holding only these, all empty, holds no store yet (SqliteBackend._create).
_INIT_TABLES = frozenset({"objects", "refs", "reflog", "meta", "ozolith"})
_BATCH = 500
# Decompressed packs kept per backend (they never change): bytes of content.
PACK_CACHE_BYTES = 64 << 20
DB_NAME = "store.sqlite"
_INSERT_OBJECT = "INSERT OR IGNORE INTO objects (id, kind, size, data) VALUES (?, ?, ?, ?)"
_INSERT_OBJECTS_PREFIX = "INSERT OR IGNORE INTO objects (id, kind, size, data) VALUES "
_REPLACE_OBJECT = ("INSERT INTO objects (id, kind, size, data) VALUES (?, ?, ?, ?) ON CONFLICT (id) "
                   "DO UPDATE SET kind = excluded.kind, size = excluded.size, data = excluded.data")
_INSERT_BATCH = 200  # objects per INSERT (4 parameters each, well under SQLite's limit)


def _create_pack_tables(db: sqlite3.Connection) -> None:
    """The pack tables, inside the caller's write transaction (executescript would commit it)."""
    for statement in _PACK_SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)


def _raw(oid: str | None) -> bytes | None:
    return None if oid is None else bytes.fromhex(oid)


# PRAGMA journal_size_limit: SQLite checkpoints once the WAL holds 1,000 pages (4 KiB each, ~4.1 MB).
WAL_SIZE_LIMIT = 5 << 20


def _identity_of(path: Path) -> tuple[int, int]:
    """Which file ``path`` names now: (device, inode)."""
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _read_only_reason(db: Path) -> str | None:
    """Why this process may only read the store whose database is ``db`` (one line), or None if it may write it.

    Writing needs the file and its folder: SQLite makes the ``-wal`` and
    ``-shm`` files beside the database and removes them at the last close,
    and ``writer.lock`` lives there too. ``os.access`` answers for this
    process: a read-only mount refuses everyone, ``chmod a-w`` everyone but
    root (who then writes, as before).
    """
    if not os.access(db, os.W_OK):
        return f"this process may not write {db}"
    if not os.access(db.parent, os.W_OK):
        return f"this process may not write the folder {db.parent}"
    return None


def _sidecar(db: Path, suffix: str) -> Path:
    """SQLite's ``-wal`` or ``-shm`` file of the database ``db``."""
    return db.with_name(db.name + suffix)


def _files_state(db: Path) -> tuple[tuple[int, int, int, int] | None, ...]:
    """What any write to the database ``db`` changes: identity, size and times of the file, its -wal and -shm."""
    out: list[tuple[int, int, int, int] | None] = []
    for path in (db, _sidecar(db, "-wal"), _sidecar(db, "-shm")):
        try:
            st = os.stat(path)
        except FileNotFoundError:
            out.append(None)
        else:
            out.append((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(out)


def _id_damage(raw: object) -> str | None:
    """What an id column holds if it is not None or 32 bytes (``"29 bytes"``, ``"a str ('xyz')"``), else None."""
    if raw is None or (isinstance(raw, bytes) and len(raw) == 32):
        return None
    return f"{len(raw)} bytes" if isinstance(raw, bytes) else f"a {type(raw).__name__} ({str(raw)[:40]!r})"


def _hex(raw: bytes | None, where: str = "a row") -> ObjectId | None:
    """An id column's 32 bytes as hex; :class:`DamagedRecord` naming ``where`` for anything else."""
    if raw is None:
        return None
    shown = _id_damage(raw)
    if shown is not None:
        raise DamagedRecord(f"{where} holds {shown}, not a 32-byte object id: the store is damaged")
    return ObjectId(raw.hex())


def _text_or_bytes(raw: bytes) -> str | bytes:
    """A text column's value as text, or its bytes if they are not UTF-8 (the connection's text factory
    while :meth:`SqliteBackend._as_stored` reads).

    SQLite keeps whatever bytes a TEXT column was given; the default factory
    fails the whole query on one row that is not UTF-8 ("Could not decode to
    UTF-8 column ..."), naming no row. Read this way the query goes on, and the
    reader, which checks each value it needs is a ``str``, names the row.
    """
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def _under(key: object, prefix: str) -> bool:
    """Whether a meta key read as stored starts with ``prefix``; a key that is not text, by its bytes."""
    if isinstance(key, str):
        return key.startswith(prefix)
    return isinstance(key, bytes) and key.startswith(prefix.encode("utf-8"))


def _checked_reflog_row(path: Path, row: tuple) -> list[object]:
    """A loose reflog row ``(seq, name, old, new, time, reason, log_sequence, log_hash)`` as a
    :class:`ReflogEntry`'s fields (ids as hex), the form a pack holds it in; :class:`DamagedRecord`
    naming the row if a column holds what it never holds (read or packed, it would be hidden)."""
    seq, n, o, w, t, r, ls, lh = row
    where = f"{path}: a reflog row of {n!r} (seq {seq})"
    damage = reflog_row_damage(t, r, ls, lh) if isinstance(n, str) else f"its name is {n!r:.40}, not text"
    if damage is not None:
        raise DamagedRecord(f"{where}: {damage}: the store is damaged")
    return [n, _hex(o, where), _hex(w, where), t, r, ls, lh]


class SqliteBackend(Backend):
    """Objects, refs, reflog and meta in one SQLite file."""

    capabilities = frozenset({Capability.DURABLE, Capability.MULTI_PROCESS})

    def __init__(self, path: str | Path, create: bool = False, meta: Mapping[str, str] | None = None) -> None:
        """Open the store in the database at ``path``; with ``create``, make it there, recording ``meta``.

        Creating refuses (:class:`StoreExists`) a database that holds a store
        or anything else, and takes over one an interrupted init left without
        a store (see :meth:`_create`).
        """
        self.path = Path(path)
        self.description = str(self.path)
        if not create and not self.path.is_file():
            raise StoreNotFound(f"{self.path} does not exist")
        self._lock = threading.RLock()
        self._lock_file: _LockFile | None = None
        self._closed = False
        self._log_table = False
        self._pack_tables = False
        self._pack_cache: OrderedDict[int, Pack] = OrderedDict()
        self._pack_cache_bytes = 0
        # Parsed packs of lines by first sequence: (last, lines or reflog entries).
        self._log_pack_cache: OrderedDict[int, tuple[int, Any]] = OrderedDict()
        self._reflog_pack_cache: OrderedDict[int, tuple[int, Any]] = OrderedDict()
        # The files as this backend found them, while it reads them without SQLite's locks (_connect_read_only).
        self._unlocked_state: tuple[tuple[int, int, int, int] | None, ...] | None = None
        self.read_only = None if create else _read_only_reason(self.path)
        with self._errors():
            if self.read_only is None:
                self._db = sqlite3.connect(
                    self.path, isolation_level=None, check_same_thread=False, timeout=30.0
                )
            else:
                self._db = self._connect_read_only()
            try:
                self._db.execute("PRAGMA busy_timeout = 30000")
                if create:
                    # Judged before the pragmas below write to the file: only what an interrupted
                    # init left is taken over (_create judges again, inside its transaction).
                    try:
                        taken = not self._holds_no_store(self._db)
                    except sqlite3.DatabaseError as exc:
                        if "file is not a database" not in str(exc):
                            raise
                        taken = True
                    if taken:
                        raise StoreExists(f"a store already exists at {self.path.parent}")
                    # Pages freed by packing go back to the file system (PRAGMA incremental_vacuum);
                    # a store made before keeps them until `snap compact`. Set before anything
                    # is written: the WAL switch below writes the header.
                    self._db.execute("PRAGMA auto_vacuum = INCREMENTAL")
                else:
                    # Before the WAL switch, which writes the file: a database that is not a store
                    # (someone else's, an empty file) is refused unchanged. Stores are made in WAL
                    # mode; one in another mode (a copy, a restored backup) must hold a format key.
                    self._db.execute("SELECT 1 FROM objects LIMIT 1")
                    current = str(self._db.execute("PRAGMA journal_mode").fetchone()[0]).lower()
                    if current != "wal" and self._db.execute(
                            "SELECT 1 FROM meta WHERE key = 'format'").fetchone() is None:
                        raise StoreNotFound(f"{self.path} is not a snapstore store (no format version)")
                if self.read_only is None:
                    mode = self._switch_to_wal()
                    if mode.lower() != "wal":
                        raise BackendError(f"{self.path}: cannot enable WAL mode (got {mode})")
                    self._db.execute("PRAGMA synchronous = FULL")
                    # The WAL is written again from its start after each checkpoint, but never shrinks: one
                    # transaction larger than the ~4 MB commits reach between checkpoints (a pack round, gc,
                    # an import) left it that large for as long as the store stayed open. Cut back to this
                    # at the next restart of the WAL; above what commits reach, so they never regrow it.
                    self._db.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
                if create:
                    self._create(meta or {})
                # The file this connection writes to; every write transaction checks it is still there.
                self._file = Path(os.path.abspath(self.path))
                self._identity = _identity_of(self._file)
            except BaseException:
                self._db.close()
                raise

    def _connect_read_only(self) -> sqlite3.Connection:
        """A connection to a store this process may only read, which writes no file at all.

        SQLite reads a WAL database it may not write only through an existing
        ``-shm`` index, or one it can make, or as ``immutable`` (no locks, no
        WAL). So: with a ``-shm`` or a non-empty ``-wal`` beside the database (a
        process has the store open, or was killed with it open, or the copy was
        taken then), read-only mode, which reads the WAL and takes SQLite's
        read locks beside any writer. A ``-wal`` with content but no ``-shm``
        in a folder that cannot hold one cannot be read: refused, saying what to
        do (``immutable`` would silently skip the WAL's transactions). Without
        either file no process has the store open: ``immutable``, the only way
        SQLite reads it then. Since a process with write access could open it
        afterwards, the files are recorded now and every statement checks them
        afterwards (:meth:`_check_unlocked`): a read that a writer may have
        raced is an error, never a mixed answer.
        """
        wal, shm = _sidecar(self.path, "-wal"), _sidecar(self.path, "-shm")
        uri = Path(os.path.abspath(self.path)).as_uri() + "?mode=ro"
        wal_size = wal.stat().st_size if wal.exists() else 0
        if wal_size or shm.exists():
            if not shm.exists() and not os.access(self.path.parent, os.W_OK):
                raise ReadOnlyStore(
                    f"{self.path}: cannot read the store: its {wal.name} holds transactions not yet in the "
                    f"database, which SQLite reads only through a {shm.name} file, and this process may not "
                    f"write the folder {self.path.parent} to make one: copy the folder with {wal.name} somewhere "
                    "writable and read the copy")
        else:
            self._unlocked_state = _files_state(self.path)
            uri += "&immutable=1"
        return sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=30.0)

    def _check_unlocked(self) -> None:
        """After a statement on a store read without locks (see :meth:`_connect_read_only`): a
        :class:`BackendError` naming the store if any process changed its files since it was opened."""
        if self._unlocked_state is not None and _files_state(self.path) != self._unlocked_state:
            raise BackendError(
                f"{self.path}: another process opened or wrote the store while this one read it without locks "
                f"(a store this process may only read, and which no process had open, is read that way): what "
                "was read may mix two moments; run the command again")

    def _begin_write(self, db: sqlite3.Connection) -> None:
        """``BEGIN IMMEDIATE``, refused if the store's file was deleted or replaced since it was opened.

        SQLite goes on writing to the file it opened: after ``rm -r`` of the
        store, or another store put in its place, a commit would succeed into
        a file nobody will open again and be lost. The caller holds ``self._lock``.
        """
        self._refuse_write()
        db.execute("BEGIN IMMEDIATE")
        what = self.file_changed()
        if what is not None:
            db.execute("ROLLBACK")
            raise StoreNotFound(f"{self.path} was {what} after this process opened it: nothing was written; "
                                "open the store again")

    def file_changed(self) -> str | None:
        """How the store's file changed since this backend opened it (``"deleted"``, ``"replaced by another
        file"``), or None: a caller that also reads may want to know (writes check it themselves)."""
        try:
            now = _identity_of(self._file)
        except OSError:
            return "deleted"
        return None if now == self._identity else "replaced by another file"

    def _switch_to_wal(self) -> str:
        """``PRAGMA journal_mode = WAL``, retried while other connections hold the file; the mode it reports.

        Leaving rollback mode takes an exclusive lock from a shared one, and
        SQLite answers "database is locked" at once instead of waiting (the
        busy handler is not called where waiting could deadlock): processes
        opening one fresh file together meet it. On a store already in WAL
        mode the pragma changes nothing and returns at once.
        """
        deadline = time.monotonic() + 30.0
        pause = 0.001
        while True:
            try:
                return str(self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0])
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    def _create(self, meta: Mapping[str, str]) -> None:
        """The tables and the store's first meta in one write transaction.

        Other connections therefore see no store or a whole one, and
        creators racing on one fresh file queue on SQLite's write lock: the
        first makes the store, the others find it and raise
        :class:`StoreExists`. A database with only snapstore tables, all of
        them empty (an init killed after creating the file, or an older init,
        which committed each table on its own and ``format`` after them,
        killed in between), holds no store yet: it is made here like a new one.
        """
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            if not self._holds_no_store(db):
                raise StoreExists(f"a store already exists at {self.path.parent}")
            for statement in (_SCHEMA + ";" + _LOG_SCHEMA).split(";"):
                if statement.strip():
                    db.execute(statement)
            for key, value in meta.items():
                db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, value))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    @staticmethod
    def _holds_no_store(db: sqlite3.Connection) -> bool:
        """True if the database has no tables but snapstore's and they hold no object, ref or meta row."""
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables <= _INIT_TABLES:
            return False
        return not any(
            db.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone() for table in ("objects", "refs", "meta")
            if table in tables
        )

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.DatabaseError as exc:
            self._check_unlocked()  # a page torn by another process's write is named as that
            text = str(exc)
            if "file is not a database" in text or "no such table" in text:
                raise StoreNotFound(f"{self.path} is not a snapstore database ({text})") from None
            raise BackendError(f"{self.path}: {text}") from None
        except Exception:
            self._check_unlocked()  # so is damage read from such a page (a body that does not hash, say)
            raise
        self._check_unlocked()

    @contextlib.contextmanager
    def _read_snapshot(self) -> Iterator[sqlite3.Connection]:
        """Statements that see one moment of the database (a read transaction, unless one is open);
        the caller holds ``self._lock``."""
        if self._db.in_transaction:
            yield self._db
            return
        self._db.execute("BEGIN")
        try:
            yield self._db
        finally:
            self._db.execute("COMMIT")

    @contextlib.contextmanager
    def _as_stored(self) -> Iterator[sqlite3.Connection]:
        """The connection, under the lock, reading text that is not UTF-8 as its bytes (see
        :func:`_text_or_bytes`): the caller checks the values it reads are text and names a row that is not."""
        with self._lock, self._errors():
            before = self._db.text_factory
            self._db.text_factory = _text_or_bytes
            try:
                yield self._db
            finally:
                self._db.text_factory = before

    def _query(self, sql: str, params: Sequence[object] = ()) -> list[tuple]:
        """The rows of one statement, text that is not UTF-8 read as bytes (see :meth:`_as_stored`)."""
        with self._as_stored() as db:
            return db.execute(sql, params).fetchall()

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
        if len(found) < len(wanted):
            for oid, (kind, body) in self._packed([i for i in wanted if i not in found]).items():
                # The pack reader checked that the body hashes to oid (Pack.get).
                found[oid] = StoredObject(oid, kind, len(body), raw_frame(body), body)
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
        if len(found) < len(wanted):
            found.update(self._packed([i for i in wanted if i not in found]))
        return found

    def iter_objects(self, kind: str | None = None,
                     damaged: list[tuple[int, str]] | None = None) -> Iterator[StoredObject]:
        """Every object, loose ones first. A damaged pack raises :class:`CorruptObject`, or, given a
        ``damaged`` list, is recorded there as ``(pack id, message)`` and skipped (fsck's way)."""
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
                break
            for raw, k, size, data in rows:
                # An id of another length names no object (fsck reports it: malformed_object_rows).
                if len(raw) == 32:
                    yield StoredObject(ObjectId(raw.hex()), k, size, data)
            last = rows[-1][0]
        if not self._has_packs():
            return
        after = 0
        while True:
            rows = self._query("SELECT id FROM packs WHERE id > ? ORDER BY id LIMIT 1", (after,))
            if not rows:
                return
            after = rows[0][0]
            try:
                members = self._live_members(after)
            except CorruptObject as exc:
                if damaged is None:
                    raise
                damaged.append((after, exc.reason))
                continue
            for oid, (k, body) in members.items():
                if kind is None or k == kind:
                    yield StoredObject(oid, k, len(body), raw_frame(body))

    def malformed_object_rows(self) -> list[str]:
        """One line for each objects row whose id is not 32 bytes (a text, a number, another length):
        no id can find such a row and :meth:`iter_objects` skips it; fsck reports these. One scan of the id index."""
        rows = self._query(
            "SELECT hex(id), typeof(id), length(CAST(id AS BLOB)) FROM objects "
            "WHERE typeof(id) != 'blob' OR length(id) != 32 ORDER BY id"
        )
        out = []
        for shown, kind, size in rows:
            held = f"{size} bytes" if kind == "blob" else f"a {kind} of {size} bytes"
            out.append(f"{self.path}: the objects row with id x'{shown[:80]}' holds {held}, "
                       "not a 32-byte object id: the store is damaged")
        return out

    def count_objects(self) -> tuple[int, int, int]:
        count, stored, logical = self._query(
            "SELECT count(*), coalesce(sum(length(data)), 0), coalesce(sum(size), 0) FROM objects"
        )[0]
        if self._has_packs():
            live, packed, size = self._query(
                "SELECT coalesce(sum(live), 0), coalesce(sum(length(data)), 0), coalesce(sum(live_size), 0) FROM packs"
            )[0]
            count, stored, logical = count + live, stored + packed, logical + size
        return count, stored, logical

    def find_ids(self, prefix: str, limit: int = 2) -> list[ObjectId]:
        low = bytes.fromhex((prefix + "0" * 64)[:64])
        high = bytes.fromhex((prefix + "f" * 64)[:64])
        rows = self._query(
            "SELECT id FROM objects WHERE id BETWEEN ? AND ? ORDER BY id LIMIT ?",
            (low, high, limit),
        )
        ids = {ObjectId(r[0].hex()) for r in rows}
        if self._has_packs():
            key_low, key_high = prefix_range(prefix)
            packs = self._query(
                "SELECT DISTINCT pack FROM packed WHERE prefix BETWEEN ? AND ? ORDER BY pack", (key_low, key_high)
            )
            for (pack_id,) in packs:
                with self._lock, self._errors():
                    candidates = self._pack(pack_id).ids_with_prefix(prefix)
                live = self._packed([ObjectId(oid) for oid in candidates])
                ids.update(oid for oid in candidates if oid in live)
                if len(ids) > limit:
                    break
        return sorted(ids)[:limit]

    def delete_objects(self, ids: Iterable[ObjectId], fence: Mapping[str, tuple[ObjectId, int]] | None = None) -> int:
        wanted = list(dict.fromkeys(ids))
        removed: set[ObjectId] = set()
        with self._lock, self._errors():
            self._begin_write(self._db)
            try:
                if fence is not None:
                    rows = self._db.execute(_FENCE_QUERY if not self._has_packs() else _FENCE_QUERY_PACKED).fetchall()
                    current = {n: (ObjectId(t.hex()), c) for n, t, c in rows}
                    check_fence(current, fence)
                for oid in wanted:
                    if self._db.execute("DELETE FROM objects WHERE id = ?", (bytes.fromhex(oid),)).rowcount:
                        removed.add(oid)
                if self._has_packs():
                    touched = set()
                    for oid, pack_id, _, body in self._packed_rows(wanted):
                        self._db.execute("DELETE FROM packed WHERE prefix = ?", (prefix_key(oid),))
                        self._db.execute(
                            "UPDATE packs SET live = live - 1, live_size = live_size - ? WHERE id = ?",
                            (len(body), pack_id),
                        )
                        touched.add(pack_id)
                        removed.add(oid)
                    for pack_id in touched:
                        self._db.execute("DELETE FROM packs WHERE id = ? AND live <= 0", (pack_id,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return len(removed)

    def replace_objects(self, objects: Sequence[StoredObject]) -> None:
        """One transaction: each object's loose row written over (or added), and a readable pack's
        index row for it dropped, so the store holds it once, as given.

        A pack that cannot be read keeps its index row: which object that row
        is for cannot be told (an object whose id prefix another packed object
        holds is loose, :meth:`_write_pack`), and fsck goes on naming the
        damaged pack; reads take the loose copy first."""
        unique = {o.id: o for o in objects}
        if not unique:
            return
        with self._lock, self._errors():
            db = self._db
            self._begin_write(db)
            try:
                db.executemany(_REPLACE_OBJECT,
                               [(bytes.fromhex(o.id), o.kind, o.size, o.data) for o in unique.values()])
                if self._has_packs():
                    for oid in unique:
                        row = db.execute("SELECT pack FROM packed WHERE prefix = ?", (prefix_key(oid),)).fetchone()
                        if row is None:
                            continue
                        try:
                            member = self._pack(row[0], oid).get(oid)
                        except CorruptObject:
                            continue
                        if member is None:
                            continue  # the prefix is another object's
                        db.execute("DELETE FROM packed WHERE prefix = ?", (prefix_key(oid),))
                        db.execute("UPDATE packs SET live = live - 1, live_size = live_size - ? WHERE id = ?",
                                   (len(member[1]), row[0]))
                        db.execute("DELETE FROM packs WHERE id = ? AND live <= 0", (row[0],))
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    # -- packs (snapstore/packs.py) ------------------------------------------

    def _has_packs(self) -> bool:
        if not self._pack_tables:
            self._pack_tables = bool(self._query(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'packed'"))
        return self._pack_tables

    def _pack(self, pack_id: int, wanted: str = "?") -> Pack:
        """A pack's content, from the cache or the database (the caller holds ``self._lock``)."""
        pack = self._pack_cache.get(pack_id)
        if pack is not None:
            self._pack_cache.move_to_end(pack_id)
            return pack
        row = self._db.execute("SELECT data FROM packs WHERE id = ?", (pack_id,)).fetchone()
        if row is None:
            raise CorruptObject(wanted, f"indexed in pack {pack_id}, which does not exist")
        pack = decode_objects(row[0], pack_id, wanted)
        self._pack_cache[pack_id] = pack
        self._pack_cache_bytes += pack.raw_size
        while self._pack_cache_bytes > PACK_CACHE_BYTES and len(self._pack_cache) > 1:
            _, old = self._pack_cache.popitem(last=False)
            self._pack_cache_bytes -= old.raw_size
        return pack

    def _packed_rows(self, ids: Sequence[ObjectId]) -> list[tuple[ObjectId, int, str, bytes]]:
        """``(id, pack, kind, body)`` of the ids held in packs (the caller holds the lock, in a transaction)."""
        out = []
        for start in range(0, len(ids), _BATCH):
            keys: dict[int, list[ObjectId]] = {}
            for oid in ids[start : start + _BATCH]:
                keys.setdefault(prefix_key(oid), []).append(oid)
            marks = ",".join("?" * len(keys))
            for key, pack_id in self._db.execute(
                f"SELECT prefix, pack FROM packed WHERE prefix IN ({marks})", list(keys)
            ).fetchall():
                for oid in keys[key]:  # at most one of ids sharing a prefix is the packed object
                    pack = self._pack(pack_id, oid)
                    member = pack.get(oid)
                    if member is not None:
                        out.append((oid, pack_id, *member))
                    elif oid[:16] not in pack.index:  # no member shares the prefix the row was found by
                        raise CorruptObject(oid, f"indexed in pack {pack_id}, which holds no member with its "
                                                 f"id prefix {oid[:16]}: the pack index is damaged (snap fsck "
                                                 "names the row)")
        return out

    def _packed(self, ids: Sequence[ObjectId]) -> dict[ObjectId, tuple[str, bytes]]:
        """Kind and body of the ids held in packs."""
        if not ids or not self._has_packs():
            return {}
        found = {}
        # The index rows and the packs they name are of one moment, even if another process
        # repacks meanwhile.
        with self._lock, self._errors(), self._read_snapshot():
            for oid, _, kind, body in self._packed_rows(ids):
                found[oid] = (kind, body)
        return found

    def _live_members(self, pack_id: int) -> dict[ObjectId, tuple[str, bytes]]:
        """The members of a pack its index rows still name, with kind and body."""
        with self._lock, self._errors(), self._read_snapshot():
            try:
                pack = self._pack(pack_id)
            except CorruptObject:
                if self._db.execute("SELECT 1 FROM packs WHERE id = ?", (pack_id,)).fetchone() is None:
                    return {}  # deleted since it was listed
                raise
            members = pack.members()
            ids = list(members)
            live: dict[ObjectId, tuple[str, bytes]] = {}
            for start in range(0, len(ids), _BATCH):
                keys = {prefix_key(i): i for i in ids[start : start + _BATCH]}
                marks = ",".join("?" * len(keys))
                for (key,) in self._db.execute(
                    f"SELECT prefix FROM packed WHERE pack = ? AND prefix IN ({marks})", [pack_id, *keys]
                ).fetchall():
                    oid = ObjectId(keys[key])
                    live[oid] = members[oid]
        return live

    def loose_for_packing(self, keep: int, limit: int, cursor: object = None) -> tuple[list[StoredObject], object]:
        """Loose objects to pack, oldest first: all but the ``keep`` newest (by insertion), at most
        ``limit`` after ``cursor`` (None to start); returns them and the cursor for the next call.

        Stores whose objects table has no rowid (made before format 3's schema) cannot tell
        insertion order: their objects come in id order, and ``keep`` is ignored.
        """
        if self._rowid_objects():
            rows = self._query(
                "SELECT rowid, id, kind, size, data FROM objects WHERE rowid > ? "
                "AND rowid <= (SELECT max(rowid) FROM objects) - ? ORDER BY rowid LIMIT ?",
                (cursor or 0, keep, limit))
        else:
            rows = self._query("SELECT id, id, kind, size, data FROM objects WHERE id > ? ORDER BY id LIMIT ?",
                               (cursor or b"", limit))
        objects = [StoredObject(ObjectId(r.hex()), k, n, d) for _, r, k, n, d in rows]
        return objects, (rows[-1][0] if rows else cursor)

    def small_packs(self, members: int) -> list[int]:
        """Packs serving fewer than ``members`` objects: worth merging with newly packed ones."""
        if not self._has_packs():
            return []
        return [r[0] for r in self._query("SELECT id FROM packs WHERE live < ? ORDER BY id", (members,))]

    def loose_count(self) -> int:
        return self._query("SELECT count(*) FROM objects")[0][0]

    def sparse_packs(self) -> list[int]:
        """Packs of which gc left less than half: their live members are worth packing again."""
        if not self._has_packs():
            return []
        return [r[0] for r in self._query("SELECT id FROM packs WHERE live * 2 < members ORDER BY id")]

    def live_members(self, pack_id: int) -> list[tuple[ObjectId, str, bytes]]:
        """Id, kind and body of the members of a pack that its index still names."""
        return [(oid, kind, body) for oid, (kind, body) in self._live_members(pack_id).items()]

    def write_packs(self, packs: Sequence[tuple[Sequence[tuple[ObjectId, str, int, int | None]], bytes]]) -> int:
        """Store packs, each ``(members, data)``: members ``(id, kind, size, source)`` (source: None for
        a loose object, or the pack it is moved from), data made by
        :func:`snapstore.packs.encode_objects`; one durable transaction for all.

        A member gets indexed in its new pack only if it is still where it was read from (gc may
        have deleted it meanwhile) and its 8-byte id prefix is free; a loose object whose prefix
        another object holds stays loose. Returns how many members the packs serve.
        """
        with self._lock, self._errors():
            db = self._db
            self._begin_write(db)
            try:
                _create_pack_tables(db)
                served = sum(self._write_pack(db, members, data) for members, data in packs)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                # A rolled-back pack's id may be used again: forget what was cached in the transaction.
                self._pack_cache.clear()
                self._pack_cache_bytes = 0
                raise
            self._pack_tables = True
        return served

    def _write_pack(self, db: sqlite3.Connection, members: Sequence[tuple[ObjectId, str, int, int | None]],
                    data: bytes) -> int:
        pack_id = db.execute(
            "INSERT INTO packs (members, live, live_size, data) VALUES (?, 0, 0, ?)", (len(members), data)
        ).lastrowid
        live = live_size = 0
        sources: set[int] = set()
        loose = []
        for oid, _kind, size, source in members:
            if source is None:
                loose.append((oid, size))
            elif db.execute("UPDATE packed SET pack = ? WHERE prefix = ? AND pack = ?",
                            (pack_id, prefix_key(oid), source)).rowcount:
                db.execute("UPDATE packs SET live = live - 1, live_size = live_size - ? WHERE id = ?",
                           (size, source))
                sources.add(source)
                live, live_size = live + 1, live_size + size
        for start in range(0, len(loose), _BATCH):
            batch = dict(loose[start : start + _BATCH])
            keys = {prefix_key(oid): oid for oid in batch}
            marks = ",".join("?" * len(keys))
            taken = db.execute(f"SELECT prefix, pack FROM packed WHERE prefix IN ({marks})",
                               list(keys)).fetchall()
            for key, other in taken:
                oid = keys.pop(key)
                if self._pack(other, oid).get(oid) is not None:
                    # Packed already (stored loose again later): the loose copy goes.
                    db.execute("DELETE FROM objects WHERE id = ?", (bytes.fromhex(oid),))
                # else another object has this prefix: this one stays loose
            if not keys:
                continue
            marks = ",".join("?" * len(keys))
            gone = db.execute(f"DELETE FROM objects WHERE id IN ({marks}) RETURNING id",
                              [bytes.fromhex(oid) for oid in keys.values()]).fetchall()
            # Only what was still loose (gc may have deleted some since they were read).
            moved = [ObjectId(raw.hex()) for (raw,) in gone]
            db.executemany("INSERT INTO packed (prefix, pack) VALUES (?, ?)",
                           [(prefix_key(oid), pack_id) for oid in moved])
            live += len(moved)
            live_size += sum(batch[oid] for oid in moved)
        if live:
            db.execute("UPDATE packs SET live = ?, live_size = ? WHERE id = ?", (live, live_size, pack_id))
        else:
            db.execute("DELETE FROM packs WHERE id = ?", (pack_id,))
        for source in sources:
            db.execute("DELETE FROM packs WHERE id = ? AND live <= 0", (source,))
        return live

    def pack_log(self, keep: int, lines: int, partial: bool = False) -> int:
        """Move the oldest log lines but the ``keep`` newest into a log pack of ``lines``; returns how
        many moved. A pack left short (``partial``) is filled up by the next call before a new one is
        begun. Only consecutive sequences are packed (a gap, which verify reports, stays loose)."""
        if not self._has_log():
            return 0
        return self._pack_lines("log", max(keep, 1), lines, partial)  # an append chains onto the newest loose line

    def pack_reflog(self, keep: int, rows: int, partial: bool = False) -> int:
        """As :meth:`pack_log`, for reflog rows (the newest stays loose: were the table left empty, SQLite
        would number the next row 1 again, inside a pack's range)."""
        return self._pack_lines("reflog", max(keep, 1), rows, partial)

    def _pack_lines(self, kind: str, keep: int, lines: int, partial: bool) -> int:
        loose, key, columns, packs = _LINE_PACKS[kind]
        with self._lock, self._errors():
            db = self._db
            self._begin_write(db)
            try:
                _create_pack_tables(db)
                carried: list[str] = []
                tail = db.execute(f"SELECT first, last, data FROM {packs} ORDER BY first DESC LIMIT 1").fetchone()
                if tail is not None:
                    try:
                        carried = decode_lines(tail[2], tail[0], tail[1], count=False)
                    except (ValueError, UnicodeDecodeError, TypeError) as exc:  # TypeError: data that is not bytes
                        raise DamagedRecord(f"{self.path}: the {kind} pack of {tail[0]}-{tail[1]} is damaged: {exc}"
                                            ) from None
                    if len(carried) >= lines:
                        carried = []
                rows = db.execute(
                    f"SELECT {key}, {columns} FROM {loose} WHERE {key} <= (SELECT max({key}) FROM {loose}) - ? "
                    f"ORDER BY {key} LIMIT ?", (keep, lines - len(carried))).fetchall()
                if kind == "log":
                    # Consecutive rows of text only: a gap or a row holding no text stays loose for verify.
                    run = 0
                    while run < len(rows) and rows[run][0] == rows[0][0] + run and isinstance(rows[run][1], str):
                        run += 1
                    rows = rows[:run]
                    if carried and rows and rows[0][0] != tail[1] + 1:
                        rows = []  # a gap after the short pack: left for verify to report
                if not rows or (len(carried) + len(rows) < lines and not partial):
                    rows = []
                else:
                    first = tail[0] if carried else rows[0][0]
                    if carried:
                        db.execute(f"DELETE FROM {packs} WHERE first = ?", (first,))
                    new = [row[1] for row in rows] if kind == "log" else [
                        json.dumps(_checked_reflog_row(self.path, row)) for row in rows]
                    try:
                        data = encode_lines(carried + new)
                    except ValueError as exc:  # a pack reading would refuse: the rows stay loose, readable
                        raise BackendError(f"{self.path}: cannot pack the {kind} rows {first}-{rows[-1][0]}: "
                                           f"{exc}; they stay loose") from None
                    db.execute(f"INSERT INTO {packs} (first, last, data) VALUES (?, ?, ?)",
                               (first, rows[-1][0], data))
                    db.execute(f"DELETE FROM {loose} WHERE {key} BETWEEN ? AND ?", (rows[0][0], rows[-1][0]))
                    if kind == "reflog":
                        counts: dict[str, list[int]] = {}  # name -> [rows, highest log_sequence]
                        for row in rows:
                            count = counts.setdefault(row[1], [0, 0])
                            count[0] += 1
                            count[1] = max(count[1], row[6] or 0)
                        db.executemany(
                            "INSERT INTO reflog_packed (name, count, max_log_sequence) VALUES (?, ?, ?) "
                            "ON CONFLICT (name) DO UPDATE SET count = count + excluded.count, "
                            "max_log_sequence = max(max_log_sequence, excluded.max_log_sequence)",
                            [(name, n, top) for name, (n, top) in counts.items()])
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            self._pack_tables = True
        return len(rows)

    def release_free_pages(self) -> None:
        """Give free pages back to the file system where the store allows it (auto_vacuum)."""
        self._refuse_write()
        with self._lock, self._errors():
            # executescript steps the pragma to its end; execute() would free one page.
            self._db.executescript("PRAGMA incremental_vacuum")

    def page_counts(self) -> tuple[int, int, int]:
        """``(page_size, page_count, freelist_count)`` read on this backend's connection: `snap compact
        --dry-run` measures a store this process may only read, which a connection of its own could not open."""
        with self._lock, self._errors():
            return tuple(self._db.execute(f"PRAGMA {name}").fetchone()[0]  # type: ignore[return-value]
                         for name in ("page_size", "page_count", "freelist_count"))

    def _rowid_objects(self) -> bool:
        sql = self._query("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'objects'")[0][0]
        return "WITHOUT ROWID" not in sql.upper()

    # -- refs and meta -----------------------------------------------------

    def get_ref(self, name: str) -> ObjectId | None:
        rows = self._query("SELECT target FROM refs WHERE name = ?", (name,))
        return _hex(rows[0][0], f"{self.path}: ref {name!r}") if rows else None

    def list_refs(self, prefix: str = "") -> dict[str, ObjectId]:
        """The refs whose names start with ``prefix``; :class:`DamagedRecord` naming the first damaged one
        (see :meth:`ref_rows`; a name that is not text could be any ref's, so it counts whatever the prefix)."""
        refs, damaged = self.ref_rows()
        for name, line in damaged:
            if not isinstance(name, str) or name.startswith(prefix):
                raise DamagedRecord(line)
        return {n: t for n, t in refs.items() if n.startswith(prefix)}

    def ref_rows(self) -> tuple[dict[str, ObjectId], list[tuple[object, str]]]:
        """Every ref, and the refs rows that hold what they never hold, without raising: what fsck reads.

        Returns ``(refs, damaged)``: ``refs`` maps each well-formed ref to its
        target; ``damaged`` is ``(name as read, line naming the row)`` for a
        row whose name is not text or whose target is not a 32-byte id.
        """
        with self._as_stored() as db:
            return self._read_refs(db)

    def _read_refs(self, db: sqlite3.Connection) -> tuple[dict[str, ObjectId], list[tuple[object, str]]]:
        """:meth:`ref_rows` on ``db`` (the caller holds the lock and reads as stored)."""
        refs: dict[str, ObjectId] = {}
        damaged: list[tuple[object, str]] = []
        for name, target in db.execute("SELECT name, target FROM refs ORDER BY name").fetchall():
            if not isinstance(name, str):
                damaged.append((name, f"{self.path}: a refs row's name is {name!r:.80}, not text "
                                      "(its target is not read): the store is damaged"))
                continue
            shown = "nothing" if target is None else _id_damage(target)
            if shown is not None:
                damaged.append((name, f"{self.path}: ref {name!r} holds {shown}, not a 32-byte object id: "
                                      "the store is damaged"))
            else:
                refs[name] = ObjectId(target.hex())
        return refs, damaged

    def reflog(self, name: str) -> list[ReflogEntry]:
        """Every row of ``name``'s reflog, oldest first; :class:`DamagedRecord` if its ``reflog_packed``
        row disagrees with the packs, or is missing where the loose rows say packed rows came before
        (see :meth:`_packed_reflog_count`): never a shortened history."""
        with self._lock, self._errors(), self._read_snapshot() as db:  # packs and loose rows of one moment
            entries = []
            counted = self._packed_reflog_count(db, name)
            if counted is not None:
                for first, last in db.execute("SELECT first, last FROM reflog_packs ORDER BY first").fetchall():
                    entries.extend(self._reflog_pack(first, last, name).of(name))
                self._check_packed_count(name, counted, len(entries))
            loose = self._loose_reflog(name, "ORDER BY seq", ())
            if counted is None and not (loose and loose[0].old is None):
                self._check_unpacked_reflog(db, name)
            entries.extend(loose)
        return entries

    def reflogs(self, names: Iterable[str],
                damaged: dict[str, DamagedRecord] | None = None) -> dict[str, list[ReflogEntry]]:
        """:meth:`reflog` of each of ``names``, at one moment: the ``reflog_packed`` counts and the loose rows
        of a batch of names a query each, every reflog pack gone through once (gc, fsck and verify read
        every conversation's reflog: three queries a ref before, and every pack looked up for each ref,
        each pack read again for each once the packs outgrew their cache). Each name is then judged as
        :meth:`reflog` judges it, in the same order of checks, so a damaged one raises (or goes to
        ``damaged``) with the same line."""
        wanted = list(dict.fromkeys(names))
        out: dict[str, list[ReflogEntry]] = {}
        with self._lock, self._errors(), self._read_snapshot() as db:  # packs and loose rows of one moment
            counts: dict[str, object] = {}
            loose: dict[str, list[tuple]] = {}
            for start in range(0, len(wanted), _BATCH):
                batch = wanted[start : start + _BATCH]
                marks = ",".join("?" * len(batch))
                if self._has_packs():
                    counts.update(db.execute(f"SELECT name, count FROM reflog_packed WHERE name IN ({marks})",
                                             batch).fetchall())
                with self._as_stored() as stored:  # a column that is not UTF-8 text: named by _checked_reflog_row
                    for row in stored.execute(
                            "SELECT seq, name, old, new, time, reason, log_sequence, log_hash FROM reflog "
                            f"WHERE name IN ({marks}) ORDER BY name, seq", batch):
                        loose.setdefault(row[1], []).append(row)
            # Each pack's rows handed to the names that have packed rows, in one pass over the packs.
            packed: dict[str, list[ReflogEntry]] = {name: [] for name in counts}
            broken = None  # the first pack that cannot be read: each reflog with packed rows stops there
            if packed:
                for first, last in db.execute("SELECT first, last FROM reflog_packs ORDER BY first").fetchall():
                    try:
                        pack = self._reflog_pack(first, last)
                    except DamagedRecord:
                        broken = (first, last)
                        break
                    for entry in pack:
                        if isinstance(entry.name, str) and (rows := packed.get(entry.name)) is not None:
                            rows.append(entry)
            for name in wanted:
                try:
                    entries = []
                    counted = self._checked_packed_count(name, counts[name]) if name in counts else None
                    if counted is not None:
                        if broken is not None:
                            self._reflog_pack(*broken, name)  # raises naming it, as reading this reflog alone
                        entries.extend(packed[name])
                        self._check_packed_count(name, counted, len(entries))
                    rows = [ReflogEntry(*_checked_reflog_row(self.path, row)) for row in loose.get(name, ())]
                    if counted is None and not (rows and rows[0].old is None):
                        self._check_unpacked_reflog(db, name)
                    entries.extend(rows)
                except DamagedRecord as exc:
                    if damaged is None:
                        raise
                    damaged[name] = exc
                    continue
                out[name] = entries
        return out

    def reflog_newest(self, name: str, count: int) -> list[ReflogEntry]:
        if count <= 0:
            return []
        with self._lock, self._errors(), self._read_snapshot() as db:  # packs and loose rows of one moment
            entries = self._loose_reflog(name, "ORDER BY seq DESC LIMIT ?", (count,))[::-1]
            if len(entries) >= count:
                return entries
            counted = self._packed_reflog_count(db, name)
            if counted is None:
                if not (entries and entries[0].old is None):
                    self._check_unpacked_reflog(db, name)
                return entries
            # Packed rows are older than every loose one: the newest packs first, until enough.
            found = 0
            for first, last in db.execute("SELECT first, last FROM reflog_packs ORDER BY first DESC").fetchall():
                older = list(self._reflog_pack(first, last, name).of(name))
                found += len(older)
                entries[:0] = older[-(count - len(entries)):] if older else []
                if len(entries) >= count:
                    break
            else:  # every pack read: they must hold as many rows of it as counted
                self._check_packed_count(name, counted, found)
        return entries

    def _loose_reflog(self, name: str, order: str, params: Sequence[object]) -> list[ReflogEntry]:
        """The loose reflog rows of ``name`` in ``order`` (an ORDER BY clause, maybe with LIMIT ?);
        :class:`DamagedRecord` naming the row for a column holding what it never holds."""
        with self._as_stored() as db:  # a column that is not UTF-8 text: named by _checked_reflog_row
            rows = db.execute(
                "SELECT seq, name, old, new, time, reason, log_sequence, log_hash FROM reflog WHERE name = ? "
                + order, (name, *params),
            ).fetchall()
        return [ReflogEntry(*_checked_reflog_row(self.path, row)) for row in rows]

    def reflog_rows(self, lost: list[LostReflogRows] | None = None
                    ) -> tuple[dict[str, ObjectId], list[tuple[str, ReflogEntry, tuple[str, ...]]],
                               list[tuple[object, str]]]:
        """The refs and every reflog row, read at one moment (what fsck checks the reflogs with).

        Returns ``(refs, rows, damaged_refs)``: ``refs`` and ``damaged_refs`` as :meth:`ref_rows` gives
        them (a damaged ref is named there, not raised); ``rows`` are ``(label, entry, damage)``
        in reflog order, packed rows first, then loose ones by ``seq``. ``label`` names the row (``seq 5``);
        ``damage`` lines say which id column holds what no id is (in ``entry`` such a column is
        None), a loose row inside a pack's range, a row whose name is not text. Text that is not
        UTF-8 is read as its bytes, which the caller names (a column that is not a ``str``). One read
        of each table and pack; a damaged reflog pack raises :class:`DamagedRecord`, or, given ``lost``,
        is added to it (naming the refs whose rows it held, see :meth:`_lost_reflog_rows`) and the scan
        goes on: one damaged pack is no reason to leave every other row unchecked.
        """
        with self._as_stored() as db, self._read_snapshot():
            refs, damaged_refs = self._read_refs(db)
            out: list[tuple[str, ReflogEntry, tuple[str, ...]]] = []
            ranges: list[tuple[int, int]] = []
            damaged_packs: list[tuple[int, int, str, int]] = []  # (first, last, line, rows before it)
            if self._has_packs():
                for first, last in db.execute("SELECT first, last FROM reflog_packs ORDER BY first").fetchall():
                    ranges.append((first, last))
                    try:
                        entries = self._reflog_pack(first, last)
                    except DamagedRecord as exc:
                        if lost is None:
                            raise
                        damaged_packs.append((first, last, str(exc), len(out)))
                        continue
                    exact = len(entries) == last - first + 1
                    for i, e in enumerate(entries):
                        label = (f"seq {first + i}" if exact
                                 else f"row {i + 1} of the reflog pack of rows {first}-{last}")
                        bad = [(column, value) for column, value in (("old", e.old), ("new", e.new))
                               if value is not None and not (isinstance(value, str) and is_object_id(value))]
                        if bad:
                            e = ReflogEntry(e.name, None if bad[0][0] == "old" else e.old,
                                            None if bad[-1][0] == "new" else e.new,
                                            e.time, e.reason, e.log_sequence, e.log_hash)
                        damage = [f"a reflog row of {e.name!r} holds {value!r:.80} in {column}, not an object id"
                                  for column, value in bad]
                        if not isinstance(e.name, str):
                            damage.append(f"its name is {e.name!r:.80}, not text")
                        out.append((label, e, tuple(damage)))
            packed_rows = len(out)
            for seq, n, o, w, t, r, ls, lh in db.execute(
                    "SELECT seq, name, old, new, time, reason, log_sequence, log_hash FROM reflog ORDER BY seq"):
                damage = []
                ids: list[ObjectId | None] = []  # a damaged id column reads as None
                for column, value in (("old", o), ("new", w)):
                    shown = _id_damage(value)
                    if shown is not None:
                        damage.append(f"a reflog row of {n!r} holds {shown} in {column}, not a 32-byte object id")
                    ids.append(None if shown is not None else _hex(value))
                at = bisect.bisect_right(ranges, (seq, math.inf)) - 1  # the pack starting at or before seq
                if at >= 0 and seq <= ranges[at][1]:
                    damage.append(f"seq {seq} is also a row of the reflog pack of rows {ranges[at][0]}-{ranges[at][1]}")
                if not isinstance(n, str):
                    damage.append(f"its name is {n!r:.80}, not text")
                entry = ReflogEntry(n, *ids, t, r, ls, lh)
                out.append((f"seq {seq}", entry, tuple(damage)))
            if damaged_packs and lost is not None:
                lost.extend(self._lost_reflog_rows(db, damaged_packs, out[:packed_rows]))
        return refs, out, damaged_refs

    def _lost_reflog_rows(self, db: sqlite3.Connection, damaged: list[tuple[int, int, str, int]],
                          packed: list[tuple[str, ReflogEntry, tuple[str, ...]]]) -> list[LostReflogRows]:
        """The damaged reflog packs a scan met, each naming the refs whose rows it held.

        A pack's rows cannot be read, but ``reflog_packed`` counts each ref's packed rows: a ref
        with fewer rows in the readable packs than counted had the rest in a damaged one. If
        that count cannot tell (its rows damaged too, or it accounts for no missing row), the
        refs are not known: every reflog with packed rows is named.
        """
        readable: dict[object, int] = {}
        for _, entry, _ in packed:
            readable[entry.name] = readable.get(entry.name, 0) + 1
        counted = db.execute("SELECT name, count FROM reflog_packed ORDER BY name").fetchall()
        short = tuple(name for name, count in counted if isinstance(name, str) and type(count) is int
                      and count > readable.get(name, 0))
        if not short:
            short = tuple(name for name, _ in counted if isinstance(name, str))
        return [LostReflogRows(first, last, line, short, at) for first, last, line, at in damaged]

    def damaged_index_rows(self) -> list[str]:
        """One line for each pack index row that disagrees with the packs (what fsck reports).

        Readers find packed things through these rows: a ``reflog_packed`` row tells them a ref has
        packed history, a ``packed`` row where an object is, ``packs.live`` how many of a pack's
        members are indexed. A lost or altered row makes a read return less (or raise), so each is
        checked against what the packs hold: each ref's packed rows (count and highest
        ``log_sequence``), each pack's indexed members, the ranges of the packs of lines. One read
        of one moment; a damaged pack is the scan's to name (``reflog_rows``, ``iter_objects``), and
        only what it cannot explain is reported here.
        """
        if not self._has_packs():
            return []
        with self._as_stored() as db, self._read_snapshot():
            return [*self._reflog_count_damage(db), *self._object_index_damage(db),
                    *self._line_range_damage(db, "reflog"), *self._line_range_damage(db, "log")]

    def _reflog_count_damage(self, db: sqlite3.Connection) -> list[str]:
        """``reflog_packed`` against the reflog packs: each ref's rows and highest log_sequence."""
        held: dict[object, list[int]] = {}  # name -> [rows, highest log_sequence (0 if none)]
        complete = True  # every pack read: a count above what they hold is damage too
        for first, last in db.execute("SELECT first, last FROM reflog_packs ORDER BY first").fetchall():
            try:
                entries = self._reflog_pack(first, last)
            except DamagedRecord:
                complete = False  # named by reflog_rows, with the refs whose rows it held
                continue
            for e in entries:
                tally = held.setdefault(e.name if isinstance(e.name, str) else repr(e.name), [0, 0])
                tally[0] += 1
                if type(e.log_sequence) is int:
                    tally[1] = max(tally[1], e.log_sequence)
        out = []
        counted = {name: (count, top) for name, count, top in
                   db.execute("SELECT name, count, max_log_sequence FROM reflog_packed ORDER BY name").fetchall()}
        for name in sorted(counted.keys() | held.keys(), key=repr):
            rows, highest = held.get(name, (0, 0))
            where = f"{self.path}: the reflog packs hold {rows} rows of {name!r}"
            if name not in counted:
                out.append(f"{where}, but reflog_packed has no row for it: readers take it to have no packed "
                           "history and leave those rows out")
                continue
            count, top = counted[name]
            if count != rows and (complete or type(count) is not int or count < rows):
                out.append(f"{where}, but its reflog_packed row counts {count!r:.40}: readers of its history "
                           "refuse it")
            elif top != highest and (complete or type(top) is not int or top < highest):
                out.append(f"{where}, the highest log_sequence among them {highest}, but its reflog_packed row "
                           f"says {top!r:.40}: a startup would misjudge which log entries it has applied")
        return out

    def _object_index_damage(self, db: sqlite3.Connection) -> list[str]:
        """``packed`` against ``packs``: each pack's live count is the number of index rows naming it
        (an object whose row is lost reads as missing; rows naming no pack cannot be read), and each
        of those rows names one of its members (:meth:`_stray_index_rows`)."""
        live = dict(db.execute("SELECT id, live FROM packs").fetchall())
        indexed = dict(db.execute("SELECT pack, count(*) FROM packed GROUP BY pack").fetchall())
        out = []
        for pack_id in sorted(live.keys() | indexed.keys(), key=repr):
            rows = indexed.get(pack_id, 0)
            if pack_id not in live:
                out.append(f"{self.path}: {rows} packed rows name pack {pack_id!r:.40}, which does not exist: "
                           "the objects they index cannot be read")
                continue
            if live[pack_id] != rows:
                out.append(f"{self.path}: pack {pack_id} counts {live[pack_id]!r:.40} live members, but {rows} "
                           "packed rows name it: index rows were lost or added (an object whose row is lost "
                           "reads as missing)")
            if rows:
                out.extend(self._stray_index_rows(db, pack_id, rows))
        return out

    def _stray_index_rows(self, db: sqlite3.Connection, pack_id: int, rows: int) -> list[str]:
        """One line for each of the ``rows`` packed rows naming ``pack_id`` whose key no member of the pack
        has: a row altered (its prefix, or the pack it names; two rows swapped keep every live count)
        or added. Its object, if any, is not where the row says: a read of it raises naming the pack,
        and the object the row was for reads as missing. Counted with indexed look-ups of the pack's
        members' keys; the rows are listed (a scan of the index) only if some are stray. A damaged
        pack is the object scan's to name (``iter_objects``)."""
        try:
            pack = self._pack(pack_id)
        except CorruptObject:
            return []
        keys = [prefix_key(prefix) for prefix in pack.index]
        matched = 0
        for start in range(0, len(keys), _BATCH):
            batch = keys[start : start + _BATCH]
            marks = ",".join("?" * len(batch))
            matched += db.execute(f"SELECT count(*) FROM packed WHERE pack = ? AND prefix IN ({marks})",
                                  [pack_id, *batch]).fetchone()[0]
        if matched == rows:
            return []
        held = set(keys)
        return [f"{self.path}: the packed row of id prefix {key_prefix(key)} names pack {pack_id}, which holds no "
                "member with that prefix: reads of that object fail naming the pack (the row was altered or "
                "added; an object whose row it was reads as missing)"
                for (key,) in db.execute("SELECT prefix FROM packed WHERE pack = ? ORDER BY prefix", (pack_id,))
                if key not in held]

    def _line_range_damage(self, db: sqlite3.Connection, kind: str) -> list[str]:
        """Packs of lines whose ranges overlap one another, and (for the log) loose rows inside a pack's
        range: a reader reads each sequence once, from the pack, and would pass over the other silently.
        (A loose reflog row inside a pack's range is named by ``reflog_rows``.)"""
        loose, key, _, packs = _LINE_PACKS[kind]
        what = "log" if kind == "log" else "reflog"
        out = []
        previous: tuple[int, int] | None = None
        for first, last in db.execute(f"SELECT first, last FROM {packs} ORDER BY first").fetchall():
            if previous is not None and first <= previous[1]:
                out.append(f"{self.path}: the {what} pack of {first}-{last} overlaps the one of "
                           f"{previous[0]}-{previous[1]}: readers skip the rows they share")
            if kind == "log":
                inside = db.execute(f"SELECT count(*), min({key}) FROM {loose} WHERE {key} BETWEEN ? AND ?",
                                    (first, last)).fetchone()
                if inside[0]:
                    out.append(f"{self.path}: {inside[0]} loose log rows (from {inside[1]}) lie inside the log "
                               f"pack of {first}-{last}: readers read the pack's lines and pass over them")
            previous = (first, last) if previous is None or last > previous[1] else previous
        return out

    def _packed_reflog_count(self, db: sqlite3.Connection, name: str) -> int | None:
        """How many of ``name``'s reflog rows ``reflog_packed`` says the packs hold, or None if it has
        no row for it (the caller holds the lock). That row is what tells a reader to read the packs at
        all, so a reader that uses it also checks it: the count against the rows the packs hold
        (:meth:`_check_packed_count`), its absence against the loose rows (:meth:`_check_unpacked_reflog`)."""
        if not self._has_packs():
            return None
        row = db.execute("SELECT count FROM reflog_packed WHERE name = ?", (name,)).fetchone()
        return None if row is None else self._checked_packed_count(name, row[0])

    def _checked_packed_count(self, name: str, count: object) -> int:
        """The count of ``name``'s ``reflog_packed`` row; :class:`DamagedRecord` naming it unless it is a
        positive integer (packing counts one row at least, and only adds)."""
        if type(count) is not int or count < 1:
            raise DamagedRecord(f"{self.path}: the reflog_packed row of {name!r} counts {count!r:.40} packed rows, "
                                "not a positive integer: the store is damaged")
        return count

    def _check_packed_count(self, name: str, counted: int, found: int) -> None:
        """:class:`DamagedRecord` unless the reflog packs hold ``counted`` rows of ``name`` (``found``)."""
        if found != counted:
            raise DamagedRecord(f"{self.path}: the reflog packs hold {found} rows of {name!r}, but its reflog_packed "
                                f"row counts {counted}: packed rows of it or that count are damaged: "
                                "the store is damaged")

    def _check_unpacked_reflog(self, db: sqlite3.Connection, name: str) -> None:
        """:class:`DamagedRecord` if ``name`` has no ``reflog_packed`` row though packed rows of it must
        exist: its oldest loose row moves it from somewhere (a reflog begins from nothing, and no writer
        removes a row but packing), or the ref has no loose rows at all. Only where reflog packs exist
        (else fsck judges the chain); two indexed look-ups, asked only when the first loose row does not
        begin the reflog, so a read of a sound store pays nothing. Caller holds the lock."""
        if self._reflog_packs_exist(db):
            self._check_reflog_begins(db, name)

    def _reflog_packs_exist(self, db: sqlite3.Connection) -> bool:
        """Whether any reflog pack exists (a store never packed has no pack tables); caller holds the lock."""
        return self._has_packs() and db.execute("SELECT 1 FROM reflog_packs LIMIT 1").fetchone() is not None

    def _check_reflog_begins(self, db: sqlite3.Connection, name: str) -> None:
        """:meth:`_check_unpacked_reflog` where reflog packs exist: the oldest loose row of ``name`` begins
        its reflog, and a ref has rows."""
        row = db.execute("SELECT seq, old FROM reflog WHERE name = ? ORDER BY seq LIMIT 1", (name,)).fetchone()
        if row is not None:
            if row[1] is None:
                return
            held = row[1].hex() if isinstance(row[1], bytes) else f"{row[1]!r:.40}"
            raise DamagedRecord(f"{self.path}: the oldest loose reflog row of {name!r} (seq {row[0]}) moves it from "
                                f"{held}, but reflog_packed counts no packed rows of it: its reflog_packed row, or "
                                "its older rows, are missing: the store is damaged")
        if db.execute("SELECT 1 FROM refs WHERE name = ?", (name,)).fetchone() is not None:
            raise DamagedRecord(f"{self.path}: ref {name!r} has no loose reflog rows and reflog_packed counts no "
                                "packed rows of it: its reflog_packed row, or its history, is missing: "
                                "the store is damaged")

    def newest_log_sequences(self, names: Iterable[str]) -> dict[str, int]:
        wanted = list(names)
        out = dict.fromkeys(wanted, 0)
        with self._lock, self._errors(), self._read_snapshot() as db:
            # The reflog_name index holds (name, seq) only: one aggregate over the loose rows.
            for name, top in db.execute("SELECT name, max(log_sequence) FROM reflog GROUP BY name").fetchall():
                if name in out and top is not None:
                    if type(top) is not int or top < 0:  # text sorts above every number: it is the max
                        seq, value = db.execute(
                            "SELECT seq, log_sequence FROM reflog WHERE name = ? AND (typeof(log_sequence) "
                            "NOT IN ('integer', 'null') OR log_sequence < 0) ORDER BY seq LIMIT 1", (name,)).fetchone()
                        raise DamagedRecord(f"{self.path}: a reflog row of {name!r} (seq {seq}): its log_sequence "
                                            f"is {value!r:.40}, not a non-negative integer: the store is damaged")
                    out[name] = max(out[name], top)
            if self._has_packs():
                counted = set()
                for name, top in db.execute("SELECT name, max_log_sequence FROM reflog_packed").fetchall():
                    if name in out:
                        if type(top) is not int:
                            raise DamagedRecord(f"{self.path}: the reflog_packed row of {name!r} holds "
                                                f"max_log_sequence {top!r:.40}, not an integer: the store is damaged")
                        out[name] = max(out[name], top)
                        counted.add(name)
                if self._reflog_packs_exist(db):  # asked once for every name
                    for name in out:  # no reflog_packed row: only if no packed rows of it can exist
                        if name not in counted:
                            self._check_reflog_begins(db, name)
        return out

    def _reflog_pack(self, first: int, last: int, reading: str | None = None) -> _ReflogPack:
        """The reflog pack of rows ``first``-``last``, parsed; :class:`DamagedRecord` naming it (and the ref
        whose reflog was being read, ``reading``, if any) if it is damaged."""
        def parse(data: bytes) -> _ReflogPack:
            try:
                return _ReflogPack(ReflogEntry(*json.loads(line)) for line in decode_lines(data, 1, 0, count=False))
            except (ValueError, TypeError) as exc:
                of = "" if reading is None else f" (reading the reflog of {reading!r})"
                raise DamagedRecord(f"{self.path}: the reflog pack of rows {first}-{last}{of} is damaged: {exc}"
                                    ) from None

        return self._line_pack(self._reflog_pack_cache, 256, "reflog_packs", first, last, parse)  # ~32,000 rows

    def _line_pack(self, cache: OrderedDict[int, tuple[int, Any]], keep: int, table: str, first: int, last: int,
                   parse: Callable[[bytes], Any]) -> Any:
        """A pack of lines, parsed, from ``cache`` (the ``keep`` most recently used) or ``table``.

        A short pack grows under the same ``first``: a cached one counts only if its ``last`` matches.
        The caller holds ``self._lock``.
        """
        cached = cache.get(first)
        if cached is not None and cached[0] == last:
            cache.move_to_end(first)
            return cached[1]
        data = self._db.execute(f"SELECT data FROM {table} WHERE first = ?", (first,)).fetchone()[0]
        value = parse(data)
        cache[first] = (last, value)
        while len(cache) > keep:
            cache.popitem(last=False)
        return value

    def get_meta(self, key: str) -> str | None:
        """The value of ``key``; :class:`DamagedRecord` naming the row if it holds no text."""
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        if not rows:
            return None
        if not isinstance(rows[0][0], str):
            raise DamagedRecord(self._meta_damage(key, rows[0][0]))
        return rows[0][0]

    def list_meta(self, prefix: str = "") -> dict[str, str]:
        """The meta rows whose keys start with ``prefix``; :class:`DamagedRecord` naming the first of
        them that holds no text. A damaged row under another prefix is no concern of this reader."""
        out: dict[str, str] = {}
        for key, value in self._query("SELECT key, value FROM meta ORDER BY key"):
            if not _under(key, prefix):
                continue
            if not isinstance(key, str) or not isinstance(value, str):
                raise DamagedRecord(self._meta_damage(key, value))
            out[key] = value
        return out

    def readable_meta(self, prefix: str) -> dict[str, str]:
        """:meth:`list_meta` without the rows that hold no text (fsck names them: :meth:`damaged_meta_rows`),
        for a check that goes on past them."""
        return {key: value for key, value in self._query("SELECT key, value FROM meta ORDER BY key")
                if isinstance(key, str) and isinstance(value, str) and key.startswith(prefix)}

    def damaged_meta_rows(self) -> list[str]:
        """One line naming each meta row whose key or value is not text (text that is not UTF-8, say):
        fsck reports these."""
        return [self._meta_damage(key, value) for key, value in self._query("SELECT key, value FROM meta ORDER BY key")
                if not isinstance(key, str) or not isinstance(value, str)]

    def _meta_damage(self, key: object, value: object) -> str:
        """A line naming a meta row whose key or value is not text."""
        if not isinstance(key, str):
            return f"{self.path}: a meta row's key is {key!r:.80}, not text: the store is damaged"
        return f"{self.path}: the meta row {key!r:.80} holds {value!r:.40}, not text: the store is damaged"

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
            self._begin_write(db)
            entry = None
            try:
                for update in ref_updates:
                    row = db.execute(
                        "SELECT target FROM refs WHERE name = ?", (update.name,)
                    ).fetchone()
                    actual = _hex(row[0], f"{self.path}: ref {update.name!r}") if row else None
                    if actual != update.old:
                        raise RefConflict(update.name, update.old, actual)
                if append is not None:
                    # BEGIN IMMEDIATE holds the database's write lock: appenders take turns.
                    entry = self._append_locked(db, append)
                    ref_updates = [link(u, entry) for u in ref_updates]
                if objects and new_ids is None:
                    db.executemany(_INSERT_OBJECT, [(bytes.fromhex(o.id), o.kind, o.size, o.data) for o in objects])
                elif objects:
                    # RETURNING names the rows the insert stored (an ignored duplicate returns none):
                    # which objects were new, inside the transaction, in one statement per batch.
                    for start in range(0, len(objects), _INSERT_BATCH):
                        batch = objects[start : start + _INSERT_BATCH]
                        params: list[object] = []
                        for o in batch:
                            params += (bytes.fromhex(o.id), o.kind, o.size, o.data)
                        rows = db.execute(
                            _INSERT_OBJECTS_PREFIX + ",".join(["(?, ?, ?, ?)"] * len(batch)) + " RETURNING id",
                            params).fetchall()
                        stored = {raw.hex() for (raw,) in rows}
                        new_ids.extend(o.id for o in batch if o.id in stored)
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
        try:  # the last row and the key in one statement (every commit that links an entry runs it)
            last, last_line, key = db.execute(_LOG_TAIL_AND_KEY, (LOG_KEY_META,)).fetchone()
        except sqlite3.OperationalError:  # a last line that is not UTF-8 text: read the row as it is stored
            row = db.execute(f"SELECT {_LOG_ROW} FROM ozolith ORDER BY sequence DESC LIMIT 1").fetchone()
            last, last_line = _log_row(row)
            key = None
        if last is None:
            last = self._packed_log_end(db)
            if last:
                raise LogError(f"{self.path}: the audit log's packs end at entry {last} but no row follows (the "
                               "newest rows are gone): nothing was written; run snap verify", last)
        elif not isinstance(last_line, str):
            raise LogError(f"{self.path}: the audit log's last row, entry {last}, holds no line of text: "
                           "nothing was written; run snap verify", last)
        entry, new_key = append.build(last_line, key)
        check_log_tail(last, entry, f"{self.path}: ")
        db.execute("INSERT INTO ozolith (sequence, entry_hash, line) VALUES (?, ?, ?)",
                   (entry.sequence, entry.entry_hash, entry.line))
        if new_key is not None:
            db.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (LOG_KEY_META, new_key))
        return entry

    def writer_lock(self, name: str) -> contextlib.AbstractContextManager[None]:
        """A byte-range lock on ``writer.lock`` in the store folder, one byte per ref name (hashed).

        POSIX record locks belong to the process, so threads of one process
        (through any backend on this store) queue on an in-process lock
        first, and the file stays open on one descriptor (see :class:`_LockFile`).
        """
        return self._writer_lock(name)

    @contextlib.contextmanager
    def _writer_lock(self, name: str) -> Iterator[None]:
        offset = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=4).digest(), "big") & 0x3FFFFFFF
        lock_file = self._lock_file_open()
        with lock_file.local(offset):
            fcntl.lockf(lock_file.fd, fcntl.LOCK_EX, 1, offset)
            try:
                yield
            finally:
                fcntl.lockf(lock_file.fd, fcntl.LOCK_UN, 1, offset)

    def _presence_offset(self, name: str) -> int:
        # Bytes above the writer locks' range (those are below 2**30).
        return 0x40000000 | int.from_bytes(hashlib.blake2b(b"presence " + name.encode(), digest_size=4).digest(),
                                           "big") & 0x3FFFFFFF

    def _lock_file_open(self) -> _LockFile:
        self._refuse_write()  # taking a lock announces a writer: a store this process may only read has none
        return self._opened_lock_file(read_only=False)  # type: ignore[return-value]

    def _opened_lock_file(self, read_only: bool) -> _LockFile | None:
        """The store's ``writer.lock`` (see :class:`_LockFile`); ``read_only``: opened for probing only, and
        None if there is none (no session or writer ever ran there)."""
        with self._lock:
            if self._lock_file is None:
                if self._closed:
                    raise BackendError(f"{self.path}: the store is closed")
                self._lock_file = _LockFile.acquire(self.path.parent / "writer.lock", read_only)
            return self._lock_file

    def hold_presence(self, name: str) -> Callable[[], None]:
        """A byte-range lock on ``writer.lock`` for as long as the session lives (the OS drops it with the process)."""
        offset = self._presence_offset(name)
        lock_file = self._lock_file_open()
        local = lock_file.local(offset)
        local.acquire()
        try:
            fcntl.lockf(lock_file.fd, fcntl.LOCK_EX, 1, offset)
        except OSError as exc:
            local.release()
            raise BackendError(f"cannot lock {lock_file.path}: {exc.strerror}") from None

        def release() -> None:
            with contextlib.suppress(OSError):
                fcntl.lockf(lock_file.fd, fcntl.LOCK_UN, 1, offset)
            local.release()

        return release

    def presence_held(self, name: str) -> bool | None:
        """Probed with an exclusive lock; on a store this process may only read, with a shared one (a
        descriptor opened read-only takes no other), which a session's exclusive lock refuses all the same."""
        offset = self._presence_offset(name)
        if self.read_only is not None and self._lock_file is None:
            path = self.path.parent / "writer.lock"
            if path.exists() and not os.access(path, os.R_OK):
                return None  # another user's lock (made 0600): whether its session runs cannot be told here
        lock_file = self._opened_lock_file(read_only=self.read_only is not None)
        if lock_file is None:
            return False  # no writer.lock: no session ever held a lock here
        local = lock_file.local(offset)
        if not local.acquire(blocking=False):
            return True  # a session of this very process
        try:
            try:
                fcntl.lockf(lock_file.fd, (fcntl.LOCK_SH if lock_file.read_only else fcntl.LOCK_EX) | fcntl.LOCK_NB,
                            1, offset)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    return True  # another process holds it
                raise BackendError(f"cannot probe {lock_file.path}: {exc.strerror}") from None
            fcntl.lockf(lock_file.fd, fcntl.LOCK_UN, 1, offset)
            return False
        finally:
            local.release()

    def _packed_log_end(self, db: sqlite3.Connection) -> int:
        """The last sequence the log packs hold (0 if none); the caller holds the lock."""
        if not self._has_packs():
            return 0
        return db.execute("SELECT coalesce(max(last), 0) FROM ozolith_packs").fetchone()[0]

    def _has_log(self) -> bool:
        if not self._log_table:
            self._log_table = bool(self._query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'ozolith'"))
        return self._log_table

    def log_lines(self, after: int = 0, limit: int | None = None) -> list[tuple[int, str]]:
        if not self._has_log():
            return []
        out: list[tuple[int, str]] = []
        # Packs and loose rows of one moment, even while another process packs.
        with self._lock, self._errors(), self._read_snapshot() as db:
            position = after
            while self._has_packs() and (limit is None or len(out) < limit):
                row = db.execute("SELECT first, last FROM ozolith_packs WHERE last > ? ORDER BY first LIMIT 1",
                                 (position,)).fetchone()
                if row is None:
                    break
                first, last = row
                for offset, line in enumerate(self._log_pack(first, last)):
                    if first + offset > position and (limit is None or len(out) < limit):
                        out.append((first + offset, line))
                position = last
            if limit is None or len(out) < limit:
                params = (position, -1 if limit is None else limit - len(out))
                try:
                    out.extend(db.execute(
                        "SELECT sequence, line FROM ozolith WHERE sequence > ? ORDER BY sequence LIMIT ?",
                        params).fetchall())
                except sqlite3.OperationalError:  # a line that is not UTF-8 text: each row as it is stored
                    out.extend(_log_row(row) for row in db.execute(
                        f"SELECT {_LOG_ROW} FROM ozolith WHERE sequence > ? ORDER BY sequence LIMIT ?", params))
        return out

    def _log_pack(self, first: int, last: int) -> list[str]:
        def parse(data: bytes) -> list[str]:
            try:
                return decode_lines(data, first, last)
            except (ValueError, UnicodeDecodeError, TypeError) as exc:  # TypeError: data that is not bytes
                raise DamagedLogPack(f"{self.path}: log entries {first}-{last} are damaged: {exc}", first, last
                                     ) from None

        return self._line_pack(self._log_pack_cache, 8, "ozolith_packs", first, last, parse)

    def log_hashes(self, after: int = 0, limit: int | None = None) -> list[tuple[int, Any]]:
        """``(sequence, entry_hash column)`` of the loose log rows past ``after``, in order (a packed line
        keeps no column): what verify compares with each row's line."""
        if not self._has_log():
            return []
        rows = self._query("SELECT sequence, CAST(entry_hash AS BLOB), typeof(entry_hash) FROM ozolith "
                           "WHERE sequence > ? ORDER BY sequence LIMIT ?", (after, -1 if limit is None else limit))
        return [_log_row(row) for row in rows]

    def log_tail(self) -> tuple[int, str] | None:
        if not self._has_log():
            return None
        rows = self._query(f"SELECT {_LOG_ROW} FROM ozolith ORDER BY sequence DESC LIMIT 1")
        if rows:
            return _log_row(rows[0])
        # Every line packed (packing keeps the newest loose, so only if told to keep none).
        if not self._has_packs():
            return None
        packs = self._query("SELECT first, last FROM ozolith_packs ORDER BY first DESC LIMIT 1")
        if not packs:
            return None
        with self._lock, self._errors():
            lines = self._log_pack(*packs[0])
        return (packs[0][1], lines[-1])

    def close(self) -> None:
        with self._lock:
            self._db.close()
            self._closed = True
            if self._lock_file is not None:
                self._lock_file.release()
                self._lock_file = None


class _ReflogPack(list):
    """A parsed reflog pack: its rows in order, and (built at the first :meth:`of`, kept while the pack is
    cached) each ref's rows. A ref's reflog is read pack by pack; without the index each read went through
    every row of every pack, and reading every ref's reflog (gc, verify) grew with the square of the refs."""

    __slots__ = ("_by_name",)

    def of(self, name: str) -> list[ReflogEntry]:
        by_name: dict[str, list[ReflogEntry]] | None = getattr(self, "_by_name", None)
        if by_name is None:
            by_name = {}
            for entry in self:
                if isinstance(entry.name, str):  # a damaged row's other value names no ref asked for
                    by_name.setdefault(entry.name, []).append(entry)
            self._by_name = by_name
        return by_name.get(name, [])


class _LockFile:
    """The one descriptor of a ``writer.lock`` this process uses, shared by every backend on the store.

    POSIX record locks belong to the process, and closing *any* descriptor
    of a file drops every lock the process holds on it: a backend opening
    and closing the file for each lock would release the locks its other
    threads, or other backends on the same store, still hold. So the file
    is opened once per process (keyed by its resolved path), counted by the
    backends using it, and closed when the last of them closes. For the
    same reason one lock byte is held by one thread at a time: threads
    queue on an in-process lock per byte (per byte, not per name, so two
    names hashing to one byte queue here as they do across processes).
    """

    _open: ClassVar[dict[Path, _LockFile]] = {}
    _guard = threading.Lock()

    def __init__(self, path: Path, fd: int, read_only: bool = False) -> None:
        self.path = path
        self.fd = fd
        self.read_only = read_only
        self.users = 0
        self._locals: dict[int, threading.Lock] = {}

    @classmethod
    def acquire(cls, path: Path, read_only: bool = False) -> _LockFile | None:
        """The open lock file at ``path``, opened now if no backend of this process has it; one more user.

        ``read_only``: opened without being made or written, for probing (None if there is none). A
        descriptor of it open already, read-only or not, is shared: closing a second one would drop
        the process's locks on the file."""
        key = path.resolve()
        with cls._guard:
            lock_file = cls._open.get(key)
            if lock_file is None:
                try:
                    fd = os.open(key, (os.O_RDONLY if read_only else os.O_RDWR | os.O_CREAT) | os.O_CLOEXEC, 0o600)
                except FileNotFoundError:
                    if read_only:
                        return None
                    raise BackendError(f"cannot open {path}: No such file or directory") from None
                except OSError as exc:
                    raise BackendError(f"cannot open {path}: {exc.strerror}") from None
                lock_file = cls._open[key] = _LockFile(key, fd, read_only)
            lock_file.users += 1
            return lock_file

    def release(self) -> None:
        """One user fewer; the last closes the descriptor (dropping the process's locks on the file)."""
        with self._guard:
            self.users -= 1
            if self.users == 0:
                del self._open[self.path]
                os.close(self.fd)

    def local(self, offset: int) -> threading.Lock:
        """The in-process lock of one lock byte."""
        with self._guard:
            return self._locals.setdefault(offset, threading.Lock())

"""The shared backend: objects, refs, reflog and meta in one PostgreSQL database.

Several processes on several machines (API replicas) may use one store at
once. A ref changes only inside a transaction that compare-and-swaps its row
(``UPDATE ... WHERE target = old``, or ``INSERT ... ON CONFLICT DO NOTHING`` to
create an absent one), so of two writers racing from the same head exactly one
wins and the other gets :class:`~snapstore.errors.RefConflict`; the objects,
the reflog rows and the meta updates of a write commit in that same
transaction. Reflog times come from the server's clock, so every replica
writes them on one time line.

Location: ``postgresql://user:password@host:port/dbname?sslmode=...`` (or
``postgres://``); everything libpq accepts in a URL works, and the password may
also come from ``PGPASSWORD`` or ``~/.pgpass``. Tables are named
``snapstore_*``; to keep them in their own schema, add
``?options=-csearch_path%3Dsnapstore``.

Schema (all created by :data:`MIGRATIONS`, recorded in
``snapstore_schema_version``)::

    snapstore_store    one row: where the objects live ('postgresql' or
                       's3://bucket/prefix'); present once a store exists
    snapstore_objects  id bytea (32 bytes) PRIMARY KEY, kind, size (uncompressed),
                       stored_size (length of data), data bytea (NULL when the
                       bodies live in S3, see s3.py)
    snapstore_refs     name PRIMARY KEY, target bytea
    snapstore_reflog   seq identity PRIMARY KEY, name, old, new, time, reason,
                       log_sequence, log_hash; indexes (name, seq) and
                       (name, log_sequence) (the newest link of each ref)
    snapstore_meta     key PRIMARY KEY, value
    snapstore_ozolith  sequence PRIMARY KEY, entry_hash, line: the audit log
                       kept in the store (snapstore/storelog.py), each row one
                       line of the client's JSON Lines format; appended in
                       the transaction that moves the ref it answers to,
                       appenders serialised by a transaction-level advisory lock

Objects are inserted with one ``INSERT ... SELECT FROM unnest(arrays) ON
CONFLICT DO NOTHING`` per batch. Measured against a local server (median of
hundreds of commits of 300-byte objects): executemany 0.34 / 0.97 / 2.6 / 26 ms
for 1 / 10 / 50 / 1000 objects, COPY into a temporary table then INSERT 0.77 /
1.13 / 1.8 / 16 ms, unnest 0.54 / 0.82 / 1.6 / 17 ms: unnest is as fast as
COPY for large batches, faster for the few objects of a usual commit, and one
statement without per-session temporary tables. Rows go in id order, and refs
and meta keys in name order, so two writers sharing objects cannot deadlock.

One connection per backend, in autocommit mode so that reads never hold a
transaction open; writes and migrations run in explicit transaction blocks. A
connection lost while idle is reopened on next use.
A connection lost during COMMIT is settled by asking the server (by the
transaction id learnt just before COMMIT) whether it committed: see
``PostgresBackend._transaction``; PostgreSQL 13 or newer. A connection lost in
a transaction may leave its server session alive, holding the transaction's
locks (a half-open connection: the server never heard it close); that session
is ended, identified by pid and start time, before the next transaction.
A session that may only read the store (a hot standby, a role granted
SELECT only, ``default_transaction_read_only``) is found at open, in one
query: nothing is migrated, and every write is refused as
:class:`~snapstore.errors.ReadOnlyStore` before it starts.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import parse_qsl, unquote, urlsplit

from ..errors import (
    BackendError, CommitOutcomeUnknown, DamagedRecord, FormatError, InvalidInput, ReadOnlyStore, RefConflict,
    StoreExists, StoreNotFound,
)
from ..location import redact, register_url_backend
from ..objects import ObjectId
from .base import (
    LOG_KEY_META, AppendedEntry, Backend, Capability, LogAppend, RefUpdate, ReflogEntry, StoredObject,
    check_fence, check_log_tail, link,
)

try:
    import psycopg
    from psycopg import errors as pg_errors
    from psycopg.conninfo import conninfo_to_dict
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "the PostgreSQL backend needs psycopg 3: pip install 'snapstore[postgres]'"
    ) from exc

SCHEMES = ("postgresql", "postgres")
OBJECTS_IN_POSTGRES = "postgresql"


@dataclass(frozen=True)
class Migration:
    """One step of the schema; applied once, in one transaction, in version order."""

    version: int
    name: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial schema", (
        """CREATE TABLE IF NOT EXISTS snapstore_store (
            singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
            objects text NOT NULL,
            created timestamptz NOT NULL DEFAULT now()
        )""",
        """CREATE TABLE IF NOT EXISTS snapstore_objects (
            id bytea PRIMARY KEY CHECK (octet_length(id) = 32),
            kind text NOT NULL,
            size bigint NOT NULL,
            stored_size bigint NOT NULL,
            data bytea
        )""",
        # Bodies are zstd frames already: do not let TOAST try to compress them again.
        "ALTER TABLE snapstore_objects ALTER COLUMN data SET STORAGE EXTERNAL",
        """CREATE TABLE IF NOT EXISTS snapstore_refs (
            name text COLLATE "C" PRIMARY KEY,
            target bytea NOT NULL
        )""",
        """CREATE TABLE IF NOT EXISTS snapstore_reflog (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            name text COLLATE "C" NOT NULL,
            old bytea,
            new bytea,
            time text NOT NULL,
            reason text NOT NULL,
            log_sequence bigint,
            log_hash text
        )""",
        "CREATE INDEX IF NOT EXISTS snapstore_reflog_name ON snapstore_reflog (name, seq)",
        """CREATE TABLE IF NOT EXISTS snapstore_meta (
            key text COLLATE "C" PRIMARY KEY,
            value text NOT NULL
        )""",
    )),
    Migration(2, "audit log kept in the store", (
        """CREATE TABLE IF NOT EXISTS snapstore_ozolith (
            sequence bigint PRIMARY KEY CHECK (sequence > 0),
            entry_hash text NOT NULL,
            line text NOT NULL
        )""",
    )),
    # Every start asks each conversation's newest log link (newest_log_sequences): with this
    # index that is one descent per conversation; without it, a read of every reflog row
    # (measured: 1,000,000 rows of 1,000 conversations, 900 ms; with the index, 8.5 ms).
    Migration(3, "reflog index of log links", (
        "CREATE INDEX IF NOT EXISTS snapstore_reflog_log ON snapstore_reflog (name, log_sequence)",
    )),
)

# pg_advisory_xact_lock key serialising schema migrations of one database (advisory
# locks are per database); an arbitrary constant that other applications are unlikely to use.
_MIGRATION_LOCK = 0x5E1A_D0C5_7A11_0001
# pg_advisory_xact_lock key serialising appends to the audit log kept in the store.
_LOG_LOCK = 0x5E1A_D0C5_7A11_0002
_VERSION_TABLE = """CREATE TABLE IF NOT EXISTS snapstore_schema_version (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied timestamptz NOT NULL DEFAULT now()
)"""

_BATCH = 1000
# Deadlocks should not happen (rows are locked in a fixed order); retry them anyway.
_TRANSACTION_ATTEMPTS = 4
# A connection lost during COMMIT (see PostgresBackend._transaction): the transaction's id, asked
# just before COMMIT (NULL if it wrote nothing); from a new connection, its session if still alive
# (ended: a COMMIT it received completes first, anything else rolls back) and then its fate.
# pg_current_xact_id and pg_xact_status came with PostgreSQL 13.
_TRANSACTION_ID = "SELECT pg_current_xact_id_if_assigned()::text"
_END_SESSION = (
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = %s AND backend_xid = %s::xid8::xid"
)
_XACT_STATUS = "SELECT pg_xact_status(%s::xid8)"
# Every new session: durable commits (DURABLE is promised: do not inherit a server or role default of
# `off`); a transaction left idle ended after _IDLE_IN_TRANSACTION unless the URL, role or database set
# a limit (see _connect_session); and when the session started, which with its pid names it even once the pid
# has been reused. One round trip, as the SET it replaced.
_IDLE_IN_TRANSACTION = "10s"
_SESSION_SETUP = (
    "SELECT set_config('synchronous_commit', 'on', false), "
    "CASE WHEN current_setting('idle_in_transaction_session_timeout') = '0' "
    f"THEN set_config('idle_in_transaction_session_timeout', '{_IDLE_IN_TRANSACTION}', false) END, "
    "(SELECT backend_start FROM pg_stat_get_activity(pg_backend_pid()))"
)
# The session of a connection lost in a transaction, if still there (see PostgresBackend._end_orphan).
_END_ORPHAN = (
    "SELECT pg_terminate_backend(pid) FROM pg_stat_get_activity(%s) WHERE backend_start = %s"
)
# What every commit writes: a role lacking any of these can only read the store. The rest (the reflog's
# and the audit log's INSERT, granted with these unless a grant went astray; DELETE, for gc) is left to the
# server's refusal, named the same way (_refused_write).
_COMMIT_PRIVILEGES = (
    ("snapstore_objects", "INSERT"), ("snapstore_refs", "INSERT"), ("snapstore_refs", "UPDATE"),
    ("snapstore_meta", "INSERT"), ("snapstore_meta", "UPDATE"),
)
# Whether this session may write the store, asked once at open (see PostgresBackend._probe_writable): a hot
# standby, a session whose every transaction is read-only, and the commit privileges of the role it lacks.
_WRITABLE_PROBE = (
    "SELECT pg_is_in_recovery(), current_setting('transaction_read_only') = 'on', current_user, "
    "(SELECT array_agg(v.p || ' on ' || v.t ORDER BY v.n) FROM (VALUES "
    + ", ".join(f"({n}, '{t}', '{p}')" for n, (t, p) in enumerate(_COMMIT_PRIVILEGES))
    + ") AS v (n, t, p) WHERE to_regclass(v.t) IS NOT NULL AND NOT has_table_privilege(to_regclass(v.t), v.p))"
)
# What the server answers a write it refuses to this session: a read-only transaction (a standby, or
# default_transaction_read_only), or a privilege the role lacks.
_READ_ONLY_STATES = ("25006", "42501")
_COMMITTED, _ABORTED = "committed", "aborted"
_SETTLE_SECONDS = 10.0
_MIN_SERVER_VERSION = 130000
_NOW = """to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""

_INSERT_OBJECTS = (
    "INSERT INTO snapstore_objects (id, kind, size, stored_size, data) "
    "SELECT * FROM unnest(%b::bytea[], %s::text[], %s::int8[], %s::int8[], %b::bytea[]) "
    "ORDER BY 1 ON CONFLICT (id) DO NOTHING"
)
# A copy written over in place (Backend.replace_objects): the row is never absent.
_REPLACE_OBJECTS = (
    "INSERT INTO snapstore_objects (id, kind, size, stored_size, data) "
    "SELECT * FROM unnest(%b::bytea[], %s::text[], %s::int8[], %s::int8[], %b::bytea[]) "
    "ORDER BY 1 ON CONFLICT (id) DO UPDATE SET kind = EXCLUDED.kind, size = EXCLUDED.size, "
    "stored_size = EXCLUDED.stored_size, data = EXCLUDED.data"
)
_REFLOG_INSERT = (
    "INSERT INTO snapstore_reflog (name, old, new, time, reason, log_sequence, log_hash) "
    f"SELECT %s, %b::bytea, %b::bytea, {_NOW}, %s, %s::int8, %s::text FROM changed"
)
# Each statement swaps one ref and logs it; it inserts a reflog row only if the swap won.
_CREATE_REF = (
    "WITH changed AS (INSERT INTO snapstore_refs (name, target) VALUES (%s, %b) "
    "ON CONFLICT (name) DO NOTHING RETURNING 1) " + _REFLOG_INSERT
)
_MOVE_REF = (
    "WITH changed AS (UPDATE snapstore_refs SET target = %b WHERE name = %s AND target = %b "
    "RETURNING 1) " + _REFLOG_INSERT
)
_DELETE_REF = (
    "WITH changed AS (DELETE FROM snapstore_refs WHERE name = %s AND target = %b "
    "RETURNING 1) " + _REFLOG_INSERT
)
_KEEP_ABSENT = (
    "WITH changed AS (SELECT 1 WHERE NOT EXISTS "
    "(SELECT 1 FROM snapstore_refs WHERE name = %s)) " + _REFLOG_INSERT
)


def _raw(oid: str | None) -> bytes | None:
    return None if oid is None else bytes.fromhex(oid)


def _hex(raw: bytes | None) -> ObjectId | None:
    return None if raw is None else ObjectId(bytes(raw).hex())


def _transaction_id(cur: psycopg.Cursor) -> str | None:
    """The open transaction's id (decimal), or None if it wrote nothing: asked before COMMIT, so that
    a COMMIT whose answer never comes can be settled afterwards (one statement, no new id assigned)."""
    cur.execute(_TRANSACTION_ID)
    row = cur.fetchone()
    return row[0] if row else None


def _like_prefix(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def safe_location(location: str) -> str:
    """``location`` fit to print: passwords in the user part and the query replaced by ``***``."""
    text = redact(location)
    return re.sub(r"([?&](?:ssl)?password=)[^&#]*", r"\1***", text, flags=re.IGNORECASE)


def url_secrets(location: str) -> list[str]:
    """The passwords written in a URL, to scrub from any message that might echo them."""
    found: list[str] = []
    try:
        parts = urlsplit(location)
        if parts.password:
            found += [parts.password, unquote(parts.password)]
        found += [v for k, v in parse_qsl(parts.query) if k.lower() in ("password", "sslpassword")]
    except ValueError:
        pass
    return [s for s in dict.fromkeys(found) if s]


class PostgresBackend(Backend):
    """Objects, refs, reflog and meta in one PostgreSQL database, shared by many processes."""

    capabilities = frozenset({Capability.DURABLE, Capability.MULTI_PROCESS, Capability.SHARED})

    def __init__(self, url: str, create: bool = False, *, description: str | None = None,
                 meta: Mapping[str, str] | None = None) -> None:
        """``meta``: with ``create``, keys recorded in the transaction that creates the store."""
        self._lock = threading.RLock()
        self._conn: psycopg.Connection | None = None
        self._started: datetime | None = None  # when the server session of self._conn started
        # (pid, start) of the session of a connection lost in a transaction, until it is known ended.
        self._orphan: tuple[int, datetime | None] | None = None
        # Connections for writer_lock's session-level advisory locks, one per lock held at a time:
        # the idle ones, kept for the next lock (the guard protects the list only).
        self._lock_guard = threading.Lock()
        self._lock_conns: list[psycopg.Connection] = []
        self._closed = False
        # A hot standby (learnt at open, with read_only): its advisory locks are its own, not the primary's.
        self._in_recovery = False
        self.description = description or safe_location(url)
        self._secrets = url_secrets(url)
        self._connect_args = self._connection_args(url)
        with self._lock:
            self._conn, self._started = self._connect_session()
            try:
                self._open_store(create, meta)
            except BaseException:
                self.close()
                raise

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.description!r})"

    # -- where the objects live (overridden by the S3 backend) ----------------

    def _objects_location(self) -> str:
        """What ``snapstore_store.objects`` records for stores of this backend."""
        return OBJECTS_IN_POSTGRES

    # -- connection and errors ---------------------------------------------

    def _connection_args(self, url: str) -> dict[str, object]:
        try:
            params = conninfo_to_dict(url)
        except psycopg.Error as exc:
            reason = " ".join(self._scrub(str(exc)).split())
            raise InvalidInput(f"invalid PostgreSQL URL {self.description}: {reason}") from None
        args: dict[str, object] = {"conninfo": url, "autocommit": True}
        # A dead server should fail a request, not hang it; libpq waits forever by default.
        if "connect_timeout" not in params:
            args["connect_timeout"] = 10
        if "application_name" not in params:
            args["application_name"] = "snapstore"
        return args

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _error(self, exc: psycopg.Error) -> Exception:
        """A psycopg error as a snapstore error whose message holds no credentials."""
        text = " ".join(self._scrub(str(exc)).split())
        if isinstance(exc, pg_errors.InvalidCatalogName) or re.search(r'database ".*" does not exist', text):
            return StoreNotFound(f"{self.description}: the database does not exist ({text})")
        if isinstance(exc, pg_errors.UndefinedTable):
            return StoreNotFound(f"{self.description}: not a snapstore store ({text})")
        state = f" [{exc.sqlstate}]" if getattr(exc, "sqlstate", None) else ""
        return BackendError(f"{self.description}: {text}{state}")

    def _connect(self) -> psycopg.Connection:
        return self._connect_session()[0]

    def _connect_session(self) -> tuple[psycopg.Connection, datetime | None]:
        """A new connection, set up (:data:`_SESSION_SETUP`), and when its server session started.

        ``idle_in_transaction_session_timeout`` is a second line of defence
        behind :meth:`_end_orphan`: snapstore's transactions never wait for
        anything but the server (between statements the client only builds a
        log entry, well under a millisecond), so a session idle in one for
        10 s has lost its client - a half-open connection whose process is
        gone or cannot reach the server - and its locks (the store-wide log
        lock among them) hold up every other writer until the server ends it.
        Ending a live but stalled client's transaction costs only a redo (its
        COMMIT was not sent). A limit set in the URL, the role or the database
        is kept. Autocommit sessions holding session locks (writer locks,
        presence) are idle outside any transaction: not affected.
        """
        try:
            conn = psycopg.connect(**self._connect_args)  # type: ignore[arg-type]
            row = conn.execute(_SESSION_SETUP).fetchone()
            return conn, row[2] if row else None
        except psycopg.Error as exc:
            raise self._error(exc) from None

    def _live(self) -> psycopg.Connection:
        """The connection, reopened if the last one broke (server restart, idle timeout)."""
        conn = self._conn
        if conn is None:
            raise BackendError(f"{self.description}: the backend is closed")
        if conn.broken or conn.closed:
            conn.close()
            conn, self._started = self._connect_session()
            self._conn = conn
        return conn

    def _read(self, sql: str, params: Sequence[object] = ()) -> list[tuple]:
        """Rows of one query, in autocommit mode; retried once on a fresh connection."""
        with self._lock:
            for attempt in range(2):
                conn = self._live()
                try:
                    with conn.cursor(binary=True) as cur:
                        cur.execute(sql, params)  # type: ignore[arg-type]
                        return cur.fetchall()
                except psycopg.OperationalError as exc:
                    if attempt == 0 and conn.broken:
                        continue
                    raise self._error(exc) from None
                except psycopg.Error as exc:
                    raise self._error(exc) from None
        raise AssertionError("unreachable")

    def _transaction(self, work: Callable[[psycopg.Cursor], object]) -> object:
        """Run ``work`` in one transaction, retrying deadlocks and connections lost before COMMIT.

        :class:`RefConflict` and other snapstore errors raised by ``work`` roll the
        transaction back and propagate. A connection lost while COMMIT was
        awaiting its answer is settled by asking the server what became of the
        transaction (:meth:`_settle`): committed is success, rolled back is done
        again like a loss before COMMIT, and only an outcome that cannot be
        learnt is :class:`CommitOutcomeUnknown` - never a success reported as a
        failure, nor a write applied twice by a blind retry.

        A lost connection's server session may live on, holding the
        transaction's locks (:meth:`_end_orphan`): it is ended before the
        transaction is done again (after a loss during COMMIT, :meth:`_settle`
        ends it), and one left behind (a committed transaction's, or one that
        could not be ended) at the start of the next transaction.
        """
        self._refuse_write()  # before any round trip: a store this session may only read is never written
        with self._lock:
            for attempt in range(_TRANSACTION_ATTEMPTS):
                last = attempt == _TRANSACTION_ATTEMPTS - 1
                conn = self._live()
                if self._orphan is not None:
                    self._end_orphan()
                pid = conn.info.backend_pid
                session = (pid, self._started)
                xid: list[str | None] = []  # holds the transaction's id once COMMIT is about to be sent
                try:
                    with conn.transaction(), conn.cursor(binary=True) as cur:
                        result = work(cur)
                        xid.append(_transaction_id(cur))
                    return result
                except (pg_errors.DeadlockDetected, pg_errors.SerializationFailure) as exc:
                    if last:
                        raise self._error(exc) from None
                    time.sleep(0.01 * 2**attempt)
                except psycopg.OperationalError as exc:
                    if not conn.broken:
                        raise self._error(exc) from None
                    self._orphan = session
                    if xid and self._settle(xid[0], pid) == _COMMITTED:
                        return result  # its session, if it lives on idle, is ended before the next transaction
                    if not xid:  # lost before COMMIT was sent: the session may still hold the locks the redo needs
                        self._end_orphan()
                    if last:
                        raise (self._lost_commit_rolled_back() if xid else self._error(exc)) from None
                    # Lost before COMMIT was sent, or the server rolled it back: nothing was applied; do it again.
                except psycopg.Error as exc:
                    if getattr(exc, "sqlstate", None) in _READ_ONLY_STATES:
                        raise self._refused_write(exc) from None
                    raise self._error(exc) from None
        raise AssertionError("unreachable")

    def _settle(self, xid: str | None, pid: int) -> str:
        """What became of transaction ``xid`` (of server session ``pid``) whose COMMIT got no answer:
        ``committed`` or ``aborted``; :class:`CommitOutcomeUnknown` if that cannot be learnt.

        A transaction that wrote nothing (``xid`` None) had nothing to lose. The
        old session may still be alive on the server: still committing, or idle
        on a half-open connection it may not see closed for hours (holding the
        ref's row lock). Ending it settles the transaction - a COMMIT it had
        received completes first - so the answer is final, and once the session
        is gone every later read sees a committed write.
        """
        if xid is None:
            return _COMMITTED
        conn, why = self._end_session(_END_SESSION, (pid, xid), pid)
        if conn is not None:
            try:
                (status,) = conn.execute(_XACT_STATUS, (xid,)).fetchone()
            except psycopg.Error as exc:
                why = " ".join(self._scrub(str(exc)).split())
        if why is not None:
            raise self._outcome_unknown(xid, why)
        if status not in (_COMMITTED, _ABORTED):
            raise self._outcome_unknown(xid, f"the server says {status or 'nothing'} of it")
        return status

    def _end_session(self, sql: str, params: tuple[object, ...],
                     pid: int) -> tuple[psycopg.Connection | None, str | None]:
        """End server session ``pid`` (``sql`` ends it and returns a row while it lives) and wait, up to
        :data:`_SETTLE_SECONDS`, until it is gone: the fresh connection that saw it go, and None; or
        None and why it could not be seen to go."""
        deadline = time.monotonic() + _SETTLE_SECONDS
        try:
            conn = self._live()  # a fresh connection
            while conn.execute(sql, params).fetchone() is not None:
                if time.monotonic() > deadline:
                    return None, f"its session {pid} did not end within {_SETTLE_SECONDS:g} s"
                time.sleep(0.005)
            return conn, None
        except psycopg.Error as exc:
            return None, " ".join(self._scrub(str(exc)).split())
        except BackendError as exc:  # no new connection
            return None, str(exc)

    def _end_orphan(self) -> None:
        """End the server session of a connection lost in a transaction (:attr:`_orphan`), if still there.

        A connection can break on the client's side only (a network partition,
        a NAT dropping the flow: half-open), the server hearing nothing: the
        session then sits idle in its transaction, holding its row locks and
        the log's advisory lock, until TCP keepalive (hours by default) or
        ``idle_in_transaction_session_timeout`` ends it, and a redo on a new
        connection would queue behind them. Its COMMIT was never sent, so
        ending it applies nothing. It is named by pid and start time, learnt
        when the connection was made (no round trip per transaction): a pid
        alone may by now be another session's. Waits, bounded, until it is
        gone; if it cannot be ended, a one-line :class:`BackendError` (nothing
        was applied), and the next transaction tries again.
        """
        assert self._orphan is not None
        pid, started = self._orphan
        _, why = self._end_session(_END_ORPHAN, (pid, started), pid)
        if why is not None:
            when = started.isoformat() if started is not None else "?"
            raise BackendError(
                f"{self.description}: lost the connection in a transaction, and could not end its server "
                f"session {pid}, which may hold locks until the server sees the connection gone ({why}); this "
                f"transaction applied nothing; to end that session: SELECT pg_terminate_backend(pid) FROM "
                f"pg_stat_activity WHERE pid = {pid} AND backend_start = '{when}'"
            )
        self._orphan = None

    def _refused_write(self, exc: psycopg.Error) -> ReadOnlyStore:
        """A write the server refused as this session may not write (see :data:`_READ_ONLY_STATES`), named
        as such: what the check at open could not see (a privilege gc needs, a server demoted since)."""
        text = " ".join(self._scrub(str(exc)).split())
        return ReadOnlyStore(f"{self.description} is read-only here (the server refused a write: {text} "
                             f"[{exc.sqlstate}]): nothing was committed")

    def _outcome_unknown(self, xid: str, why: str) -> CommitOutcomeUnknown:
        return CommitOutcomeUnknown(
            f"{self.description}: lost the connection while committing, and could not learn whether the "
            f"write was applied ({why}); before writing again, look: SELECT pg_xact_status('{xid}') says "
            "committed or aborted", xid,
        )

    def _lost_commit_rolled_back(self) -> BackendError:
        return BackendError(
            f"{self.description}: lost the connection while committing, {_TRANSACTION_ATTEMPTS} times; "
            "the server rolled each back: nothing was applied"
        )

    # -- schema ------------------------------------------------------------

    def _schema_version(self) -> int | None:
        """The newest applied migration, or None in a database without snapstore tables."""
        rows = self._read("SELECT to_regclass('snapstore_schema_version') IS NOT NULL")
        if not rows[0][0]:
            return None
        return self._read("SELECT coalesce(max(version), 0) FROM snapstore_schema_version")[0][0]

    def migrate(self) -> int:
        """Apply the migrations this database lacks; returns how many were applied.

        Each migration runs in its own transaction holding an advisory lock, so
        processes opening one fresh database at the same time apply each step once.
        """
        latest = MIGRATIONS[-1].version
        current = self._schema_version()
        if current is not None and current > latest:
            raise FormatError(
                f"{self.description}: schema version {current} is newer than this snapstore "
                f"knows ({latest}); upgrade snapstore"
            )
        applied = 0
        for migration in MIGRATIONS:
            if current is not None and migration.version <= current:
                continue

            def apply(cur: psycopg.Cursor, migration: Migration = migration) -> bool:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                cur.execute(_VERSION_TABLE)
                cur.execute("SELECT 1 FROM snapstore_schema_version WHERE version = %s", (migration.version,))
                if cur.fetchone() is not None:
                    return False  # another process applied it while we waited for the lock
                for statement in migration.statements:
                    cur.execute(statement)
                cur.execute(
                    "INSERT INTO snapstore_schema_version (version, name) VALUES (%s, %s)",
                    (migration.version, migration.name),
                )
                return True

            applied += bool(self._transaction(apply))
        return applied

    def _probe_writable(self) -> None:
        """Set :attr:`read_only` to why this session may only read the store (one line), or None; one query.

        Read commands are how ops dashboards, cron jobs and support staff
        look at a shared store, often through a hot standby or a role granted
        SELECT only. Asked once here, not per write, so that every command
        that changes the store refuses before any work (``check_writable``)
        and a :class:`~snapstore.startup.Session` does not start, instead of a
        write failing midway on the server's refusal. A standby is also
        remembered for :meth:`presence_held`. What this cannot see (a
        privilege a rarer write needs, a server demoted later) the server
        refuses, and :meth:`_transaction` names that the same way.
        """
        standby, read_only_transactions, user, missing = self._read(_WRITABLE_PROBE)[0]
        self._in_recovery = bool(standby)
        if standby:
            self.read_only = "the server is a standby in recovery, which accepts no writes"
        elif read_only_transactions:
            self.read_only = "default_transaction_read_only is on: the server runs this session's transactions read-only"
        elif missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            self.read_only = f"role {user} lacks {', '.join(missing[:3])}{more}"
        else:
            self.read_only = None

    def _check_schema_readable(self) -> None:
        """On a store this session may only read (nothing is migrated): :class:`FormatError` for a schema
        newer than this snapstore's, :class:`ReadOnlyStore` for an older one lacking a table or column it
        reads. Migrations that only add an index are left for a writer: reads work without them, slower."""
        current = self._schema_version() or 0
        latest = MIGRATIONS[-1].version
        if current > latest:
            raise FormatError(f"{self.description}: schema version {current} is newer than this snapstore "
                              f"knows ({latest}); upgrade snapstore")
        needed = [m for m in MIGRATIONS if m.version > current
                  and not all(s.lstrip().upper().startswith("CREATE INDEX") for s in m.statements)]
        if needed:
            raise ReadOnlyStore(
                f"{self.description} is read-only here ({self.read_only}), and its schema (version {current}) "
                f"lacks {needed[0].name!r} (version {needed[0].version}), which this snapstore reads: open it "
                "once with a role that may write it (any snap command migrates it); nothing was changed")

    def _open_store(self, create: bool, meta: Mapping[str, str] | None = None) -> None:
        version = self._live().info.server_version
        if version < _MIN_SERVER_VERSION:
            # Writes settle a lost COMMIT with functions of PostgreSQL 13 (see _transaction).
            raise BackendError(f"{self.description}: the server runs PostgreSQL {version // 10000}; "
                               "snapstore needs 13 or newer")
        self._probe_writable()
        if create and self.read_only is not None:
            raise ReadOnlyStore(f"{self.description} is read-only here ({self.read_only}): a store cannot be "
                                "created in it; nothing was changed")
        if not create and self._schema_version() is None:
            raise StoreNotFound(f"no snapstore store in {self.description} (create one with `snap init`)")
        if self.read_only is None:
            self.migrate()
        else:
            self._check_schema_readable()
        mine = self._objects_location()
        if create:
            keys, values = list(meta or {}), list((meta or {}).values())

            def make(cur: psycopg.Cursor) -> bool:
                # The store row and ``meta`` in one transaction: no process sees a store without them.
                cur.execute("INSERT INTO snapstore_store (objects) VALUES (%s) ON CONFLICT DO NOTHING", (mine,))
                if not cur.rowcount:
                    # A store row exists. One whose meta never came (an init of an older snapstore,
                    # interrupted between its two steps) is taken over; any other is a store.
                    cur.execute("SELECT objects FROM snapstore_store")
                    row = cur.fetchone()
                    cur.execute("SELECT count(*) FROM snapstore_meta WHERE key = ANY(%s)", (keys,))
                    if not keys or row is None or row[0] != mine or cur.fetchone()[0]:
                        return False
                if keys:
                    cur.execute(
                        "INSERT INTO snapstore_meta (key, value) SELECT * FROM unnest(%s::text[], %s::text[]) "
                        "ON CONFLICT (key) DO NOTHING", (keys, values),
                    )
                return True

            if self._transaction(make):
                return
            raise StoreExists(f"a store already exists in {self.description}")
        rows = self._read("SELECT objects FROM snapstore_store")
        if not rows:
            raise StoreNotFound(f"no snapstore store in {self.description} (create one with `snap init`)")
        recorded = rows[0][0]
        if recorded != mine:
            raise InvalidInput(
                f"{self.description}: this store keeps its objects in {recorded}, "
                f"but this location says {mine}"
            )

    # -- objects -----------------------------------------------------------

    def _index_rows(self, ids: Iterable[ObjectId], columns: str) -> Iterator[tuple]:
        wanted = [bytes.fromhex(i) for i in dict.fromkeys(ids)]
        for start in range(0, len(wanted), _BATCH):
            yield from self._read(
                f"SELECT {columns} FROM snapstore_objects WHERE id = ANY(%b)",
                (wanted[start : start + _BATCH],),
            )

    def get_objects(self, ids: Iterable[ObjectId]) -> dict[ObjectId, StoredObject]:
        found: dict[ObjectId, StoredObject] = {}
        for raw, kind, size, data in self._index_rows(ids, "id, kind, size, data"):
            oid = ObjectId(bytes(raw).hex())
            found[oid] = StoredObject(oid, kind, size, bytes(data))
        return found

    def has_objects(self, ids: Iterable[ObjectId]) -> set[ObjectId]:
        return {ObjectId(bytes(r[0]).hex()) for r in self._index_rows(ids, "id")}

    def _iter_index(self, kind: str | None, columns: str) -> Iterator[tuple]:
        """Index rows in id order, a page per query (no transaction stays open between pages)."""
        last = b""
        where = "id > %b" if kind is None else "id > %b AND kind = %s"
        while True:
            params: tuple = (last, _BATCH) if kind is None else (last, kind, _BATCH)
            rows = self._read(
                f"SELECT {columns} FROM snapstore_objects WHERE {where} ORDER BY id LIMIT %s", params
            )
            if not rows:
                return
            yield from rows
            last = bytes(rows[-1][0])

    def iter_objects(self, kind: str | None = None) -> Iterator[StoredObject]:
        for raw, k, size, data in self._iter_index(kind, "id, kind, size, data"):
            yield StoredObject(ObjectId(bytes(raw).hex()), k, size, bytes(data))

    def count_objects(self) -> tuple[int, int, int]:
        count, stored, logical = self._read(
            "SELECT count(*), coalesce(sum(stored_size), 0)::int8, coalesce(sum(size), 0)::int8 "
            "FROM snapstore_objects"
        )[0]
        return count, stored, logical

    def find_ids(self, prefix: str, limit: int = 2) -> list[ObjectId]:
        low = bytes.fromhex((prefix + "0" * 64)[:64])
        high = bytes.fromhex((prefix + "f" * 64)[:64])
        rows = self._read(
            "SELECT id FROM snapstore_objects WHERE id BETWEEN %b AND %b ORDER BY id LIMIT %s",
            (low, high, limit),
        )
        return [ObjectId(bytes(r[0]).hex()) for r in rows]

    def _delete_index(self, ids: Iterable[ObjectId],
                      fence: Mapping[str, tuple[ObjectId, int]] | None = None) -> list[ObjectId]:
        """Remove objects' rows in one transaction; the ids that were there."""
        wanted = sorted(bytes.fromhex(i) for i in dict.fromkeys(ids))

        def delete(cur: psycopg.Cursor) -> list[ObjectId]:
            removed: list[ObjectId] = []
            if fence is not None:
                # Writers insert objects, then swap refs; locking both tables in that
                # order waits for every writer in flight and holds back new ones (not
                # readers) until this transaction ends, so the check below stays true.
                cur.execute("LOCK TABLE snapstore_objects, snapstore_refs IN EXCLUSIVE MODE")
                cur.execute(
                    "SELECT r.name, r.target, (SELECT count(*) FROM snapstore_reflog g WHERE g.name = r.name) "
                    "FROM snapstore_refs r"
                )
                check_fence({n: (ObjectId(bytes(t).hex()), c) for n, t, c in cur.fetchall()}, fence)
            for start in range(0, len(wanted), _BATCH):
                cur.execute(
                    "DELETE FROM snapstore_objects WHERE id = ANY(%b) RETURNING id",
                    (wanted[start : start + _BATCH],),
                )
                removed += [ObjectId(bytes(r[0]).hex()) for r in cur.fetchall()]
            return removed

        return self._transaction(delete)  # type: ignore[return-value]

    def delete_objects(self, ids: Iterable[ObjectId], fence: Mapping[str, tuple[ObjectId, int]] | None = None) -> int:
        return len(self._delete_index(ids, fence))

    def replace_objects(self, objects: Sequence[StoredObject]) -> None:
        self._replace_rows(objects, with_data=True)

    def _replace_rows(self, objects: Sequence[StoredObject], with_data: bool) -> None:
        """Object rows written over, or added, in one transaction (bodies included if ``with_data``)."""
        unique = {o.id: o for o in objects}  # one row once: ON CONFLICT DO UPDATE refuses a row twice
        rows = sorted(
            (bytes.fromhex(o.id), o.kind, o.size, len(o.data), o.data if with_data else None)
            for o in unique.values()
        )

        def replace(cur: psycopg.Cursor) -> None:
            for start in range(0, len(rows), _BATCH):
                cur.execute(_REPLACE_OBJECTS, [list(c) for c in zip(*rows[start : start + _BATCH], strict=True)])

        if rows:
            self._transaction(replace)

    # -- refs and meta -----------------------------------------------------

    def get_ref(self, name: str) -> ObjectId | None:
        rows = self._read("SELECT target FROM snapstore_refs WHERE name = %s", (name,))
        return _hex(rows[0][0]) if rows else None

    def list_refs(self, prefix: str = "") -> dict[str, ObjectId]:
        rows = self._read(
            "SELECT name, target FROM snapstore_refs WHERE name LIKE %s ESCAPE '\\' ORDER BY name",
            (_like_prefix(prefix),),
        )
        return {n: ObjectId(bytes(t).hex()) for n, t in rows}

    def reflog(self, name: str) -> list[ReflogEntry]:
        rows = self._read(
            "SELECT name, old, new, time, reason, log_sequence, log_hash FROM snapstore_reflog "
            "WHERE name = %s ORDER BY seq",
            (name,),
        )
        return [ReflogEntry(n, _hex(o), _hex(w), t, r, ls, lh) for n, o, w, t, r, ls, lh in rows]

    def reflogs(self, names: Iterable[str],
                damaged: dict[str, DamagedRecord] | None = None) -> dict[str, list[ReflogEntry]]:
        """One query for all ``names`` along the ``(name, seq)`` index: gc, fsck and verify read every
        conversation's reflog, a round trip each before. The columns' types hold no damaged row (none
        goes to ``damaged``)."""
        out: dict[str, list[ReflogEntry]] = {name: [] for name in names}
        if out:
            rows = self._read(
                "SELECT name, old, new, time, reason, log_sequence, log_hash FROM snapstore_reflog "
                "WHERE name = ANY(%s::text[]) ORDER BY name, seq",
                (list(out),),
            )
            for n, o, w, t, r, ls, lh in rows:
                out[n].append(ReflogEntry(n, _hex(o), _hex(w), t, r, ls, lh))
        return out

    def reflog_newest(self, name: str, count: int) -> list[ReflogEntry]:
        """The last ``count`` rows only, read backwards along the ``(name, seq)`` index: ``snap log -n N``
        and a start's check of the newest link cost a few rows, not the conversation's whole reflog."""
        if count <= 0:
            return []
        rows = self._read(
            "SELECT name, old, new, time, reason, log_sequence, log_hash FROM ("
            "SELECT * FROM snapstore_reflog WHERE name = %s ORDER BY seq DESC LIMIT %s) newest ORDER BY seq",
            (name, count),
        )
        return [ReflogEntry(n, _hex(o), _hex(w), t, r, ls, lh) for n, o, w, t, r, ls, lh in rows]

    def newest_log_sequences(self, names: Iterable[str]) -> dict[str, int]:
        """One query: per name, the top of the ``(name, log_sequence)`` index (see ``MIGRATIONS``), so
        that every start of a replica costs a lookup per conversation, not a read of every reflog row.

        Rows without a log link (NULL) do not count; a name without linked rows gives 0.
        """
        out = dict.fromkeys(names, 0)
        if out:
            rows = self._read(
                "SELECT n, (SELECT max(log_sequence) FROM snapstore_reflog WHERE name = n) "
                "FROM unnest(%s::text[]) AS n",
                (list(out),),
            )
            out.update((name, top) for name, top in rows if top is not None)
        return out

    def get_meta(self, key: str) -> str | None:
        rows = self._read("SELECT value FROM snapstore_meta WHERE key = %s", (key,))
        return rows[0][0] if rows else None

    def list_meta(self, prefix: str = "") -> dict[str, str]:
        rows = self._read(
            "SELECT key, value FROM snapstore_meta WHERE key LIKE %s ESCAPE '\\' ORDER BY key",
            (_like_prefix(prefix),),
        )
        return dict(rows)

    # -- the one write path ------------------------------------------------

    def write(
        self,
        objects: Sequence[StoredObject] = (),
        ref_updates: Sequence[RefUpdate] = (),
        meta: Mapping[str, str | None] | None = None,
        append: LogAppend | None = None,
    ) -> AppendedEntry | None:
        return self._commit(objects, ref_updates, meta, with_data=True, append=append)

    def _commit(
        self,
        objects: Sequence[StoredObject],
        ref_updates: Sequence[RefUpdate],
        meta: Mapping[str, str | None] | None,
        with_data: bool,
        append: LogAppend | None = None,
    ) -> AppendedEntry | None:
        """One transaction: object rows (bodies included if ``with_data``), the log entry, ref swaps, meta."""
        unique = {o.id: o for o in reversed(objects)}  # the first of duplicate ids wins
        rows = sorted(
            (bytes.fromhex(o.id), o.kind, o.size, len(o.data), o.data if with_data else None)
            for o in unique.values()
        )
        # Stable sort: updates of one ref keep their order; locks are taken in name order.
        updates = sorted(ref_updates, key=lambda u: u.name)
        meta_items = sorted((meta or {}).items())

        def work(cur: psycopg.Cursor) -> AppendedEntry | None:
            entry = None
            if append is not None:
                # First, before any row lock: appenders queue here, never on a ref row.
                entry = self._append_locked(cur, append)
            for start in range(0, len(rows), _BATCH):
                columns = [list(c) for c in zip(*rows[start : start + _BATCH], strict=True)]
                cur.execute(_INSERT_OBJECTS, columns)
            for update in updates:
                self._swap_ref(cur, link(update, entry))
            upserts = [(k, v) for k, v in meta_items if v is not None]
            deletes = [k for k, v in meta_items if v is None]
            if upserts:
                cur.execute(
                    "INSERT INTO snapstore_meta (key, value) SELECT * FROM unnest(%s::text[], %s::text[]) "
                    "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value "
                    "WHERE snapstore_meta.value IS DISTINCT FROM EXCLUDED.value",  # unchanged: no new row version
                    ([k for k, _ in upserts], [v for _, v in upserts]),
                )
            if deletes:
                cur.execute("DELETE FROM snapstore_meta WHERE key = ANY(%s::text[])", (deletes,))
            return entry

        return self._transaction(work)  # type: ignore[return-value]

    @staticmethod
    def _append_locked(cur: psycopg.Cursor, append: LogAppend) -> AppendedEntry:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_LOG_LOCK,))
        cur.execute("SELECT sequence, line FROM snapstore_ozolith ORDER BY sequence DESC LIMIT 1")
        row = cur.fetchone()
        cur.execute("SELECT value FROM snapstore_meta WHERE key = %s", (LOG_KEY_META,))
        key_row = cur.fetchone()
        entry, new_key = append.build(row[1] if row else None, key_row[0] if key_row else None)
        if row is not None:
            check_log_tail(row[0], entry)
        cur.execute("INSERT INTO snapstore_ozolith (sequence, entry_hash, line) VALUES (%s, %s, %s)",
                    (entry.sequence, entry.entry_hash, entry.line))
        if new_key is not None:
            cur.execute("INSERT INTO snapstore_meta (key, value) VALUES (%s, %s)", (LOG_KEY_META, new_key))
        return entry

    def writer_lock(self, name: str) -> contextlib.AbstractContextManager[None]:
        """A session-level advisory lock keyed by the ref name's hash (see :meth:`Backend.writer_lock`).

        Each lock held at once is taken on a connection of its own, so it
        never waits inside, or holds up, this backend's transactions, nor
        another thread's wait for the lock of another ref (a thread queueing
        behind a busy conversation does not hold back the losers of every
        other conversation of the process).
        """
        return self._writer_lock(name)

    @contextlib.contextmanager
    def _writer_lock(self, name: str) -> Iterator[None]:
        key = int.from_bytes(hashlib.blake2b(b"snapstore writer " + name.encode(), digest_size=8).digest(),
                             "big", signed=True)
        with super().writer_lock(name):
            conn: psycopg.Connection | None = None
            try:
                conn = self._idle_lock_connection()
                conn.execute("SELECT pg_advisory_lock(%s)", (key,))
            except (psycopg.Error, BackendError):
                self._discard(conn)  # only fairness is lost
                conn = None
            try:
                yield
            finally:
                if conn is not None:
                    try:
                        conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
                        self._keep_lock_connection(conn)
                    except psycopg.Error:
                        self._discard(conn)  # closing the session releases the lock

    def _idle_lock_connection(self) -> psycopg.Connection:
        """A connection holding no lock: an idle one kept from an earlier lock, or a new one."""
        with self._lock_guard:
            while self._lock_conns:
                conn = self._lock_conns.pop()
                if not (conn.closed or conn.broken):
                    return conn
        return self._connect()

    def _keep_lock_connection(self, conn: psycopg.Connection) -> None:
        """Keep a connection whose lock was released for the next lock (closed if the backend is)."""
        with self._lock_guard:
            if not self._closed:
                self._lock_conns.append(conn)
                return
        self._discard(conn)

    @staticmethod
    def _discard(conn: psycopg.Connection | None) -> None:
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    @staticmethod
    def _presence_key(name: str) -> int:
        return int.from_bytes(hashlib.blake2b(b"snapstore presence " + name.encode(), digest_size=8).digest(),
                              "big", signed=True)

    def hold_presence(self, name: str) -> Callable[[], None]:
        """A session-level advisory lock on a connection of its own, for as long as the session lives.

        The server drops it with the connection: a killed process, or a
        machine that went away once its connection times out. Refused on a
        store this session may only read: a presence announces a writer.
        """
        self._refuse_write()
        key = self._presence_key(name)
        conn = self._connect()
        try:
            conn.autocommit = True  # no transaction left open for the session's life
            conn.execute("SELECT pg_advisory_lock(%s)", (key,))
        except psycopg.Error as exc:
            with contextlib.suppress(psycopg.Error):
                conn.close()
            raise self._error(exc) from None

        def release() -> None:
            with contextlib.suppress(psycopg.Error):
                conn.close()  # ends the session, which releases the lock

        return release

    def presence_held(self, name: str) -> bool | None:
        """Probed with ``pg_try_advisory_lock``; None on a hot standby, whose advisory locks are its own
        (never WAL-logged): a session of the primary holds its lock there, invisible from here."""
        if self._in_recovery:
            return None
        key = self._presence_key(name)
        conn = self._connect()
        try:
            (free,) = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
            return not free  # a lock taken here is released as the connection closes
        except psycopg.Error as exc:
            raise self._error(exc) from None
        finally:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def _drop_lock_connections(self) -> None:
        """Close the idle lock connections, and from now on each one as its lock is released."""
        with self._lock_guard:
            self._closed = True
            idle, self._lock_conns = self._lock_conns, []
        for conn in idle:
            self._discard(conn)

    def log_lines(self, after: int = 0, limit: int | None = None) -> list[tuple[int, str]]:
        return [(int(s), line) for s, line in self._read(
            "SELECT sequence, line FROM snapstore_ozolith WHERE sequence > %s ORDER BY sequence LIMIT %s",
            (after, limit),
        )]

    def log_hashes(self, after: int = 0, limit: int | None = None) -> list[tuple[int, str]]:
        """``(sequence, entry_hash column)`` of the log rows past ``after``, in order: what
        :meth:`StoreLog.verify <snapstore.storelog.StoreLog.verify>` compares with each row's line, so that
        a column changed behind the store (or a line whose hash no longer is its column) is found."""
        return [(int(s), h) for s, h in self._read(
            "SELECT sequence, entry_hash FROM snapstore_ozolith WHERE sequence > %s ORDER BY sequence LIMIT %s",
            (after, limit),
        )]

    def log_tail(self) -> tuple[int, str] | None:
        rows = self._read("SELECT sequence, line FROM snapstore_ozolith ORDER BY sequence DESC LIMIT 1")
        return (int(rows[0][0]), rows[0][1]) if rows else None

    @staticmethod
    def _swap_ref(cur: psycopg.Cursor, update: RefUpdate) -> None:
        """Compare-and-swap one ref and log it, or raise :class:`RefConflict`.

        Under READ COMMITTED a writer blocked on the row (or on the unique key of a
        ref another transaction is creating) re-checks the condition once that
        transaction ends, so of two racing writers exactly one matches.
        """
        name, old, new = update.name, _raw(update.old), _raw(update.new)
        log = (name, old, new, update.reason, update.log_sequence, update.log_hash)
        if old is None and new is not None:
            cur.execute(_CREATE_REF, (name, new, *log))
        elif old is None:
            cur.execute(_KEEP_ABSENT, (name, *log))
        elif new is None:
            cur.execute(_DELETE_REF, (name, old, *log))
        else:
            cur.execute(_MOVE_REF, (new, name, old, *log))
        if cur.rowcount != 1:
            cur.execute("SELECT target FROM snapstore_refs WHERE name = %s", (name,))
            row = cur.fetchone()
            raise RefConflict(name, update.old, _hex(row[0]) if row else None)

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                with contextlib.suppress(psycopg.Error):
                    conn.close()
        self._drop_lock_connections()


def open_postgres(location: str, create: bool, meta: Mapping[str, str] | None = None) -> PostgresBackend:
    """The factory behind ``postgresql://`` and ``postgres://`` locations."""
    return PostgresBackend(location, create, meta=meta)


for _scheme in SCHEMES:
    register_url_backend(_scheme, open_postgres)

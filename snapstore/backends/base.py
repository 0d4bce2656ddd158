"""The storage interface every backend implements.

A backend stores three things and knows nothing of trees:

- objects: immutable ``(id, kind, size, data)`` records keyed by id, where
  ``data`` is the compressed body and ``size`` the uncompressed length;
- refs: names pointing at object ids, changed only by compare-and-swap, each
  change recorded in a reflog;
- meta: a small string key/value table (format version, dictionaries, the
  active conversation).

:meth:`Backend.write` applies objects, ref updates and meta updates as one
atomic, durable transaction: either everything becomes visible or nothing
does, and when it returns the data survives ``kill -9`` and power loss. If any
ref update's expected old value does not match, nothing is applied and
:class:`~snapstore.errors.RefConflict` is raised.

Backends turn their engine's errors into :mod:`snapstore.errors` at their edge.
"""

from __future__ import annotations

import enum
import threading
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager, contextmanager
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from ..errors import DamagedRecord, LogError, ReadOnlyStore, RefConflict
from ..objects import ObjectId


class Capability(enum.Enum):
    """What a backend guarantees beyond the base contract."""

    DURABLE = "durable"  # survives process exit, kill -9 and power loss
    MULTI_PROCESS = "multi-process"  # several processes may open it at once
    SHARED = "shared"  # several machines may use it at once


@dataclass(frozen=True)
class StoredObject:
    """One object as a backend stores it.

    ``body``: its plain body when the backend has it at hand and has checked
    that it hashes to ``id`` (an object read from a pack: the pack reader
    hashes each member it hands out), so that a reader need not unwrap and
    hash ``data`` again. Never set from untrusted input.
    """

    id: ObjectId
    kind: str
    size: int
    data: bytes
    body: bytes | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class RefUpdate:
    """Set ``name`` from ``old`` to ``new`` (None means absent), recording ``reason``.

    ``log_sequence`` / ``log_hash`` link the change to an audit-log entry.
    With ``link_appended``, they are filled in by the backend with the entry
    the same :meth:`Backend.write` appends (see :class:`LogAppend`).
    """

    name: str
    old: ObjectId | None
    new: ObjectId | None
    reason: str
    log_sequence: int | None = None
    log_hash: str | None = None
    link_appended: bool = False


@dataclass(frozen=True)
class ReflogEntry:
    """One recorded change of a ref."""

    name: str
    old: ObjectId | None
    new: ObjectId | None
    time: str
    reason: str
    log_sequence: int | None = None
    log_hash: str | None = None


@dataclass(frozen=True)
class LostReflogRows:
    """A pack of reflog rows that could not be read, as a backend's ``reflog_rows`` reports it to fsck.

    fsck names the pack and goes on: the reflogs whose rows it held are not
    judged across the gap it leaves (their rows before and after it still are).
    """

    first: int  # the pack's range of row numbers (what identifies it)
    last: int
    reason: str  # the line naming the pack and its damage
    # The refs whose rows it held: those the store counts more packed rows of than the readable packs
    # hold; failing that count, every ref with packed rows (() if there is none).
    names: tuple[str, ...]
    at: int  # how many rows the scan returned before this pack's would have been


_LOCAL_GUARD = threading.Lock()


@contextmanager
def _held(lock: threading.Lock) -> Iterator[None]:
    with lock:
        yield


#: The meta key holding the signing key of the audit log kept in the store.
LOG_KEY_META = "ozolith/key"


@dataclass(frozen=True)
class AppendedEntry:
    """An audit-log entry as a backend stores it: one line of the client's JSON Lines format."""

    sequence: int
    entry_hash: str
    line: str


@dataclass(frozen=True)
class LogAppend:
    """An audit-log entry to append inside a :meth:`Backend.write` transaction.

    The backend serialises appenders (the log is one chain), reads the last
    stored line and the stored signing key (meta :data:`LOG_KEY_META`), and
    calls ``build(last_line, key)``, which returns the new entry and, when
    there was no key yet, the key to store with it. ``build`` may run more
    than once if the transaction is retried; only the committed result counts.
    """

    build: Callable[[str | None, str | None], tuple[AppendedEntry, str | None]]


def reflog_row_damage(time: object, reason: object, log_sequence: object, log_hash: object) -> str | None:
    """What a reflog row's columns besides its name and ids hold that they never hold (their types), or None."""
    if not isinstance(time, str):
        return f"its time is {time!r:.40}, not a time"
    if not isinstance(reason, str):
        return f"its reason is {reason!r:.40}, not text"
    if log_sequence is not None and (type(log_sequence) is not int or log_sequence < 0):
        return f"its log_sequence is {log_sequence!r:.40}, not a non-negative integer"
    if log_hash is not None and not isinstance(log_hash, str):
        return f"its log_hash is {log_hash!r:.40}, not text"
    return None


def link(update: RefUpdate, entry: AppendedEntry | None) -> RefUpdate:
    """``update`` with its audit-log link filled in from ``entry`` if it asks for it."""
    if not update.link_appended or entry is None:
        return update
    return RefUpdate(update.name, update.old, update.new, update.reason, entry.sequence, entry.entry_hash)


def check_fence(current: Mapping[str, tuple[ObjectId, int]], fence: Mapping[str, tuple[ObjectId, int]]) -> None:
    """Raise :class:`RefConflict` naming the first ref whose target or reflog length left the fence."""
    for name in sorted(current.keys() | fence.keys()):
        if current.get(name) != fence.get(name):
            raise RefConflict(name, (fence.get(name) or (None,))[0], (current.get(name) or (None,))[0])


def check_log_tail(last: int, entry: AppendedEntry, where: str = "") -> None:
    """:class:`LogError` unless ``entry``, built on the line of the log's last row (keyed ``last``, 0 if
    none), is numbered ``last + 1``: otherwise that row's key is not the sequence its line holds
    (renumbered, or another entry's line), and the new entry would collide with a row or leave a gap.
    ``where`` prefixes the message (the store's location)."""
    if entry.sequence != last + 1:
        raise LogError(f"{where}the audit log's last row is keyed {last} but holds entry {entry.sequence - 1}: "
                       "nothing was written; run snap verify", last)


class Backend(ABC):
    """Abstract storage engine. Subclasses declare :attr:`capabilities`."""

    capabilities: frozenset[Capability] = frozenset()
    #: A short human name for messages (never contains credentials).
    description: str = "backend"
    #: Why this process may only read the store (one line naming what it cannot write), or None: every write
    #: then raises :class:`~snapstore.errors.ReadOnlyStore` and commands that change the store refuse at once.
    read_only: str | None = None

    def check_writable(self, doing: str) -> None:
        """:class:`~snapstore.errors.ReadOnlyStore` naming the store if this process may only read it:
        called by what changes a store (``doing``: "`snap gc`") before any work, so that it changes
        nothing, nor writes a file elsewhere, before failing."""
        if self.read_only is not None:
            raise ReadOnlyStore(f"{self.description} is read-only here ({self.read_only}): {doing} changes "
                                "the store; nothing was changed")

    def _refuse_write(self) -> None:
        """:class:`~snapstore.errors.ReadOnlyStore` naming the store, if this process may only read it: what
        every write path of a backend that can tell calls first (nothing is written)."""
        if self.read_only is not None:
            raise ReadOnlyStore(f"{self.description} is read-only here ({self.read_only}): nothing was written")

    # -- objects -----------------------------------------------------------

    @abstractmethod
    def get_objects(self, ids: Iterable[ObjectId]) -> dict[ObjectId, StoredObject]:
        """The stored objects among ``ids``; missing ones are left out."""

    @abstractmethod
    def has_objects(self, ids: Iterable[ObjectId]) -> set[ObjectId]:
        """Which of ``ids`` are stored."""

    @abstractmethod
    def iter_objects(self, kind: str | None = None) -> Iterator[StoredObject]:
        """Every stored object (of one kind if given), in no particular order."""

    @abstractmethod
    def count_objects(self) -> tuple[int, int, int]:
        """``(objects, stored bytes, uncompressed bytes)``."""

    @abstractmethod
    def find_ids(self, prefix: str, limit: int = 2) -> list[ObjectId]:
        """Up to ``limit`` stored ids that start with the lowercase hex ``prefix``."""

    @abstractmethod
    def delete_objects(self, ids: Iterable[ObjectId], fence: Mapping[str, tuple[ObjectId, int]] | None = None) -> int:
        """Remove objects (for garbage collection); returns how many were removed.

        With ``fence`` (every ref name -> its target and its number of reflog
        entries, as gc read them when it marked), the removal is one
        transaction that first checks the refs are still exactly that, and
        otherwise raises :class:`RefConflict` and removes nothing: no ref can
        move between gc's mark and its sweep (see snapstore/gc.py).
        """

    @abstractmethod
    def replace_objects(self, objects: Sequence[StoredObject]) -> None:
        """Store ``objects`` over the stored copies of them, atomically and durably; an absent one is stored.

        How a commit mends a damaged copy of an object it made again
        (``Repository._heal``): its bytes hash to the id, so every reader is
        served either the old copy or this one, and never finds the object
        gone. A delete then a write would leave it gone in between, for good if
        the process died there, and two replicas mending one object at once
        would delete each other's good copy. A copy a pack holds stops being
        read (a backend with packs drops its index row, or reads prefer the
        new copy). Nothing but these objects changes.
        """

    # -- refs and meta -----------------------------------------------------

    @abstractmethod
    def get_ref(self, name: str) -> ObjectId | None:
        """The id a ref points at, or None."""

    @abstractmethod
    def list_refs(self, prefix: str = "") -> dict[str, ObjectId]:
        """All refs whose name starts with ``prefix``."""

    @abstractmethod
    def reflog(self, name: str) -> list[ReflogEntry]:
        """Changes of one ref, oldest first."""

    def reflog_newest(self, name: str, count: int) -> list[ReflogEntry]:
        """The newest ``count`` changes of one ref (all if it has fewer), oldest first.

        What ``snap log -n N`` needs; this default reads the whole reflog, a
        backend may read only its end.
        """
        return self.reflog(name)[-count:] if count > 0 else []

    def reflogs(self, names: Iterable[str],
                damaged: dict[str, DamagedRecord] | None = None) -> dict[str, list[ReflogEntry]]:
        """The reflogs of many refs, each as :meth:`reflog` gives it, read together.

        What gc, fsck and verify read for every conversation: a store of
        thousands would otherwise cost a round trip per ref. A reflog that
        :meth:`reflog` would refuse (:class:`DamagedRecord`) raises the error it
        would, for the first such name in ``names``' order; given ``damaged``,
        each such error is put there under its name instead, the name left out
        of the result, and the others are read. This default reads ref by ref;
        a backend reads them in a few queries.
        """
        out: dict[str, list[ReflogEntry]] = {}
        for name in dict.fromkeys(names):
            try:
                out[name] = self.reflog(name)
            except DamagedRecord as exc:
                if damaged is None:
                    raise
                damaged[name] = exc
        return out

    def newest_log_sequences(self, names: Iterable[str]) -> dict[str, int]:
        """For each ref name, the highest ``log_sequence`` its reflog records (0 if none).

        What a startup needs to find log entries newer than the store; this
        default reads every reflog, a backend may answer from an aggregate.
        """
        return {name: max((e.log_sequence for e in self.reflog(name) if e.log_sequence is not None), default=0)
                for name in names}

    @abstractmethod
    def get_meta(self, key: str) -> str | None:
        """One meta value, or None."""

    @abstractmethod
    def list_meta(self, prefix: str = "") -> dict[str, str]:
        """All meta values whose key starts with ``prefix``."""

    # -- the one write path ------------------------------------------------

    @abstractmethod
    def write(
        self,
        objects: Sequence[StoredObject] = (),
        ref_updates: Sequence[RefUpdate] = (),
        meta: Mapping[str, str | None] | None = None,
        append: LogAppend | None = None,
    ) -> AppendedEntry | None:
        """Atomically and durably store objects, apply ref CAS updates and meta.

        Objects already stored are skipped. A meta value of None deletes the key.
        Raises :class:`RefConflict` (and applies nothing) when a ref does not
        hold its update's ``old`` value. With ``append``, one audit-log entry
        is appended to the store's log in the same transaction and returned
        (see :class:`LogAppend`); ref updates with ``link_appended`` record it.
        """

    def write_reporting_new(
        self,
        objects: Sequence[StoredObject] = (),
        ref_updates: Sequence[RefUpdate] = (),
        meta: Mapping[str, str | None] | None = None,
        append: LogAppend | None = None,
    ) -> tuple[AppendedEntry | None, list[ObjectId]]:
        """:meth:`write`, also returning the ids of the objects it stored that were absent before.

        This default asks :meth:`has_objects` first, outside the transaction
        (the list may then name an object another writer stored meanwhile);
        a backend that can tell inside its transaction overrides it, which
        saves a commit that query.
        """
        present = self.has_objects([o.id for o in objects]) if objects else set()
        entry = self.write(objects, ref_updates, meta, append=append)
        return entry, list(dict.fromkeys(o.id for o in objects if o.id not in present))

    # -- fairness between writers of one conversation ---------------------------

    def writer_lock(self, name: str) -> AbstractContextManager[None]:
        """An advisory lock on one ref shared by every process using the store.

        Correctness never depends on it (refs change only by compare-and-swap);
        a writer that lost a race takes it for its retries, so that losers queue
        instead of losing again and again to writers that happen to be faster.
        The default serialises the threads of this process only.
        """
        with _LOCAL_GUARD:
            locks = self.__dict__.setdefault("_writer_locks", {})
            lock = locks.setdefault(name, threading.Lock())
        return _held(lock)

    # -- presence: which sessions are still running --------------------------

    def hold_presence(self, name: str) -> Callable[[], None]:
        """Hold the presence lock ``name`` until the returned function is called, or the process ends.

        A session holds one for its whole life so that others can tell it
        is still running (:meth:`presence_held`); a killed process loses its
        locks with it. The default only knows this backend object's own
        holders: right for a store no other process can open.
        """
        with _LOCAL_GUARD:
            held = self.__dict__.setdefault("_presence", set())
            held.add(name)

        def release() -> None:
            with _LOCAL_GUARD:
                held.discard(name)

        return release

    def presence_held(self, name: str) -> bool | None:
        """Whether some running session (of any process using the store) holds the presence lock ``name``;
        None if this process cannot tell (it may only read the store, and not even the lock)."""
        with _LOCAL_GUARD:
            return name in self.__dict__.get("_presence", ())

    # -- the audit log kept in the store -------------------------------------

    def log_lines(self, after: int = 0, limit: int | None = None) -> list[tuple[int, str]]:
        """``(sequence, line)`` of the store's audit log past ``after``, in order."""
        return []

    def log_tail(self) -> tuple[int, str] | None:
        """The last ``(sequence, line)`` of the store's audit log, or None."""
        return None

    @abstractmethod
    def close(self) -> None:
        """Release connections and locks."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""The one exception tree of snapstore.

Every error a caller can see derives from :class:`SnapstoreError`. Where a
built-in fits, an error also subclasses it (``ObjectNotFound`` is a
``KeyError``), so callers can catch either. Errors carry the data that names
what went wrong: which object, which ref, which log sequence.
"""

from __future__ import annotations


class SnapstoreError(Exception):
    """Base class of every snapstore error."""


class InvalidInput(SnapstoreError, ValueError):
    """Input that snapstore refuses: a malformed state, a hostile id, a bad option."""


class StoreNotFound(SnapstoreError, FileNotFoundError):
    """The path or URL names no snapstore store."""


class StoreExists(SnapstoreError, FileExistsError):
    """``init`` was asked to create a store where one already exists."""


class FormatError(SnapstoreError):
    """The store's format version is not one this snapstore can open."""


class ObjectNotFound(SnapstoreError, KeyError):
    """An object that should exist is not in the store."""

    def __init__(self, object_id: str, where: str = "") -> None:
        self.object_id = object_id
        self.where = where
        super().__init__(object_id)

    def __str__(self) -> str:
        suffix = f" ({self.where})" if self.where else ""
        return f"object {self.object_id} not found{suffix}"


class CorruptObject(SnapstoreError):
    """A stored object does not re-hash to its id, or cannot be decoded."""

    def __init__(self, object_id: str, reason: str, actual: str | None = None) -> None:
        self.object_id = object_id
        self.reason = reason
        self.actual = actual
        super().__init__(object_id, reason)

    def __str__(self) -> str:
        return f"corrupt object {self.object_id}: {self.reason}"


class RefConflict(SnapstoreError):
    """A compare-and-swap on a ref lost: the ref no longer holds the expected value."""

    def __init__(self, ref: str, expected: str | None, actual: str | None) -> None:
        self.ref = ref
        self.expected = expected
        self.actual = actual
        super().__init__(ref, expected, actual)

    def __str__(self) -> str:
        return (
            f"ref {self.ref!r} moved: expected {self.expected or '(none)'}, "
            f"found {self.actual or '(none)'}"
        )


class UnknownRevision(SnapstoreError, LookupError):
    """A revision names no snapshot."""


class AmbiguousRevision(SnapstoreError, LookupError):
    """A snapshot-id prefix matches more than one object."""


class BackendError(SnapstoreError, OSError):
    """The storage engine failed (I/O error, full disk, lost connection)."""


class CommitOutcomeUnknown(BackendError):
    """A write's connection was lost during COMMIT and the server could not be asked whether it committed.

    The write may be durable or not: a caller must look (the message says how)
    before writing it again, or it may apply it twice. ``xid`` is the server's
    transaction id.
    """

    def __init__(self, message: str, xid: str | None = None) -> None:
        self.xid = xid
        super().__init__(message)


class ReadOnlyStore(BackendError):
    """A write to a store this process may only read (a backup on a read-only mount, another user's store,
    ``chmod -R a-w``): refused before anything is written, naming the store."""


class DamagedRecord(BackendError):
    """A row of the store holds what its column never holds (a ref naming text, say): damage, named."""


class LogError(SnapstoreError):
    """An audit (OZOLITH) log problem: unreadable, broken chain, wrong key."""

    def __init__(self, message: str, sequence: int | None = None, line: int | None = None) -> None:
        self.sequence = sequence
        self.line = line
        super().__init__(message)


class DamagedLogPack(LogError):
    """A pack of log lines kept in the store that cannot be read (entries ``first``..``last``).

    It says where the damage ends, so a check can name it and go on with the
    entries after it (``sequence`` is ``first``)."""

    def __init__(self, message: str, first: int, last: int) -> None:
        self.first = first
        self.last = last
        super().__init__(message, first)

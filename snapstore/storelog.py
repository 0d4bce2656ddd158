"""The OZOLITH audit log kept inside the store.

The client writes its OZOLITH log as a JSON Lines file beside its database
(:class:`~snapstore.ozolith.OzolithLog`). A store can also keep the log
itself, in a table of the same database (SQLite's ``ozolith``, PostgreSQL's
``snapstore_ozolith``): one row per entry, holding the exact line the client
would have written. Two things follow:

- **one transaction per operation.** An orchestrator's entry is appended in
  the very :meth:`~snapstore.backends.base.Backend.write` that stores the
  snapshot's objects and moves the ref (compare-and-swap), and that ref change
  records the entry's sequence and hash. Either all of it is committed or
  none: there is never an entry whose snapshot is not the head (no roll
  forward, no void entries), and a lost compare-and-swap appends nothing.
  On SQLite that is one fsync per operation instead of three.
- **several replicas, one chain.** Appenders are serialised by the store
  (SQLite's write lock; on PostgreSQL a transaction-level advisory lock), so
  replicas on one PostgreSQL store write one hash chain without a shared file.

The log is the client's format entry for entry: :meth:`StoreLog.export`
writes the JSON Lines file (and the key file beside it) that the client's own
reader and ``snap verify --ozolith FILE`` accept. The signing key is the
store's meta value ``ozolith/key`` (a hex string, used like the client's
``.ozolith_key``), created by the first append; pass ``key`` to use your own.
Like the client's key file kept beside its log, a key kept in the store
protects against corruption and against tampering by anyone who cannot read
the store; keep your own key elsewhere to protect against those who can.

Anchors are not kept in the store: :meth:`StoreLog.anchors` is empty and the
chain is checked from its first entry.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Iterator, Mapping
from enum import Enum
from pathlib import Path
from typing import Any

from .backends.base import LOG_KEY_META, AppendedEntry, Backend, LogAppend
from .errors import InvalidInput, LogError
from .ozolith.anchors import Anchor
from .ozolith.entry import EventType, LogEntry, check_sealed, key_bytes, make_entry
from .ozolith.files import make_dirs, write_atomic
from .ozolith.keys import KEY_FILE_NAME
from .ozolith.log import CorruptEntry, EntryQueries, LoadResult, UnparsableLine, WrongKey, _entry_from_line
from .ozolith.verify import ChainReport, Finding, FindingKind, verify_data

_PAGE = 5000


class StoreLog(EntryQueries):
    """The audit log a store keeps: the reading interface of :class:`~snapstore.ozolith.OzolithLog`, plus appends
    that ride in a store write (:meth:`prepare`)."""

    def __init__(self, backend: Backend, key: str | None = None) -> None:
        self.backend = backend
        self._key_arg = key
        # The last entry this process wrote, and the key it was signed with: when the stored
        # last line is exactly that line, its sequence and hash are known without parsing or
        # re-verifying it. Any other line (another process's, or one changed in the table) is checked.
        self._checked_tail: tuple[AppendedEntry, str] | None = None
        self._last_built: tuple[AppendedEntry, str] | None = None  # the newest entry built, and its key
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"StoreLog({self.backend.description!r})"

    @property
    def where(self) -> str:
        """How messages name this log."""
        return f"the audit log in {self.backend.description}"

    def exists(self) -> bool:
        """Whether the log holds any entry."""
        return self.backend.log_tail() is not None

    # -- the key ------------------------------------------------------------------

    def _key_text(self, stored: str | None) -> tuple[str, str | None]:
        """``(key text, key to store or None)`` given the stored key."""
        if self._key_arg is not None:
            if not self._key_arg:
                raise InvalidInput("the audit log key must not be empty")
            return self._key_arg, None
        if stored is not None:
            return stored, None
        created = secrets.token_hex(32)
        return created, created

    def key(self) -> bytes:
        """The signing key (never created by a read)."""
        text = self._key_arg if self._key_arg is not None else self.backend.get_meta(LOG_KEY_META)
        if not text:
            raise LogError(f"{self.where} has no signing key yet (no entry was ever appended)")
        return key_bytes(text)

    # -- writing ------------------------------------------------------------------

    def prepare(self, event_type: str | EventType, context_id: str, actor: str,
                payload: Mapping[str, Any]) -> LogAppend:
        """An entry to append inside a store write (see :class:`~snapstore.backends.base.LogAppend`)."""
        kind = event_type.value if isinstance(event_type, Enum) else event_type

        def build(last_line: str | None, stored_key: str | None) -> tuple[AppendedEntry, str | None]:
            text, new_key = self._key_text(stored_key)
            key = key_bytes(text)
            sequence, previous_hash = self._tail_entry(last_line, text) if last_line is not None else (0, "")
            entry = make_entry(
                key,
                sequence=sequence + 1, previous_hash=previous_hash,
                event_type=kind, context_id=context_id, actor=actor, payload=payload,
            )
            appended = AppendedEntry(entry.sequence, entry.entry_hash, entry.to_line())
            with self._lock:
                self._last_built = (appended, text)
            return appended, new_key

        return LogAppend(build)

    def _tail_entry(self, line: str, key_text: str) -> tuple[int, str]:
        """``(sequence, entry_hash)`` of the last entry, if it is safe to chain onto; otherwise raise
        naming its sequence."""
        with self._lock:
            known = self._checked_tail
        if known is not None and known[0].line == line and known[1] == key_text:
            # The very line this process wrote (compared in full), under the same key.
            return known[0].sequence, known[0].entry_hash
        try:
            entry = _entry_from_line(line.encode("utf-8"))
        except ValueError as exc:
            raise UnparsableLine(f"the last entry of {self.where} is not an entry: {exc}") from exc
        hash_ok, signature_ok, _ = check_sealed(key_bytes(key_text), entry.to_dict())
        if not hash_ok:
            raise CorruptEntry(f"last entry (sequence {entry.sequence}) of {self.where} fails its hash; "
                               "verify the log before appending", entry.sequence)
        if not signature_ok:
            raise WrongKey(f"last entry (sequence {entry.sequence}) of {self.where} is not signed by this key",
                           entry.sequence)
        return entry.sequence, entry.entry_hash

    def _written(self, entry: AppendedEntry | None) -> None:
        if entry is not None:
            with self._lock:
                built = self._last_built
                # Only an entry whose key is known is remembered (another thread may have built since).
                self._checked_tail = built if built is not None and built[0] == entry else None

    def append(self, event_type: str | EventType, context_id: str, actor: str,
               payload: Mapping[str, Any]) -> LogEntry:
        """Append one entry on its own (durable when this returns) and return it."""
        appended = self.backend.write(append=self.prepare(event_type, context_id, actor, payload))
        assert appended is not None
        self._written(appended)
        return _entry_from_line(appended.line.encode("utf-8"))

    def committed(self, entry: AppendedEntry | None) -> None:
        """Tell the log an entry from :meth:`prepare` was committed (its line need not be re-verified)."""
        self._written(entry)

    # -- reading ------------------------------------------------------------------

    def _rows(self, after: int = 0) -> Iterator[tuple[int, str]]:
        while True:
            rows = self.backend.log_lines(after, _PAGE)
            yield from rows
            if len(rows) < _PAGE:
                return
            after = rows[-1][0]

    def entries(self) -> Iterator[LogEntry]:
        """Every entry, oldest first. Raises :class:`UnparsableLine` at the first bad row."""
        for sequence, line in self._rows():
            try:
                yield _entry_from_line(line.encode("utf-8"))
            except ValueError as exc:
                raise UnparsableLine(f"entry {sequence} of {self.where} is not an entry: {exc}", sequence) from exc

    __iter__ = entries

    def entries_after(self, sequence: int) -> Iterator[LogEntry]:
        """Entries newer than ``sequence``, oldest first (reads only those)."""
        for number, line in self._rows(sequence):
            try:
                yield _entry_from_line(line.encode("utf-8"))
            except ValueError as exc:
                raise UnparsableLine(f"entry {number} of {self.where} is not an entry: {exc}", number) from exc

    def load(self) -> LoadResult:
        """Every readable entry, with a finding for each row that is not one."""
        entries: list[LogEntry] = []
        findings: list[Finding] = []
        for sequence, line in self._rows():
            try:
                entries.append(_entry_from_line(line.encode("utf-8")))
            except ValueError as exc:
                findings.append(Finding(FindingKind.UNPARSABLE_LINE, f"not an entry: {exc}", sequence, sequence))
        return LoadResult(tuple(entries), tuple(findings))

    def last(self) -> LogEntry | None:
        tail = self.backend.log_tail()
        return None if tail is None else _entry_from_line(tail[1].encode("utf-8"))

    def get(self, sequence: int) -> LogEntry | None:
        rows = self.backend.log_lines(sequence - 1, 1)
        if not rows or rows[0][0] != sequence:
            return None
        return _entry_from_line(rows[0][1].encode("utf-8"))

    def anchors(self) -> list[Anchor]:
        return []

    def data(self) -> bytes:
        """The log as the client's JSON Lines bytes."""
        return b"".join(line.encode("utf-8") + b"\n" for _, line in self._rows())

    def verify(self, *, sample: int | None = None, seed: int | None = None) -> ChainReport:
        """Verify the chain (hashes, links, signatures, sequence numbers) as for a log file."""
        return verify_data(self.data(), [], self.key(), sample=sample, seed=seed)

    def export(self, path: str | os.PathLike[str], *, key_file: bool = True) -> int:
        """Write the log as the client's JSON Lines file (atomically) and, unless told not to, its key file
        (``.ozolith_key`` beside it, mode 0600, if none is there). Returns the number of entries."""
        target = Path(path)
        data = self.data()
        make_dirs(target.parent)
        write_atomic(target, data)
        if key_file and data:
            key_path = target.parent / KEY_FILE_NAME
            text = self._key_arg if self._key_arg is not None else self.backend.get_meta(LOG_KEY_META)
            if text and not key_path.exists():
                write_atomic(key_path, text.encode("ascii"), mode=0o600)
        return data.count(b"\n")


class StoreAudit:
    """An orchestrator's audit hook for the log kept in the store: entries ride in the commit's write."""

    in_transaction = True

    def __init__(self, log: StoreLog) -> None:
        self.log = log

    def __call__(self, event_type: str, context_id: str, actor: str, payload: dict[str, Any]) -> tuple[int, str]:
        """Append an entry on its own (corrections and other entries no commit carries)."""
        entry = self.log.append(event_type, context_id, actor, payload)
        return entry.sequence, entry.entry_hash

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

A row is checked as well as its line: :meth:`StoreLog.verify` names a row
that holds no line of text (``unparsable_line``), one whose key is not its
line's sequence or whose ``entry_hash`` column is not its line's hash
(``row_mismatch``); readers name such a row in their error; and the SQLite
backend refuses to append after a last row whose key is not its line's
sequence, since the new entry would collide with a row or leave a gap.
"""

from __future__ import annotations

import os
import re
import secrets
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import Any

from .backends.base import LOG_KEY_META, AppendedEntry, Backend, LogAppend
from .errors import DamagedLogPack, InvalidInput, LogError
from .ozolith.anchors import Anchor
from .ozolith.entry import EventType, LogEntry, check_sealed, key_bytes, make_entry
from .ozolith.files import folders_for, write_atomic
from .ozolith.keys import KEY_FILE_NAME
from .ozolith.log import CorruptEntry, EntryQueries, LoadResult, UnparsableLine, WrongKey, _entry_from_line
from .ozolith.verify import MAX_FINDINGS, ChainReport, Finding, FindingKind, verify_data
from .ozolith.walk import parse_entry

_PAGE = 5000
_SEQUENCE_HINT = re.compile(r'"sequence"\s*:\s*(-?\d+)')
# What verify reads in place of a row that holds no line of text (the row is reported by name instead).
_STAND_IN = b"-\n"
# What :meth:`StoreLog._rows_past` gives for each sequence of a damaged pack of lines.
_LOST = object()
# A damaged pack claiming more lines than this is not stood in for line by line (packs hold 128).
_MOST_LOST = 1 << 16


class RowMismatch(LogError):
    """A row of the log kept in the store does not hold the entry its key names."""


def _not_a_line(line: object) -> str | None:
    """Why a row's stored line is not one line of text, or None if it is."""
    if isinstance(line, str):
        return "holds more than one line" if "\n" in line else None
    if line is None:
        return "holds no line (NULL)"
    if isinstance(line, bytes):
        return f"holds {len(line)} bytes that are not a line of text"
    return f"holds a {type(line).__name__}, not a line of text"


def _claimed_sequence(sequence: int, line: str) -> int | None:
    """The sequence a row's line holds, if it parses as an entry (cheaply for the client's own lines)."""
    if line.startswith(f'{{"sequence": {sequence}, '):
        return sequence
    fields, _ = parse_entry(line.encode("utf-8"))
    return None if fields is None else fields["sequence"]


def _column_differs(line: str, column: object) -> str | None:
    """The entry_hash a line holds if its row's ``entry_hash`` column differs from it, else None."""
    if isinstance(column, str) and line.endswith(f'"entry_hash": "{column}"}}'):
        return None  # the client's own line: entry_hash is its last field
    fields, _ = parse_entry(line.encode("utf-8"))
    if fields is None or fields["entry_hash"] == column:
        return None  # a line that is no entry is the walk's to report
    return str(fields["entry_hash"])


def _paged(read: Callable[[int, int], list[tuple[int, Any]]], after: int = 0) -> Iterator[tuple[int, Any]]:
    """Every row ``read(after, limit)`` returns, a page at a time."""
    while True:
        rows = read(after, _PAGE)
        yield from rows
        if len(rows) < _PAGE:
            return
        after = rows[-1][0]


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
            tail = self.backend.log_tail()
            if tail is not None:
                try:
                    held = f"{sum(1 for _ in self._rows())} entries"
                except LogError:
                    held = f"entries up to sequence {tail[0]}"
                raise self._key_missing(held, tail[0])
            raise LogError(f"{self.where} has no signing key yet (no entry was ever appended)")
        return key_bytes(text)

    def _key_missing(self, held: str, sequence: int | None) -> LogError:
        return LogError(f"the signing key of {self.where} (meta {LOG_KEY_META!r}) is missing though the log holds "
                        f"{held}: restore it or give the key (--key-file); appends are refused until then", sequence)

    # -- writing ------------------------------------------------------------------

    def prepare(self, event_type: str | EventType, context_id: str, actor: str,
                payload: Mapping[str, Any]) -> LogAppend:
        """An entry to append inside a store write (see :class:`~snapstore.backends.base.LogAppend`)."""
        kind = event_type.value if isinstance(event_type, Enum) else event_type

        def build(last_line: str | None, stored_key: str | None) -> tuple[AppendedEntry, str | None]:
            if last_line is not None and not stored_key and self._key_arg is None:
                # Never a new key for a log that has entries: they could no longer be verified.
                hint = _SEQUENCE_HINT.search(last_line) if isinstance(last_line, str) else None
                last = int(hint.group(1)) if hint else None
                raise self._key_missing("entries" if last is None else f"entries up to sequence {last}", last)
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
        problem = _not_a_line(line)
        if problem is not None:
            raise UnparsableLine(f"the last row of {self.where} {problem}; verify the log before appending")
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
        """Append one entry on its own (durable when this returns) and return it.

        Not an entry naming a snapshot (a ``snapstore`` link): that one rides in the write that moves its
        ref (:meth:`prepare`), and a start reads the log only past the newest link of any conversation,
        trusting that no linked entry here waits for its ref (:mod:`snapstore.audit`).
        """
        link = payload.get("snapstore") if isinstance(payload, Mapping) else None
        if isinstance(link, Mapping) and isinstance(link.get("snapshot"), str):
            raise InvalidInput(f"not appending to {self.where} on its own: an entry naming snapshot "
                               f"{str(link['snapshot'])[:12]} is committed with its ref move "
                               "(Repository.commit_staged(audit=...))")
        appended = self.backend.write(append=self.prepare(event_type, context_id, actor, payload))
        assert appended is not None
        self._written(appended)
        return _entry_from_line(appended.line.encode("utf-8"))

    def committed(self, entry: AppendedEntry | None) -> None:
        """Tell the log an entry from :meth:`prepare` was committed (its line need not be re-verified)."""
        self._written(entry)

    # -- reading ------------------------------------------------------------------

    def _rows(self, after: int = 0) -> Iterator[tuple[int, Any]]:
        """``(sequence, line)`` of every row past ``after``; a damaged row's line may be bytes or None."""
        return _paged(self.backend.log_lines, after)

    def _rows_past(self, damaged: list[DamagedLogPack]) -> Iterator[tuple[int, Any]]:
        """As :meth:`_rows`, going on past each damaged pack of lines: it is added to ``damaged`` and
        given as ``(sequence, _LOST)`` for each sequence it held, so a check can name it once, keep
        every later row in its place and judge the rows after it (one damaged pack is no reason to
        leave the rest of the log unchecked)."""
        after = 0
        while True:
            try:
                for row in _paged(self.backend.log_lines, after):
                    yield row
                    after = row[0]  # when a read raises: the start of the page it failed on
                return
            except DamagedLogPack as exc:
                if exc.last <= after or exc.last - exc.first >= _MOST_LOST:  # no way past it
                    raise
                yield from self._rows_before(after, exc.first)
                damaged.append(exc)
                for sequence in range(max(exc.first, after + 1), exc.last + 1):
                    yield sequence, _LOST
                after = exc.last

    def _rows_before(self, after: int, first: int) -> list[tuple[int, Any]]:
        """The rows past ``after`` and before the damaged pack that begins at ``first`` (a read that
        reached the pack raised, so what it read before it is read again). Should the rows there be
        fewer than their sequences (a gap, which the walk reports), one at a time up to the pack."""
        try:
            return [row for row in self.backend.log_lines(after, max(first - 1 - after, 0)) if row[0] < first]
        except DamagedLogPack:
            out: list[tuple[int, Any]] = []
            while True:
                try:
                    rows = self.backend.log_lines(after, 1)
                except DamagedLogPack:
                    return out
                if not rows or rows[0][0] >= first:
                    return out
                out.append(rows[0])
                after = rows[0][0]

    def readable_entries(self, damaged: list[DamagedLogPack]) -> Iterator[LogEntry]:
        """:meth:`entries`, going on past each damaged pack of lines (added to ``damaged``): what verify
        compares the store with. A damaged row raises as in :meth:`entries`."""
        for sequence, line in self._rows_past(damaged):
            if line is not _LOST:
                yield self._entry(sequence, line)

    def _line(self, sequence: int, line: object) -> str:
        """The text the row keyed ``sequence`` holds; :class:`UnparsableLine` if it holds no line of text."""
        problem = _not_a_line(line)
        if problem is not None:
            raise UnparsableLine(f"entry {sequence} of {self.where} {problem}: run snap verify", sequence)
        assert isinstance(line, str)
        return line

    def _entry(self, sequence: int, line: object) -> LogEntry:
        """The entry the row keyed ``sequence`` holds: :class:`UnparsableLine` if it holds none,
        :class:`RowMismatch` if it holds another entry."""
        text = self._line(sequence, line)
        try:
            entry = _entry_from_line(text.encode("utf-8"))
        except ValueError as exc:
            raise UnparsableLine(f"entry {sequence} of {self.where} is not an entry: {exc}", sequence) from exc
        if entry.sequence != sequence:
            raise RowMismatch(f"row {sequence} of {self.where} holds entry {entry.sequence}: run snap verify",
                              sequence)
        return entry

    def entries(self) -> Iterator[LogEntry]:
        """Every entry, oldest first. Raises :class:`UnparsableLine` (or :class:`RowMismatch`) at the first bad row."""
        for sequence, line in self._rows():
            yield self._entry(sequence, line)

    __iter__ = entries

    def entries_after(self, sequence: int) -> Iterator[LogEntry]:
        """Entries newer than ``sequence``, oldest first (reads only those)."""
        for number, line in self._rows(sequence):
            yield self._entry(number, line)

    def load(self) -> LoadResult:
        """Every readable entry, with a finding for each row that is not one."""
        entries: list[LogEntry] = []
        findings: list[Finding] = []
        for sequence, line in self._rows():
            try:
                entries.append(self._entry(sequence, line))
            except RowMismatch as exc:
                findings.append(Finding(FindingKind.ROW_MISMATCH, str(exc), sequence, sequence))
            except UnparsableLine as exc:
                findings.append(Finding(FindingKind.UNPARSABLE_LINE, str(exc), sequence, sequence))
        return LoadResult(tuple(entries), tuple(findings))

    def last(self) -> LogEntry | None:
        tail = self.backend.log_tail()
        return None if tail is None else self._entry(*tail)

    def get(self, sequence: int) -> LogEntry | None:
        rows = self.backend.log_lines(sequence - 1, 1)
        if not rows or rows[0][0] != sequence:
            return None
        return self._entry(*rows[0])

    def anchors(self) -> list[Anchor]:
        return []

    def data(self) -> bytes:
        """The log as the client's JSON Lines bytes; :class:`UnparsableLine` naming a row that holds no line."""
        return b"".join(self._line(sequence, line).encode("utf-8") + b"\n" for sequence, line in self._rows())

    def _verified_data(self) -> bytes:
        """:meth:`data`, checked as ``snap verify --ozolith FILE`` would check the file it is written to.

        A row holding a line that is no entry (``{not json``, an edited hash, a
        line out of the chain) would otherwise be copied byte for byte into a
        file that fails verification, passing the damage on as if it were the
        log: the export is refused instead, naming the row, and ``snap verify``
        names every problem. A log whose signing key is missing is refused too
        (its file could not be verified).
        """
        rows = [(sequence, self._line(sequence, line)) for sequence, line in self._rows()]
        data = b"".join(line.encode("utf-8") + b"\n" for _, line in rows)
        if not rows:
            return data
        report = verify_data(data, [], self.key())
        if report.findings:
            first = report.findings[0]
            row = rows[first.line - 1][0] if first.line and first.line <= len(rows) else first.sequence
            raise LogError(f"{self.where} was not exported: row {row}: {first.message} "
                           "(the file would not verify; `snap verify` names every problem)", row)
        return data

    def verify(self, *, sample: int | None = None, seed: int | None = None,
               damaged: list[DamagedLogPack] | None = None) -> ChainReport:
        """Verify the chain (hashes, links, signatures, sequence numbers) as for a log file, and each row:
        it holds one line (``unparsable_line``), of the entry its key names, with the entry_hash its
        ``entry_hash`` column holds where the store keeps one (``row_mismatch``).

        A damaged pack of lines raises :class:`DamagedLogPack`; given ``damaged``, it is added there
        instead (the caller names it) and the walk goes on past it: the entry after it is not linked
        to one before it (the walk restarts there), every later entry is checked as usual. The
        report's ``entries_checked`` does not count the pack's lines."""
        key = self.key()
        lines: list[bytes] = []
        found: list[Finding] = []
        stand_ins: set[int] = set()
        lost = 0
        column = self._hash_columns()
        rows = self._rows() if damaged is None else self._rows_past(damaged)
        for number, (sequence, line) in enumerate(rows, 1):
            if line is _LOST:  # walked as an unparsable line: position kept, the next link not judged
                stand_ins.add(number)
                lines.append(_STAND_IN)
                lost += 1
                continue
            problem = _not_a_line(line)
            if problem is not None:
                found.append(Finding(FindingKind.UNPARSABLE_LINE, f"row {sequence} {problem}", sequence, number))
                stand_ins.add(number)  # the walk sees an unparsable line there; this finding names it
                lines.append(_STAND_IN)
                continue
            lines.append(line.encode("utf-8") + b"\n")
            found.extend(_row_mismatches(sequence, line, column(sequence), number))
        report = verify_data(b"".join(lines), [], key, sample=sample, seed=seed,
                             max_findings=MAX_FINDINGS + len(stand_ins))  # stand-ins' findings are dropped
        if not stand_ins and not found:
            return report
        kept = [f for f in report.findings if f.line not in stand_ins]
        findings = tuple(sorted(kept + found, key=lambda f: (f.line is None, f.line or 0)))
        return replace(report, ok=not findings and not lost, findings=findings,
                       entries_checked=report.entries_checked - (0 if report.sampled else lost))

    def _hash_columns(self) -> Callable[[int], Any]:
        """Each loose row's ``entry_hash`` column by sequence, asked for in ascending order (None where
        the store keeps none: a packed line, or a backend that does not say)."""
        read = getattr(self.backend, "log_hashes", None)
        if read is None:
            return lambda sequence: None
        pages = _paged(read)
        current = next(pages, None)

        def column(sequence: int) -> Any:
            nonlocal current
            while current is not None and current[0] < sequence:
                current = next(pages, None)
            return current[1] if current is not None and current[0] == sequence else None

        return column

    def export(self, path: str | os.PathLike[str], *, key_file: bool = True) -> int:
        """Write the log as the client's JSON Lines file (atomically) and, unless told not to, its key file
        (``.ozolith_key`` beside it, mode 0600, if none is there). Returns the number of entries.

        :class:`LogError` naming the first bad row, and nothing written, if the file would not verify
        (see :meth:`_verified_data`)."""
        target = Path(path)
        data = self._verified_data()
        with folders_for(target):  # missing folders are made; a failed write removes them again
            write_atomic(target, data)
        if key_file and data:
            key_path = target.parent / KEY_FILE_NAME
            text = self._key_arg if self._key_arg is not None else self.backend.get_meta(LOG_KEY_META)
            if text and not key_path.exists():
                write_atomic(key_path, text.encode("ascii"), mode=0o600)
        return data.count(b"\n")


def _row_mismatches(sequence: int, line: str, column: Any, number: int) -> list[Finding]:
    """Findings for a row whose key is not its line's sequence, or whose entry_hash column is not its
    line's entry_hash (a line that is no entry is the walk's to report)."""
    out = []
    claimed = _claimed_sequence(sequence, line)
    if claimed is not None and claimed != sequence:
        out.append(Finding(FindingKind.ROW_MISMATCH,
                           f"row {sequence} holds entry {claimed} (a row's key is its entry's sequence)",
                           sequence, number))
    held = None if column is None else _column_differs(line, column)
    if held is not None:
        out.append(Finding(FindingKind.ROW_MISMATCH,
                           f"row {sequence}'s entry_hash column is {str(column)[:16]!r}, its line's entry_hash "
                           f"is {held[:12]}", sequence, number))
    return out


class StoreAudit:
    """An orchestrator's audit hook for the log kept in the store: entries ride in the commit's write."""

    in_transaction = True

    def __init__(self, log: StoreLog) -> None:
        self.log = log

    def __call__(self, event_type: str, context_id: str, actor: str, payload: dict[str, Any]) -> tuple[int, str]:
        """Append an entry on its own (corrections and other entries no commit carries)."""
        entry = self.log.append(event_type, context_id, actor, payload)
        return entry.sequence, entry.entry_hash

"""``OzolithLog``: append to, read and query one OZOLITH log file.

Appends hold an exclusive flock on the log from reading the last entry to
the fsync of the new line, so concurrent writers (threads or processes) take
turns and the chain never forks. Each line goes out in one ``write()`` on an
``O_APPEND`` descriptor. An append refuses to continue a log whose last line
is torn, unparsable, fails its own hash, or was signed with another key:
gluing a new entry onto any of those would bury the fault.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any

from snapstore.errors import LogError

from .anchors import Anchor, anchors_path_for, make_anchor, read_anchors, write_anchors
from .canonical import parse_line
from .entry import EventType, LogEntry, check_sealed, make_entry
from .files import append_line, count_lines, fsync_dir, locked, make_dirs, read_last_line, write_atomic
from .keys import resolve_key
from .verify import ChainReport, Finding, FindingKind, verify_chain


_BACK_CHUNK = 1 << 16  # entries_after reads the file backwards in pieces of this size


@dataclass(frozen=True)
class TornTail:
    """An interrupted write cut off the end of a log by :meth:`OzolithLog.cut_torn_tail`."""

    line: int  # its line number
    size: int  # bytes cut
    saved: Path  # where those bytes were kept


class TornLine(LogError):
    """The log ends in a line without its newline: a write was interrupted."""


class UnparsableLine(LogError):
    """A line of the log is not a well-formed entry."""


class CorruptEntry(LogError):
    """An entry does not re-hash to its ``entry_hash``."""


class WrongKey(LogError):
    """An entry's signature does not hold under the key in use."""


@dataclass(frozen=True)
class LoadResult:
    """Every readable entry, plus a finding for each line that is not one."""

    entries: tuple[LogEntry, ...]
    findings: tuple[Finding, ...]

    def __bool__(self) -> bool:
        return not self.findings


def _as_utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _entry_from_line(raw: bytes) -> LogEntry:
    """The entry a line holds; ValueError saying why when it holds none."""
    try:
        data = parse_line(raw)
    except RecursionError as exc:
        raise ValueError("nested too deeply") from exc
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")  # noqa: TRY004 (one error type for every malformed line)
    return LogEntry.from_dict(data)  # InvalidInput is a ValueError


def _parse_entry(raw: bytes, where: str, line: int | None, sequence: int | None) -> LogEntry:
    try:
        return _entry_from_line(raw)
    except ValueError as exc:
        raise UnparsableLine(f"{where} is not an entry: {exc}", sequence, line) from exc


class EntryQueries:
    """Filters over ``entries()``, shared by the log file and the log kept in a store."""

    where: str

    def entries(self) -> Iterator[LogEntry]:
        raise NotImplementedError

    def by_context(self, context_id: str) -> list[LogEntry]:
        """Entries about one context, oldest first."""
        return [entry for entry in self.entries() if entry.context_id == context_id]

    def by_type(self, event_type: str | EventType) -> list[LogEntry]:
        """Entries of one event type, oldest first."""
        wanted = event_type.value if isinstance(event_type, Enum) else event_type
        return [entry for entry in self.entries() if entry.event_type == wanted]

    def between(self, since: datetime | None = None, until: datetime | None = None) -> list[LogEntry]:
        """Entries with ``since <= time <= until``; naive datetimes are taken as UTC."""
        low = _as_utc(since) if since else None
        high = _as_utc(until) if until else None
        found = []
        for entry in self.entries():
            try:
                moment = entry.time
            except ValueError as exc:
                raise UnparsableLine(f"entry {entry.sequence} of {self.where} has a malformed timestamp "
                                     f"{entry.timestamp!r}", entry.sequence) from exc
            if (low is None or moment >= low) and (high is None or moment <= high):
                found.append(entry)
        return found


class OzolithLog(EntryQueries):
    """One OZOLITH log: a JSON Lines file, its anchors file and its key.

    The key is ``key`` if given (a str is used as the client does, encoded,
    not hex-decoded), else read from ``key_file``, else from ``.ozolith_key``
    beside the log. A missing key file is created (mode 0600) by the first
    append or anchor, never by a read.
    """

    def __init__(self, path: str | os.PathLike[str], key: str | bytes | None = None,
                 key_file: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path)
        self.anchors_path = anchors_path_for(self.path)
        self._key_arg = key
        self._key_file = key_file
        self._key: bytes | None = None

    def __repr__(self) -> str:
        return f"OzolithLog({str(self.path)!r})"

    @property
    def where(self) -> str:
        """How messages name this log."""
        return str(self.path)

    def _signing_key(self, *, create: bool) -> bytes:
        if self._key is None:
            self._key = resolve_key(self.path, self._key_arg, self._key_file, create=create)
        return self._key

    # -- writing -------------------------------------------------------------

    def append(self, event_type: str | EventType, context_id: str, actor: str,
               payload: Mapping[str, Any]) -> LogEntry:
        """Append one entry and return it once it is on disk (fsynced)."""
        key = self._signing_key(create=True)
        with self._writing() as fd:
            last = self._checked_tail(fd, key)
            return self._append_locked(fd, key, last, event_type, context_id, actor, payload)

    def create_anchor(self, reason: str = "manual") -> Anchor:
        """Checkpoint the chain as it stands, then log an ``anchor_created`` entry (as the client does)."""
        key = self._signing_key(create=True)
        with self._writing() as fd:
            last = self._checked_tail(fd, key)
            anchors = read_anchors(self.anchors_path)  # a corrupt file raises: never overwrite it
            last_sequence = last.sequence if last else 0
            anchor = make_anchor(
                key, anchors,
                last_sequence=last_sequence,
                root_hash=last.entry_hash if last else "",
                entry_count=last_sequence,  # a sound chain holds exactly 1..last
                trigger_reason=reason,
            )
            write_anchors(self.anchors_path, anchors + [anchor])
            payload = {"anchor_id": anchor.anchor_id, "root_hash": anchor.root_hash,
                       "entry_count": anchor.entry_count}
            self._append_locked(fd, key, last, EventType.ANCHOR_CREATED, "SYSTEM", "system", payload)
        return anchor

    @contextmanager
    def _writing(self) -> Iterator[int]:
        """Hold the exclusive lock on the log, creating it (durably) if needed."""
        make_dirs(self.path.parent)
        created = not self.path.exists()
        with locked(self.path, exclusive=True, create=True) as fd:
            assert fd is not None
            if created:
                fsync_dir(self.path.parent)
            yield fd

    def cut_torn_tail(self) -> TornTail | None:
        """Cut an interrupted write off the end of the log, keeping its bytes beside it; None if there is none.

        A torn last line is an append that never returned (``append`` returns
        only after the whole line is written and fsynced, and a short write it
        sees is cut before it raises), so no caller was told it is on disk and
        no ref was moved for it: a process killed by SIGKILL inside the
        ``write()`` of a long line, or a power loss before the fsync. The bytes
        are saved first (``<log>.torn-<time>``, fsynced), then the log is
        truncated to its last newline and fsynced, under the writers' lock.
        Only a torn tail is cut: a complete line that does not parse is damage
        and stays for a human.
        """
        if not self.path.exists():
            return None
        with locked(self.path, exclusive=True, create=True) as fd:
            assert fd is not None
            size = os.fstat(fd).st_size
            if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
                return None
            start = size
            while start > 0:  # back to the byte after the last newline
                chunk_start = max(0, start - _BACK_CHUNK)
                chunk = os.pread(fd, start - chunk_start, chunk_start)
                cut = chunk.rfind(b"\n")
                if cut >= 0:
                    start = chunk_start + cut + 1
                    break
                start = chunk_start
            torn = os.pread(fd, size - start, start)
            line = 1 + sum(os.pread(fd, min(1 << 24, start - at), at).count(b"\n") for at in range(0, start, 1 << 24))
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
            saved = self.path.with_name(f"{self.path.name}.torn-{stamp}")
            write_atomic(saved, torn)
            os.ftruncate(fd, start)
            os.fsync(fd)
            return TornTail(line, len(torn), saved)

    def flush(self) -> None:
        """fsync the log file and its folder: make durable what a killed writer may have left unflushed.

        An append killed between its ``write()`` and its ``fsync()`` leaves a
        whole line that every process reads (from the page cache) but that a
        power loss can still take; so does a log, or a key file beside it,
        whose creator was killed before it fsynced the folder. A start that
        builds on what it reads (rolling the store forward to an entry, the
        mark of how far it settled the log) flushes first: otherwise a power
        loss after it leaves the store linked to an entry the log no longer
        holds. Nothing to do if the log does not exist.
        """
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise LogError(f"cannot open log {self.path}: {exc}") from exc
        try:
            os.fsync(fd)
            fsync_dir(self.path.parent)
        except OSError as exc:
            raise LogError(f"cannot flush log {self.path}: {exc}") from exc
        finally:
            os.close(fd)

    def _append_locked(self, fd: int, key: bytes, last: LogEntry | None, event_type: str | EventType,
                       context_id: str, actor: str, payload: Mapping[str, Any]) -> LogEntry:
        entry = make_entry(
            key,
            sequence=last.sequence + 1 if last else 1,
            previous_hash=last.entry_hash if last else "",
            event_type=event_type.value if isinstance(event_type, Enum) else event_type,
            context_id=context_id,
            actor=actor,
            payload=payload,
        )
        append_line(fd, (entry.to_line() + "\n").encode(), os.fstat(fd).st_size)
        return entry

    def _checked_tail(self, fd: int, key: bytes) -> LogEntry | None:
        """The last entry, if it is safe to chain onto; otherwise raise naming its line."""
        entry = self._tail(fd)
        if entry is None:
            return None
        hash_ok, signature_ok, _ = check_sealed(key, entry.to_dict())
        if not hash_ok:
            raise CorruptEntry(f"last entry (sequence {entry.sequence}) of {self.path} fails its hash; "
                               "verify the log before appending", entry.sequence, count_lines(fd))
        if not signature_ok:
            raise WrongKey(f"last entry (sequence {entry.sequence}) of {self.path} is not signed by this key",
                           entry.sequence, count_lines(fd))
        return entry

    def _tail(self, fd: int) -> LogEntry | None:
        raw, torn = read_last_line(fd)
        if raw is None:
            return None
        line = count_lines(fd) if torn else None
        if torn:
            raise TornLine(f"{self.path} ends in a torn line {line} (no newline, {len(raw)} bytes): "
                           "an interrupted write; verify and repair the log before appending", None, line)
        try:
            return _entry_from_line(raw)
        except ValueError as exc:
            line = count_lines(fd)
            raise UnparsableLine(f"the last line ({line}) of {self.path} is not an entry: {exc}",
                                 None, line) from exc

    # -- reading -------------------------------------------------------------

    def _complete_size(self) -> int | None:
        """How many bytes of the log are complete lines now (writers hold the lock while writing)."""
        with locked(self.path, exclusive=False) as fd:
            return None if fd is None else os.fstat(fd).st_size

    def _scan(self) -> Iterator[tuple[int, bytes, bool]]:
        """``(number, line without its newline, complete)`` for each non-blank line.

        Only the bytes complete when the scan starts are read, so an append
        racing with the scan is simply not seen. A torn tail comes last, with
        ``complete`` false.
        """
        size = self._complete_size()
        if not size:
            return
        with open(self.path, "rb") as handle:
            consumed = 0
            for number, raw in enumerate(handle, 1):
                raw = raw[: size - consumed]
                consumed += len(raw)
                complete = raw.endswith(b"\n")
                if complete:
                    raw = raw[:-1]
                if raw.strip() or not complete:
                    yield number, raw, complete
                if consumed >= size:
                    break

    def entries(self) -> Iterator[LogEntry]:
        """Every entry in file order. Raises TornLine / UnparsableLine at the first bad line."""
        expected = 1
        for number, raw, complete in self._scan():
            if not complete:
                raise TornLine(f"line {number} of {self.path} is torn (no newline): an interrupted write",
                               expected, number)
            entry = _parse_entry(raw, f"line {number} of {self.path} (sequence {expected})", number, expected)
            yield entry
            expected = entry.sequence + 1

    __iter__ = entries

    def entries_after(self, sequence: int) -> list[LogEntry]:
        """The entries whose sequence is above ``sequence``, oldest first, read back from the end.

        Cost follows the entries returned, not the log's length: a start asks
        only for what its store has not recorded yet. Raises TornLine for a
        torn tail and UnparsableLine for a bad line among those read (lines
        before them are not read: :meth:`verify` checks the whole chain).
        """
        found: list[LogEntry] = []
        with locked(self.path, exclusive=False) as fd:
            if fd is None:
                return found
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                raise TornLine(f"{self.path} ends in a torn line (no newline): an interrupted write", None, None)
            buffer, position = b"", size
            while position > 0:
                start = max(0, position - _BACK_CHUNK)
                buffer = os.pread(fd, position - start, start) + buffer
                position = start
                lines = buffer.split(b"\n")
                # The first piece may be the end of a line that starts further back.
                buffer = lines.pop(0) if position > 0 else b""
                for raw in reversed(lines):
                    if not raw.strip():
                        continue
                    entry = _parse_entry(raw, f"a line near the end of {self.path}", None, None)
                    if entry.sequence <= sequence:
                        found.reverse()
                        return found
                    found.append(entry)
        found.reverse()
        return found

    def load(self) -> LoadResult:
        """Every readable entry, with a finding (line and sequence) for each torn or unparsable line."""
        entries: list[LogEntry] = []
        findings: list[Finding] = []
        expected = 1
        for number, raw, complete in self._scan():
            if not complete:
                findings.append(Finding(FindingKind.TORN_LINE, "no newline: an interrupted write", expected, number))
                continue
            try:
                entry = _entry_from_line(raw)
            except ValueError as exc:
                findings.append(Finding(FindingKind.UNPARSABLE_LINE, f"not an entry: {exc}", expected, number))
                expected += 1
                continue
            entries.append(entry)
            expected = entry.sequence + 1
        return LoadResult(tuple(entries), tuple(findings))

    def last(self) -> LogEntry | None:
        """The newest entry, read from the end of the file (cost independent of the log's length)."""
        with locked(self.path, exclusive=False) as fd:
            return None if fd is None else self._tail(fd)

    def get(self, sequence: int) -> LogEntry | None:
        """The entry with this sequence, or None."""
        prefix = b'{"sequence": %d,' % sequence
        for number, raw, complete in self._scan():
            # Lines the client writes start with the sequence: skip the rest unparsed.
            if raw.startswith(b'{"sequence": ') and not raw.startswith(prefix):
                continue
            if not complete:
                raise TornLine(f"line {number} of {self.path} is torn", None, number)
            entry = _parse_entry(raw, f"line {number} of {self.path}", number, None)
            if entry.sequence == sequence:
                return entry
        return None

    def anchors(self) -> list[Anchor]:
        """The anchors recorded for this log, oldest first."""
        return read_anchors(self.anchors_path)

    def verify(self, *, sample: int | None = None, seed: int | None = None) -> ChainReport:
        """Verify the chain and anchors (see :func:`verify_chain`)."""
        return verify_chain(self.path, self._signing_key(create=False), sample=sample, seed=seed)

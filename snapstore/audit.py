"""The link between the store and the OZOLITH audit log.

Writing: :class:`LinkedLog` appends one entry per orchestrator operation, its
payload naming the snapshot (``payload["snapstore"]``: conversation,
snapshot, parent, root, changed node ids). The orchestrator appends the entry
after the snapshot's objects are durable and before its ref moves; the ref
change records the entry's sequence and hash.

Recovering: a crash between the entry and the ref change leaves an entry
whose snapshot exists but is not the head; :func:`roll_forward` moves the ref
to it. An operation that *failed* after its entry was written (the ref swap
raised, say on a full disk) is voided by a later ``correction`` entry whose
payload says ``{"snapstore": {"void": <sequence>}}``: replay, verify and
roll-forward skip voided entries, and the log itself is never edited. An entry whose snapshot's objects are missing cannot be rolled
forward: it is reported, and the caller chooses replay, discard or export.

How much of the log a start reads (:func:`scan_log`). An entry can be
pending only where its append and its ref move are separate writes, so the
bound depends on the log:

- **the log kept in the store** (:class:`~snapstore.storelog.StoreLog`): an
  orchestrator's linked entry is committed in the very transaction that moves
  its ref (``Repository.commit_staged(audit=...)``), and the store log appends
  nothing linked on its own (:meth:`StoreLog.append` refuses it). No linked
  entry is ever pending; only entries newer than the newest link of *any*
  conversation are read (entries committed by another replica since the
  reflogs were read, checked again by :func:`_not_applied_since`).
- **an OZOLITH file**: the entry is appended before the ref moves, a failed
  operation's void is a later entry, and replicas sharing the file interleave,
  so the newest link of a conversation does not even say its own older
  entries are settled: a writer killed between its entry and its ref move
  while another writer (or the same, after a commit of unknown outcome) moved
  that conversation on from the same head leaves an *orphan* below the
  newest link (:func:`_orphans`), or just past it when its rival's entry is
  the older (:func:`_moved_on_by`). It can never be applied: a start voids it
  with a ``correction`` (:func:`_void`, Recovery ``voided``), as the
  orchestrator voids a failed operation's entry. So a start judges every
  linked entry past the mark below, and without a mark reads the log whole.
  A repairing start records how far it settled the log (meta
  ``startup/log_checked``: the sequence and hash of an entry such that every
  linked entry up to it was applied, voided or discarded), written after its
  roll-forward; the next start reads only past it. The hash ties the mark to
  this log: a file that does not hold that entry (behind, or another log) is
  read whole.

  A clean shutdown moves the mark on (:meth:`LinkedLog.mark`), so the next
  start does not read everything a long run wrote: the process counts on from
  where its start found the log settled, one entry of its own at a time (the
  next sequence, appended through this :class:`LinkedLog`), each settled once
  its ref moved (the orchestrator says so: :meth:`LinkedLog.settled`) or a
  correction voided it, or at once if it links no snapshot. The first entry
  that is not its own (a gap in the sequences: another writer of the file, in
  this process or another) stops the count, and so does one of its own that
  never settled (a commit whose outcome is unknown): the mark never passes an
  entry this process cannot vouch for. Nothing is written per operation; the
  mark rides in the shutdown marker's write, and every
  :attr:`LinkedLog.MARK_EVERY`-th commit's own write (:meth:`LinkedLog.meta_due`),
  so a start after a crash reads about that many entries of the run.

  Several processes appending to one file therefore move the mark at starts
  only: the start after a crash reads every entry since the last start (it
  must, an orphan could be anywhere there). Keep the log in the store for that.

  Replicas sharing the file: an entry is pending only for its writer's
  moment between the append and the ref move (or the void). A start beside
  running replicas must not judge a live writer's entry in that moment: it
  would roll it forward under the writer (which then finds its own snapshot
  committed) or, the writer moving the ref between the start's read of the
  head and its compare-and-swap, report a divergence that is not there
  (``RECOVERY_NEEDED``). So an operation holds a shared lock for that moment
  (:meth:`LinkedLog.operation`) and a repairing start holds it exclusively
  while it reads and rolls the log forward (:func:`settling`): what it finds
  pending was left by a writer that is gone. The lock is an ``flock`` on
  ``<log>.ops.lock`` beside the file, dropped by the OS with a killed process.
  A reader that judges the log beside running replicas (``snap verify``,
  ``snap status``) holds it exclusively only while it reads the file's last
  entry, before the refs (:func:`settled_end_now`): an entry past it is a
  live writer's, not judged.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .backends.base import ReflogEntry, RefUpdate
from .errors import LogError, RefConflict, SnapstoreError
from .objects import ObjectId, Snapshot
from .ozolith import LogEntry, OzolithLog
from .ozolith.files import make_dirs
from .refs import ref_name, validate_conversation_id
from .repository import Repository
from .storelog import StoreLog

LINK_KEY = "snapstore"
# How far a repairing start settled an OZOLITH file: JSON {"sequence": N, "entry_hash": H} (see the module doc).
CHECKED_KEY = "startup/log_checked"


class LinkedLog:
    """An orchestrator's audit hook: one writer per log in this process.

    It also counts how far the log is settled past where a start left it
    (:meth:`follow`, :meth:`settled`, :meth:`mark`; the module doc says why).
    """

    _locks: dict[str, threading.Lock] = {}
    _locks_guard = threading.Lock()
    # Own entries followed past the settled ones at most: more means one never settled (its commit's
    # outcome unknown), and the count stops there rather than grow with the run.
    MAX_AHEAD = 10_000
    # Every this many commits the mark rides in a commit's own write too (:meth:`meta_due`), so a start
    # after a crash, with no clean close, reads about this many entries of the run, not all of it.
    MARK_EVERY = 256

    def __init__(self, log: OzolithLog) -> None:
        self.log = log
        # Why appending is refused (a log behind the store, see startup.py), or None.
        self.refused: str | None = None
        with self._locks_guard:
            self._lock = self._locks.setdefault(str(log.path.resolve()), threading.Lock())
        # The newest entry with every entry up to it settled, (sequence, hash); None: not followed.
        self._settled: tuple[int, str] | None = None
        # This hook's entries just past it, in sequence: sequence -> [hash, settled].
        self._ahead: dict[int, list[Any]] = {}
        self._following = False
        self._since_mark = 0  # commits since the mark last rode in one (meta_due)

    def __call__(self, event_type: str, context_id: str, actor: str, payload: dict[str, Any]) -> tuple[int, str]:
        if self.refused is not None:
            raise LogError(f"not appending to {self.log.path}: {self.refused}")
        with self._lock:
            entry = self.log.append(event_type, context_id, actor, payload)
            if self._following:
                self._follow_entry(entry)
        return entry.sequence, entry.entry_hash

    def operation(self) -> contextlib.AbstractContextManager[None]:
        """Held by an operation from before its entry is appended until its ref moved or the entry is voided
        (shared: operations of every replica run side by side; a repairing start waits, see :func:`settling`)."""
        return _operations_lock(self.log, exclusive=False)

    def follow(self, settled: tuple[int, str]) -> None:
        """Count on from ``settled``: the log's newest entry when a start read it, every entry up to it settled."""
        with self._lock:
            self._settled, self._ahead, self._following = settled, {}, True

    def settled(self, sequence: int) -> None:
        """The orchestrator's word that entry ``sequence`` (appended here) is applied: its ref moved, linking it."""
        with self._lock:
            if sequence in self._ahead:
                self._ahead[sequence][1] = True
                self._fold()

    def mark(self) -> tuple[int, str] | None:
        """The newest entry such that every entry up to it is settled, as far as this hook knows; or None."""
        with self._lock:
            return self._settled if self._settled is not None and self._settled[0] >= 1 else None

    def meta_due(self, repo: Repository) -> dict[str, str]:
        """Called before each commit: every :attr:`MARK_EVERY`-th, the mark (:func:`mark_meta`) for that
        commit's own write, which records it at no extra flush; else nothing. The mark is of entries
        settled before this commit appends its own, so whatever becomes of the commit it stays true."""
        self._since_mark += 1
        if self._since_mark < self.MARK_EVERY or not self._following:
            return {}
        self._since_mark = 0
        return mark_meta(repo, self)

    def _follow_entry(self, entry: LogEntry) -> None:
        assert self._settled is not None
        if entry.sequence != self._settled[0] + len(self._ahead) + 1 or len(self._ahead) >= self.MAX_AHEAD:
            # Another writer's entry came between (or one of ours never settled): nothing past it is vouched for.
            self._following, self._ahead = False, {}
            return
        link = entry.payload.get(LINK_KEY) if isinstance(entry.payload, dict) else None
        # An entry naming no snapshot is never pending (scan_log); a correction settles the entry it voids.
        self._ahead[entry.sequence] = [entry.entry_hash, link_of(entry) is None]
        void = link.get("void") if isinstance(link, dict) else None
        if entry.event_type == "correction" and isinstance(void, int) and void in self._ahead:
            self._ahead[void][1] = True
        self._fold()

    def _fold(self) -> None:
        """Move ``_settled`` over the settled entries just past it."""
        assert self._settled is not None
        while (nxt := self._ahead.get(self._settled[0] + 1)) is not None and nxt[1]:
            del self._ahead[self._settled[0] + 1]
            self._settled = (self._settled[0] + 1, nxt[0])


def operations_lock_path(log: OzolithLog) -> str:
    """The file whose ``flock`` marks operations between their entry and their ref move (module doc)."""
    return str(log.path.with_name(log.path.name + ".ops.lock"))


@contextlib.contextmanager
def _operations_lock(log: OzolithLog, *, exclusive: bool, create: bool = True) -> Iterator[None]:
    # flock belongs to the open file description: each holder opens its own, so threads of one
    # process exclude each other as processes do. Without ``create`` (a reader, which may not write
    # there) the file is opened read-only, which flock allows, and never made.
    path = operations_lock_path(log)
    flags = (os.O_RDWR | os.O_CREAT if create else os.O_RDONLY) | os.O_CLOEXEC
    try:
        try:
            fd = os.open(path, flags, 0o644)
        except FileNotFoundError:
            if exclusive:
                raise
            make_dirs(log.path.parent)  # no folder yet: made as the append this comes before would make it
            fd = os.open(path, flags, 0o644)
    except OSError as exc:
        if exclusive:
            # A start: no folder (no log yet), or one it may only read. A writer could not append there
            # either (an operation's lock is made beside the log it appends to), so none is in flight.
            yield
            return
        raise LogError(f"cannot open {path}, the lock of operations in flight on {log.path}: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # closing the description releases the lock


def settling(log: OzolithLog) -> contextlib.AbstractContextManager[None]:
    """Held by a repairing start while it reads the log and rolls it forward: it waits for every operation
    between its entry and its ref move (:meth:`LinkedLog.operation`), and new ones wait for it; an entry
    still pending then is one whose writer is gone."""
    return _operations_lock(log, exclusive=True)


def settled_end_now(log: OzolithLog | StoreLog) -> tuple[int, str] | None:
    """The log's newest entry, ``(sequence, hash)``, read at a moment when every entry up to it is settled
    (applied, voided, or left by a writer that is gone); None for an empty log or one whose tail cannot be read.

    A reader that checks the log against the store beside live writers
    (``snap verify``, ``snap status``) reads this first and the refs after:
    every entry up to it then had its ref move, if it ever gets one, before
    the refs were read, and a later entry is one the view of the store may
    not account for yet (not judged: the next run does). Where the store keeps
    the log, an entry commits with its ref move: any moment will do. An
    OZOLITH file's entry is appended before its ref moves, so this waits for
    the operations in flight (:meth:`LinkedLog.operation`) and holds new ones
    back only while it reads the file's last line. The lock file is opened
    read-only and never made: without one no operation ever ran beside this
    log (an operation makes it), and a reader that may not open it reads
    without it (a live writer's entry in flight may then be judged pending).
    """
    held = (_operations_lock(log, exclusive=True, create=False) if isinstance(log, OzolithLog)
            else contextlib.nullcontext())
    with held:
        try:
            last = log.last()
        except (SnapstoreError, OSError):
            return None  # a damaged tail: named by the reader's own checks, every entry judged
    return None if last is None else (last.sequence, last.entry_hash)


def link_of(entry: LogEntry) -> dict[str, Any] | None:
    """The snapstore link an entry's payload carries, if any."""
    link = entry.payload.get(LINK_KEY) if isinstance(entry.payload, dict) else None
    if isinstance(link, dict) and isinstance(link.get("snapshot"), str):
        return link
    return None


def voided_sequences(entries: list[LogEntry]) -> set[int]:
    """Sequences a later ``correction`` entry declares void (their operation failed)."""
    out = set()
    for entry in entries:
        link = entry.payload.get(LINK_KEY) if isinstance(entry.payload, dict) else None
        if entry.event_type == "correction" and isinstance(link, dict) and isinstance(link.get("void"), int):
            out.add(link["void"])
    return out


# Recovery actions that leave their entry settled: applied, or voided by a correction.
SETTLED = frozenset({"rolled-forward", "voided"})


@dataclass(frozen=True)
class Recovery:
    """What :func:`roll_forward` did or could not do for one log entry."""

    sequence: int
    conversation: str
    snapshot: str
    # "rolled-forward", "voided" (an orphan: see _orphans), "missing-objects", "diverged"; a start also
    # reports "cut-torn-tail"
    action: str
    message: str
    # "voided": the correction entry that voids it, (sequence, hash).
    correction: tuple[int, str] | None = None

    def to_json(self) -> dict[str, Any]:
        out = {"sequence": self.sequence, "conversation": self.conversation, "snapshot": self.snapshot,
               "action": self.action, "message": self.message}
        if self.correction is not None:
            out["correction"] = self.correction[0]
        return out


def linked_sequences(repo: Repository) -> dict[str, int]:
    """The newest log sequence each conversation's reflog records."""
    names = {ref_name(conv): conv for conv in repo.conversation_ids()}
    newest = {names[name]: seq for name, seq in repo.backend.newest_log_sequences(list(names)).items()}
    for conv, seq in newest.items():
        if seq == 0:  # none of its own: renamed since its last linked entry? Its earlier names' rows count.
            newest[conv] = max((row.log_sequence or 0 for row in repo.reflog_lineage(conv)), default=0)
    return newest


@dataclass(frozen=True)
class LogScan:
    """What a start read of the log: the entries past its bound, and those of them still pending."""

    read: tuple[LogEntry, ...]
    pending: tuple[tuple[LogEntry, dict[str, Any]], ...]
    # Why the recorded mark (CHECKED_KEY) was not used, for the start's report; None if it was, or there is none.
    note: str | None = None
    # The log's newest entry when read, (sequence, hash), every entry below the bound settled and the rest
    # read; (0, "") for an empty log; None if unknown (the bound's own entry is not in the log). OZOLITH only.
    end: tuple[int, str] | None = None
    # Entries below their conversation's newest link that no ref move applied (:func:`_orphans`), each with
    # the sequence of the next entry of that conversation the store applied. OZOLITH only.
    orphans: tuple[tuple[LogEntry, dict[str, Any], int], ...] = ()


def scan_log(repo: Repository, log: OzolithLog | StoreLog, skip: frozenset[int] = frozenset(),
             newest: dict[str, int] | None = None) -> LogScan:
    """Read the log past the bound no pending entry can be below (module doc), and pick out the pending ones."""
    if newest is None:
        newest = linked_sequences(repo)
    recent, note, below = _entries_past_bound(repo, log, newest)
    voided = voided_sequences(recent)
    # A conversation renamed or deleted since is not in ``newest``: every entry of it is a candidate,
    # and _not_applied_since judges it by the reflog its name left (which says what was applied).
    out, behind = [], []
    for entry in recent:
        if entry.sequence in voided or entry.sequence in skip:
            continue
        link = link_of(entry)
        if link is None:
            continue
        conv = str(link.get("conversation"))
        if entry.sequence > newest.get(conv, 0):
            out.append((entry, link))
        elif entry.sequence < newest.get(conv, 0) and not isinstance(log, StoreLog):
            behind.append((entry, link))  # applied, unless its writer died and another moved the conversation on
    end = None if isinstance(log, StoreLog) else (recent[-1].sequence, recent[-1].entry_hash) if recent else below
    orphans = _orphans(repo, recent, behind, newest, voided | skip) if behind else []
    return LogScan(tuple(recent), tuple(_not_applied_since(repo, out) if out else out), note, end, tuple(orphans))


def _orphans(repo: Repository, read: list[LogEntry], behind: list[tuple[LogEntry, dict[str, Any]]],
             newest: dict[str, int], excluded: set[int] | frozenset[int]
             ) -> list[tuple[LogEntry, dict[str, Any], int]]:
    """The entries of ``behind`` (read, each below its conversation's newest link) that no ref move applied,
    each with the sequence of the next entry of its conversation that one did.

    Such an entry is an orphan: its writer appended it and stopped before its
    ref move (killed; or its commit's outcome was unknown and never landed),
    and another writer (or the same, on the head it knew) linked a later entry
    to the conversation. Cost: nothing for the usual entry, which the log
    itself shows applied (the applied entries of a conversation form a chain
    from its newest link back, each entry's parent the snapshot of the one
    before); the rest are checked against the conversation's reflog, read back
    only as far as the oldest of them (as many rows as that conversation
    committed since, at most the entries read).
    """
    by_sequence = {e.sequence: e for e in read}
    by_conv: dict[str, list[tuple[LogEntry, dict[str, Any]]]] = {}
    for entry, link in behind:
        by_conv.setdefault(str(link.get("conversation")), []).append((entry, link))
    out = []
    for conv, entries in by_conv.items():
        top = by_sequence.get(newest[conv])
        top_link = link_of(top) if top is not None else None
        if top is None or top_link is None or top_link.get("conversation") != conv or _ref_of(conv) is None:
            continue  # its newest link names an entry of another name (renamed since): not judged here
        snapshots = {str(link["snapshot"]): e.sequence for e in read
                     if e.sequence not in excluded and (link := link_of(e)) is not None
                     and link.get("conversation") == conv and e.sequence <= newest[conv]}
        chain, lowest, parent = {top.sequence}, top.sequence, top_link.get("parent")
        while isinstance(parent, str) and snapshots.get(parent, lowest) < lowest:
            lowest = snapshots[parent]
            chain.add(lowest)
            parent = (link_of(by_sequence[lowest]) or {}).get("parent")
        left = [(e, link) for e, link in entries if e.sequence not in chain]
        if not left:
            continue
        applied = _reflog_links(repo, conv, min(e.sequence for e, _ in left))
        if applied.get(top.sequence) != top.entry_hash:
            continue  # the store's newest link is not this log's entry: the log-behind check says so
        for entry, link in left:
            if entry.sequence not in applied:
                out.append((entry, link, min(s for s in applied if s > entry.sequence)))
    return out


def _ref_of(conv: str) -> str | None:
    """The ref name of ``conv``, or None if it is no valid conversation id."""
    try:
        return ref_name(validate_conversation_id(conv))
    except SnapstoreError:
        return None


def _reflog_links(repo: Repository, conv: str, lowest: int) -> dict[int, str]:
    """``{log sequence: log hash}`` of the rows of ``conv``'s ref linking an entry at or past ``lowest``: its newest
    rows, read back until one links an older entry (a ref's rows link ever newer entries) or none is left."""
    name = _ref_of(conv)
    assert name is not None
    rows = _newest_reflog_rows(repo, name, lambda rows: any(
        r.log_sequence is not None and r.log_sequence < lowest for r in rows))
    return {r.log_sequence: r.log_hash or "" for r in rows if r.log_sequence is not None and r.log_sequence >= lowest}


def _newest_reflog_rows(repo: Repository, name: str, enough: Callable[[list[ReflogEntry]], bool],
                        limit: int | None = None) -> list[ReflogEntry]:
    """The newest rows of ref ``name``'s reflog, oldest first, read back in growing windows (16, 64, ...) until
    ``enough`` says the window holds what the caller looks for, the reflog is read whole, or the window reached
    ``limit`` rows."""
    count = 16
    while True:
        rows = repo.backend.reflog_newest(name, count)
        if enough(rows) or len(rows) < count or (limit is not None and count >= limit):
            return rows
        count *= 4


def _entries_past_bound(repo: Repository, log: OzolithLog | StoreLog, newest: dict[str, int]
                        ) -> tuple[list[LogEntry], str | None, tuple[int, str] | None]:
    """The entries a pending one could be among, oldest first; why a recorded mark was not used (or None);
    and the entry just below them, the bound's own ((0, "") below the first; None if the log lacks it)."""
    if isinstance(log, StoreLog):
        # Entry and ref move commit together: everything up to the newest link of any conversation is applied.
        return list(log.entries_after(max(newest.values(), default=0))), None, None
    mark, note = _recorded_mark(repo)
    if mark is not None:
        read = list(log.entries_after(mark[0] - 1))  # from the marked entry, to check it is this log's
        if read and read[0].sequence == mark[0] and read[0].entry_hash == mark[1]:
            return read[1:], None, mark
        note = f"the log holds no entry {mark[0]} with the hash a start recorded ({mark[1][:12]}): read it whole"
    # No mark: nothing says an entry is settled, not even below every conversation's newest link (an orphan,
    # see _orphans, is below its own). Read once; the start then records a mark.
    return list(log.entries_after(0)), note, (0, "")


def _recorded_mark(repo: Repository) -> tuple[tuple[int, str] | None, str | None]:
    """``((sequence, entry_hash), None)`` from meta CHECKED_KEY; ``(None, why)`` if it is damaged; or nothing."""
    raw = repo.backend.get_meta(CHECKED_KEY)
    if raw is None:
        return None, None
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    sequence = value.get("sequence") if isinstance(value, dict) else None
    entry_hash = value.get("entry_hash") if isinstance(value, dict) else None
    if type(sequence) is not int or sequence < 1 or not isinstance(entry_hash, str):
        return None, (f"meta {CHECKED_KEY} is damaged ({raw[:40]!r}): the log was read whole, "
                      "and the next start records it again")
    return (sequence, entry_hash), None


def settled_mark(scan: LogScan, recoveries: list[Recovery]) -> str | None:
    """The CHECKED_KEY value a start may record after rolling ``scan`` forward (``recoveries``), or None.

    The newest entry read below the oldest entry left unresolved (missing
    objects, diverged): every linked entry up to it is now applied, voided or
    discarded. An unresolved entry is read again by every start until the
    caller replays or discards it. Entries appended since the read are past
    the mark, whoever appended them.
    """
    unresolved = min((r.sequence for r in recoveries if r.action not in SETTLED), default=None)
    settled = [e for e in scan.read if unresolved is None or e.sequence < unresolved]
    if not settled:
        return None
    return json.dumps({"sequence": settled[-1].sequence, "entry_hash": settled[-1].entry_hash})


def settled_end(scan: LogScan, recoveries: list[Recovery]) -> tuple[int, str] | None:
    """Where a process may count its own settled entries on from (:meth:`LinkedLog.follow`), or None.

    The log's newest entry as ``scan`` read it (or the last correction the
    start appended just past it), if rolling it forward (``recoveries``) left
    nothing unresolved: every entry up to it is then applied, voided or
    discarded. With an unresolved entry the mark stays below it
    (:func:`settled_mark`) whatever this process appends.
    """
    if any(r.action not in SETTLED for r in recoveries) or scan.end is None:
        return None
    end = scan.end
    # The corrections it appended, if no other writer's entry came between (else the count stops there).
    for correction in sorted(r.correction for r in recoveries if r.correction is not None):
        if correction[0] == end[0] + 1:
            end = correction
    return end


def mark_meta(repo: Repository, linked: LinkedLog) -> dict[str, str]:
    """``{CHECKED_KEY: ...}`` for a clean shutdown's write: how far ``linked`` found the log settled, if that is
    past the recorded mark (another replica's start may have recorded a newer one); else nothing."""
    if linked.refused is not None:
        return {}
    mark = linked.mark()
    recorded, _ = _recorded_mark(repo)
    if mark is None or (recorded is not None and recorded[0] >= mark[0]):
        return {}
    return {CHECKED_KEY: json.dumps({"sequence": mark[0], "entry_hash": mark[1]})}


def _not_applied_since(repo: Repository, candidates: list[tuple[LogEntry, dict[str, Any]]]
                       ) -> list[tuple[LogEntry, dict[str, Any]]]:
    """The candidates still newer than their conversation's reflog, read again now.

    The reflogs were read before the log: another replica may have committed
    entries and moved its ref in between (with the log kept in the store, both
    in one transaction). Such an entry is applied, not pending; rolling it
    forward would find the ref moved on and report a divergence that is not there.
    """
    names: dict[str, str] = {}
    for _, link in candidates:
        conv = link.get("conversation")
        try:
            names.setdefault(str(conv), ref_name(validate_conversation_id(conv)))
        except SnapstoreError:
            pass  # roll_forward names it
    applied = repo.backend.newest_log_sequences(list(set(names.values())))
    return [(entry, link) for entry, link in candidates
            if entry.sequence > applied.get(names.get(str(link.get("conversation")), ""), 0)]


def _continues(parent: Any) -> str:
    """What a log entry's link says it follows: a snapshot, or (no parent) the start of the conversation."""
    return "starts its conversation" if parent is None else f"continues {str(parent)[:12]}"


def roll_forward(repo: Repository, log: OzolithLog | StoreLog, skip: frozenset[int] = frozenset(),
                 scan: LogScan | None = None) -> list[Recovery]:
    """Move refs forward to snapshots that logged entries name but no ref reached (but entries in ``skip``).

    ``scan``: :func:`scan_log`'s answer if the caller has read it already.
    """
    results: list[Recovery] = []
    if scan is None:
        scan = scan_log(repo, log, skip)
    judged = sorted([(e, link, None) for e, link in scan.pending] + list(scan.orphans), key=lambda t: t[0].sequence)
    for entry, link, later in judged:
        snapshot = ObjectId(link["snapshot"])
        try:
            conv = validate_conversation_id(link.get("conversation"))
        except SnapstoreError:
            results.append(Recovery(entry.sequence, str(link.get("conversation")), snapshot, "diverged",
                                    "entry names an invalid conversation"))
            continue
        head = repo.head(conv)
        if head == snapshot:
            continue
        if later is not None and head != link.get("parent") and isinstance(log, OzolithLog):
            # An orphan the conversation moved on from: it can never be applied, whatever its objects.
            results.append(_void(log, entry, conv, snapshot, link, later))
            continue
        if not repo.backend.has_objects([snapshot]):
            results.append(Recovery(entry.sequence, conv, snapshot, "missing-objects",
                                    f"log entry {entry.sequence} names snapshot {snapshot[:12]}, which is not stored"))
            continue
        try:
            snap: Snapshot = repo.snapshot(snapshot)
            repo.tree_of_state(snap.root)  # every object must be there and sound
        except SnapstoreError as exc:
            results.append(Recovery(entry.sequence, conv, snapshot, "missing-objects", str(exc)))
            continue
        expected_parent = link.get("parent")
        if head != expected_parent and isinstance(log, OzolithLog) and (
                later := _moved_on_by(repo, log, conv, expected_parent, entry, scan.read)) is not None:
            # Pending, but it lost the race from its parent to an earlier entry of this log: an orphan too.
            results.append(_void(log, entry, conv, snapshot, link, later))
            continue
        if head != expected_parent:
            results.append(Recovery(entry.sequence, conv, snapshot, "diverged",
                                    f"log entry {entry.sequence} {_continues(expected_parent)}, "
                                    f"but {'there is no head' if head is None else f'the head is {head[:12]}'}"))
            continue
        try:
            repo.backend.write(ref_updates=[RefUpdate(
                ref_name(conv), head, snapshot, f"roll forward to log entry {entry.sequence}",
                entry.sequence, entry.entry_hash,
            )])
        except RefConflict as exc:
            results.append(Recovery(entry.sequence, conv, snapshot, "diverged", str(exc)))
            continue
        results.append(Recovery(entry.sequence, conv, snapshot, "rolled-forward",
                                f"head moved to {snapshot[:12]} named by log entry {entry.sequence}"))
    return results


def _void(log: OzolithLog, entry: LogEntry, conv: str, snapshot: str, link: dict[str, Any], later: int) -> Recovery:
    """Void an orphan (:func:`_orphans`) whose conversation moved on from its parent, by a ``correction`` entry as
    the orchestrator writes for an operation that failed (``_write_pending_voids``); the Recovery saying so."""
    what = (f"log entry {entry.sequence} {_continues(link.get('parent'))}, but conversation {conv} moved on "
            f"without it (entry {later}): its writer stopped before its ref move")
    try:
        correction = log.append("correction", entry.context_id, "system", {
            "corrected_sequence": entry.sequence,
            "reason": f"operation never committed: {what}"[:500],
            LINK_KEY: {"void": entry.sequence, "conversation": conv},
        })
    except (SnapstoreError, OSError) as exc:
        return Recovery(entry.sequence, conv, snapshot, "diverged", f"{what}; could not void it: {exc}")
    return Recovery(entry.sequence, conv, snapshot, "voided",
                    f"{what}; voided by correction entry {correction.sequence}",
                    (correction.sequence, correction.entry_hash))


# Reflog rows a start reads back at most looking for the ref change that moved a conversation on from an entry's
# parent (:func:`_moved_on_by`); past that, the entry is reported diverged, as before.
MAX_MOVED_ON_ROWS = 1024


def _moved_on_by(repo: Repository, log: OzolithLog, conv: str, parent: Any, entry: LogEntry,
                 read: tuple[LogEntry, ...]) -> int | None:
    """The entry of this log through which ``conv`` moved on from ``parent`` (the head ``entry`` continued), or None.

    A pending entry (past its conversation's newest link) whose parent is no
    longer the head is an orphan too when another writer's entry, appended
    *before* it, won the race from the same head: the ref change away from
    ``parent`` links that entry. Any other move (a write that links no entry,
    another log's entry) leaves it "diverged", for the caller to judge. Cost:
    the conversation's reflog rows since it moved on, newest first.
    """
    name = _ref_of(conv)
    if name is None:
        return None
    rows = _newest_reflog_rows(repo, name, lambda rows: any(r.old == parent for r in rows), MAX_MOVED_ON_ROWS)
    row = next((r for r in reversed(rows) if r.old == parent), None)
    if row is None or row.log_sequence is None or row.log_sequence == entry.sequence or not row.log_hash:
        return None
    sequence = row.log_sequence
    winner = next((e for e in read if e.sequence == sequence), None)
    if winner is None:  # below the bound: read back to it (it moved on after this entry's writer read the head)
        winner = next((e for e in log.entries_after(sequence - 1) if e.sequence == sequence), None)
    return sequence if winner is not None and winner.entry_hash == row.log_hash else None

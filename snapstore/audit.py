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
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from .backends.base import RefUpdate
from .errors import LogError, RefConflict, SnapstoreError
from .objects import ObjectId, Snapshot
from .ozolith import LogEntry, OzolithLog
from .refs import ref_name, validate_conversation_id
from .repository import Repository

LINK_KEY = "snapstore"


class LinkedLog:
    """An orchestrator's audit hook: one writer per log in this process."""

    _locks: dict[str, threading.Lock] = {}
    _locks_guard = threading.Lock()

    def __init__(self, log: OzolithLog) -> None:
        self.log = log
        # Why appending is refused (a log behind the store, see startup.py), or None.
        self.refused: str | None = None
        with self._locks_guard:
            self._lock = self._locks.setdefault(str(log.path.resolve()), threading.Lock())

    def __call__(self, event_type: str, context_id: str, actor: str, payload: dict[str, Any]) -> tuple[int, str]:
        if self.refused is not None:
            raise LogError(f"not appending to {self.log.path}: {self.refused}")
        with self._lock:
            entry = self.log.append(event_type, context_id, actor, payload)
        return entry.sequence, entry.entry_hash


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


@dataclass(frozen=True)
class Recovery:
    """What :func:`roll_forward` did or could not do for one log entry."""

    sequence: int
    conversation: str
    snapshot: str
    action: str  # "rolled-forward", "missing-objects", "diverged"; a start also reports "cut-torn-tail"
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"sequence": self.sequence, "conversation": self.conversation, "snapshot": self.snapshot,
                "action": self.action, "message": self.message}


def linked_sequences(repo: Repository) -> dict[str, int]:
    """The newest log sequence each conversation's reflog records."""
    names = {ref_name(conv): conv for conv in repo.conversation_ids()}
    newest = {names[name]: seq for name, seq in repo.backend.newest_log_sequences(list(names)).items()}
    for conv, seq in newest.items():
        if seq == 0:  # none of its own: renamed since its last linked entry? Its earlier names' rows count.
            newest[conv] = max((row.log_sequence or 0 for row in repo.reflog_lineage(conv)), default=0)
    return newest


def pending_entries(repo: Repository, log: OzolithLog, skip: frozenset[int] = frozenset(),
                    newest: dict[str, int] | None = None) -> list[tuple[LogEntry, dict[str, Any]]]:
    """Linked entries newer than what the store's reflogs record, oldest first (but those in ``skip``).

    ``newest``: :func:`linked_sequences` if the caller has read it already (a start reads it once).
    """
    if newest is None:
        newest = linked_sequences(repo)
    floor = min(newest.values(), default=0)
    recent = list(log.entries_after(floor))  # both kinds of log read only what is newer
    voided = voided_sequences(recent)
    # Conversations renamed or deleted since: their reflogs remain and say what was applied, so an
    # entry of theirs is pending only if it is newer than those rows (never by the chance of ``floor``).
    gone: dict[str, str] = {}
    for entry in recent:
        link = link_of(entry)
        conv = link.get("conversation") if link is not None else None
        if isinstance(conv, str) and conv not in newest and conv not in gone:
            try:
                gone[conv] = ref_name(validate_conversation_id(conv))
            except SnapstoreError:
                pass  # roll_forward names it
    if gone:
        applied = repo.backend.newest_log_sequences(list(gone.values()))
        newest = {**newest, **{conv: applied.get(name, 0) for conv, name in gone.items()}}
    out = []
    for entry in recent:
        if entry.sequence in voided or entry.sequence in skip:
            continue
        link = link_of(entry)
        if link is None:
            continue
        conv = str(link.get("conversation"))
        if entry.sequence > newest.get(conv, 0):
            out.append((entry, link))
    return _not_applied_since(repo, out) if out else out


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


def roll_forward(repo: Repository, log: OzolithLog, skip: frozenset[int] = frozenset(),
                 newest: dict[str, int] | None = None) -> list[Recovery]:
    """Move refs forward to snapshots that logged entries name but no ref reached (but entries in ``skip``)."""
    results: list[Recovery] = []
    for entry, link in pending_entries(repo, log, skip, newest):
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

"""Retention: squash a conversation's old history into one snapshot.

``prune(repo, conv, keep_last=N)`` (or ``older_than=D``) keeps the newest N
snapshots of the conversation's first-parent history (or those younger than
D; the head always stays) and replaces everything older with one root
snapshot, the *squash*: it holds the state of the newest pruned snapshot,
its time, and a ``prune`` event saying what it replaced. The kept snapshots
are rewritten on top of it. Only their parent changes (state, time, event,
audit-log link stay), but that changes their ids, so the mapping old -> new
is written as a prune record (:mod:`snapstore.rewrites`) in the same
transaction as the ref change. The reflog and the audit log are never
edited: the record tells ``fsck``, gc and ``verify`` how to read them.

What prune respects:

- **forks**: other refs whose history shares pruned snapshots are not
  touched, and what they reach stays alive for gc; the report names them;
- **the active conversation** stays active; a writer holding the old head
  (an API process) gets a ref conflict on its next commit, like after any
  other writer's commit, and reloads;
- **concurrent commits**: the ref moves by compare-and-swap from the head
  prune read, so a commit that lands meanwhile makes prune fail, changing
  nothing.

The replaced snapshots become garbage; ``snap gc`` deletes what only they
reached once the grace period has passed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from .backends.base import RefUpdate, StoredObject
from .errors import InvalidInput, RefConflict, SnapstoreError, UnknownRevision
from .objects import Event, ObjectId, Snapshot, encode
from .progress import Progress, quiet
from .refs import REF_PREFIX, conversation_of, ref_name, validate_conversation_id
from .repository import Repository
from .rewrites import PruneRecord, Rewrites
from .timeutil import parse_time, utc_now


class ConversationMoved(SnapstoreError):
    """A commit landed while prune was rewriting: nothing was changed."""


@dataclass(frozen=True)
class PruneReport:
    """What a prune did (with ``dry_run``, would do)."""

    conversation: str
    dry_run: bool
    old_head: ObjectId
    new_head: ObjectId
    squash: ObjectId | None = None
    squashed: int = 0
    dropped: int = 0
    replaced: dict[ObjectId, ObjectId] = field(default_factory=dict)
    shared_with: tuple[str, ...] = ()
    pruned_from: str | None = None
    pruned_to: str | None = None
    record: str | None = None

    @property
    def changed(self) -> bool:
        return self.squash is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "conversation": self.conversation,
            "dry_run": self.dry_run,
            "changed": self.changed,
            "old_head": self.old_head,
            "new_head": self.new_head,
            "squash": self.squash,
            "squashed": self.squashed,
            "kept": len(self.replaced),
            "dropped": self.dropped,
            "replaced": dict(self.replaced),
            "shared_with": list(self.shared_with),
            "pruned_range": None if self.pruned_from is None else {"from": self.pruned_from, "to": self.pruned_to},
            "record": self.record,
        }


def _history(repo: Repository, head: ObjectId, progress: Progress, estimate: int) -> list[tuple[ObjectId, Snapshot]]:
    """First-parent history from ``head``, newest first."""
    chain: list[tuple[ObjectId, Snapshot]] = []
    current: ObjectId | None = head
    with progress("reading history", estimate) as bar:
        while current is not None:
            snap = repo.snapshot(current)
            chain.append((current, snap))
            current = snap.parents[0] if snap.parents else None
            if len(chain) <= estimate:
                bar.update(1)
    return chain


def _forks(repo: Repository, ref: str, chain: dict[ObjectId, Snapshot], oldest: datetime) -> tuple[str, ...]:
    """Other refs whose history reaches a snapshot of ``chain``.

    Walks each other history back only until it is older than the oldest
    snapshot of ``chain`` (history runs back in time), so the cost is the
    recent part of each history. It only informs the report: whatever other
    refs reach stays alive either way.
    """
    shared = []
    for other, target in repo.backend.list_refs(REF_PREFIX).items():
        if other == ref:
            continue
        stack, seen = [target], set()
        while stack:
            sid = stack.pop()
            if sid in seen:
                continue
            seen.add(sid)
            if sid in chain:
                shared.append(conversation_of(other) or other)
                break
            snap = repo.snapshot(sid)
            if parse_time(snap.time) >= oldest:
                stack.extend(snap.parents)
    return tuple(shared)


def prune(repo: Repository, conversation: str, *, keep_last: int | None = None,
          older_than: timedelta | None = None, dry_run: bool = False, progress: Progress = quiet) -> PruneReport:
    """Squash the history of ``conversation`` older than its newest ``keep_last`` snapshots or ``older_than``."""
    if (keep_last is None) == (older_than is None):
        raise InvalidInput("give exactly one of --keep-last and --older-than")
    if keep_last is not None and keep_last < 1:
        raise InvalidInput("--keep-last must be at least 1: the head always stays")
    conv = validate_conversation_id(conversation)
    ref = ref_name(conv)
    head = repo.head(conv)
    if head is None:
        raise UnknownRevision(f"unknown conversation {conv!r}")
    reflog = repo.reflog(conv)
    chain = _history(repo, head, progress, len(reflog))
    if keep_last is not None:
        kept_count = min(keep_last, len(chain))
    else:
        assert older_than is not None
        cutoff = datetime.now(timezone.utc) - older_than
        kept_count = next((i for i, (_, s) in enumerate(chain) if parse_time(s.time) < cutoff), len(chain))
        kept_count = max(kept_count, 1)
    kept, pruned = chain[:kept_count], chain[kept_count:]
    if not pruned or (len(pruned) == 1 and not pruned[0][1].parents):
        return PruneReport(conv, dry_run, head, head)

    newest_id, newest = pruned[0]
    oldest_id, oldest = pruned[-1]
    squash = Snapshot(
        conversation=conv,
        root=newest.root,
        parents=(),
        time=newest.time,
        event=Event("prune", None, f"replaces {len(pruned)} snapshots, {oldest_id[:12]} ({oldest.time}) to "
                                   f"{newest_id[:12]} ({newest.time}); holds the state of {newest_id[:12]}"),
    )
    objects: list[StoredObject] = []

    def add(snap: Snapshot) -> ObjectId:
        kind, body, oid = encode(snap)
        objects.append(StoredObject(oid, kind, len(body), repo.codec.compress(body)))
        return oid

    squash_id = add(squash)
    squashed = {sid for sid, _ in pruned}
    mapping: dict[ObjectId, ObjectId] = {}
    parent = squash_id
    for old_id, snap in reversed(kept):
        extra = tuple(mapping.get(p, squash_id if p in squashed else p) for p in snap.parents[1:])
        parent = mapping[old_id] = add(Snapshot(snap.conversation, snap.root, (parent,) + extra,
                                                snap.time, snap.event, snap.log))
    new_head = mapping[head]

    rewrites = Rewrites.load(repo.backend)
    named = {oid for e in reflog for oid in (e.old, e.new) if oid is not None}
    dropped = frozenset(oid for oid in named - squashed - set(mapping) if not rewrites.superseded(conv, oid))
    record = PruneRecord(conv, utc_now(), head, new_head, squash_id, mapping, frozenset(squashed), dropped)
    history = dict(chain)
    shared = _forks(repo, ref, history, min(parse_time(s.time) for s in history.values()))
    report = PruneReport(conv, dry_run, head, new_head, squash_id, len(squashed), len(dropped), mapping, shared,
                         oldest.time, newest.time, record.key)
    if dry_run:
        return report
    # The new head answers to the audit-log entry the old one did (in the snapshot, or in
    # the reflog entry that made it the head: an orchestrator's entry names the snapshot).
    link = repo.snapshot(head).log
    sequence, entry_hash = (link.sequence, link.entry_hash) if link else next(
        ((e.log_sequence, e.log_hash) for e in reversed(reflog) if e.new == head and e.log_sequence is not None),
        (None, None))
    update = RefUpdate(
        ref, head, new_head,
        f"prune: squashed {len(squashed)} snapshots into {squash_id[:12]}, rewrote {len(mapping)} ({record.key})",
        sequence, entry_hash,
    )
    try:
        repo.backend.write(objects, [update], record.meta())
    except RefConflict as exc:
        raise ConversationMoved(
            f"conversation {conv!r} moved while pruning ({exc}); nothing was changed, run prune again"
        ) from None
    return report

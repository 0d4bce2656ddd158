"""Copy conversations between stores (embedded <-> shared), every hash checked.

:func:`copy_conversations` walks the objects reachable from the chosen
conversations' heads and reflogs in the source, re-hashes each one as it
reads it and recompresses it with the destination's codec. Each
conversation's objects and its ref move go to the destination in **one**
write, so the ref never names an object that is not there, and a copy
interrupted half-way leaves every destination ref at a value it had, with
everything it reaches.

That one write is also what keeps the copy safe beside ``snap gc`` on the
destination (gc's first rule, snapstore/gc.py): until the ref names them,
copied objects are garbage, and so may be objects the destination already
had (pruned history, an interrupted earlier copy). So the write carries
every object the new head needs except those the destination's current
head of that conversation reaches (in the source's graph: on a
fast-forward the source has that head and its history). Those are safe:
gc deletes nothing a ref reaches without its fence, and the write's
compare-and-swap fails if the ref moved. An object the destination
already has is written again (a no-op, or a put-back after gc), and counted
as present.

A destination ref is created, left alone when equal, fast-forwarded when the
source descends from it, and otherwise refused (the histories diverged).
Objects are held in memory one conversation at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .backends.base import RefUpdate, StoredObject
from .errors import InvalidInput, RefConflict
from .graph import Verified, Walk
from .location import redact
from .objects import ObjectId
from .refs import ConversationId, ref_name, validate_conversation_id
from .repository import Repository
from .rewrites import Rewrites

BATCH = 500


@dataclass
class TransferReport:
    conversations: list[str] = field(default_factory=list)
    objects_copied: int = 0
    objects_present: int = 0
    bytes_copied: int = 0
    refs_updated: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"conversations": self.conversations, "objects_copied": self.objects_copied,
                "objects_already_present": self.objects_present, "bytes_copied": self.bytes_copied,
                "refs": self.refs_updated}


def _descends(repo: Repository, head: ObjectId, ancestor: ObjectId) -> bool:
    stack, seen = [head], set()
    while stack:
        sid = stack.pop()
        if sid == ancestor:
            return True
        if sid in seen:
            continue
        seen.add(sid)
        stack.extend(repo.snapshot(sid).parents)
    return False


def _beyond(src: Repository, starts: list[ObjectId], theirs: ObjectId | None,
            progress: Callable[[int], None] | None) -> dict[ObjectId, Verified]:
    """Every object reachable from ``starts`` and not from ``theirs``, read and verified from ``src``."""
    carried: dict[ObjectId, Verified] = {}
    walk = Walk(src)
    if theirs is not None:
        walk.add([(theirs, "snapshot", "the destination's head")])
    beyond = Walk(src, visit=lambda item: carried.__setitem__(item.id, item), advance=progress)
    beyond.seen = set(walk.seen)  # not descended into: the destination's head reaches them
    beyond.add([(oid, "snapshot", "the source's head and reflog") for oid in starts])
    return carried


def copy_conversations(src: Repository, dst: Repository, conversations: Iterable[str] | None = None,
                       progress: Callable[[int], None] | None = None) -> TransferReport:
    """Copy conversations (default: all) from ``src`` to ``dst``; see the module docstring."""
    names = [validate_conversation_id(c) for c in (conversations or src.conversation_ids())]
    report = TransferReport(conversations=list(names))
    plans: list[tuple[ConversationId, ObjectId, ObjectId | None]] = []
    for conv in names:
        head = src.head(conv)
        if head is None:
            raise InvalidInput(f"no conversation {conv!r} in the source store")
        plans.append((conv, head, dst.head(conv)))
    # Refuse diverged histories before copying anything.
    fast_forwards: set[ConversationId] = set()
    for conv, head, theirs in plans:
        if theirs is None or theirs == head or not dst.backend.has_objects([theirs]):
            continue  # a ref naming a missing snapshot is replaced, everything carried
        if not (src.backend.has_objects([theirs]) and _descends(src, head, theirs)):
            raise RefConflict(ref_name(conv), theirs, head)
        fast_forwards.add(conv)
    rewrites = Rewrites.load(src.backend)
    counted: set[ObjectId] = set()
    for conv, head, theirs in plans:
        if theirs == head:
            continue
        starts = [head, *(e.new for e in src.reflog(conv)
                          if e.new is not None and not rewrites.superseded(conv, e.new))]
        carried = _beyond(src, starts, theirs if conv in fast_forwards else None, progress)
        ids = list(carried)
        present: set[ObjectId] = set()
        for start in range(0, len(ids), BATCH):
            present |= dst.backend.has_objects(ids[start : start + BATCH])
        out = []
        for oid, item in carried.items():
            data = dst.codec.compress(item.body)
            out.append(StoredObject(oid, item.kind, len(item.body), data))
            if oid not in counted:
                counted.add(oid)
                if oid in present:
                    report.objects_present += 1
                else:
                    report.objects_copied += 1
                    report.bytes_copied += len(data)
        dst.backend.write(out, [RefUpdate(ref_name(conv), theirs, head, f"copied from {redact(src.location)}")])
        report.refs_updated[conv] = head
    return report

"""Copy conversations between stores (embedded <-> shared), every hash checked.

:func:`copy_conversations` walks every object reachable from the chosen
conversations' heads and reflogs in the source, re-hashes each one as it
reads it, writes it to the destination (recompressed with the destination's
codec) and only then moves the destination's refs: a copy interrupted
half-way leaves the destination's refs as they were. An object the
destination already has is not copied again, nor is anything below it.
A destination ref is created, left alone when equal, fast-forwarded when the
source descends from it, and otherwise refused (the histories diverged).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .backends.base import RefUpdate, StoredObject
from .errors import InvalidInput, ObjectNotFound, RefConflict
from .objects import ObjectId, references
from .location import redact
from .refs import ConversationId, ref_name, validate_conversation_id
from .repository import Repository

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


def copy_conversations(src: Repository, dst: Repository, conversations: Iterable[str] | None = None,
                       progress: Callable[[int], None] | None = None) -> TransferReport:
    """Copy conversations (default: all) from ``src`` to ``dst``; see the module docstring."""
    names = [validate_conversation_id(c) for c in (conversations or src.conversation_ids())]
    report = TransferReport(conversations=list(names))
    heads: dict[ConversationId, ObjectId] = {}
    frontier: list[ObjectId] = []
    for conv in names:
        head = src.head(conv)
        if head is None:
            raise InvalidInput(f"no conversation {conv!r} in the source store")
        heads[conv] = head
        frontier.append(head)
        frontier.extend(e.new for e in src.reflog(conv) if e.new is not None)
    # Refuse diverged histories before copying anything.
    for conv, head in heads.items():
        theirs = dst.head(conv)
        if theirs is not None and theirs != head and dst.backend.has_objects([theirs]) and not (
            src.backend.has_objects([theirs]) and _descends(src, head, theirs)
        ):
            raise RefConflict(ref_name(conv), theirs, head)
    seen: set[ObjectId] = set()
    while frontier:
        batch = [oid for oid in dict.fromkeys(frontier) if oid not in seen][:BATCH]
        frontier = [oid for oid in frontier if oid not in seen and oid not in batch]
        if not batch:
            continue
        seen.update(batch)
        present = dst.backend.has_objects(batch)
        report.objects_present += len(present)
        wanted = [oid for oid in batch if oid not in present]
        found = src.backend.get_objects(wanted)
        out = []
        for oid in wanted:
            stored = found.get(oid)
            if stored is None:
                raise ObjectNotFound(oid, "in the source store")
            body, obj = src._verify(stored)  # re-hashes: a corrupt source object stops the copy
            data = dst.codec.compress(body)
            out.append(StoredObject(oid, stored.kind, len(body), data))
            report.bytes_copied += len(data)
            frontier.extend(child for child, _ in references(obj))
        if out:
            dst.backend.write(out)
            report.objects_copied += len(out)
        if progress is not None:
            progress(len(batch))
    for conv, head in heads.items():
        theirs = dst.head(conv)
        if theirs == head:
            continue
        dst.backend.write(ref_updates=[RefUpdate(ref_name(conv), theirs, head, f"copied from {redact(src.location)}")])
        report.refs_updated[conv] = head
    return report

"""Records of history that ``snap prune`` rewrote.

Pruning squashes a conversation's old snapshots into one root snapshot and
rewrites the kept ones on top of it, so every snapshot of the conversation
gets a new id. The reflog is never edited: it goes on naming the old ids. A
prune record says which of them are no longer history:

``kept``
    old id -> new id of each snapshot that was rewritten (same state, event,
    time and audit-log link; only its parent changed);
``squashed``
    the old snapshots folded into the squash snapshot ``squash``, which holds
    the state of the newest of them;
``dropped``
    every other value the conversation's reflog named before the prune
    (heads replaced by an amend, for instance): no longer history at all.

Readers that walk reflogs consult the records: ``fsck`` and gc do not treat
superseded reflog values as roots (so gc can delete them), ``verify`` checks
an audit-log entry against the rewritten snapshot or skips it if its
snapshot was squashed away.

Meta layout, one record per prune, written in the same transaction as the
ref change::

    prune/<conversation>/<time>                   the record (JSON)
    prune/<conversation>/<time>/squashed/NNNNNN   ids (see :mod:`snapstore.idsets`)
    prune/<conversation>/<time>/dropped/NNNNNN
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .backends.base import Backend
from .errors import CorruptObject
from .idsets import pack, unpack
from .objects import ObjectId, is_object_id

PREFIX = "prune/"
RECORD_VERSION = 1


@dataclass(frozen=True)
class PruneRecord:
    """One prune of one conversation."""

    conversation: str
    time: str
    old_head: ObjectId
    new_head: ObjectId
    squash: ObjectId
    kept: Mapping[ObjectId, ObjectId]
    squashed: frozenset[ObjectId]
    dropped: frozenset[ObjectId]

    @property
    def key(self) -> str:
        return f"{PREFIX}{self.conversation}/{self.time}"

    def superseded(self) -> frozenset[ObjectId]:
        """Every id this prune took out of the conversation's history."""
        return frozenset(self.kept) | self.squashed | self.dropped

    def meta(self) -> dict[str, str]:
        """The meta entries that record this prune."""
        record = {
            "version": RECORD_VERSION,
            "conversation": self.conversation,
            "time": self.time,
            "old_head": self.old_head,
            "new_head": self.new_head,
            "squash": self.squash,
            "kept": dict(self.kept),
            "squashed": len(self.squashed),
            "dropped": len(self.dropped),
        }
        entries = {self.key: json.dumps(record, sort_keys=True)}
        entries.update(pack(self.key + "/squashed", self.squashed))
        entries.update(pack(self.key + "/dropped", self.dropped))
        return entries


def _oid(value: Any) -> ObjectId:
    if not is_object_id(value):
        raise ValueError(f"{str(value)[:80]!r} is not an object id")
    return ObjectId(value)


def _record(key: str, meta: Mapping[str, str]) -> PruneRecord:
    try:
        value: dict[str, Any] = json.loads(meta[key])
        if value.get("version") != RECORD_VERSION:
            raise ValueError(f"unknown version {value.get('version')!r}")
        record = PruneRecord(
            conversation=str(value["conversation"]),
            time=str(value["time"]),
            old_head=_oid(value["old_head"]),
            new_head=_oid(value["new_head"]),
            squash=_oid(value["squash"]),
            kept={_oid(k): _oid(v) for k, v in dict(value["kept"]).items()},
            squashed=frozenset(unpack(meta, key + "/squashed")),
            dropped=frozenset(unpack(meta, key + "/dropped")),
        )
        counts = (value["squashed"], value["dropped"])
    # Not a JSON object, say; or a CorruptObject naming an id set of it: the record is what is lost.
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError, CorruptObject) as exc:
        raise CorruptObject(key, f"unreadable prune record: {exc}") from None
    if (len(record.squashed), len(record.dropped)) != counts:
        raise CorruptObject(key, "prune record: id sets do not hold the recorded number of ids")
    return record


class Rewrites:
    """Every prune record of a store, oldest first, and what they imply."""

    def __init__(self, records: list[PruneRecord]) -> None:
        self.records = tuple(sorted(records, key=lambda r: r.time))
        self._superseded: dict[str, set[ObjectId]] = {}
        for record in self.records:
            self._superseded.setdefault(record.conversation, set()).update(record.superseded())

    @classmethod
    def load(cls, backend: Backend, damaged: list[CorruptObject] | None = None) -> Rewrites:
        """The store's prune records; :class:`CorruptObject` naming the first that cannot be read.

        Given ``damaged`` (fsck, verify), such a record is added to it and left out instead, so the
        checks go on: the ids it would have taken out of its conversation's history are then
        history again, and one that is gone is reported missing (the record that excused it
        is unreadable, so nothing does). A meta row that holds no text is skipped here (the
        backend's ``readable_meta``); fsck names it, and a record that needed it is damaged.
        """
        reader = getattr(backend, "readable_meta", None) if damaged is not None else None
        meta = reader(PREFIX) if reader is not None else backend.list_meta(PREFIX)
        records = []
        for key in (k for k in meta if k.count("/") == 2):
            try:
                records.append(_record(key, meta))
            except CorruptObject as exc:
                if damaged is None:
                    raise
                damaged.append(exc)
        return cls(records)

    def __bool__(self) -> bool:
        return bool(self.records)

    def superseded(self, conversation: str | None, oid: ObjectId) -> bool:
        """Whether ``oid``, named by ``conversation``'s reflog, is no longer its history."""
        return conversation is not None and oid in self._superseded.get(conversation, ())

    def current(self, oid: ObjectId) -> ObjectId | None:
        """The snapshot that stands for ``oid`` now (itself if never rewritten; None if dropped)."""
        for record in self.records:
            if oid in record.kept:
                oid = record.kept[oid]
            elif oid in record.squashed:
                oid = record.squash
            elif oid in record.dropped:
                return None
        return oid

    def alive(self, oid: ObjectId) -> bool:
        """Whether ``oid`` survives as a snapshot of its own (rewritten at most), not squashed or dropped."""
        for record in self.records:
            if oid in record.kept:
                oid = record.kept[oid]  # a later prune may squash the rewrite
            elif oid in record.squashed or oid in record.dropped:
                return False
        return True

    def link(self, link: Mapping[str, Any]) -> dict[str, Any] | None:
        """An audit-log link with its snapshot and parent as they are now; None if pruned away."""
        snapshot = link.get("snapshot")
        if not self.records or not isinstance(snapshot, str):
            return dict(link)
        if not self.alive(ObjectId(snapshot)):
            return None
        out = dict(link)
        out["snapshot"] = self.current(ObjectId(snapshot))
        parent = link.get("parent")
        if isinstance(parent, str):
            out["parent"] = self.current(ObjectId(parent))
        return out

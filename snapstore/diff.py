"""Differences between two conversation states, at a cost proportional to the change.

Two states are compared from their roots down. Where a child's node id is
equal on both sides the whole subtree is equal and is never read. A context
found on one side only is a candidate for removal or addition; when the same
id turns up on the other side under another parent, it was moved. Exchange
lists are compared from their newest chunk back to the first chunk the two
lists share, so an append of k exchanges costs k reads whatever the history.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .objects import Chunk, ContextId, MemoryRef, Node, ObjectId, State
from .tree import ReadMany

_ABSENT = object()


@dataclass(frozen=True)
class ExchangeChanges:
    """How one exchange list changed; ids are exchange ids (or ``#index``)."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def to_json(self) -> dict[str, Any]:
        return {"added": list(self.added), "removed": list(self.removed), "changed": list(self.changed)}


@dataclass(frozen=True)
class ContextChange:
    """A context present on both sides whose content differs."""

    id: str
    fields: dict[str, dict[str, Any]] = field(default_factory=dict)
    memory: dict[str, ExchangeChanges] = field(default_factory=dict)

    @property
    def status(self) -> tuple[Any, Any] | None:
        change = self.fields.get("status")
        return None if change is None else (change.get("old"), change.get("new"))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "fields": self.fields}
        if self.status is not None:
            out["status"] = {"old": self.status[0], "new": self.status[1]}
        local = self.memory.get("local_memory", ExchangeChanges())
        out["exchanges_added"] = len(local.added)
        out["exchanges_removed"] = len(local.removed)
        out["exchanges_changed"] = len(local.changed)
        out["exchanges"] = {name: changes.to_json() for name, changes in self.memory.items()}
        return out


@dataclass(frozen=True)
class ContextPresence:
    """A context added or removed, with where it sat."""

    id: str
    parent: str | None
    status: Any
    exchanges: int

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "parent": self.parent, "status": self.status, "exchanges": self.exchanges}


@dataclass(frozen=True)
class ContextMove:
    """A context whose parent changed (``None`` is the top level)."""

    id: str
    old_parent: str | None
    new_parent: str | None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "old_parent": self.old_parent, "new_parent": self.new_parent}


@dataclass(frozen=True)
class TreeDiff:
    """Everything that differs between two states."""

    added: tuple[ContextPresence, ...] = ()
    removed: tuple[ContextPresence, ...] = ()
    moved: tuple[ContextMove, ...] = ()
    changed: tuple[ContextChange, ...] = ()
    focus: tuple[str | None, str | None] | None = None
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)
    # How many objects the diff read: the measure of its cost.
    reads: int = 0

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.moved or self.changed or self.focus or self.extra)

    def summary(self) -> str:
        parts = [
            f"{len(self.added)} added",
            f"{len(self.removed)} removed",
            f"{len(self.moved)} moved",
            f"{len(self.changed)} changed",
        ]
        if self.focus:
            parts.append(f"focus {self.focus[0]} -> {self.focus[1]}")
        return ", ".join(parts)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "added": [c.to_json() for c in self.added],
            "removed": [c.to_json() for c in self.removed],
            "moved": [m.to_json() for m in self.moved],
            "changed": [c.to_json() for c in self.changed],
            "focus": None if self.focus is None else {"old": self.focus[0], "new": self.focus[1]},
        }
        if self.extra:
            out["extra"] = self.extra
        return out


def diff_fields(old: dict[str, Any], new: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{name: {"old": ..., "new": ...}}`` for every field that differs (a side is absent if the field is)."""
    out: dict[str, dict[str, Any]] = {}
    for key in sorted(old.keys() | new.keys()):
        a, b = old.get(key, _ABSENT), new.get(key, _ABSENT)
        if a != b or type(a) is not type(b):
            change: dict[str, Any] = {}
            if a is not _ABSENT:
                change["old"] = a
            if b is not _ABSENT:
                change["new"] = b
            out[key] = change
    return out


class _Differ:
    def __init__(self, read_many: ReadMany) -> None:
        self._read_many = read_many
        self.reads = 0

    def read(self, ids: list[ObjectId], kind: str) -> dict[ObjectId, Any]:
        self.reads += len(set(ids))
        return dict(self._read_many(ids, kind))

    def exchanges(self, old: MemoryRef, new: MemoryRef) -> ExchangeChanges:
        if old == new:
            return ExchangeChanges()
        a, b = old.head, new.head
        ca, cb = old.count, new.count
        old_tail: list[tuple[int, Any]] = []
        new_tail: list[tuple[int, Any]] = []
        while a != b:
            step_a = ca >= cb and a is not None
            step_b = cb >= ca and b is not None
            ids = ([a] if step_a else []) + ([b] if step_b else [])
            found = self.read([i for i in ids if i is not None], "chunk")
            if step_a:
                chunk: Chunk = found[a]  # type: ignore[index]
                old_tail.append((chunk.index, chunk.item))
                a, ca = chunk.prev, ca - 1
            if step_b:
                chunk = found[b]  # type: ignore[index]
                new_tail.append((chunk.index, chunk.item))
                b, cb = chunk.prev, cb - 1
        old_by_id = {_exchange_key(i, item): item for i, item in old_tail}
        new_by_id = {_exchange_key(i, item): item for i, item in new_tail}
        new_order = [_exchange_key(i, item) for i, item in reversed(new_tail)]
        old_order = [_exchange_key(i, item) for i, item in reversed(old_tail)]
        return ExchangeChanges(
            added=tuple(k for k in new_order if k not in old_by_id),
            removed=tuple(k for k in old_order if k not in new_by_id),
            changed=tuple(k for k in new_order if k in old_by_id and old_by_id[k] != new_by_id[k]),
        )

    def node_change(self, old: Node, new: Node) -> ContextChange | None:
        fields = diff_fields(old.fields, new.fields)
        memory: dict[str, ExchangeChanges] = {}
        for name in sorted(old.memory.keys() | new.memory.keys()):
            changes = self.exchanges(
                old.memory.get(name, MemoryRef(None, 0)), new.memory.get(name, MemoryRef(None, 0))
            )
            if changes:
                memory[name] = changes
        if not fields and not memory:
            return None
        return ContextChange(id=new.id, fields=fields, memory=memory)


def _exchange_key(index: int, item: Any) -> str:
    if isinstance(item, dict) and isinstance(item.get("exchange_id"), str):
        return item["exchange_id"]
    return f"#{index}"


def _exchange_total(node: Node) -> int:
    ref = node.memory.get("local_memory")
    return ref.count if ref is not None else 0


def diff_states(read_many: ReadMany, old_id: ObjectId | None, new_id: ObjectId | None) -> TreeDiff:
    """The difference between two state objects (None is the empty state)."""
    if old_id == new_id:
        return TreeDiff()
    d = _Differ(read_many)
    wanted = [i for i in (old_id, new_id) if i is not None]
    states = d.read(wanted, "state")
    empty = State((), None, {})
    old_state: State = states[old_id] if old_id is not None else empty
    new_state: State = states[new_id] if new_id is not None else empty

    # Candidates not yet read: cid -> (node id, parent); expanded: cid -> (node, parent).
    removing: dict[ContextId, tuple[ObjectId, ContextId | None]] = {}
    adding: dict[ContextId, tuple[ObjectId, ContextId | None]] = {}
    removed_all: dict[ContextId, tuple[Node, ObjectId, ContextId | None]] = {}
    added_all: dict[ContextId, tuple[Node, ObjectId, ContextId | None]] = {}
    pairs: list[tuple[ObjectId, ObjectId]] = []
    moved: list[ContextMove] = []
    changed: list[ContextChange] = []

    def compare_children(old_kids, new_kids, old_parent, new_parent) -> None:
        old_map, new_map = dict(old_kids), dict(new_kids)
        for cid, nid in old_kids:
            other = new_map.get(cid)
            if other is None:
                removing[cid] = (nid, old_parent)
            elif other != nid:
                pairs.append((nid, other))
        for cid, nid in new_kids:
            if cid not in old_map:
                adding[cid] = (nid, new_parent)

    compare_children(old_state.roots, new_state.roots, None, None)
    while pairs or removing or adding:
        if pairs:
            batch, pairs[:] = list(pairs), []
            nodes = d.read([i for pair in batch for i in pair], "node")
            for old_nid, new_nid in batch:
                old_node, new_node = nodes[old_nid], nodes[new_nid]
                change = d.node_change(old_node, new_node)
                if change is not None:
                    changed.append(change)
                compare_children(old_node.children, new_node.children, new_node.id, new_node.id)
        for cid in removing.keys() & adding.keys():
            (old_nid, old_parent), (new_nid, new_parent) = removing.pop(cid), adding.pop(cid)
            moved.append(ContextMove(cid, old_parent, new_parent))
            if old_nid != new_nid:
                pairs.append((old_nid, new_nid))
        if pairs:
            continue
        # Unmatched candidates: read their whole subtrees, which may hold moved contexts.
        for pending, expanded in ((removing, removed_all), (adding, added_all)):
            while pending:
                batch_items = list(pending.items())
                pending.clear()
                nodes = d.read([nid for _, (nid, _) in batch_items], "node")
                for cid, (nid, parent) in batch_items:
                    node = nodes[nid]
                    expanded[cid] = (node, nid, parent)
                    for child, child_nid in node.children:
                        pending[child] = (child_nid, cid)

    # Contexts seen inside both an added and a removed subtree.
    for cid in sorted(removed_all.keys() & added_all.keys()):
        old_node, old_nid, old_parent = removed_all.pop(cid)
        new_node, new_nid, new_parent = added_all.pop(cid)
        if old_parent != new_parent:
            moved.append(ContextMove(cid, old_parent, new_parent))
        if old_nid != new_nid:
            change = d.node_change(old_node, new_node)
            if change is not None:
                changed.append(change)

    def presence(entries) -> tuple[ContextPresence, ...]:
        return tuple(
            ContextPresence(cid, parent, node.fields.get("status"), _exchange_total(node))
            for cid, (node, _, parent) in sorted(entries.items())
        )

    focus = None
    if old_state.active_context_id != new_state.active_context_id:
        focus = (old_state.active_context_id, new_state.active_context_id)
    return TreeDiff(
        added=presence(added_all),
        removed=presence(removed_all),
        moved=tuple(sorted(moved, key=lambda m: m.id)),
        changed=tuple(sorted(changed, key=lambda c: c.id)),
        focus=focus,
        extra=diff_fields(old_state.extra, new_state.extra),
        reads=d.reads,
    )

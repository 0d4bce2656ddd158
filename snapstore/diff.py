"""Differences between two conversation states, at a cost proportional to the change.

Two states are compared from their roots down. Where a child's node id is
equal on both sides the whole subtree is equal and is never read. A wide
node names its children through pages: two versions of it are compared
page id by page id, and only pages that differ are read, so a change under a
context with thousands of children reads one page per level, not the list. A context
found on one side only is a candidate for removal or addition; when the same
id turns up on the other side under another parent, it was moved. Exchange
lists are compared from their newest chunk back to the first chunk the two
lists share, so an append of k exchanges costs k reads whatever the history.
Every difference in a context's content is reported: exchanges that moved
within their list count as changed, and an exchange list that is a list on
one side only (absent, null or another value on the other; ``[]`` included)
is also a field change with both values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .objects import Chunk, ContextId, MemoryRef, Node, ObjectId, Page, State, json_equal
from .tree import ReadMany, full_fields, resolve_children

Pairs = tuple[tuple[ContextId, ObjectId], ...]

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
            old, new = ("(none)" if cid is None else cid for cid in self.focus)  # no focus, not "None"
            parts.append(f"focus {old} -> {new}")
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
        if not json_equal(a, b):
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

    def children(self, nodes: list[Node]) -> list[Pairs]:
        """Every child of each node (reading the pages of paged ones)."""
        return resolve_children(self.read, nodes)

    def children_delta(self, versions: list[tuple[Node, Node]]) -> list[tuple[Pairs, Pairs, bool]]:
        """For each (old, new) version of a node: its children minus those equal on both sides,
        and whether both hold the same context ids in the same order (False: changed, or not known).

        Two page lists of the same length are compared place by place: a
        page at the same place on both sides holds the same children and is
        left out unread; pages that differ at a place are read and compared
        in turn. Where the lists do not line up, a page named on both sides
        is left out all the same (a context being in a tree once, none of its
        children can be anywhere else on either side) and the others are
        read whole. Pages are read level by level, all nodes at once.
        """
        out: list[tuple[list, list]] = []
        same: list[bool] = []
        # Per node: page pairs at the same place, and pages that do not line up.
        aligned: list[list[tuple[ObjectId, ObjectId]]] = []
        loose: list[tuple[list[ObjectId], list[ObjectId]]] = []
        for old, new in versions:
            out.append((list(old.children), list(new.children)))
            if old.pages and new.pages and len(old.pages) == len(new.pages):
                same.append(True)
                aligned.append([(a, b) for a, b in zip(old.pages, new.pages) if a != b])
                loose.append(([], []))
            else:
                same.append(not old.pages and not new.pages
                            and [c for c, _ in old.children] == [c for c, _ in new.children])
                aligned.append([])
                loose.append((list(old.pages), list(new.pages)))
        while any(aligned) or any(a or b for a, b in loose):
            for i, (a, b) in enumerate(loose):
                if a and b:
                    common = set(a).intersection(b)
                    if common:
                        loose[i] = ([p for p in a if p not in common], [p for p in b if p not in common])
            wanted = [pid for pairs in aligned for pair in pairs for pid in pair]
            wanted.extend(pid for a, b in loose for pid in a + b)
            pages = self.read(wanted, "page") if wanted else {}
            for i in range(len(versions)):
                old_side, new_side = out[i]
                next_aligned: list[tuple[ObjectId, ObjectId]] = []
                next_a: list[ObjectId] = []
                next_b: list[ObjectId] = []
                for a, b in aligned[i]:
                    pa, pb = pages[a], pages[b]
                    if pa.pages and pb.pages and len(pa.pages) == len(pb.pages):
                        next_aligned.extend((x, y) for x, y in zip(pa.pages, pb.pages) if x != y)
                        continue
                    if not pa.pages and not pb.pages:
                        if [c for c, _ in pa.children] != [c for c, _ in pb.children]:
                            same[i] = False
                    else:
                        same[i] = False
                    next_a.extend(pa.pages)
                    next_b.extend(pb.pages)
                    old_side.extend(pa.children)
                    new_side.extend(pb.children)
                for ids, side, nexts in ((loose[i][0], old_side, next_a), (loose[i][1], new_side, next_b)):
                    for pid in ids:
                        page: Page = pages[pid]
                        nexts.extend(page.pages)
                        side.extend(page.children)
                aligned[i] = next_aligned
                loose[i] = (next_a, next_b)
        return [(tuple(a), tuple(b), s) for (a, b), s in zip(out, same)]

    def exchanges(self, old: MemoryRef, new: MemoryRef) -> ExchangeChanges:
        return self.exchange_tails(old, new)[0]

    def exchange_tails(self, old: MemoryRef, new: MemoryRef) -> tuple[ExchangeChanges, list[Any], list[Any]]:
        """How a list changed, and the items of each side after the part both share, in order.

        The walk reads back from both heads to the first chunk the lists share,
        so against an empty list the tail is the whole other list. Exchanges
        are matched by id (the n-th occurrence of an id with the n-th); a
        matched exchange whose content differs, or that moved relative to the
        others (not in a longest run of matched exchanges kept in order), is
        changed.
        """
        if old == new:
            return ExchangeChanges(), [], []
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
        old_seq = [(_exchange_key(i, item), item) for i, item in reversed(old_tail)]
        new_seq = [(_exchange_key(i, item), item) for i, item in reversed(new_tail)]
        # An exchange id may occur more than once in a list: the n-th occurrence
        # on one side is matched with the n-th on the other.
        old_at: dict[str, list[int]] = {}
        new_count: dict[str, int] = {}
        for position, (key, _) in enumerate(old_seq):
            old_at.setdefault(key, []).append(position)
        for key, _ in new_seq:
            new_count[key] = new_count.get(key, 0) + 1
        # (old position, new position) of each matched exchange
        matched: list[tuple[int, int]] = []
        added: list[str] = []
        seen: dict[str, int] = {}
        for position, (key, _) in enumerate(new_seq):
            n = seen[key] = seen.get(key, 0) + 1
            olds = old_at.get(key, ())
            if n > len(olds):
                added.append(key)
            else:
                matched.append((olds[n - 1], position))
        in_order = _longest_increasing([new_pos for _, new_pos in sorted(matched)])
        changed = [new_seq[new_pos][0] for old_pos, new_pos in matched
                   if new_pos not in in_order or not json_equal(old_seq[old_pos][1], new_seq[new_pos][1])]
        removed: list[str] = []
        seen = {}
        for key, _ in old_seq:
            n = seen[key] = seen.get(key, 0) + 1
            if n > new_count.get(key, 0):
                removed.append(key)
        changes = ExchangeChanges(added=tuple(added), removed=tuple(removed), changed=tuple(changed))
        return changes, [item for _, item in old_seq], [item for _, item in new_seq]

    def node_change(self, old: Node, new: Node, same_children: bool = False) -> ContextChange | None:
        """What changed in a context; ``same_children``: both versions have the same children ids in order."""
        if (old.listed or new.listed) and not (old.listed and new.listed and same_children):
            # A listed node's child_sidebar_ids is its children's ids: read them.
            old_kids, new_kids = self.children([old, new])
            fields = diff_fields(full_fields(old, old_kids), full_fields(new, new_kids))
        else:
            fields = diff_fields(old.fields, new.fields)
        memory: dict[str, ExchangeChanges] = {}
        for name in sorted(old.memory.keys() | new.memory.keys()):
            old_ref, new_ref = old.memory.get(name), new.memory.get(name)
            changes, old_items, new_items = self.exchange_tails(old_ref or _EMPTY_LIST, new_ref or _EMPTY_LIST)
            if changes:
                memory[name] = changes
            if (old_ref is None) != (new_ref is None):
                # A list on one side only (on the other: absent, or a value kept in the fields). The
                # walk against nothing read the whole list: both values, as the context has them.
                change: dict[str, Any] = {}
                if old_ref is not None:
                    change["old"] = old_items
                elif name in old.fields:
                    change["old"] = old.fields[name]
                if new_ref is not None:
                    change["new"] = new_items
                elif name in new.fields:
                    change["new"] = new.fields[name]
                fields[name] = change
        fields = dict(sorted(fields.items()))
        if not fields and not memory:
            return None
        return ContextChange(id=new.id, fields=fields, memory=memory)


_EMPTY_LIST = MemoryRef(None, 0)


def _longest_increasing(values: list[int]) -> set[int]:
    """The members of one longest strictly increasing subsequence of ``values`` (distinct ints)."""
    tails: list[int] = []  # tails[k]: index in values of the smallest tail of a run of length k + 1
    before: list[int] = [-1] * len(values)
    for i, value in enumerate(values):
        low, high = 0, len(tails)
        while low < high:
            mid = (low + high) // 2
            if values[tails[mid]] < value:
                low = mid + 1
            else:
                high = mid
        before[i] = tails[low - 1] if low else -1
        if low == len(tails):
            tails.append(i)
        else:
            tails[low] = i
    out: set[int] = set()
    i = tails[-1] if tails else -1
    while i >= 0:
        out.add(values[i])
        i = before[i]
    return out


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
            deltas = d.children_delta([(nodes[old_nid], nodes[new_nid]) for old_nid, new_nid in batch])
            for (old_nid, new_nid), (old_kids, new_kids, same) in zip(batch, deltas):
                old_node, new_node = nodes[old_nid], nodes[new_nid]
                change = d.node_change(old_node, new_node, same)
                if change is not None:
                    changed.append(change)
                compare_children(old_kids, new_kids, new_node.id, new_node.id)
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
                all_kids = d.children([nodes[nid] for _, (nid, _) in batch_items])
                for (cid, (nid, parent)), kids in zip(batch_items, all_kids):
                    node = nodes[nid]
                    expanded[cid] = (node, nid, parent)
                    for child, child_nid in kids:
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

"""Conversation trees in memory, and their translation to and from objects.

A :class:`Tree` is one committed state: a record per context holding a
private copy of its fields, its exchange lists as :class:`Chain` s and its
node id. A :class:`Workspace` takes a base tree and changes (whole contexts,
appended exchanges, removals, focus), and :meth:`Workspace.build` turns them
into a new tree plus only the objects that did not exist before: the changed
nodes, their ancestors, new chunks and the state object. The base tree is
never modified, so a failed commit leaves it exactly as it was.

The shape of the tree comes from the contexts themselves: a context's parent
is its ``parent_context_id`` when that context is in the state, otherwise it
is a root; a parent's children are ordered as its ``child_sidebar_ids`` lists
them, any others after by id, and roots by id. Both fields are kept
verbatim, so a state round-trips exactly even where they disagree, and the
same state gives the same ids whatever history led to it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import CorruptObject, InvalidInput
from .objects import (
    AnyObject,
    Chunk,
    ContextId,
    MemoryRef,
    Node,
    ObjectId,
    State,
    canonical_json,
    encode,
)
from .refs import validate_context_id

ID_FIELD = "sidebar_id"
PARENT_FIELD = "parent_context_id"
CHILDREN_FIELD = "child_sidebar_ids"
MEMORY_FIELDS = ("local_memory", "inherited_memory")

# (kind, canonical body) of objects made by a build, by id.
NewObjects = dict[ObjectId, tuple[str, bytes]]
# Reads typed objects by id, verifying them: (ids, kind) -> {id: object}.
ReadMany = Callable[[list[ObjectId], str], Mapping[ObjectId, AnyObject]]


def json_copy(value: Any) -> Any:
    """A deep copy of a plain JSON value (faster than ``copy.deepcopy``)."""
    return json.loads(json.dumps(value))


class Chain:
    """An exchange list: its items and the id of the chunk ending at each.

    Versions share their lists: appending to the newest version extends the
    lists in place, and an older version keeps seeing only its first ``n``.
    """

    __slots__ = ("_items", "_links", "n")

    def __init__(self, items: list[Any] | None = None, links: list[ObjectId] | None = None) -> None:
        self._items = items if items is not None else []
        self._links = links if links is not None else []
        self.n = len(self._items)

    @property
    def head(self) -> ObjectId | None:
        return self._links[self.n - 1] if self.n else None

    @property
    def items(self) -> list[Any]:
        """The items (the chain's own objects: copy before handing them out)."""
        return self._items if len(self._items) == self.n else self._items[: self.n]

    def ref(self) -> MemoryRef:
        return MemoryRef(self.head, self.n)

    def _prefix(self, length: int) -> Chain:
        chain = Chain.__new__(Chain)
        chain._items, chain._links, chain.n = self._items, self._links, length
        return chain

    def append(self, item: Any, new_objects: NewObjects) -> Chain:
        """A chain one item longer; the new chunk goes into ``new_objects``."""
        kind, body, oid = encode(Chunk(prev=self.head, index=self.n, item=item))
        new_objects[oid] = (kind, body)
        own_copy = json.loads(body)["item"]
        if len(self._items) == self.n:
            items, links = self._items, self._links
        else:
            items, links = self._items[: self.n], self._links[: self.n]
        items.append(own_copy)
        links.append(oid)
        chain = self._prefix(self.n + 1)
        chain._items, chain._links = items, links
        return chain

    def sync(self, new_items: list[Any], new_objects: NewObjects) -> Chain:
        """The chain holding exactly ``new_items``, sharing the longest equal prefix."""
        n = self.n
        mine = self.items
        if len(new_items) >= n and new_items[:n] == mine:
            keep = n
        else:
            keep = 0
            limit = min(n, len(new_items))
            while keep < limit and new_items[keep] == mine[keep]:
                keep += 1
        chain = self._prefix(keep) if keep < n else self
        for item in new_items[keep:]:
            chain = chain.append(item, new_objects)
        return chain


@dataclass(frozen=True)
class ContextRecord:
    """One context of a tree, as committed."""

    id: ContextId
    fields: dict[str, Any]
    memory: dict[str, Chain]
    node_id: ObjectId
    parent: ContextId | None
    children: tuple[ContextId, ...]

    def exchange_count(self) -> int:
        chain = self.memory.get("local_memory")
        return chain.n if chain is not None else 0

    def materialize(self) -> dict[str, Any]:
        """The context as a plain dict, exactly the keys committed (a fresh copy)."""
        context: dict[str, Any] = {ID_FIELD: self.id}
        context.update(json_copy(self.fields))
        for name, chain in self.memory.items():
            context[name] = json_copy(chain.items)
        return context


@dataclass(frozen=True)
class Tree:
    """One committed conversation state."""

    records: dict[ContextId, ContextRecord]
    roots: tuple[ContextId, ...]
    active_context_id: str | None
    extra: dict[str, Any]
    state_id: ObjectId | None

    @classmethod
    def empty(cls) -> Tree:
        return cls({}, (), None, {}, None)

    def preorder(self) -> list[ContextRecord]:
        """Records root by root, each parent before its children, children in order."""
        out: list[ContextRecord] = []
        stack = [self.records[r] for r in reversed(self.roots)]
        while stack:
            record = stack.pop()
            out.append(record)
            stack.extend(self.records[c] for c in reversed(record.children))
        return out

    def materialize(self) -> list[dict[str, Any]]:
        return [record.materialize() for record in self.preorder()]

    def exchange_count(self) -> int:
        return sum(r.exchange_count() for r in self.records.values())


def split_context(context: Mapping[str, Any]) -> tuple[ContextId, dict[str, Any], dict[str, list]]:
    """``(id, fields, exchange lists)`` of a client context dict; validates it."""
    if not isinstance(context, Mapping):
        raise InvalidInput(f"a context must be a JSON object, not {type(context).__name__}")
    if ID_FIELD not in context:
        raise InvalidInput(f"a context has no {ID_FIELD!r}")
    cid = ContextId(validate_context_id(context[ID_FIELD]))
    fields: dict[str, Any] = {}
    memory: dict[str, list] = {}
    for key, value in context.items():
        if not isinstance(key, str):
            raise InvalidInput(f"context {cid}: field name {key!r} is not a string")
        if key == ID_FIELD:
            continue
        if key in MEMORY_FIELDS and isinstance(value, list):
            memory[key] = value
        else:
            fields[key] = value
    parent = fields.get(PARENT_FIELD)
    if parent is not None and not isinstance(parent, str):
        raise InvalidInput(f"context {cid}: {PARENT_FIELD} must be a string or null")
    children = fields.get(CHILDREN_FIELD)
    if children is not None and not (
        isinstance(children, list) and all(isinstance(c, str) for c in children)
    ):
        raise InvalidInput(f"context {cid}: {CHILDREN_FIELD} must be a list of strings")
    return cid, fields, memory


class Workspace:
    """Changes staged on top of a base tree; :meth:`build` makes the new tree."""

    def __init__(self, base: Tree | None = None) -> None:
        self.base = base or Tree.empty()
        self._records = self.base.records
        self._fields: dict[ContextId, dict[str, Any]] = {}
        self._memory: dict[ContextId, dict[str, Chain]] = {}
        self._removed: set[ContextId] = set()
        self.active_context_id = self.base.active_context_id
        self.extra = self.base.extra
        self.objects: NewObjects = {}
        # Node ids encoded by the last build, by context: what the change touched.
        self.changed_nodes: dict[ContextId, ObjectId] = {}

    def __contains__(self, context_id: str) -> bool:
        return self._current(ContextId(context_id)) is not None

    def context_ids(self) -> list[ContextId]:
        ids = [c for c in self._records if c not in self._removed]
        ids.extend(c for c in self._fields if c not in self._records)
        return ids

    def _current(self, cid: ContextId) -> tuple[dict[str, Any], dict[str, Chain]] | None:
        if cid in self._fields:
            return self._fields[cid], self._memory[cid]
        record = self._records.get(cid)
        if record is None or cid in self._removed:
            return None
        return record.fields, record.memory

    def put_context(self, context: Mapping[str, Any]) -> bool:
        """Stage a whole context (new or replacing); returns whether anything changed."""
        cid, fields, lists = split_context(context)
        current = self._current(cid)
        old_fields, old_memory = current if current is not None else ({}, {})
        if current is None or fields != old_fields:
            fields = json.loads(canonical_json(fields))
            changed = True
        else:
            fields = old_fields
            changed = False
        memory: dict[str, Chain] = {}
        for name in MEMORY_FIELDS:
            if name in lists:
                chain = old_memory.get(name, Chain()).sync(lists[name], self.objects)
                memory[name] = chain
        if set(memory) != set(old_memory) or any(
            memory[n].head != old_memory[n].head or memory[n].n != old_memory[n].n for n in memory
        ):
            changed = True
        if current is None:
            changed = True
        if changed:
            self._fields[cid] = fields
            self._memory[cid] = memory
            self._removed.discard(cid)
        return changed

    def record(self, context_id: str) -> ContextRecord | None:
        """A context as staged, as a record (its node id and place are the base's until built)."""
        current = self._current(ContextId(context_id))
        if current is None:
            return None
        old = self.base.records.get(ContextId(context_id))
        return ContextRecord(ContextId(context_id), current[0], dict(current[1]),
                             old.node_id if old is not None else ObjectId(""),
                             old.parent if old is not None else None, old.children if old is not None else ())

    def context(self, context_id: str) -> dict[str, Any] | None:
        """A staged or committed context as a fresh plain dict (copies its exchanges)."""
        current = self._current(ContextId(context_id))
        if current is None:
            return None
        fields, chains = current
        out: dict[str, Any] = {ID_FIELD: context_id}
        out.update(json_copy(fields))
        for name, chain in chains.items():
            out[name] = json_copy(chain.items)
        return out

    def fields(self, context_id: str) -> dict[str, Any] | None:
        """A context's fields without its exchange lists (a fresh copy), or None."""
        current = self._current(ContextId(context_id))
        return None if current is None else json_copy(current[0])

    def exchange_count(self, context_id: str, memory: str = "local_memory") -> int:
        current = self._current(ContextId(context_id))
        if current is None:
            raise InvalidInput(f"no context {context_id!r}")
        chain = current[1].get(memory)
        return chain.n if chain is not None else 0

    def last_exchanges(self, context_id: str, n: int, memory: str = "local_memory") -> list[Any]:
        """Copies of the newest ``n`` items of an exchange list, oldest first."""
        current = self._current(ContextId(context_id))
        if current is None:
            raise InvalidInput(f"no context {context_id!r}")
        chain = current[1].get(memory)
        if chain is None or n <= 0:
            return []
        return json_copy(chain.items[-n:])

    def update_fields(self, context_id: str, changes: Mapping[str, Any]) -> None:
        """Stage new values for some fields of a context, leaving its exchanges alone."""
        cid = ContextId(context_id)
        current = self._current(cid)
        if current is None:
            raise InvalidInput(f"no context {context_id!r}")
        fields, chains = current
        if ID_FIELD in changes or any(k in chains or k in MEMORY_FIELDS for k in changes):
            raise InvalidInput("update_fields cannot change the id or an exchange list")
        merged = dict(fields)
        merged.update(json.loads(canonical_json(dict(changes))))
        if merged != fields:
            split_context({ID_FIELD: cid, **merged})
            self._fields[cid] = merged
            self._memory[cid] = chains

    def put_record(self, record: ContextRecord, changed: bool = False) -> None:
        """Stage a context from another tree's record (its chunks must be stored or staged)."""
        current = self._current(record.id)
        if not changed and current is not None and current[0] == record.fields and {
            n: (c.head, c.n) for n, c in current[1].items()
        } == {n: (c.head, c.n) for n, c in record.memory.items()}:
            return
        self._fields[record.id] = record.fields
        self._memory[record.id] = dict(record.memory)
        self._removed.discard(record.id)

    def append_exchange(self, context_id: str, item: Any, memory: str = "local_memory") -> None:
        """Stage one exchange appended to a context's list, in constant time."""
        cid = ContextId(context_id)
        current = self._current(cid)
        if current is None:
            raise InvalidInput(f"no context {context_id!r} to append to")
        if memory not in MEMORY_FIELDS:
            raise InvalidInput(f"unknown exchange list {memory!r}")
        fields, chains = current
        chains = dict(chains)
        chains[memory] = chains.get(memory, Chain()).append(item, self.objects)
        self._fields[cid] = fields
        self._memory[cid] = chains

    def remove_context(self, context_id: str) -> bool:
        """Stage the removal of one context (its children become roots unless moved)."""
        cid = ContextId(context_id)
        if self._current(cid) is None:
            return False
        self._fields.pop(cid, None)
        self._memory.pop(cid, None)
        if cid in self._records:
            self._removed.add(cid)
        return True

    def set_active(self, context_id: str | None) -> None:
        if context_id is not None and not isinstance(context_id, str):
            raise InvalidInput("active_context_id must be a string or null")
        self.active_context_id = context_id

    def set_extra(self, extra: Mapping[str, Any]) -> None:
        self.extra = json.loads(canonical_json(dict(extra)))

    # -- building ----------------------------------------------------------

    def build(self) -> Tree:
        """The new tree; new objects are left in :attr:`objects`.

        Work is proportional to the change: only touched contexts, parents
        whose children changed, and their ancestors are encoded again.
        """
        base = self.base
        touched = set(self._fields) | self._removed
        if (
            base.state_id is not None
            and not touched
            and self.active_context_id == base.active_context_id
            and self.extra == base.extra
        ):
            return base
        records = dict(base.records)
        for cid in self._removed:
            del records[cid]
        new_ids = [c for c in self._fields if c not in base.records]
        alive = records.keys() | self._fields.keys()

        def fields_of(c: ContextId) -> dict[str, Any]:
            return self._fields[c] if c in self._fields else records[c].fields

        # Contexts whose parent may have changed: touched ones, children of
        # removed ones, and roots that name a newly added context as parent.
        restructure = set(touched)
        children_changed: set[ContextId] = set()
        for cid in self._removed:
            old = base.records[cid]
            restructure.update(c for c in old.children if c in alive)
            if old.parent is not None and old.parent in alive:
                children_changed.add(old.parent)
        if new_ids:
            added = set(new_ids)
            restructure.update(
                r for r in base.roots if r in alive and fields_of(r).get(PARENT_FIELD) in added
            )
        parent_of: dict[ContextId, ContextId | None] = {}
        for cid in restructure & alive:
            declared = fields_of(cid).get(PARENT_FIELD)
            new_parent = ContextId(declared) if declared in alive and declared != cid else None
            parent_of[cid] = new_parent
            old = base.records.get(cid)
            if old is None or new_parent != old.parent:
                if old is not None and old.parent is not None and old.parent in alive:
                    children_changed.add(old.parent)
                if new_parent is not None:
                    children_changed.add(new_parent)
            if cid in self._fields and (
                old is None
                or self._fields[cid].get(CHILDREN_FIELD) != old.fields.get(CHILDREN_FIELD)
            ):
                children_changed.add(cid)

        def parent(c: ContextId) -> ContextId | None:
            return parent_of[c] if c in parent_of else records[c].parent

        for cid, new_parent in parent_of.items():
            seen = {cid}
            p = new_parent
            while p is not None:
                if p in seen:
                    raise InvalidInput(f"{PARENT_FIELD} forms a cycle through context {cid!r}")
                seen.add(p)
                p = parent(p)

        # Children lists of parents whose members or declared order changed:
        # declared children first, in declared order, then the others by id,
        # so the same state always gives the same tree whatever its history.
        children_of: dict[ContextId, tuple[ContextId, ...]] = {}
        arrived: dict[ContextId, list[ContextId]] = {}
        for c, p in parent_of.items():
            if p is not None:
                arrived.setdefault(p, []).append(c)
        for pid in children_changed:
            old_kids = records[pid].children if pid in records else ()
            members = {c for c in old_kids if c in alive and parent(c) == pid}
            members.update(arrived.get(pid, ()))
            listed = fields_of(pid).get(CHILDREN_FIELD)
            ordered = [ContextId(c) for c in dict.fromkeys(listed or ()) if c in members]
            ordered.extend(sorted(members.difference(ordered)))
            children_of[pid] = tuple(ordered)

        # Nodes to encode: touched, reshaped and moved contexts and all their ancestors.
        dirty: set[ContextId] = set()
        for cid in (touched | children_changed | parent_of.keys()) & alive:
            c: ContextId | None = cid
            while c is not None and c not in dirty:
                dirty.add(c)
                c = parent(c)

        depth: dict[ContextId, int] = {}

        def depth_of(c: ContextId) -> int:
            path = []
            node: ContextId | None = c
            while node is not None and node not in depth:
                path.append(node)
                node = parent(node)
            d = depth[node] if node is not None else -1
            for n in reversed(path):
                d += 1
                depth[n] = d
            return depth[c]

        for cid in sorted(dirty, key=depth_of, reverse=True):
            if cid in self._fields:
                fields, memory = self._fields[cid], self._memory[cid]
            else:
                fields, memory = records[cid].fields, records[cid].memory
            kids = children_of[cid] if cid in children_of else records[cid].children
            node = Node(
                id=cid,
                fields=fields,
                children=tuple((k, records[k].node_id) for k in kids),
                memory={name: chain.ref() for name, chain in memory.items()},
            )
            kind, body, node_id = encode(node)
            self.objects[node_id] = (kind, body)
            self.changed_nodes[cid] = node_id
            records[cid] = ContextRecord(cid, fields, memory, node_id, parent(cid), kids)

        roots = {r for r in base.roots if r in records and records[r].parent is None}
        roots.update(c for c, p in parent_of.items() if p is None)
        roots = sorted(roots)
        state = State(
            roots=tuple((r, records[r].node_id) for r in roots),
            active_context_id=self.active_context_id,
            extra=self.extra,
        )
        kind, body, state_id = encode(state)
        self.objects[state_id] = (kind, body)
        return Tree(records, tuple(roots), self.active_context_id, self.extra, state_id)


def tree_from_contexts(
    contexts: Iterable[Mapping[str, Any]],
    active_context_id: str | None,
    extra: Mapping[str, Any] | None = None,
    base: Tree | None = None,
) -> tuple[Tree, NewObjects]:
    """Build the tree of a whole materialized state on top of ``base``."""
    workspace = Workspace(base)
    seen: set[str] = set()
    for context in contexts:
        cid, _, _ = split_context(context)
        if cid in seen:
            raise InvalidInput(f"context {cid!r} appears twice")
        seen.add(cid)
        workspace.put_context(context)
    for cid in list(workspace.context_ids()):
        if cid not in seen:
            workspace.remove_context(cid)
    workspace.set_active(active_context_id)
    workspace.set_extra(extra or {})
    tree = workspace.build()
    return tree, workspace.objects


def load_tree(read_many: ReadMany, state_id: ObjectId, state: State, base: Tree | None = None) -> Tree:
    """Read a whole tree: nodes level by level, then every exchange list.

    With ``base`` (an already loaded tree, typically an older state of the
    same conversation), a subtree whose node id is unchanged is taken from
    it without a read, and an exchange list that only grew is read back only
    to where ``base`` already has it: loading a state another writer just
    committed costs what that writer changed.
    """
    known = base.records if base is not None else {}
    records: dict[ContextId, ContextRecord] = {}
    nodes: dict[ContextId, Node] = {}
    parents: dict[ContextId, ContextId | None] = {}
    node_ids: dict[ContextId, ObjectId] = {}
    frontier: list[tuple[ContextId, ObjectId, ContextId | None]] = [
        (cid, nid, None) for cid, nid in state.roots
    ]
    while frontier:
        to_read = []
        for cid, nid, parent in frontier:
            old = known.get(cid)
            if old is not None and old.node_id == nid:
                _reuse_subtree(known, cid, parent, records)
            else:
                to_read.append((cid, nid, parent))
        found = read_many([nid for _, nid, _ in to_read], "node") if to_read else {}
        next_frontier = []
        for cid, nid, parent in to_read:
            node = found[nid]
            assert isinstance(node, Node)
            if node.id != cid:
                raise CorruptObject(nid, f"node holds context {node.id!r}, its parent names {cid!r}")
            if cid in nodes or cid in records:
                raise CorruptObject(nid, f"context {cid!r} appears twice in the tree")
            nodes[cid] = node
            parents[cid] = parent
            node_ids[cid] = nid
            next_frontier.extend((c, n, cid) for c, n in node.children)
        frontier = next_frontier

    chains = _load_chains(read_many, nodes, known)
    for cid, node in nodes.items():
        records[cid] = ContextRecord(
            id=cid,
            fields=node.fields,
            memory={name: chains[(cid, name)] for name in node.memory},
            node_id=node_ids[cid],
            parent=parents[cid],
            children=tuple(c for c, _ in node.children),
        )
    roots = tuple(cid for cid, _ in state.roots)
    return Tree(records, roots, state.active_context_id, state.extra, state_id)


def _reuse_subtree(known: Mapping[ContextId, ContextRecord], cid: ContextId, parent: ContextId | None,
                   records: dict[ContextId, ContextRecord]) -> None:
    """Copy an unchanged subtree's records from an older tree (only the top one may have moved)."""
    stack: list[tuple[ContextId, ContextId | None]] = [(cid, parent)]
    while stack:
        c, p = stack.pop()
        record = known[c]
        if record.parent != p:
            record = ContextRecord(record.id, record.fields, record.memory, record.node_id, p, record.children)
        records[c] = record
        stack.extend((k, c) for k in record.children)


def _load_chains(
    read_many: ReadMany, nodes: Mapping[ContextId, Node], known: Mapping[ContextId, ContextRecord]
) -> dict[tuple[ContextId, str], Chain]:
    """Walk every exchange list back from its head, all lists in step.

    A walk stops early where it meets a chunk the known (older) chain holds
    at the same position: everything before it is shared.
    """
    pending: dict[tuple[ContextId, str], tuple[ObjectId, int]] = {}
    items: dict[tuple[ContextId, str], list[Any]] = {}
    links: dict[tuple[ContextId, str], list[ObjectId]] = {}
    shared: dict[tuple[ContextId, str], Chain] = {}
    chains: dict[tuple[ContextId, str], Chain] = {}
    for cid, node in nodes.items():
        old_record = known.get(cid)
        for name, ref in node.memory.items():
            key = (cid, name)
            old = old_record.memory.get(name) if old_record is not None else None
            if old is not None and old.head == ref.head and old.n == ref.count:
                chains[key] = old
                continue
            items[key], links[key] = [], []
            if old is not None:
                shared[key] = old
            if ref.head is not None and ref.count > 0:
                pending[key] = (ref.head, ref.count - 1)
            elif ref.head is not None or ref.count:
                raise CorruptObject(str(ref.head), f"context {cid}: {name} head and count disagree")
    prefix: dict[tuple[ContextId, str], Chain] = {}
    while pending:
        next_pending = {}
        to_read = {}
        for key, (oid, index) in pending.items():
            old = shared.get(key)
            if old is not None and index < old.n and old._links[index] == oid:
                prefix[key] = old._prefix(index + 1)
            else:
                to_read[key] = (oid, index)
        found = read_many(list({oid for oid, _ in to_read.values()}), "chunk") if to_read else {}
        for key, (oid, index) in to_read.items():
            chunk = found[oid]
            assert isinstance(chunk, Chunk)
            if chunk.index != index:
                raise CorruptObject(oid, f"chunk has index {chunk.index}, expected {index}")
            items[key].append(chunk.item)
            links[key].append(oid)
            if index == 0:
                if chunk.prev is not None:
                    raise CorruptObject(oid, "first chunk of a list names a previous chunk")
            elif chunk.prev is None:
                raise CorruptObject(oid, f"chunk {index} of a list has no previous chunk")
            else:
                next_pending[key] = (chunk.prev, index - 1)
        pending = next_pending
    for key in items:
        items[key].reverse()
        links[key].reverse()
        start = prefix.get(key)
        if start is not None:
            chains[key] = Chain(start.items + items[key], list(start._links[: start.n]) + links[key])
        else:
            chains[key] = Chain(items[key], links[key])
    return chains

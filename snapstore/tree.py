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
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from .errors import CorruptObject, InvalidInput
from .objects import (
    MAX_NESTING,
    PAGE_SIZE,
    PAGE_THRESHOLD,
    AnyObject,
    Chunk,
    ContextId,
    MemoryRef,
    Node,
    ObjectId,
    Page,
    PageLevel,
    State,
    json_equal,
    canonical_json,
    encode,
    nesting_error,
    nests_deeper,
    page_children,
    value_too_deep,
)
from .ozolith.canonical import NotPlain, plain_copy
from .refs import validate_context_id
from .objects import hash_object, to_json

ID_FIELD = "sidebar_id"
PARENT_FIELD = "parent_context_id"
CHILDREN_FIELD = "child_sidebar_ids"
MEMORY_FIELDS = ("local_memory", "inherited_memory")

# (kind, canonical body) of objects made by a build, by id.
NewObjects = dict[ObjectId, tuple[str, bytes]]
# Reads typed objects by id, verifying them: (ids, kind) -> {id: object}.
ReadMany = Callable[[list[ObjectId], str], Mapping[ObjectId, AnyObject]]
K = TypeVar("K")  # what a caller keys states by (context_nodes)


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
        try:
            kind, body, oid = encode(Chunk(prev=self.head, index=self.n, item=item))
        except InvalidInput:
            if value_too_deep(item):
                raise nesting_error("an exchange") from None
            raise
        new_objects[oid] = (kind, body)
        try:
            own_copy = plain_copy(item, sort_keys=True)  # what json.loads(body)["item"] gives, without parsing
        except NotPlain:
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
        if len(new_items) >= n and json_equal(new_items[:n], mine):
            keep = n
        else:
            keep = 0
            limit = min(n, len(new_items))
            while keep < limit and json_equal(new_items[keep], mine[keep]):
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
    # The node's child pages, leaf level first (objects.page_children), when
    # it names its children through pages and they are known: the next build
    # re-encodes only the pages that changed, the next load reads only those.
    pages: tuple[PageLevel, ...] | None = None

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
    fields: dict[str, Any] = dict(context)
    del fields[ID_FIELD]
    if not set(map(type, fields)) <= {str}:  # checked in C first, one by one only if needed
        for key in fields:
            if not isinstance(key, str):
                raise InvalidInput(f"context {cid}: field name {key!r} is not a string")
    memory: dict[str, list] = {}
    for key in MEMORY_FIELDS:
        if isinstance(fields.get(key), list):
            memory[key] = fields.pop(key)
    _check_links(cid, fields)
    return cid, fields, memory


# Nesting (objects.MAX_NESTING) is checked where values enter a workspace: put_context and update_fields
# for fields, Chain.append (through encode) for exchanges, set_extra; records from stored trees are within
# it already. Building nodes from those fields does not check again.
def _deep_key(values: Mapping[str, Any]) -> str | None:
    """The first key whose value nests deeper than :data:`~snapstore.objects.MAX_NESTING`, if any."""
    return next((k for k, v in values.items() if value_too_deep(v)), None)


def _deep_field(cid: ContextId, fields: Mapping[str, Any]) -> InvalidInput:
    """The error for a context with a field nested deeper than :data:`~snapstore.objects.MAX_NESTING`."""
    name = _deep_key(fields)
    return nesting_error(f"context {cid}: field {name!r}" if name is not None else f"context {cid}: a field")


def _check_links(cid: ContextId, fields: Mapping[str, Any]) -> None:
    """The parent and children fields, where present, have the types the tree needs."""
    parent = fields.get(PARENT_FIELD)
    if parent is not None and not isinstance(parent, str):
        raise InvalidInput(f"context {cid}: {PARENT_FIELD} must be a string or null")
    children = fields.get(CHILDREN_FIELD)
    if children is not None and not (
        isinstance(children, list) and all(isinstance(c, str) for c in children)
    ):
        raise InvalidInput(f"context {cid}: {CHILDREN_FIELD} must be a list of strings")


class _Bodies:
    """Canonical bodies of recently made nodes and states by id, up to a number of bytes.

    Each with the canonical bytes of the node's fields when known. Ids name
    content, so any tree may use any entry. :meth:`Workspace.build` makes a
    node whose children's node ids or fields changed from its previous body
    (see :func:`_reencoded`) instead of encoding it again.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._bytes = 0
        # An OrderedDict: evicting a plain dict's first key again and again makes each
        # next(iter(...)) step over the slots already emptied (16 µs a put here once full).
        self._bodies: OrderedDict[ObjectId, tuple[bytes, bytes | None]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, oid: ObjectId) -> tuple[bytes, bytes | None] | None:
        return self._bodies.get(oid)

    def put(self, oid: ObjectId, body: bytes, fields_json: bytes | None = None) -> None:
        with self._lock:
            if oid in self._bodies:
                return
            self._bodies[oid] = (body, fields_json)
            self._bytes += len(body) + len(fields_json or b"")
            while self._bytes > self._limit:  # the oldest first
                gone, gone_fields = self._bodies.popitem(last=False)[1]
                self._bytes -= len(gone) + len(gone_fields or b"")


_BODIES = _Bodies(16 * 1024 * 1024)
# Stands for a node's fields while the rest of it is encoded; its JSON text
# is then replaced by the fields' canonical bytes (see _encode_node).
_FIELDS_MARK = "\x00snapstore fields\x00"
_FIELDS_MARK_JSON = canonical_json(_FIELDS_MARK)


class _Either:
    """Membership in either of two mappings, without building the union of their keys."""

    __slots__ = ("a", "b")

    def __init__(self, a: Mapping[Any, Any], b: Mapping[Any, Any]) -> None:
        self.a, self.b = a, b

    def __contains__(self, key: object) -> bool:
        return key in self.a or key in self.b


# A child rebuilt below its parent: (its old node id, its new node id, its context id).
Swap = tuple[ObjectId, ObjectId, ContextId]


def _swap_ids(body: bytes, swaps: Iterable[Swap]) -> bytes | None:
    """``body`` with each old id replaced by its new one; None unless each old id occurs exactly once."""
    for old, new, _ in swaps:
        raw = old.encode("ascii")
        if body.count(raw) != 1:
            return None
        body = body.replace(raw, new.encode("ascii"))
    return body


def _reencoded(
    old: ContextRecord, swaps: Iterable[Swap], fields_json: bytes | None = None,
    lists: Iterable[tuple[bytes, bytes]] = (), paged: bool = False,
) -> tuple[bytes, bytes | None] | None:
    """``(body, fields bytes)`` of ``old``'s node with some of its parts replaced, without encoding it.

    For a node with ``old``'s children in order, whose children rebuilt
    below it have new node ids (``swaps``: old id, new id, child); with
    ``fields_json``, new fields (their canonical bytes); with ``lists``,
    exchange lists grown or cut (the old and new canonical bytes of their
    ``{"count", "head"}``). An ancestor of a change, or a context whose
    fields or lists changed. A record's node id is the id of the node its
    own fields, lists and children (with their node ids in the tree it
    belongs to) make, so each part to replace occurs in that body, and a
    part that occurs exactly once there can only be that one. None when the
    body is not cached, or a part does not occur exactly once. A node that
    names its children through pages only with ``paged``: then ``swaps``
    are of its top pages (:func:`_repaged`), not of its children.
    """
    if bool(old.pages) != paged:
        return None
    cached = _BODIES.get(old.node_id)
    if cached is None:
        return None
    body, old_fields = cached
    if fields_json is not None:
        if old_fields is None or body.count(old_fields) != 1:
            return None
        body, old_fields = body.replace(old_fields, fields_json), fields_json
    for was, now in lists:
        if body.count(was) != 1:
            return None
        body = body.replace(was, now)
    body = _swap_ids(body, swaps)
    return None if body is None else (body, old_fields)


def _repaged(
    old: ContextRecord, swaps: Iterable[Swap], out: NewObjects,
) -> tuple[tuple[ObjectId, ...], tuple[PageLevel, ...]] | None:
    """``(top page ids, levels)`` of ``old``'s pages with some children's node ids replaced.

    What :func:`~snapstore.objects.page_children` makes of the same children
    list, page for page, without going over the list: a child keeps its place,
    so its leaf page, and the page above that, are found by arithmetic, and
    one page per level is encoded per change (into ``out``). None, with nothing
    added to ``out``, if ``old``'s pages are unknown or do not hold a child
    where its place says.
    """
    levels = [list(level) for level in old.pages or ()]
    if not levels:
        return None
    # page index -> {slot: (the entry there now, its replacement)}, one level at a time
    changed: dict[int, dict[int, tuple[Any, Any]]] = {}
    for old_id, new_id, child in swaps:
        try:
            place = old.children.index(child)
        except ValueError:
            return None
        page, slot = divmod(place, PAGE_SIZE)
        changed.setdefault(page, {})[slot] = ((child, old_id), (child, new_id))
    made: NewObjects = {}
    for depth, level in enumerate(levels):
        above: dict[int, dict[int, tuple[Any, Any]]] = {}
        for index, slots in changed.items():
            run = list(level[index][1]) if index < len(level) else []
            for slot, (was, entry) in slots.items():
                if slot >= len(run) or run[slot] != was:
                    return None  # pages that do not say what their place says: page the whole list
                run[slot] = entry
            entries = tuple(run)
            kind, body, pid = encode(Page(children=entries) if depth == 0 else Page(pages=entries))
            made[pid] = (kind, body)
            up, slot = divmod(index, PAGE_SIZE)
            above.setdefault(up, {})[slot] = (level[index][0], pid)
            level[index] = (pid, entries)
        changed = above
    out.update(made)
    return tuple(pid for pid, _ in levels[-1]), tuple(tuple(level) for level in levels)


def _list_json(chain: Chain) -> bytes:
    """The canonical bytes of an exchange list's entry in a node (objects.to_json's ``memory`` values)."""
    return canonical_json({"head": chain.head, "count": chain.n})


def _encode_node(node: Node, fields_json: bytes | None) -> tuple[str, bytes, ObjectId]:
    """``encode(node)``; with ``fields_json`` (the canonical bytes of ``node.fields``) spliced in, not re-encoded."""
    if fields_json is not None and not getattr(node, "pages", None):
        value = to_json(node)
        if value.get("fields") is node.fields:
            value["fields"] = _FIELDS_MARK
            text = canonical_json(value)
            if text.count(_FIELDS_MARK_JSON) == 1:
                body = text.replace(_FIELDS_MARK_JSON, fields_json)
                return "node", body, hash_object("node", body)
    return encode(node)


def _encode_state(state: State, base: Tree) -> tuple[str, bytes, ObjectId]:
    """``encode(state)``; ``base``'s state body with root node ids swapped when only those changed."""
    cached = _BODIES.get(base.state_id) if base.state_id is not None else None
    if (
        cached is not None
        and state.extra is base.extra
        and state.active_context_id == base.active_context_id
        and tuple(r for r, _ in state.roots) == base.roots
    ):
        body = _swap_ids(cached[0], [(base.records[r].node_id, nid, r) for r, nid in state.roots
                                     if base.records[r].node_id != nid])
        if body is not None:
            return "state", body, hash_object("state", body)
    return encode(state)


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
        # Canonical bytes of staged fields, by context, with the fields they encode.
        self._fields_json: dict[ContextId, tuple[dict[str, Any], bytes]] = {}

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
        if current is None or not json_equal(fields, old_fields):
            try:
                text = canonical_json(fields)
            except InvalidInput:
                if value_too_deep(fields, MAX_NESTING + 1):
                    raise _deep_field(cid, fields) from None
                raise
            if nests_deeper(text, MAX_NESTING + 1):  # the fields object is one level
                raise _deep_field(cid, fields)
            fields = json.loads(text)  # a private copy; build splices ``text`` into the node
            self._fields_json[cid] = (fields, text)
            changed = True
        else:
            fields = old_fields
            changed = False
        memory: dict[str, Chain] = {}
        for name in MEMORY_FIELDS:
            if name in lists:
                chain = old_memory.get(name) or Chain()
                try:
                    chain = chain.sync(lists[name], self.objects)
                except InvalidInput as exc:
                    raise InvalidInput(f"context {cid}: {name}: {exc}") from None
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
        if value_too_deep(dict(changes), MAX_NESTING + 1):  # checked before copying: copies recurse
            raise _deep_field(cid, changes)
        try:
            # What the JSON round trip below gives, built directly (str keys, sorted: as loaded fields are).
            copied = plain_copy(dict(changes), sort_keys=True)
        except NotPlain:
            copied = json.loads(canonical_json(dict(changes)))
        merged = dict(fields)
        merged.update(copied)
        if not json_equal(merged, fields):
            _check_links(cid, copied)  # the other fields were checked when staged or committed
            self._fields[cid] = merged
            self._memory[cid] = chains

    def put_record(self, record: ContextRecord, changed: bool = False) -> None:
        """Stage a context from another tree's record (its chunks must be stored or staged)."""
        current = self._current(record.id)
        if not changed and current is not None and json_equal(current[0], record.fields) and {
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
        try:
            chains[memory] = chains.get(memory, Chain()).append(item, self.objects)
        except InvalidInput as exc:
            raise InvalidInput(f"context {cid}: {memory}: {exc}") from None
        self._fields[cid] = fields
        self._memory[cid] = chains

    def remove_context(self, context_id: str) -> bool:
        """Stage the removal of one context (its children become roots unless moved).

        A focus on it is cleared: a focus naming no context is no state to
        restore, and a commit refuses to set one (see ``Repository.commit``).
        """
        cid = ContextId(context_id)
        if self._current(cid) is None:
            return False
        self._fields.pop(cid, None)
        self._memory.pop(cid, None)
        if cid in self._records:
            self._removed.add(cid)
        if self.active_context_id == cid:
            self.active_context_id = None
        return True

    def set_active(self, context_id: str | None) -> None:
        if context_id is not None and not isinstance(context_id, str):
            raise InvalidInput("active_context_id must be a string or null")
        self.active_context_id = context_id

    def set_extra(self, extra: Mapping[str, Any]) -> None:
        extra = dict(extra)
        if value_too_deep(extra, MAX_NESTING + 1):  # checked before encoding: encoding recurses
            raise nesting_error(f"extra key {_deep_key(extra)!r}")
        self.extra = json.loads(canonical_json(extra))

    # -- building ----------------------------------------------------------

    def _remade(
        self, cid: ContextId, old: ContextRecord, swaps: Iterable[Swap], paged: bool = False,
    ) -> tuple[dict[str, Any], dict[str, Chain], bytes, bytes | None] | None:
        """``(fields, lists, body, fields bytes)`` of a context whose children are ``old``'s, from ``old``'s body.

        For a context not staged (an ancestor of a change), or staged with
        new fields (their canonical bytes: those :meth:`put_context` kept, or
        made here) or the same exchange lists, grown or cut; None otherwise,
        or if :func:`_reencoded` cannot.
        """
        if cid not in self._fields:
            made = _reencoded(old, swaps, paged=paged)
            return None if made is None else (old.fields, old.memory, *made)
        fields, memory = self._fields[cid], self._memory[cid]
        fields_json = None
        if fields is not old.fields:
            staged = self._fields_json.get(cid)
            if staged is not None and staged[0] is fields:
                fields_json = staged[1]
            else:
                cached = _BODIES.get(old.node_id)
                if cached is None or cached[1] is None:
                    return None  # no body, or no fields bytes in it, to splice into: encode
                fields_json = canonical_json(fields)
        if memory.keys() != old.memory.keys():
            return None
        lists = []
        for name, chain in memory.items():
            was = old.memory[name]
            if chain is not was and (chain.head != was.head or chain.n != was.n):
                lists.append((_list_json(was), _list_json(chain)))
        made = _reencoded(old, swaps, fields_json, lists, paged)
        return None if made is None else (fields, memory, *made)

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
            and json_equal(self.extra, base.extra)
        ):
            return base
        records = dict(base.records)
        for cid in self._removed:
            del records[cid]
        new_ids = [c for c in self._fields if c not in base.records]
        alive = _Either(records, self._fields)  # no O(contexts) union per build

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
        for cid in [c for c in restructure if c in alive]:
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
        for cid in touched | children_changed | parent_of.keys():
            if cid not in alive:
                continue
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

        # (old id, new id, child) of the children rebuilt below each context, for _reencoded and _repaged.
        swaps: dict[ContextId, list[Swap]] = {}
        for cid in sorted(dirty, key=depth_of, reverse=True):
            old = base.records.get(cid)
            p = parent(cid)
            made = repaged = None
            if old is not None and cid not in children_of:
                if old.pages:
                    # The same children in the same places: re-encode only the pages that hold
                    # rebuilt ones, not a pass over every child; then the node names new top pages.
                    repaged = _repaged(old, swaps.get(cid, ()), self.objects)
                    if repaged is not None:
                        top_swaps = [(a, b, cid) for a, b in zip((pid for pid, _ in old.pages[-1]), repaged[0])
                                     if a != b]
                        made = self._remade(cid, old, top_swaps, paged=True)
                else:
                    made = self._remade(cid, old, swaps.get(cid, ()))
            if made is not None:  # the usual case: the node made from its previous body, no encoding
                fields, memory, body, fields_json = made
                node_id = hash_object("node", body)
                _BODIES.put(node_id, body, fields_json)
                self.objects[node_id] = ("node", body)
                self.changed_nodes[cid] = node_id
                records[cid] = ContextRecord(cid, fields, memory, node_id, p, old.children,  # type: ignore[union-attr]
                                             repaged[1] if repaged is not None else None)
                if p is not None and old.parent == p:  # type: ignore[union-attr]
                    swaps.setdefault(p, []).append((old.node_id, node_id, cid))  # type: ignore[union-attr]
                continue
            if cid in self._fields:
                fields, memory = self._fields[cid], self._memory[cid]
            else:
                fields, memory = records[cid].fields, records[cid].memory
            kids = children_of[cid] if cid in children_of else records[cid].children
            levels = None
            if repaged is not None or len(kids) > PAGE_THRESHOLD:
                if repaged is not None:
                    top, levels = repaged
                else:
                    pairs = tuple((k, records[k].node_id) for k in kids)
                    top, levels = page_children(pairs, old.pages if old is not None else None, self.objects)
                # A context that lists exactly its children leaves that list to the pages.
                listed = fields.get(CHILDREN_FIELD) == list(kids)
                node = Node(id=cid, fields={k: v for k, v in fields.items() if k != CHILDREN_FIELD} if listed else fields,
                            memory={name: chain.ref() for name, chain in memory.items()}, pages=top, listed=listed)
            else:
                node = Node(
                    id=cid,
                    fields=fields,
                    children=tuple((k, records[k].node_id) for k in kids),
                    memory={name: chain.ref() for name, chain in memory.items()},
                )
            staged = self._fields_json.get(cid)
            if node.fields is not fields:
                fields_json = None  # a paged node that leaves its children list to the pages holds other bytes
            elif staged is not None and staged[0] is fields:
                fields_json = staged[1]
            else:
                fields_json = canonical_json(fields)  # spliced in, and kept with the body for the next build
            kind, body, node_id = _encode_node(node, fields_json)
            _BODIES.put(node_id, body, fields_json)
            self.objects[node_id] = (kind, body)
            self.changed_nodes[cid] = node_id
            records[cid] = ContextRecord(cid, fields, memory, node_id, p, kids, levels)
            if old is not None and p is not None and old.parent == p:
                swaps.setdefault(p, []).append((old.node_id, node_id, cid))

        roots = {r for r in base.roots if r in records and records[r].parent is None}
        roots.update(c for c, p in parent_of.items() if p is None)
        roots = sorted(roots)
        state = State(
            roots=tuple((r, records[r].node_id) for r in roots),
            active_context_id=self.active_context_id,
            extra=self.extra,
        )
        kind, body, state_id = _encode_state(state, base)
        _BODIES.put(state_id, body)
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


def _placed(node: AnyObject, cid: ContextId, nid: ObjectId, seen: bool) -> Node:
    """``node``, which must hold the context its parent names it for, met once; else :class:`CorruptObject`."""
    assert isinstance(node, Node)
    if node.id != cid:
        raise CorruptObject(nid, f"node holds context {node.id!r}, its parent names {cid!r}")
    if seen:
        raise CorruptObject(nid, f"context {cid!r} appears twice in the tree")
    return node


def load_tree(read_many: ReadMany, state_id: ObjectId, state: State, base: Tree | None = None, *,
              hints: Mapping[str, Any] | None = None, read_some: ReadMany | None = None) -> Tree:
    """Read a whole tree: nodes level by level, then every exchange list.

    With ``base`` (an already loaded tree, typically an older state of the
    same conversation), a subtree whose node id is unchanged is taken from
    it without a read, and an exchange list that only grew is read back only
    to where ``base`` already has it: loading a state another writer just
    committed costs what that writer changed.

    Without ``base``, ``hints`` (see :func:`chain_hints`) let long exchange
    lists be read in stretches side by side, a few round trips instead of one
    per exchange; ``read_some`` reads those guesses, leaving out ids that are
    missing or unsound. Hints are only a guess: each list is still walked and
    checked from its head exactly as without them.
    """
    known = base.records if base is not None else {}
    records: dict[ContextId, ContextRecord] = {}
    nodes: dict[ContextId, Node] = {}
    parents: dict[ContextId, ContextId | None] = {}
    node_ids: dict[ContextId, ObjectId] = {}
    kids: dict[ContextId, tuple[tuple[ContextId, ObjectId], ...]] = {}
    levels: dict[ContextId, tuple[PageLevel, ...] | None] = {}
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
        # Wide nodes name their children through pages: read the pages of this
        # level's nodes together, skipping those the base tree already holds.
        paged = {nid: found[nid].pages for _, nid, _ in to_read if found[nid].pages}  # type: ignore[union-attr]
        known_pages: dict[ObjectId, Page] = {}
        for cid, nid, _ in to_read:
            old = known.get(cid)
            if nid in paged and old is not None and old.pages:
                known_pages.update(pages_of_levels(old.pages))
        pages = read_pages(read_many, paged.values(), known_pages) if paged else {}
        next_frontier = []
        for cid, nid, parent in to_read:
            node = _placed(found[nid], cid, nid, cid in nodes or cid in records)
            nodes[cid] = node
            parents[cid] = parent
            node_ids[cid] = nid
            if node.pages:
                kids[cid] = flatten_pages(node.pages, pages, nid)
                levels[cid] = page_levels(node.pages, pages)
            else:
                kids[cid], levels[cid] = node.children, None
            next_frontier.extend((c, n, cid) for c, n in kids[cid])
        frontier = next_frontier

    prefetched = None
    if hints and base is None:
        prefetched = _prefetch_chunks(read_some or read_many, nodes, hints)
    chains = _load_chains(read_many, nodes, known, prefetched)
    for cid, node in nodes.items():
        records[cid] = ContextRecord(
            id=cid,
            fields=full_fields(node, kids[cid]),
            memory={name: chains[(cid, name)] for name in node.memory},
            node_id=node_ids[cid],
            parent=parents[cid],
            children=tuple(c for c, _ in kids[cid]),
            pages=levels[cid],
        )
    roots = tuple(cid for cid, _ in state.roots)
    return Tree(records, roots, state.active_context_id, state.extra, state_id)


def read_pages(
    read_many: ReadMany,
    tops: Iterable[tuple[ObjectId, ...]],
    known: Mapping[ObjectId, Page] | None = None,
) -> dict[ObjectId, Page]:
    """Every page under some nodes' page lists, read level by level in batches (``known`` ones are not read)."""
    pages: dict[ObjectId, Page] = {}
    frontier = list(dict.fromkeys(pid for top in tops for pid in top))
    while frontier:
        missing = []
        for pid in frontier:
            page = known.get(pid) if known else None
            if page is None:
                missing.append(pid)
            else:
                pages[pid] = page
        if missing:
            found = read_many(missing, "page")
            for pid in missing:
                page = found[pid]
                assert isinstance(page, Page)
                pages[pid] = page
        frontier = list(dict.fromkeys(sub for pid in frontier for sub in pages[pid].pages if sub not in pages))
    return pages


def flatten_pages(top: tuple[ObjectId, ...], pages: Mapping[ObjectId, Page],
                  node_id: str = "?") -> tuple[tuple[ContextId, ObjectId], ...]:
    """A paged node's children in order, from its page list and its pages (see :func:`read_pages`)."""
    out: list[tuple[ContextId, ObjectId]] = []
    seen: set[ObjectId] = set()
    stack = list(reversed(top))
    while stack:
        pid = stack.pop()
        if pid in seen:
            raise CorruptObject(pid, f"page appears twice under node {node_id}")
        seen.add(pid)
        page = pages[pid]
        if page.pages:
            stack.extend(reversed(page.pages))
        else:
            out.extend(page.children)
    return tuple(out)


def page_levels(top: tuple[ObjectId, ...], pages: Mapping[ObjectId, Page]) -> tuple[PageLevel, ...] | None:
    """A node's pages as levels, leaf level first (as :func:`~snapstore.objects.page_children` gives
    them), or None if its leaves are not all at one depth."""
    out: list[PageLevel] = []
    level = list(top)
    while True:
        found = [pages[pid] for pid in level]
        if all(p.pages for p in found):
            out.append(tuple((pid, p.pages) for pid, p in zip(level, found)))
            level = [sub for p in found for sub in p.pages]
        elif not any(p.pages for p in found):
            out.append(tuple((pid, p.children) for pid, p in zip(level, found)))
            return tuple(reversed(out))
        else:
            return None


def pages_of_levels(levels: tuple[PageLevel, ...]) -> dict[ObjectId, Page]:
    """The pages of :func:`page_levels` / :func:`~snapstore.objects.page_children` levels, by id."""
    out: dict[ObjectId, Page] = {}
    for depth, level in enumerate(levels):
        for pid, entries in level:
            out[pid] = Page(children=entries) if depth == 0 else Page(pages=entries)
    return out


def full_fields(node: Node, children: Iterable[tuple[ContextId, ObjectId]]) -> dict[str, Any]:
    """A node's fields as the context has them: a listed node's ``child_sidebar_ids`` put back from its children."""
    if not node.listed:
        return node.fields
    fields = dict(node.fields)
    fields[CHILDREN_FIELD] = [cid for cid, _ in children]
    return dict(sorted(fields.items()))


def resolve_children(read_many: ReadMany, nodes: list[Node]) -> list[tuple[tuple[ContextId, ObjectId], ...]]:
    """The children of each node, in order, reading the pages of paged ones (all in a few batches)."""
    tops = [node.pages for node in nodes if node.pages]
    pages = read_pages(read_many, tops) if tops else {}
    return [flatten_pages(node.pages, pages) if node.pages else node.children for node in nodes]


def _reuse_subtree(known: Mapping[ContextId, ContextRecord], cid: ContextId, parent: ContextId | None,
                   records: dict[ContextId, ContextRecord]) -> None:
    """Copy an unchanged subtree's records from an older tree (only the top one may have moved)."""
    stack: list[tuple[ContextId, ContextId | None]] = [(cid, parent)]
    while stack:
        c, p = stack.pop()
        record = known[c]
        if record.parent != p:
            record = ContextRecord(record.id, record.fields, record.memory, record.node_id, p, record.children,
                                   record.pages)
        records[c] = record
        stack.extend((k, c) for k in record.children)


def _load_chains(
    read_many: ReadMany, nodes: Mapping[ContextId, Node], known: Mapping[ContextId, ContextRecord],
    prefetched: Mapping[ObjectId, Chunk] | None = None,
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
        wanted = list({oid for oid, _ in to_read.values()})
        if prefetched:
            found = {oid: prefetched[oid] for oid in wanted if oid in prefetched}
            rest = [oid for oid in wanted if oid not in found]
            if rest:
                found.update(read_many(rest, "chunk"))
        else:
            found = read_many(wanted, "chunk") if wanted else {}
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


# -- restarting fast ----------------------------------------------------------------

# Chain hints name the chunk at every HINT_STRIDE-th position of a long list.
HINT_STRIDE = 32
HINTS_VERSION = 1


def chain_hints(tree: Tree, stride: int = HINT_STRIDE) -> dict[str, Any]:
    """Where to start reading a tree's long exchange lists side by side (plain JSON).

    For every list longer than ``stride``, the ids of the chunks at positions
    ``stride - 1``, ``2 * stride - 1``, ... below its head. A cache kept
    outside the objects (:meth:`snapstore.repository.Repository.save_chain_hints`):
    a load that is given them still checks every chunk and link, and a stale
    or wrong hint only costs the reads it wasted.
    """
    lists: dict[str, dict[str, list[str]]] = {}
    for cid, record in tree.records.items():
        for name, chain in record.memory.items():
            if chain.n > stride:
                lists.setdefault(cid, {})[name] = [chain._links[p] for p in range(stride - 1, chain.n - 1, stride)]
    return {"v": HINTS_VERSION, "stride": stride, "lists": lists}


def _prefetch_chunks(read_some: ReadMany, nodes: Mapping[ContextId, Node],
                     hints: Mapping[str, Any]) -> dict[ObjectId, Chunk]:
    """Read the chunks of long lists in stretches side by side, starting at the hinted ids.

    Each hinted chunk starts a walk down to the stretch below it, all walks
    (and the walk from each head, down to its top hint or to the start of a
    list without hints) in step: about ``stride`` round trips whatever the
    length. What this returns is not trusted: the walk from the
    head (:func:`_load_chains`) takes a chunk from it only where the links
    lead to it, and checks it as it would any chunk it read.
    """
    stride, lists = hints.get("stride"), hints.get("lists")
    if hints.get("v") != HINTS_VERSION or not isinstance(stride, int) or stride < 1 or not isinstance(lists, dict):
        return {}
    # (chunk id, its position, the lowest position this walk reads)
    walks: list[tuple[ObjectId, int, int]] = []
    for cid, node in nodes.items():
        by_name = lists.get(cid)
        for name, ref in node.memory.items():
            if ref.head is None or ref.count < 1:
                continue
            ids = by_name.get(name) if isinstance(by_name, dict) else None
            low = 0
            for k, oid in enumerate(ids if isinstance(ids, list) else ()):
                position = (k + 1) * stride - 1
                if position >= ref.count - 1 or not isinstance(oid, str):
                    break
                walks.append((ObjectId(oid), position, low))
                low = position + 1
            # From the head down to the top hint (a list without hints: all of it, like the others).
            walks.append((ref.head, ref.count - 1, low))
    fetched: dict[ObjectId, Chunk] = {}
    while walks:
        found = read_some(list({oid for oid, _, _ in walks}), "chunk")
        next_walks = []
        for oid, position, low in walks:
            chunk = found.get(oid)
            if not isinstance(chunk, Chunk) or chunk.index != position:
                continue  # a wrong or stale hint: the walk from the head reads what it needs
            fetched[oid] = chunk
            if position > low and chunk.prev is not None and chunk.prev not in fetched:
                next_walks.append((chunk.prev, position - 1, low))
        walks = next_walks
    return fetched


@dataclass(frozen=True)
class OutlineRecord:
    """One context of an :class:`Outline`: its fields, place and exchange count, not its exchanges."""

    id: ContextId
    fields: dict[str, Any]
    parent: ContextId | None
    children: tuple[ContextId, ...]
    exchanges: int

    def exchange_count(self) -> int:
        return self.exchanges


@dataclass(frozen=True)
class Outline:
    """A state's shape from its nodes alone (what ``snap tree`` shows): no exchange is read.

    Has the parts of :class:`Tree` that describe the shape (``records`` with
    ``fields``, ``children`` and ``exchange_count()``, ``roots``,
    ``active_context_id``), and nothing that would need the exchanges.
    """

    records: dict[ContextId, OutlineRecord]
    roots: tuple[ContextId, ...]
    active_context_id: str | None


def outline_tree(read_many: ReadMany, state: State) -> Outline:
    """The :class:`Outline` of a state: its nodes and pages, level by level, no chunk."""
    records: dict[ContextId, OutlineRecord] = {}
    frontier: list[tuple[ContextId, ObjectId, ContextId | None]] = [(cid, nid, None) for cid, nid in state.roots]
    while frontier:
        found = read_many([nid for _, nid, _ in frontier], "node")
        nodes = [found[nid] for _, nid, _ in frontier]
        next_frontier = []
        for (cid, nid, parent), found_node, children in zip(frontier, nodes, resolve_children(read_many, nodes)):
            node = _placed(found_node, cid, nid, cid in records)
            ref = node.memory.get("local_memory")
            records[cid] = OutlineRecord(cid, full_fields(node, children), parent,
                                         tuple(c for c, _ in children), ref.count if ref is not None else 0)
            next_frontier.extend((c, n, cid) for c, n in children)
        frontier = next_frontier
    return Outline(records, tuple(cid for cid, _ in state.roots), state.active_context_id)


def context_nodes(read_many: ReadMany, states: Mapping[K, State]) -> dict[K, list[tuple[ContextId, Node]]]:
    """Every context of each state with its node, reading no chunk: all the states' nodes of one level in one
    batch (and their pages in another), so a store's thousands of conversations cost a few round trips per
    level of depth, not a few per conversation.

    The ids are the ones the parents name (a node holding another context is named where the tree itself
    is loaded).
    """
    out: dict[K, list[tuple[ContextId, Node]]] = {key: [] for key in states}
    frontier = [(key, cid, nid) for key, state in states.items() for cid, nid in state.roots]
    while frontier:
        found = read_many([nid for _, _, nid in frontier], "node")
        nodes = [found[nid] for _, _, nid in frontier]
        for (key, cid, _), node in zip(frontier, nodes):
            assert isinstance(node, Node)
            out[key].append((cid, node))
        frontier = [(key, c, n) for (key, _, _), kids in zip(frontier, resolve_children(read_many, nodes))
                    for c, n in kids]
    return out

"""Typed immutable objects, their canonical encoding and their ids.

Five kinds of object make up a conversation's history (format version 1):

``chunk``
    One exchange of an exchange list and the id of the chunk before it. An
    exchange list is a chain of chunks, newest last, so appending one exchange
    writes one chunk of constant size whatever the history length.
``node``
    One context: its fields, its children as ``(context id, node id)`` pairs
    in order, and for each exchange list the id of its newest chunk and its
    length. Children are named by hash, so a node is the root of a Merkle tree.
    A node with more than :data:`PAGE_THRESHOLD` children names them through
    pages instead (``pages``), so that a node stays small whatever its fan-out.
``page``
    A run of a wide node's children in order: either up to :data:`PAGE_SIZE`
    ``(context id, node id)`` pairs (a leaf page) or up to :data:`PAGE_SIZE`
    ids of pages one level down (an interior page). See :func:`page_children`.
``state``
    A conversation's whole tree: its root contexts, the focus
    (``active_context_id``) and top-level keys snapstore does not interpret.
``snapshot``
    Like a commit: a state id, parent snapshot(s), the time, the event that
    caused it and, when there is one, the audit-log entry it answers to.

The body of an object is its canonical JSON: keys sorted, no whitespace,
ASCII with ``\\uXXXX`` escapes (Python's ``json.dumps(value, sort_keys=True,
separators=(",", ":"))``, NaN and infinities refused). Its id is the BLAKE3
hash of ``b"<kind> <length of body>\\0" + body`` in lowercase hex, so objects
of different kinds never share an id. ``tests/test_vectors.py`` pins exact
bytes and ids: an id never changes across releases or platforms.

This module knows nothing of storage or compression.
"""

from __future__ import annotations

import json
import json.scanner
import math
import operator
import re
from dataclasses import dataclass, field
from collections.abc import Iterator
from typing import Any, NewType, Union

from blake3 import blake3

from .errors import CorruptObject, InvalidInput

ObjectId = NewType("ObjectId", str)
ContextId = NewType("ContextId", str)

FORMAT_VERSION = 1
KINDS = ("chunk", "node", "page", "state", "snapshot")
ID_HEX_LENGTH = 64
# A node lists at most PAGE_THRESHOLD children inline; a node with more names
# them through pages of PAGE_SIZE entries (store format 3). Both are part of
# the format: other values would give the same tree other ids.
PAGE_THRESHOLD = 32
PAGE_SIZE = 32
# The client's list of a context's children. A paged node whose context lists
# exactly its children, in order, leaves it out of its fields ("listed"), so
# that a wide node stays small: the pages already say it.
LISTED_FIELD = "child_sidebar_ids"
# The deepest a value snapstore stores (a context field's value, an exchange, a
# top-level extra value) may nest arrays and objects: a scalar is 0 deep, ``[]``
# and ``{}`` 1, ``[[1]]`` 2. Well below what reading back needs (json.loads and
# the copies a load makes recurse once per level, within Python's recursion
# limit of 1000), so that every stored value can be loaded; deeper values are
# refused before anything is written. Part of the format (docs/format.md).
MAX_NESTING = 200
# Levels a body wraps its values in: a chunk's item is in the body's object; a
# node's field value in its "fields" object, a state's extra value in "extra".
_WRAPPING = {"chunk": 1, "node": 2, "page": 2, "state": 2, "snapshot": 2}
_WHAT_NESTS = {"chunk": "an exchange", "node": "a context field's value", "state": "an extra top-level value"}

_encoder = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
)


def canonical_json(value: Any) -> bytes:
    """The canonical bytes of a JSON value; :class:`InvalidInput` if it is not plain JSON."""
    try:
        return _encoder.encode(value).encode("ascii")
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"value is not plain JSON: {exc}") from None
    except RecursionError:
        raise nesting_error("a value") from None


# A JSON string in a canonical body (ASCII; a backslash always escapes the next character).
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def nesting_depth(body: bytes) -> int:
    """How deep a canonical JSON text nests arrays and objects (``1`` is ``{}`` or ``[1]``, ``0`` a scalar)."""
    structure = _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    depth = deepest = 0
    for byte in structure:
        if byte == 0x5B or byte == 0x7B:  # [ {
            depth += 1
            if depth > deepest:
                deepest = depth
        else:
            depth -= 1
    return deepest


def nests_deeper(text: bytes, limit: int) -> bool:
    """Whether a canonical JSON text nests arrays and objects more than ``limit`` deep.

    Counting brackets is enough for almost every text (two passes in C); only
    a text with more brackets than the limit is scanned.
    """
    if text.count(b"[") + text.count(b"{") <= limit:
        return False
    return nesting_depth(text) > limit


def too_deep(kind: str, body: bytes) -> bool:
    """Whether a canonical body of ``kind`` holds a value nested more than :data:`MAX_NESTING` deep."""
    return nests_deeper(body, MAX_NESTING + _WRAPPING.get(kind, 2))


def value_too_deep(value: Any, limit: int = MAX_NESTING) -> bool:
    """Whether a JSON value nests arrays and objects more than ``limit`` deep (no recursion)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        if depth + 1 > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list, tuple)))
    return False


def nesting_error(what: str) -> InvalidInput:
    """The error for a value nested deeper than :data:`MAX_NESTING`."""
    return InvalidInput(f"{what} nests arrays and objects more than {MAX_NESTING} levels deep "
                        f"(the most snapstore stores)")


def json_equal(a: Any, b: Any) -> bool:
    """Whether two JSON values have the same canonical encoding.

    Python's ``==`` also holds between ``True`` and ``1``, ``1`` and ``1.0``,
    ``0.0`` and ``-0.0``, whose JSON texts differ: a change from one to the
    other is a change. ``==`` runs first (in C); only values it finds equal
    are walked for such pairs, skipping parts that are the same object.
    """
    return a is b or (a == b and _same_kinds(a, b))


def _same_kinds(a: Any, b: Any) -> bool:
    """For ``a == b``: whether no leaf pair differs in type (or in a zero's sign)."""
    kind = type(a)
    if kind is not type(b):
        return False
    if kind is dict:
        for key, value in a.items():
            other = b[key]
            if value is not other and not _same_kinds(value, other):
                return False
        return True
    if kind is list:
        if all(map(operator.is_, a, b)):  # in C: lists that share their items (a known prefix)
            return True
        for value, other in zip(a, b):
            if value is not other and not _same_kinds(value, other):
                return False
        return True
    if kind is float:
        return math.copysign(1.0, a) == math.copysign(1.0, b)
    return True


def hash_object(kind: str, body: bytes) -> ObjectId:
    """The id of an object of ``kind`` whose canonical body is ``body``."""
    hasher = blake3(b"%s %d\0" % (kind.encode("ascii"), len(body)))
    hasher.update(body)
    return ObjectId(hasher.hexdigest())


_OBJECT_ID = re.compile(r"[0-9a-f]{64}")


def is_object_id(text: str) -> bool:
    """Whether ``text`` has the shape of a full object id."""
    return isinstance(text, str) and _OBJECT_ID.fullmatch(text) is not None


@dataclass(frozen=True)
class Chunk:
    """One exchange and the chunk before it (``prev`` is None for the first)."""

    prev: ObjectId | None
    index: int
    item: Any


@dataclass(frozen=True)
class MemoryRef:
    """An exchange list as a node names it: newest chunk and length."""

    head: ObjectId | None
    count: int


@dataclass(frozen=True)
class Node:
    """One context. ``fields`` holds every field but the id and the exchange lists.

    Its children are either listed inline (``children``) or, for a node with
    more than :data:`PAGE_THRESHOLD` of them, named through the pages in
    ``pages`` (then ``children`` is empty): read them with
    :func:`snapstore.tree.resolve_children`, never from ``children`` alone.
    A paged node with ``listed`` leaves :data:`LISTED_FIELD` out of
    ``fields``: its value is its children's context ids, in order
    (:func:`snapstore.tree.full_fields` puts it back).
    """

    id: ContextId
    fields: dict[str, Any]
    children: tuple[tuple[ContextId, ObjectId], ...] = ()
    memory: dict[str, MemoryRef] = field(default_factory=dict)
    pages: tuple[ObjectId, ...] = ()
    listed: bool = False


@dataclass(frozen=True)
class Page:
    """A run of a wide node's children: pairs (a leaf page) or pages one level down (an interior page).

    Exactly one of ``children`` and ``pages`` is non-empty.
    """

    children: tuple[tuple[ContextId, ObjectId], ...] = ()
    pages: tuple[ObjectId, ...] = ()


@dataclass(frozen=True)
class State:
    """A conversation's tree: roots in order, focus and extra top-level keys."""

    roots: tuple[tuple[ContextId, ObjectId], ...]
    active_context_id: str | None
    extra: dict[str, Any] = field(default_factory=dict)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _want_str(owner: str, name: str, value: Any, optional: bool = False) -> None:
    """:class:`InvalidInput` naming ``owner.name`` unless ``value`` is a str (or None, if ``optional``)."""
    if not isinstance(value, str) and not (optional and value is None):
        raise InvalidInput(
            f"{owner}.{name} must be a string{' or None' if optional else ''}, not {_type_name(value)}"
        )


def _want_oid(owner: str, name: str, value: Any) -> None:
    if not is_object_id(value):
        shown = repr(value) if isinstance(value, str) else _type_name(value)
        raise InvalidInput(f"{owner}.{name} must be a 64-hex-digit object id, not {shown[:80]}")


@dataclass(frozen=True)
class Event:
    """What caused a snapshot; :class:`InvalidInput` at construction for a field of the wrong type.

    The types are those a stored snapshot must have to be read back
    (:func:`decode`), so a badly typed event is refused before anything is written.
    """

    type: str
    context_id: str | None = None
    message: str = ""

    def __post_init__(self) -> None:
        _want_str("Event", "type", self.type)
        _want_str("Event", "context_id", self.context_id, optional=True)
        _want_str("Event", "message", self.message)


@dataclass(frozen=True)
class LogLink:
    """The audit-log (OZOLITH) entry a snapshot answers to.

    ``sequence`` is a non-negative int (not a bool), ``entry_hash`` a string;
    anything else is :class:`InvalidInput` at construction.
    """

    sequence: int
    entry_hash: str

    def __post_init__(self) -> None:
        sequence = self.sequence
        if not isinstance(sequence, int) or isinstance(sequence, bool):
            raise InvalidInput(f"LogLink.sequence must be an int, not {_type_name(sequence)}")
        if sequence < 0:
            raise InvalidInput(f"LogLink.sequence must not be negative, got {sequence}")
        _want_str("LogLink", "entry_hash", self.entry_hash)


@dataclass(frozen=True)
class Snapshot:
    """A point in a conversation's history, like a git commit.

    Its fields are checked at construction (:class:`InvalidInput` naming the
    field): a snapshot that could not be read back is never made.
    """

    conversation: str
    root: ObjectId
    parents: tuple[ObjectId, ...]
    time: str
    event: Event
    log: LogLink | None = None

    def __post_init__(self) -> None:
        _want_str("Snapshot", "conversation", self.conversation)
        _want_oid("Snapshot", "root", self.root)
        if not isinstance(self.parents, (tuple, list)):
            raise InvalidInput(f"Snapshot.parents must be a tuple of object ids, not {_type_name(self.parents)}")
        for parent in self.parents:
            _want_oid("Snapshot", "parents", parent)
        _want_str("Snapshot", "time", self.time)
        if not isinstance(self.event, Event):
            raise InvalidInput(f"Snapshot.event must be an Event, not {_type_name(self.event)}")
        if self.log is not None and not isinstance(self.log, LogLink):
            raise InvalidInput(f"Snapshot.log must be a LogLink or None, not {_type_name(self.log)}")


AnyObject = Union[Chunk, Node, Page, State, Snapshot]


def kind_of(obj: AnyObject) -> str:
    """The kind tag of a typed object."""
    return _KIND_OF_TYPE[type(obj)]


def to_json(obj: AnyObject) -> dict[str, Any]:
    """The JSON value (before canonical encoding) of a typed object."""
    if isinstance(obj, Chunk):
        return {"v": FORMAT_VERSION, "prev": obj.prev, "index": obj.index, "item": obj.item}
    if isinstance(obj, Node):
        out = {
            "v": FORMAT_VERSION,
            "id": obj.id,
            "fields": obj.fields,
            "memory": {
                name: {"head": ref.head, "count": ref.count} for name, ref in obj.memory.items()
            },
        }
        if obj.pages:
            if obj.children:
                raise InvalidInput("a node lists its children inline or through pages, not both")
            out["pages"] = list(obj.pages)
            if obj.listed:
                if LISTED_FIELD in obj.fields:
                    raise InvalidInput(f"a listed node leaves {LISTED_FIELD} out of its fields")
                out["listed"] = True
        elif obj.listed:
            raise InvalidInput("only a paged node can be listed")
        else:
            out["children"] = [[cid, nid] for cid, nid in obj.children]
        return out
    if isinstance(obj, Page):
        if bool(obj.children) == bool(obj.pages):
            raise InvalidInput("a page holds either children or pages, and is not empty")
        if obj.pages:
            return {"v": FORMAT_VERSION, "pages": list(obj.pages)}
        return {"v": FORMAT_VERSION, "children": [[cid, nid] for cid, nid in obj.children]}
    if isinstance(obj, State):
        return {
            "v": FORMAT_VERSION,
            "roots": [[cid, nid] for cid, nid in obj.roots],
            "active_context_id": obj.active_context_id,
            "extra": obj.extra,
        }
    if isinstance(obj, Snapshot):
        return {
            "v": FORMAT_VERSION,
            "conversation": obj.conversation,
            "root": obj.root,
            "parents": list(obj.parents),
            "time": obj.time,
            "event": {
                "type": obj.event.type,
                "context_id": obj.event.context_id,
                "message": obj.event.message,
            },
            "log": None
            if obj.log is None
            else {"sequence": obj.log.sequence, "entry_hash": obj.log.entry_hash},
        }
    raise TypeError(f"not a snapstore object: {type(obj).__name__}")


def references(obj: AnyObject) -> Iterator[tuple[ObjectId, str]]:
    """The objects an object names, with the kind each must be."""
    if isinstance(obj, Snapshot):
        yield obj.root, "state"
        for parent in obj.parents:
            yield parent, "snapshot"
    elif isinstance(obj, State):
        for _, nid in obj.roots:
            yield nid, "node"
    elif isinstance(obj, Node):
        for _, nid in obj.children:
            yield nid, "node"
        for pid in obj.pages:
            yield pid, "page"
        for ref in obj.memory.values():
            if ref.head is not None:
                yield ref.head, "chunk"
    elif isinstance(obj, Page):
        for _, nid in obj.children:
            yield nid, "node"
        for pid in obj.pages:
            yield pid, "page"
    elif isinstance(obj, Chunk):
        if obj.prev is not None:
            yield obj.prev, "chunk"


def encode(obj: AnyObject) -> tuple[str, bytes, ObjectId]:
    """``(kind, canonical body, id)`` of a typed object."""
    kind = kind_of(obj)
    body = canonical_json(to_json(obj))
    if too_deep(kind, body):
        raise nesting_error(_WHAT_NESTS.get(kind, "a value"))
    return kind, body, hash_object(kind, body)


# One level of a node's pages, in order: (page id, its entries), the entries
# being (context id, node id) pairs in a leaf level, page ids above it.
PageLevel = tuple[tuple[ObjectId, tuple[Any, ...]], ...]


def page_children(
    children: tuple[tuple[ContextId, ObjectId], ...],
    previous: tuple[PageLevel, ...] | None = None,
    out: dict[ObjectId, tuple[str, bytes]] | None = None,
) -> tuple[tuple[ObjectId, ...], tuple[PageLevel, ...]]:
    """The canonical pages of a children list longer than :data:`PAGE_THRESHOLD`.

    Leaf pages hold the pairs in order, :data:`PAGE_SIZE` to a page (only the
    last page may hold fewer). While a level has more than :data:`PAGE_SIZE`
    pages, their ids are cut the same way into interior pages one level up.
    The node names the top level's pages (at most :data:`PAGE_SIZE`). Returns
    ``(the ids the node names, every level, leaf level first)``.

    ``previous`` is the levels of an earlier version of the list: a page whose
    entries equal those of the page at the same place there keeps its id
    without being encoded again, so a change to one child encodes one page per
    level. Every page encoded goes into ``out`` as ``(kind, body)``.
    """
    if len(children) <= PAGE_THRESHOLD:
        raise ValueError(f"{len(children)} children are listed inline, not paged")
    levels: list[PageLevel] = []
    entries: list[tuple[Any, ...]] = [tuple(children[i : i + PAGE_SIZE]) for i in range(0, len(children), PAGE_SIZE)]
    while True:
        depth = len(levels)
        old = previous[depth] if previous is not None and depth < len(previous) else ()
        level = []
        for i, run in enumerate(entries):
            if i < len(old) and old[i][1] == run:
                level.append(old[i])
                continue
            page = Page(children=run) if depth == 0 else Page(pages=run)
            kind, body, pid = encode(page)
            if out is not None:
                out[pid] = (kind, body)
            level.append((pid, run))
        levels.append(tuple(level))
        ids = tuple(pid for pid, _ in level)
        if len(ids) <= PAGE_SIZE:
            return ids, tuple(levels)
        entries = [ids[i : i + PAGE_SIZE] for i in range(0, len(ids), PAGE_SIZE)]


# The scanner json.loads itself ends in (its C accelerator when there is one).
_scan_json = json.scanner.make_scanner(json.JSONDecoder())


def _parse_body(body: bytes) -> Any:
    """``json.loads(body)``: the same value, or the same error, with less work per call for a canonical
    (ASCII, no white space around the value) body: the scanner reads the text directly. Anything else
    goes to ``json.loads``. A tree's load parses one body per exchange."""
    try:
        text = body.decode("ascii")
        value, end = _scan_json(text, 0)
        if end == len(text):
            return value
    except (UnicodeDecodeError, StopIteration, ValueError):
        pass
    return json.loads(body)


def decode(kind: str, body: bytes, object_id: str = "?") -> AnyObject:
    """The typed object of a canonical body; :class:`CorruptObject` if malformed."""
    try:
        value = _parse_body(body)
        if value.get("v") != FORMAT_VERSION:
            raise ValueError(f"unknown object format version {value.get('v')!r}")
        return _DECODERS[kind](value)
    except CorruptObject:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CorruptObject(object_id, f"cannot decode {kind}: {exc}") from None
    except RecursionError:
        raise CorruptObject(object_id, f"cannot decode {kind}: nested too deeply to read") from None


def _oid(value: Any) -> ObjectId:
    if not isinstance(value, str) or not is_object_id(value):
        raise ValueError(f"bad object id {value!r}")
    return ObjectId(value)


def _opt_oid(value: Any) -> ObjectId | None:
    return None if value is None else _oid(value)


def _oids(values: list[Any]) -> list[ObjectId]:
    """Many object ids checked at once, over their concatenation (a node or a page names many)."""
    try:
        ok = all(len(v) == ID_HEX_LENGTH for v in values) and not (
            "".join(values).encode("ascii").translate(None, b"0123456789abcdef")
        )
    except (TypeError, UnicodeEncodeError):
        ok = False
    if not ok:
        for v in values:
            _oid(v)  # names the first bad one
    return values


def _pairs(value: Any) -> tuple[tuple[ContextId, ObjectId], ...]:
    cids, nids = [], []
    for cid, nid in value:
        if not isinstance(cid, str):
            raise ValueError(f"expected a string, got {cid!r}")
        cids.append(cid)
        nids.append(nid)
    return tuple(zip(cids, _oids(nids)))


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"expected a count, got {value!r}")
    return value


def _dict(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"expected an object, got {value!r}")
    return value


def _decode_chunk(v: dict[str, Any]) -> Chunk:
    return Chunk(prev=_opt_oid(v["prev"]), index=_int(v["index"]), item=v["item"])


def _decode_node(v: dict[str, Any]) -> Node:
    memory = {
        _str(name): MemoryRef(head=_opt_oid(ref["head"]), count=_int(ref["count"]))
        for name, ref in _dict(v["memory"]).items()
    }
    if "pages" in v:
        if "children" in v:
            raise ValueError("a node has both children and pages")
        fields = _dict(v["fields"])
        listed = "listed" in v
        if listed and v["listed"] is not True:
            raise ValueError(f"listed must be true or absent, not {v['listed']!r}")
        if listed and LISTED_FIELD in fields:
            raise ValueError(f"a listed node has {LISTED_FIELD} in its fields")
        return Node(id=ContextId(_str(v["id"])), fields=fields, memory=memory,
                    pages=_page_ids(v["pages"]), listed=listed)
    if "listed" in v:
        raise ValueError("only a paged node can be listed")
    return Node(
        id=ContextId(_str(v["id"])),
        fields=_dict(v["fields"]),
        children=_pairs(v["children"]),
        memory=memory,
    )


def _page_ids(value: Any) -> tuple[ObjectId, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"expected a non-empty list of page ids, got {value!r}")
    return tuple(_oids(value))


def _decode_page(v: dict[str, Any]) -> Page:
    if ("children" in v) == ("pages" in v):
        raise ValueError("a page has exactly one of children and pages")
    if "pages" in v:
        return Page(pages=_page_ids(v["pages"]))
    children = _pairs(v["children"])
    if not children:
        raise ValueError("a page has no children")
    return Page(children=children)


def _decode_state(v: dict[str, Any]) -> State:
    active = v["active_context_id"]
    return State(
        roots=_pairs(v["roots"]),
        active_context_id=None if active is None else _str(active),
        extra=_dict(v["extra"]),
    )


def _decode_snapshot(v: dict[str, Any]) -> Snapshot:
    event = _dict(v["event"])
    log = v["log"]
    context_id = event["context_id"]
    return Snapshot(
        conversation=_str(v["conversation"]),
        root=_oid(v["root"]),
        parents=tuple(_oid(p) for p in v["parents"]),
        time=_str(v["time"]),
        event=Event(
            type=_str(event["type"]),
            context_id=None if context_id is None else _str(context_id),
            message=_str(event["message"]),
        ),
        log=None
        if log is None
        else LogLink(sequence=_int(log["sequence"]), entry_hash=_str(log["entry_hash"])),
    )


_KIND_OF_TYPE = {Chunk: "chunk", Node: "node", Page: "page", State: "state", Snapshot: "snapshot"}
_DECODERS = {
    "chunk": _decode_chunk,
    "node": _decode_node,
    "page": _decode_page,
    "state": _decode_state,
    "snapshot": _decode_snapshot,
}

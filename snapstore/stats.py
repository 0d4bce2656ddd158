"""``snap stats``: what a store holds, and what deduplication and compression save.

Three sizes tell the story:

- **stored bytes**: what the backend keeps (compressed bodies);
- **logical bytes**: the same objects uncompressed (canonical JSON);
- **materialized bytes**: what every snapshot would take as one JSON document
  of its whole state (compact canonical JSON: sorted keys, no spaces), the
  size of a store that kept each snapshot as a full copy.

``materialized / logical`` is the deduplication ratio (unchanged contexts and
exchanges are shared between snapshots), ``logical / stored`` the compression
ratio. Materialized sizes are computed from the objects without building any
state: a context's size is its node's fields plus its exchange lists, a list's
size is summed along its chunk chain, each object once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .errors import ObjectNotFound, SnapstoreError
from .graph import verify
from .objects import Chunk, Node, ObjectId, Page, Snapshot, State, canonical_json
from .progress import Progress, quiet
from .refs import conversation_of
from .repository import Repository
from .tree import ID_FIELD, full_fields

TOP = 10


@dataclass(frozen=True)
class KindStats:
    kind: str
    objects: int
    stored_bytes: int
    logical_bytes: int

    def to_json(self) -> dict[str, Any]:
        return {"objects": self.objects, "stored_bytes": self.stored_bytes, "logical_bytes": self.logical_bytes}


@dataclass(frozen=True)
class ContextSize:
    conversation: str
    context: str
    exchanges: int
    bytes: int

    def to_json(self) -> dict[str, Any]:
        return {"conversation": self.conversation, "context": self.context, "exchanges": self.exchanges,
                "bytes": self.bytes}


@dataclass(frozen=True)
class StoreStats:
    kinds: tuple[KindStats, ...]
    conversations: int
    snapshots: int
    materialized_bytes: int
    heads_materialized_bytes: int
    largest_by_exchanges: tuple[ContextSize, ...]
    largest_by_bytes: tuple[ContextSize, ...]

    @property
    def objects(self) -> int:
        return sum(k.objects for k in self.kinds)

    @property
    def stored_bytes(self) -> int:
        return sum(k.stored_bytes for k in self.kinds)

    @property
    def logical_bytes(self) -> int:
        return sum(k.logical_bytes for k in self.kinds)

    @property
    def dedup_ratio(self) -> float | None:
        return self.materialized_bytes / self.logical_bytes if self.logical_bytes else None

    @property
    def compression_ratio(self) -> float | None:
        return self.logical_bytes / self.stored_bytes if self.stored_bytes else None

    def to_json(self) -> dict[str, Any]:
        def ratio(value: float | None) -> float | None:
            return None if value is None else round(value, 3)

        return {
            "objects": self.objects,
            "by_kind": {k.kind: k.to_json() for k in self.kinds},
            "stored_bytes": self.stored_bytes,
            "logical_bytes": self.logical_bytes,
            "materialized_bytes": self.materialized_bytes,
            "heads_materialized_bytes": self.heads_materialized_bytes,
            "dedup_ratio": ratio(self.dedup_ratio),
            "compression_ratio": ratio(self.compression_ratio),
            "conversations": self.conversations,
            "snapshots": self.snapshots,
            "largest_contexts": {
                "by_exchanges": [c.to_json() for c in self.largest_by_exchanges],
                "by_bytes": [c.to_json() for c in self.largest_by_bytes],
            },
        }


class _Sizes:
    """Materialized JSON sizes, each object's part computed once."""

    def __init__(self) -> None:
        self.chunks: dict[ObjectId, Chunk] = {}
        self.nodes: dict[ObjectId, Node] = {}
        self.pages: dict[ObjectId, Page] = {}
        self.states: dict[ObjectId, State] = {}
        self._chain: dict[ObjectId, int] = {}
        self._context: dict[ObjectId, int] = {}
        self._subtree: dict[ObjectId, tuple[int, int]] = {}

    def chain(self, head: ObjectId) -> int:
        """Bytes of every item of the list ending at ``head``, without brackets or commas."""
        pending = []
        oid: ObjectId | None = head
        while oid is not None and oid not in self._chain:
            pending.append(oid)
            oid = self.chunks[oid].prev
        total = self._chain[oid] if oid is not None else 0
        for oid in reversed(pending):
            total += len(canonical_json(self.chunks[oid].item))
            self._chain[oid] = total
        return self._chain[head]

    def pairs(self, nid: ObjectId) -> list[tuple[str, ObjectId]]:
        """A node's children as (context id, node id), through its pages if it has any."""
        node = self.nodes[nid]
        if not node.pages:
            return list(node.children)
        out: list[tuple[str, ObjectId]] = []
        stack = list(reversed(node.pages))
        while stack:
            page = self.pages[stack.pop()]
            stack.extend(reversed(page.pages))
            out.extend(page.children)
        return out

    def children(self, nid: ObjectId) -> list[ObjectId]:
        """The node ids of a node's children."""
        return [c for _, c in self.pairs(nid)]

    def context(self, nid: ObjectId) -> int:
        """Bytes of one context as a JSON object (its exchange lists included)."""
        if nid not in self._context:
            node = self.nodes[nid]
            shape = dict(full_fields(node, self.pairs(nid)))
            shape[ID_FIELD] = node.id
            size = 0
            for name, ref in node.memory.items():
                shape[name] = []
                if ref.head is not None:
                    size += self.chain(ref.head) + ref.count - 1
            self._context[nid] = len(canonical_json(shape)) + size
        return self._context[nid]

    def subtree(self, nid: ObjectId) -> tuple[int, int]:
        """``(bytes, contexts)`` of a node and everything under it."""
        stack = [nid]
        while stack:
            top = stack[-1]
            kids = self.children(top)
            missing = [c for c in kids if c not in self._subtree]
            if missing:
                stack.extend(missing)
                continue
            stack.pop()
            size, count = self.context(top), 1
            for child in kids:
                child_size, child_count = self._subtree[child]
                size, count = size + child_size, count + child_count
            self._subtree[top] = (size, count)
        return self._subtree[nid]

    def state(self, sid: ObjectId, conversation: str) -> int:
        """Bytes of the STATE.json a snapshot of ``conversation`` with this state materializes to."""
        state = self.states[sid]
        shape = dict(state.extra)
        shape.update({"conversation_id": conversation, "active_context_id": state.active_context_id, "contexts": []})
        size, count = 0, 0
        for _, nid in state.roots:
            sub_size, sub_count = self.subtree(nid)
            size, count = size + sub_size, count + sub_count
        return len(canonical_json(shape)) + size + max(count - 1, 0)

    def node_ids(self, sid: ObjectId) -> Iterable[ObjectId]:
        stack = [nid for _, nid in self.states[sid].roots]
        while stack:
            nid = stack.pop()
            yield nid
            stack.extend(self.children(nid))


def store_stats(repo: Repository, progress: Progress = quiet, top: int = TOP) -> StoreStats:
    """Read every object once (verifying it) and report sizes, ratios and the largest contexts."""
    backend = repo.backend
    kinds: dict[str, list[int]] = {}
    sizes = _Sizes()
    snapshots: dict[ObjectId, Snapshot] = {}
    with progress("reading objects", backend.count_objects()[0]) as bar:
        for stored in backend.iter_objects():
            obj = verify(repo, stored).obj
            counts = kinds.setdefault(stored.kind, [0, 0, 0])
            counts[0] += 1
            counts[1] += len(stored.data)
            counts[2] += stored.size
            if isinstance(obj, Chunk):
                sizes.chunks[stored.id] = obj
            elif isinstance(obj, Node):
                sizes.nodes[stored.id] = obj
            elif isinstance(obj, Page):
                sizes.pages[stored.id] = obj
            elif isinstance(obj, State):
                sizes.states[stored.id] = obj
            elif isinstance(obj, Snapshot):
                snapshots[stored.id] = obj
            bar.update(1)
    materialized = 0
    for snap in snapshots.values():
        try:
            materialized += sizes.state(snap.root, snap.conversation)
        except KeyError:
            continue  # a snapshot whose objects are gone (garbage): fsck's business, not a size
    heads = 0
    contexts: dict[tuple[str, str], ContextSize] = {}
    conversations = 0
    for ref, head in backend.list_refs().items():
        conv = conversation_of(ref)
        if conv is None:
            continue
        conversations += 1
        snap = snapshots.get(head)
        if snap is None:
            raise SnapstoreError(f"the head of {conv} ({head[:12]}) is not in the store; run snap fsck")
        try:
            heads += sizes.state(snap.root, conv)
            for nid in sizes.node_ids(snap.root):
                node = sizes.nodes[nid]
                local = node.memory.get("local_memory")
                contexts[(conv, node.id)] = ContextSize(conv, node.id, local.count if local else 0,
                                                        sizes.context(nid))
        except KeyError as exc:  # the objects read are indexed by id: one the head's tree names is not stored
            missing = str(exc.args[0]) if exc.args else "?"
            raise ObjectNotFound(missing, f"in the tree of {conv}'s head {head[:12]}; run snap fsck") from None
    ranked = list(contexts.values())
    by_exchanges = sorted(ranked, key=lambda c: (-c.exchanges, -c.bytes, c.conversation, c.context))[:top]
    by_bytes = sorted(ranked, key=lambda c: (-c.bytes, -c.exchanges, c.conversation, c.context))[:top]
    return StoreStats(
        tuple(KindStats(k, *v) for k, v in sorted(kinds.items())),
        conversations, len(snapshots), materialized, heads, tuple(by_exchanges), tuple(by_bytes),
    )

"""The object graph: what each object names, and walking it from a set of starts.

gc marks with it, export collects a bundle's objects with it, stats and
prune read through it. Every object is read through :func:`read_verified`:
decompressed and re-hashed, so a walk is also a check (a corrupt or missing
object stops it with an error naming the object and who named it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .backends.base import StoredObject
from .errors import CorruptObject, ObjectNotFound
from .objects import AnyObject, ObjectId, decode, hash_object, references  # references is re-exported for bundle.py
from .repository import Repository

BATCH = 1000


@dataclass(frozen=True)
class Verified:
    """One object read back: its kind, canonical body, stored size and decoded form."""

    id: ObjectId
    kind: str
    body: bytes
    stored_bytes: int
    obj: AnyObject


def verify(repo: Repository, stored: StoredObject) -> Verified:
    """One stored object decompressed, re-hashed and decoded; :class:`CorruptObject` if it is not sound."""
    body = repo.codec.decompress(stored.data, stored.id, stored.size)
    actual = hash_object(stored.kind, body)
    if actual != stored.id:
        raise CorruptObject(stored.id, f"content hashes to {actual}", actual)
    if len(body) != stored.size:
        raise CorruptObject(stored.id, f"size is {len(body)}, recorded {stored.size}")
    return Verified(stored.id, stored.kind, body, len(stored.data), decode(stored.kind, body, stored.id))


def read_verified(repo: Repository, ids: Iterable[ObjectId]) -> dict[ObjectId, Verified]:
    """The objects among ``ids`` that exist, each verified."""
    return {oid: verify(repo, stored) for oid, stored in repo.backend.get_objects(ids).items()}


class Walk:
    """Everything reachable from some starts, read level by level in batches.

    :meth:`add` may be called again with more starts: only objects not seen
    yet are read, which is what gc's re-mark after a lost fence relies on.
    ``visit`` sees every object once, as it is read.
    """

    def __init__(self, repo: Repository, visit: Callable[[Verified], None] | None = None,
                 advance: Callable[[int], None] | None = None) -> None:
        self.repo = repo
        self.seen: set[ObjectId] = set()
        self._visit = visit
        self._advance = advance

    def add(self, starts: Iterable[tuple[ObjectId, str, str]]) -> int:
        """Walk from ``(id, expected kind, who names it)`` starts; returns how many objects were new."""
        frontier = {}
        for oid, kind, where in starts:
            if oid not in self.seen and oid not in frontier:
                frontier[oid] = (kind, where)
        before = len(self.seen)
        while frontier:
            next_frontier: dict[ObjectId, tuple[str, str]] = {}
            ids = list(frontier)
            for start in range(0, len(ids), BATCH):
                batch = ids[start : start + BATCH]
                found = read_verified(self.repo, batch)
                for oid in batch:
                    kind, where = frontier[oid]
                    item = found.get(oid)
                    if item is None:
                        raise ObjectNotFound(oid, f"a {kind} named by {where}")
                    if item.kind != kind:
                        raise CorruptObject(oid, f"is a {item.kind}, {where} names it as a {kind}")
                    self.seen.add(oid)
                    if self._visit is not None:
                        self._visit(item)
                    label = f"{kind} {oid[:12]}"
                    for child, child_kind in references(item.obj):
                        if child not in self.seen and child not in frontier and child not in next_frontier:
                            next_frontier[child] = (child_kind, label)
                if self._advance is not None:
                    self._advance(len(batch))
            frontier = next_frontier
        return len(self.seen) - before

"""An in-memory backend: fast, for tests and throwaway work; gone at exit."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence

from ..errors import DamagedRecord, RefConflict
from ..objects import ObjectId
from .base import (
    LOG_KEY_META, AppendedEntry, Backend, LogAppend, RefUpdate, ReflogEntry, StoredObject, check_fence, link,
)
from ..timeutil import utc_now


class MemoryBackend(Backend):
    """Holds everything in dicts behind one lock."""

    capabilities = frozenset()
    description = "memory"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[ObjectId, StoredObject] = {}
        self._refs: dict[str, ObjectId] = {}
        self._reflog: list[ReflogEntry] = []
        self._meta: dict[str, str] = {}
        self._log: list[tuple[int, str]] = []

    def get_objects(self, ids: Iterable[ObjectId]) -> dict[ObjectId, StoredObject]:
        with self._lock:
            return {i: self._objects[i] for i in ids if i in self._objects}

    def has_objects(self, ids: Iterable[ObjectId]) -> set[ObjectId]:
        with self._lock:
            return {i for i in ids if i in self._objects}

    def iter_objects(self, kind: str | None = None) -> Iterator[StoredObject]:
        with self._lock:
            objects = list(self._objects.values())
        return iter([o for o in objects if kind is None or o.kind == kind])

    def count_objects(self) -> tuple[int, int, int]:
        with self._lock:
            objects = list(self._objects.values())
        return len(objects), sum(len(o.data) for o in objects), sum(o.size for o in objects)

    def find_ids(self, prefix: str, limit: int = 2) -> list[ObjectId]:
        with self._lock:
            found = sorted(i for i in self._objects if i.startswith(prefix))
        return found[:limit]

    def delete_objects(self, ids: Iterable[ObjectId], fence: Mapping[str, tuple[ObjectId, int]] | None = None) -> int:
        removed = 0
        with self._lock:
            if fence is not None:
                counts = Counter(e.name for e in self._reflog)
                current = {n: (t, counts[n]) for n, t in self._refs.items()}
                check_fence(current, fence)
            for i in ids:
                if self._objects.pop(i, None) is not None:
                    removed += 1
        return removed

    def replace_objects(self, objects: Sequence[StoredObject]) -> None:
        with self._lock:
            for obj in objects:
                self._objects[obj.id] = obj

    def get_ref(self, name: str) -> ObjectId | None:
        with self._lock:
            return self._refs.get(name)

    def list_refs(self, prefix: str = "") -> dict[str, ObjectId]:
        with self._lock:
            return {n: t for n, t in sorted(self._refs.items()) if n.startswith(prefix)}

    def reflog(self, name: str) -> list[ReflogEntry]:
        with self._lock:
            return [e for e in self._reflog if e.name == name]

    def reflogs(self, names: Iterable[str],
                damaged: dict[str, DamagedRecord] | None = None) -> dict[str, list[ReflogEntry]]:
        """One pass over the rows for all ``names``: :meth:`reflog` goes through every row of every ref each
        time, so reading every conversation's reflog that way grew with the square of their number."""
        out: dict[str, list[ReflogEntry]] = {name: [] for name in names}
        with self._lock:
            for e in self._reflog:
                rows = out.get(e.name)
                if rows is not None:
                    rows.append(e)
        return out

    def get_meta(self, key: str) -> str | None:
        with self._lock:
            return self._meta.get(key)

    def list_meta(self, prefix: str = "") -> dict[str, str]:
        with self._lock:
            return {k: v for k, v in sorted(self._meta.items()) if k.startswith(prefix)}

    def write(
        self,
        objects: Sequence[StoredObject] = (),
        ref_updates: Sequence[RefUpdate] = (),
        meta: Mapping[str, str | None] | None = None,
        append: LogAppend | None = None,
    ) -> AppendedEntry | None:
        with self._lock:
            for update in ref_updates:
                actual = self._refs.get(update.name)
                if actual != update.old:
                    raise RefConflict(update.name, update.old, actual)
            entry = None
            if append is not None:
                entry, new_key = append.build(self._log[-1][1] if self._log else None, self._meta.get(LOG_KEY_META))
                self._log.append((entry.sequence, entry.line))
                if new_key is not None:
                    self._meta[LOG_KEY_META] = new_key
                ref_updates = [link(u, entry) for u in ref_updates]
            for obj in objects:
                self._objects.setdefault(obj.id, obj)
            now = utc_now()
            for update in ref_updates:
                if update.new is None:
                    self._refs.pop(update.name, None)
                else:
                    self._refs[update.name] = update.new
                self._reflog.append(
                    ReflogEntry(
                        update.name, update.old, update.new, now, update.reason,
                        update.log_sequence, update.log_hash,
                    )
                )
            for key, value in (meta or {}).items():
                if value is None:
                    self._meta.pop(key, None)
                else:
                    self._meta[key] = value
        return entry

    def log_lines(self, after: int = 0, limit: int | None = None) -> list[tuple[int, str]]:
        with self._lock:
            rows = [row for row in self._log if row[0] > after]
        return rows if limit is None else rows[:limit]

    def log_tail(self) -> tuple[int, str] | None:
        with self._lock:
            return self._log[-1] if self._log else None

    def close(self) -> None:
        pass

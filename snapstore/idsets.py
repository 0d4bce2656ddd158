"""Sets of object ids kept in the meta table.

gc's candidate buckets and prune records can name millions of ids, and a meta
value is one string. A set is stored as its ids, sorted, 32 raw bytes each,
base64-encoded and split across keys ``<prefix>/000000``, ``<prefix>/000001``,
... of at most :data:`CHUNK_IDS` ids. All of a set's keys are written in one
:meth:`~snapstore.backends.base.Backend.write`, so a reader sees all of a set
or none of it.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping

from .errors import CorruptObject
from .objects import ID_HEX_LENGTH, ObjectId

CHUNK_IDS = 8192  # 256 KiB of raw ids, 350 KB of text per meta value
_RAW = ID_HEX_LENGTH // 2


def pack(prefix: str, ids: Iterable[str]) -> dict[str, str]:
    """The meta entries holding ``ids`` under ``prefix`` (no entries for an empty set)."""
    ordered = sorted(set(ids))
    entries: dict[str, str] = {}
    for n, start in enumerate(range(0, len(ordered), CHUNK_IDS)):
        raw = b"".join(bytes.fromhex(i) for i in ordered[start : start + CHUNK_IDS])
        entries[f"{prefix}/{n:06d}"] = base64.b64encode(raw).decode("ascii")
    return entries


def unpack(meta: Mapping[str, str], prefix: str) -> set[ObjectId]:
    """The ids stored under ``prefix`` in ``meta`` (a mapping of meta keys, e.g. from ``list_meta``)."""
    ids: set[ObjectId] = set()
    start = prefix + "/"
    for key, value in meta.items():
        if not key.startswith(start) or "/" in key[len(start):]:
            continue
        raw = base64.b64decode(value)
        if len(raw) % _RAW:
            raise CorruptObject(key, f"meta id set {key} is {len(raw)} bytes, not a multiple of {_RAW}")
        ids.update(ObjectId(raw[i : i + _RAW].hex()) for i in range(0, len(raw), _RAW))
    return ids


def keys_under(meta: Mapping[str, str], prefix: str) -> list[str]:
    """Every key of ``meta`` at or below ``prefix`` (to delete a set and what it belongs to)."""
    return [k for k in meta if k == prefix or k.startswith(prefix + "/")]

"""Store format versions and ``snap upgrade``.

A store records its format version in the meta key ``format``. This
snapstore opens only stores of its own format
(:data:`~snapstore.repository.STORE_FORMAT`): a newer one is refused
(upgrade snapstore), an older one is refused with a pointer to
``snap upgrade``. Older snapstores refuse newer stores in the same way, and
that is the point of a format bump: it is made when an older snapstore would
misread or endanger a store that newer code has touched.

Upgrades are an ordered list of steps, each from version N to N+1. Each
step makes its changes in turn, then one write records the final version
and, for every step, when and which step ran (``upgraded/<N+1>``). One write,
not one per step: a power loss after the bump to 2 of a 1 -> 4 upgrade left a
store at format 2, neither the store before nor the one after (and refused
by this snapstore and by the format-1 one alike). Each step is idempotent, so
an upgrade interrupted anywhere, still at the version it started from, is
finished by running it again. Stop every process using the store (older
snapstores especially) before upgrading.

Format history:

1. the first format: objects, refs with reflogs, meta.
2. writers move a ref together with every object their commit made, so gc
   may delete garbage beside them; prune records can supersede reflog
   values. A format-1 writer does neither, and a format-1 ``fsck`` would
   report pruned history as missing objects: the bump keeps both away from
   stores that gc and prune may have touched. No data changes.
3. a node with more than ``PAGE_THRESHOLD`` (32) children names them through
   objects of a fifth kind, ``page`` (docs/format.md). A format-2 snapstore
   cannot read such a node or page, so the bump keeps it away from stores
   that hold them. No data changes: a format-2 store holds only nodes that
   list their children inline, which format 3 still reads. Such a wide node
   keeps its id until a commit changes it or anything below it; that commit
   writes it paged (a new id for the same content), as every later commit
   does. Stores are never rewritten to page old nodes.
4. the embedded SQLite store may keep cold objects, audit-log lines and
   reflog rows in packs (snapstore/packs.py, docs/format.md): a format-3
   snapstore would find packed objects missing, so the bump keeps it away
   from stores that may hold packs. No data changes: packs are made by
   ``snap pack``, at clean shutdowns and after many commits, never by the
   upgrade itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .backends.base import Backend
from .errors import FormatError, StoreNotFound
from .repository import FORMAT_KEY, STORE_FORMAT
from .timeutil import utc_now

HISTORY_PREFIX = "upgraded/"


@dataclass(frozen=True)
class Step:
    """Upgrade a store from ``version - 1`` to ``version``; returns meta changes to write with the bump."""

    version: int
    name: str
    apply: Callable[[Backend], Mapping[str, str | None]]


def _writers_carry_objects(backend: Backend) -> Mapping[str, str | None]:
    return {}  # a promise about writers and readers: nothing stored changes


def _paged_children(backend: Backend) -> Mapping[str, str | None]:
    return {}  # format-2 nodes stay readable as they are: nothing stored changes


def _packs(backend: Backend) -> Mapping[str, str | None]:
    return {}  # loose objects stay readable as they are: packing moves them later


STEPS: tuple[Step, ...] = (
    Step(2, "gc-safe writers and prune records", _writers_carry_objects),
    Step(3, "wide nodes name their children through pages", _paged_children),
    Step(4, "cold objects, log lines and reflog rows kept in packs", _packs),
)
assert [s.version for s in STEPS] == list(range(2, STORE_FORMAT + 1)), "one step per format version"


@dataclass(frozen=True)
class UpgradeReport:
    before: int
    after: int
    applied: tuple[str, ...]

    @property
    def changed(self) -> bool:
        return self.before != self.after

    def to_json(self) -> dict[str, Any]:
        return {"before": self.before, "after": self.after, "changed": self.changed, "applied": list(self.applied),
                "current_format": STORE_FORMAT}


def store_format(backend: Backend) -> int:
    """The format version a store records; :class:`StoreNotFound` / :class:`FormatError` if it has none we can read."""
    raw = backend.get_meta(FORMAT_KEY)
    if raw is None:
        raise StoreNotFound(f"{backend.description} is not a snapstore store (no format version)")
    try:
        return int(raw)
    except ValueError:
        raise FormatError(f"store format version {raw!r} is not a number") from None


def upgrade(backend: Backend) -> UpgradeReport:
    """Bring a store to :data:`STORE_FORMAT`, one step at a time; a no-op on a current store."""
    before = store_format(backend)
    if before > STORE_FORMAT:
        raise FormatError(
            f"store format {before} is newer than this snapstore supports ({STORE_FORMAT}); upgrade snapstore"
        )
    applied = []
    version = before
    if version < STORE_FORMAT:
        backend.check_writable("`snap upgrade`")  # a current store needs nothing written: it says so
    meta: dict[str, str | None] = {}
    for step in STEPS:
        if step.version <= version:
            continue
        meta.update(step.apply(backend))
        meta[FORMAT_KEY] = str(step.version)
        meta[f"{HISTORY_PREFIX}{step.version}"] = json.dumps({"time": utc_now(), "step": step.name})
        applied.append(f"{version} -> {step.version}: {step.name}")
        version = step.version
    if meta:
        backend.write(meta=meta)  # every bump at once: the store is at ``before`` or at ``version``, never between
    return UpgradeReport(before, version, tuple(applied))

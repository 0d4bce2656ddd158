"""Garbage collection: delete the objects nothing reaches any more.

**Roots.** Every ref; every old and new value in the reflog of every ref,
except values a prune record superseded (:mod:`snapstore.rewrites`); every
snapshot whose own time is within the grace period. Everything they reach is
live. The rest is garbage: pruned history, commits that lost their ref swap,
two-phase commits that crashed before moving their ref.

**Age without timestamps.** Backends keep no write time per object, and
adding one would change every backend's schema. gc remembers what it saw
instead: each run records in the meta table the ids no ref or reflog reaches
and the time it listed them (a *bucket*; key ``gc/pending``). A run deletes an
object only if (1) a bucket at least ``grace`` old names it, so the object
existed ``grace`` ago, and (2) the run finds it unreachable now. An object a
writer has just written, and not yet named from a ref, is in no old bucket:
the first run that sees it only records it. With the default grace of two
weeks an object goes only when two runs at least two weeks apart both found
it unreachable; its snapshot, if it is one, must also be two weeks old.

**Reuse.** Content addressing lets a new commit name an object that exists
and is garbage: a context paused then resumed gets its old node id back, a
restored state names old nodes. Age does not help there (the object is old,
the reference new). Two rules do:

1. A ref moves only in a transaction that also carries every object the
   commit made, even objects the store already has (``Repository`` commits,
   prune, import). Objects a commit did not make come from the head it
   started from, which a ref or reflog reaches. Inserting an object that is
   there is a no-op; inserting one gc has just deleted puts it back.
2. gc deletes with a fence (``Backend.delete_objects(ids, fence)``): one
   transaction that first checks every ref still has the target and the
   reflog length gc marked from, and deletes nothing otherwise. gc then
   re-marks (reading only what is new) and tries again.

Take a writer W whose commit names garbage object X, and a gc G deleting X.
W's ref move is one transaction, G's deletion another, and the backend
serializes them (SQLite: both hold the write lock; PostgreSQL: G locks the
objects and refs tables in the order writers use them; memory: one lock).
If W's commits first, G's fence fails: nothing is deleted and the re-mark
finds X reachable. If G's commits first, W's transaction carries X and
inserts it again. Either way X exists whenever a ref reaches it, and this
holds for any grace, 0 included.

**What only the grace period protects.** Moving a ref to an old snapshot
without re-sending its objects: the audit roll-forward after a crash, and
``checkout --at`` of a snapshot nothing reaches any more. A snapshot younger
than the grace period is a root, so a crashed writer's snapshot survives for
that long.

**S3.** Bodies live outside the transaction. The S3 backend deletes an
object's body after its index row, both under an advisory lock that every
write with objects holds shared from before its first PUT until its commit,
so no write can be told "already stored" for a body this sweep deletes; see
snapstore/backends/s3.py. Bodies no index row names (lost ref swaps, crashed
writers, a gc that died between the two steps) are listed from the bucket and
deleted when last written before the grace period began
(``sweep_unindexed``, reported as ``unindexed_deleted``).

Two gc runs at once are safe: each bucket is a true statement about its
time; the last record written wins and the next run records the rest again.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from .errors import CorruptObject, InvalidInput, RefConflict, SnapstoreError
from .graph import Walk
from .idsets import pack, unpack
from .objects import ObjectId, Snapshot, decode
from .progress import Progress, quiet
from .refs import conversation_of
from .repository import Repository
from .rewrites import Rewrites
from .timeutil import format_time, parse_time

DEFAULT_GRACE = timedelta(days=14)
PENDING_KEY = "gc/pending"
PENDING_PREFIX = "gc/pending/"
LAST_RUN_KEY = "gc/last_run"
SWEEP_BATCH = 2000
MAX_FENCE_RETRIES = 200
_ALL = 1 << 62


class StoreBusy(SnapstoreError):
    """Refs kept moving between gc's mark and its sweep; run gc again when writers are quieter."""


@dataclass(frozen=True)
class Bucket:
    """Object ids a gc run found unreachable, and when it listed them."""

    time: str
    ids: frozenset[ObjectId]


@dataclass(frozen=True)
class GcReport:
    """What a gc run found and did (with ``dry_run``, what it would delete)."""

    dry_run: bool
    grace: timedelta
    objects: int
    reachable: int
    unreachable: int
    deleted: int
    bytes_freed: int
    logical_bytes_freed: int
    pending: int
    pending_since: str | None
    fence_retries: int
    # Bodies in the bucket no index row named (S3 only), deleted (with dry_run: would be).
    unindexed_deleted: int = 0
    unindexed_bytes_freed: int = 0

    @property
    def eligible_after(self) -> str | None:
        """When the oldest recorded candidates become old enough to delete."""
        if self.pending_since is None:
            return None
        return format_time(parse_time(self.pending_since) + self.grace)

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "grace_seconds": int(self.grace.total_seconds()),
            "objects": self.objects,
            "reachable": self.reachable,
            "unreachable": self.unreachable,
            "deleted": self.deleted,
            "bytes_freed": self.bytes_freed,
            "logical_bytes_freed": self.logical_bytes_freed,
            "pending": self.pending,
            "pending_since": self.pending_since,
            "eligible_after": self.eligible_after,
            "fence_retries": self.fence_retries,
            "unindexed_deleted": self.unindexed_deleted,
            "unindexed_bytes_freed": self.unindexed_bytes_freed,
        }


class _Mark:
    """The live set: roots read from refs and reflogs, and everything they reach."""

    def __init__(self, repo: Repository, rewrites: Rewrites, advance: Callable[[int], None]) -> None:
        self.repo = repo
        self.rewrites = rewrites
        self.walk = Walk(repo, advance=advance)
        self.fence: dict[str, tuple[ObjectId, int]] = {}
        # Reached only from snapshots within the grace period: kept, yet still recorded as candidates.
        self.recent_only: set[ObjectId] = set()

    @property
    def live(self) -> set[ObjectId]:
        return self.walk.seen

    def refs(self, moved: str | None = None) -> None:
        """(Re)read refs and reflogs and walk what they name; reflogs of unmoved refs are not read again.

        The reflogs are read together (``Backend.reflogs``): a store of thousands of conversations
        cost a round trip per ref."""
        backend = self.repo.backend
        starts: list[tuple[ObjectId, str, str]] = []
        fence: dict[str, tuple[ObjectId, int]] = {}
        refs = backend.list_refs()
        unread = [ref for ref, target in refs.items()
                  if (known := self.fence.get(ref)) is None or known[0] != target or ref == moved]
        reflogs = backend.reflogs(unread) if unread else {}
        for ref, target in refs.items():
            # The fence covers every ref; only conversation refs name snapshots (others,
            # like the dictionary ref, name no object).
            conv = conversation_of(ref)
            if conv is not None:
                starts.append((target, "snapshot", ref))
            if ref not in reflogs:
                fence[ref] = self.fence[ref]
                continue
            entries = reflogs[ref]
            fence[ref] = (target, len(entries))
            if conv is None:
                continue
            for entry in entries:
                for oid in (entry.old, entry.new):
                    if oid is not None and not self.rewrites.superseded(conv, oid):
                        starts.append((oid, "snapshot", f"the reflog of {ref}"))
        self.walk.add(starts)
        self.fence = fence

    def recent_snapshots(self, after: datetime) -> None:
        """Snapshots made after ``after`` are roots: a writer may be about to name them."""
        starts = []
        for stored in self.repo.backend.iter_objects(kind="snapshot"):
            try:
                snap = decode("snapshot", self.repo.codec.decompress(stored.data, stored.id, stored.size), stored.id)
                assert isinstance(snap, Snapshot)
                recent = parse_time(snap.time) > after
            except (CorruptObject, ValueError):
                continue  # unreadable garbage is not a root
            if recent:
                starts.append((stored.id, "snapshot", "the grace period"))
        before = set(self.walk.seen)
        self.walk.add(starts)
        self.recent_only = self.walk.seen - before


def load_pending(repo: Repository) -> tuple[list[Bucket], list[str]]:
    """The recorded candidate buckets, oldest first, and every meta key the record uses."""
    backend = repo.backend
    stored = backend.list_meta(PENDING_PREFIX)
    keys = list(stored) + [PENDING_KEY]
    raw = backend.get_meta(PENDING_KEY)
    if raw is None:
        return [], keys
    try:
        index = json.loads(raw)
        token = index["token"]
        buckets = []
        for n, entry in enumerate(index["buckets"]):
            ids = unpack(stored, f"{PENDING_PREFIX}{token}/{n}")
            if len(ids) != entry["count"]:
                raise ValueError(f"bucket {n} holds {len(ids)} ids, the record says {entry['count']}")
            buckets.append(Bucket(entry["time"], frozenset(ids)))
    except (ValueError, KeyError, TypeError) as exc:
        # A damaged record only loses candidates: they are found and recorded again.
        raise CorruptObject(PENDING_KEY, f"unreadable gc record ({exc}); delete the meta key to reset it") from None
    return sorted(buckets, key=lambda b: b.time), keys


def _record(buckets: list[Bucket], old_keys: list[str]) -> dict[str, str | None]:
    """Meta changes replacing the old record with ``buckets``, for one atomic write."""
    meta: dict[str, str | None] = {key: None for key in old_keys}
    token = secrets.token_hex(8)
    kept = [b for b in buckets if b.ids]
    for n, bucket in enumerate(kept):
        meta.update(pack(f"{PENDING_PREFIX}{token}/{n}", bucket.ids))
    meta[PENDING_KEY] = json.dumps(
        {"version": 1, "token": token, "buckets": [{"time": b.time, "count": len(b.ids)} for b in kept]}
    )
    return meta


def collect_garbage(repo: Repository, grace: timedelta = DEFAULT_GRACE, *, dry_run: bool = False,
                    progress: Progress = quiet) -> GcReport:
    """Delete objects unreachable now that a run at least ``grace`` ago also found unreachable."""
    if grace < timedelta(0):
        raise InvalidInput("the grace period cannot be negative")
    backend = repo.backend
    started = datetime.now(timezone.utc)
    buckets, old_keys = load_pending(repo)
    total = backend.count_objects()[0]
    with progress("marking", total) as bar:
        mark = _Mark(repo, Rewrites.load(backend), bar.update)
        mark.refs()
        if grace > timedelta(0):
            mark.recent_snapshots(started - grace)
    listed = set(backend.find_ids("", limit=_ALL))
    listed_at = format_time(datetime.now(timezone.utc))
    unreachable = listed - mark.live
    cutoff = started - grace
    eligible: set[ObjectId] = set()
    for bucket in buckets:
        if parse_time(bucket.time) <= cutoff:
            eligible |= bucket.ids
    doomed = sorted(eligible & unreachable)

    deleted = freed = logical = retries = 0
    removed: set[ObjectId] = set()
    with progress("deleting" if not dry_run else "sizing", len(doomed)) as bar:
        for start in range(0, len(doomed), SWEEP_BATCH):
            batch = doomed[start : start + SWEEP_BATCH]
            while True:
                batch = [oid for oid in batch if oid not in mark.live]
                sizes = backend.get_objects(batch) if batch else {}
                if dry_run or not batch:
                    count = len(sizes)
                    break
                try:
                    count = backend.delete_objects(batch, fence=mark.fence)
                    break
                except RefConflict as conflict:
                    retries += 1
                    if retries > MAX_FENCE_RETRIES:
                        raise StoreBusy(
                            f"refs moved {retries} times while gc was deleting ({deleted} objects deleted so "
                            "far); run gc again when writers are quieter"
                        ) from None
                    mark.refs(moved=conflict.ref)
            deleted += count
            freed += sum(len(o.data) for o in sizes.values())
            logical += sum(o.size for o in sizes.values())
            removed.update(batch)
            bar.update(len(doomed[start : start + SWEEP_BATCH]))

    # Bodies without index rows (S3): invisible to everything above; age from the bucket's listing.
    unindexed = unindexed_bytes = 0
    sweep_unindexed = getattr(backend, "sweep_unindexed", None)
    if sweep_unindexed is not None:
        unindexed, unindexed_bytes = sweep_unindexed(cutoff, dry_run=dry_run)

    # Candidates: what refs and reflogs do not reach, whether or not recency keeps it for now.
    still = listed - (mark.live - mark.recent_only) - (set() if dry_run else removed)
    kept = [Bucket(b.time, frozenset(b.ids & still)) for b in buckets]
    recorded = set().union(*(b.ids for b in kept)) if kept else set()
    kept.append(Bucket(listed_at, frozenset(still - recorded)))
    kept = [b for b in kept if b.ids]
    if not dry_run:
        meta = _record(kept, old_keys)
        meta[LAST_RUN_KEY] = json.dumps({"time": listed_at, "deleted": deleted, "bytes_freed": freed})
        backend.write(meta=meta)
    return GcReport(
        dry_run=dry_run, grace=grace, objects=len(listed), reachable=len(listed & mark.live),
        unreachable=len(unreachable - mark.live), deleted=deleted, bytes_freed=freed,
        logical_bytes_freed=logical, pending=sum(len(b.ids) for b in kept),
        pending_since=kept[0].time if kept else None, fence_retries=retries,
        unindexed_deleted=unindexed, unindexed_bytes_freed=unindexed_bytes,
    )

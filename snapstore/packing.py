"""``snap pack``: move cold loose objects and old audit-log lines into packs.

A commit stores its objects loose (one small transaction, one fsync); a
conversation's history then costs nearly the full size of every version of
every node it touched. Packing compresses many objects together
(snapstore/packs.py), where versions of one node cost little more than what
changed between them, and gives the freed pages back to the file system.
It runs by itself at a clean shutdown (``Session.close``) and after every
:data:`AUTO_PACK_LOOSE` new loose objects, and on demand (``snap pack``).

Each pack is written in one transaction that also removes the loose copies,
so a crash at any moment leaves every object readable, loose or packed.
Every object is decompressed and re-hashed before it goes into a pack: a
corrupt object is never packed, it stays loose and is named in the report
(``snap fsck`` names it too). Packs that gc emptied to less than half are
packed again, which is how their space comes back.

Only the embedded SQLite store keeps packs; on PostgreSQL and S3 ``pack``
reports that it does not apply.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import CorruptObject, SnapstoreError
from .objects import ObjectId
from .packs import MAX_BYTES, MAX_MEMBERS, Member, encode_objects

if TYPE_CHECKING:
    from .repository import Repository

# Read this many loose objects at a time while packing.
BATCH = 8192
# Packing after commits: a process that wrote AUTO_PACK_CHECK objects since it last looked packs
# once AUTO_PACK_LOOSE loose objects are older than the newest AUTO_PACK_KEEP. The commit that
# packs waits for it (~60 µs an object): rounds of ~8,000 objects pause it ~0.5 s, where rounds of
# 32,768 paused it 2.1 s, for the same work in all, and keep the open store half as large
# (docs/benchmarks.md, "Auto-pack in smaller rounds"). Much smaller rounds would rewrite the pack
# index's leaves more often for the same objects once a store holds hundreds of thousands.
AUTO_PACK_CHECK = 4096
AUTO_PACK_LOOSE = 8192
AUTO_PACK_KEEP = 1024
# At a clean shutdown, pack only if at least this many objects are loose.
SHUTDOWN_MINIMUM = 256
# Log lines and reflog rows go into packs of this many.
LOG_PACK_LINES = 128
# Packs serving fewer objects than this are merged into the next pack written.
SMALL_PACK = MAX_MEMBERS // 4


@dataclass
class PackReport:
    """What one packing run did."""

    store: str
    applicable: bool
    objects: int = 0            # objects the new packs serve (loose ones and survivors of packs packed again)
    packs_written: int = 0
    packs_rewritten: int = 0    # sparse packs whose survivors were packed again
    loose_bytes: int = 0        # stored bytes of the loose objects packed
    pack_bytes: int = 0         # stored bytes of the packs written
    log_lines: int = 0
    reflog_rows: int = 0
    corrupt: list[tuple[ObjectId, str]] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "store": self.store, "applicable": self.applicable, "objects": self.objects,
            "packs_written": self.packs_written, "packs_rewritten": self.packs_rewritten,
            "loose_bytes": self.loose_bytes, "pack_bytes": self.pack_bytes, "log_lines": self.log_lines,
            "reflog_rows": self.reflog_rows,
            "corrupt": [{"object": oid, "message": msg} for oid, msg in self.corrupt],
            "seconds": round(self.seconds, 3),
        }


def supports_packs(repo: Repository) -> bool:
    return hasattr(repo.backend, "write_packs")


def pack(repo: Repository, *, keep: int = 0, keep_log: int = 1, minimum: int = 1,
         progress: Callable[[int], None] | None = None, hot: set[ObjectId] | None = None) -> PackReport:
    """Pack loose objects but the ``keep`` newest, and log lines but the ``keep_log`` newest.

    Loose objects are packed only if at least ``minimum`` qualify; packs gc
    thinned out to less than half, and log lines in runs of
    :data:`LOG_PACK_LINES`, are packed regardless. The ``hot`` objects stay
    loose: the packing that runs by itself (:func:`auto_pack`,
    :func:`shutdown_pack`) passes :meth:`Repository.hot_objects`, the
    structure of the trees this process works on, because reading a loose
    object costs one row and reading a packed one its whole pack (up to
    1 MB to decompress), and a load or diff of a current tree reads exactly
    those; history is what is packed.
    """
    started = time.perf_counter()
    backend: Any = repo.backend
    report = PackReport(backend.description, supports_packs(repo))
    if not report.applicable:
        return report
    hot = hot or set()
    pending: list[tuple[Member, int | None]] = []

    def flush(final: bool) -> None:
        pending.sort(key=lambda item: item[0].kind)  # stable: oldest first within a kind
        start = 0
        written = []
        while start < len(pending):
            end, size = start, 0
            while end < len(pending) and end - start < MAX_MEMBERS and (
                    end == start or size + len(pending[end][0].body) <= MAX_BYTES):
                size += len(pending[end][0].body)
                end += 1
            if not final and end == len(pending) and end - start < MAX_MEMBERS and size < MAX_BYTES * 3 // 4:
                break  # a partial pack waits for the next batch of objects
            batch, prefixes = [], set()
            for item in pending[start:end]:
                if item[0].id[:16] not in prefixes:  # a pack names a member by its id's first 8 bytes
                    prefixes.add(item[0].id[:16])
                    batch.append(item)
            data = encode_objects([m for m, _ in batch])
            written.append(([(m.id, m.kind, len(m.body), source) for m, source in batch], data))
            report.pack_bytes += len(data)
            start = end
        if written:
            # One transaction for the round: the id index's pages are rewritten once, not once per pack.
            # It counts the members it indexed (not those gc deleted meanwhile or whose prefix is taken).
            report.objects += backend.write_packs(written)
            report.packs_written += len(written)
            if progress is not None:
                progress(sum(len(members) for members, _ in written))
        del pending[:start]

    if minimum > 1 and backend.loose_count() - keep - len(hot) < minimum:
        loose, cursor = [], None
    else:
        loose, cursor = backend.loose_for_packing(keep, BATCH, None)
    # Packs gc thinned out are packed again; small ones (a shutdown's few objects) are merged
    # with new objects rather than left to multiply.
    again = set(backend.sparse_packs()) | (set(backend.small_packs(SMALL_PACK)) if loose else set())
    for pack_id in sorted(again):
        pending.extend((Member(oid, kind, body), pack_id) for oid, kind, body in backend.live_members(pack_id))
        report.packs_rewritten += 1
    while loose:
        for stored in loose:
            if stored.id in hot:
                continue
            try:
                body = repo.verified_body(stored)
            except CorruptObject as exc:
                report.corrupt.append((stored.id, exc.reason))
                continue
            pending.append((Member(stored.id, stored.kind, body), None))
            report.loose_bytes += len(stored.data)
        flush(final=False)
        loose, cursor = backend.loose_for_packing(keep, BATCH, cursor)
    flush(final=True)
    # A short last pack is filled up by the next run, so no loose tail of lines waits for a full pack.
    while packed := backend.pack_log(keep_log, LOG_PACK_LINES, partial=True):
        report.log_lines += packed
    while packed := backend.pack_reflog(keep_log, LOG_PACK_LINES, partial=True):
        report.reflog_rows += packed
    if report.packs_written or report.log_lines or report.reflog_rows:
        backend.release_free_pages()
    report.seconds = time.perf_counter() - started
    return report


def auto_pack(repo: Repository) -> PackReport | None:
    """Pack after commits if enough loose objects piled up (see :data:`AUTO_PACK_LOOSE`).

    The commits that led here are durable already: a failure to pack (a full
    disk, say) leaves every object where it was, and is left for the next try.
    """
    if not supports_packs(repo):
        return None
    try:
        # Counted here, not by pack's ``minimum``: below the threshold nothing at all is packed
        # (not even log lines), and one count serves.
        hot = repo.hot_objects()
        if repo.backend.loose_count() < AUTO_PACK_LOOSE + AUTO_PACK_KEEP + len(hot):  # type: ignore[attr-defined]
            return None
        return pack(repo, keep=AUTO_PACK_KEEP, hot=hot)
    except SnapstoreError:
        return None


def shutdown_pack(repo: Repository) -> PackReport | None:
    """Pack at a clean shutdown if at least :data:`SHUTDOWN_MINIMUM` objects are loose (errors ignored,
    as in :func:`auto_pack`)."""
    if not supports_packs(repo):
        return None
    try:
        return pack(repo, minimum=SHUTDOWN_MINIMUM, hot=repo.hot_objects())
    except SnapstoreError:
        return None

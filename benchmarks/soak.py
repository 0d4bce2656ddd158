"""Soak mode of the crash harness: SIGKILL a working orchestrator 1,000+ times.

    python benchmarks/soak.py [--kills 1000] [--seed 1] [--dir PATH] [--rotate 25] [--log-in-store]
                              [--store postgresql://... | s3+postgresql://...?bucket=...]

Each round starts tests/crash/worker.py (random operations with long Unicode
texts, each acknowledged once durable), kills it with SIGKILL at a random
moment, restarts as an API would (rolling forward what was in flight) and
checks: the state equals the last acknowledged one or the one in flight,
`fsck` and `verify` (log chain + cross-check + replay) pass. CI runs 100
kills in tests/test_crash.py; this is the long version.

The store grows by every round's operations and each round restarts and
checks the whole of it, so one store kept for 1,000 kills makes the rounds
slow down a hundredfold (the ninth session's run: ~2,500 contexts and two
minutes a round after 800 kills). ``--rotate N`` starts a new store (and log)
every N kills, so the kills test crashes rather than the size of the tree;
``--rotate 0`` keeps one store for the whole run.

``--store`` runs on the shared store instead of embedded folders (with
``--log-in-store``, what replicas run): each store of the run is a new
database on that location's PostgreSQL server (the URL's own database is only
connected to, to create them; the role needs CREATEDB) and, for
``s3+postgresql://``, a new prefix ``<prefix>soak-<id>-<n>/`` in its bucket
(which must exist; the keys come from ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY``, as for any S3 store). A store that passes is
deleted after its kills (database and bodies); one that fails is kept and
named, for inspection.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.crash.harness import KillStats, run_kills  # noqa: E402


@contextlib.contextmanager
def shared_store(base: str, name: str) -> Iterator[tuple[str, list[str]]]:
    """A new store location on ``base``'s servers, and a list to append a failure to (which keeps the store)."""
    from tests.servers import drop_pg_database, fresh_pg_database

    settings = None
    pg_url = base
    if base.startswith("s3+"):
        from snapstore.backends.s3 import split_location

        pg_url, settings = split_location(base)
    url = fresh_pg_database(pg_url)
    location = url
    if settings is not None:
        query = {"bucket": settings.bucket, "prefix": f"{settings.prefix}{name}/", "endpoint": settings.endpoint,
                 "region": settings.region, "addressing": settings.addressing}
        location = f"s3+{url}{'&' if '?' in url else '?'}{urlencode({k: v for k, v in query.items() if v})}"
    failed: list[str] = []
    try:
        yield location, failed
    except BaseException:
        failed.append("raised")
        raise
    finally:
        if failed:
            from snapstore.backends.postgres import safe_location

            print(f"kept the failing store {safe_location(location)}", flush=True)
    if failed:
        return
    if settings is not None:
        import psycopg

        from snapstore.location import open_backend

        # No index row left: every body under the prefix is garbage that the sweep deletes.
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DELETE FROM snapstore_objects")
        backend = open_backend(location)
        try:
            backend.sweep_unindexed(datetime.now(timezone.utc))  # type: ignore[attr-defined]
        finally:
            backend.close()
    drop_pg_database(url)


def soak(workdir: Path, kills: int, seed: int, rotate: int, log_in_store: bool,
         store: str | None = None) -> KillStats:
    """``kills`` kills in stores of ``rotate`` kills each (one store if 0); the stats summed, stopping at a failure.

    ``store``: a ``postgresql://`` or ``s3+postgresql://`` location whose servers hold the stores (see above).
    """
    total = KillStats()
    per_store = rotate if rotate > 0 else kills
    run = uuid.uuid4().hex[:8]
    for number, first in enumerate(range(0, kills, per_store)):
        count = min(per_store, kills - first)
        # A seed per store: its own operations and kill moments, reproducible from --seed.
        with (shared_store(store, f"soak-{run}-{number:03d}") if store is not None
              else contextlib.nullcontext((None, []))) as (location, failed):
            stats = run_kills(workdir / f"store-{number:03d}", count, seed=seed * 1009 + number,
                              log_in_store=log_in_store, store=location)
            failed.extend(stats.failures)
        total.absorb(stats, f"store {number}")
        print(f"store {number}: {stats.kills} kills, {stats.acknowledged} acknowledged, "
              f"{len(stats.failures)} failures", flush=True)
        if stats.failures or stats.kills < count:
            break
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--rotate", type=int, default=25, metavar="N",
                        help="a new store every N kills (0: one store for all)")
    parser.add_argument("--log-in-store", action="store_true",
                        help="the store keeps the audit log (Session(log_in_store=True)) instead of a log file")
    parser.add_argument("--store", metavar="LOCATION", default=None,
                        help="postgresql://... or s3+postgresql://...?bucket=...: a new database (and prefix) "
                             "on these servers for each store, instead of embedded folders")
    args = parser.parse_args()
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="snapstore-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    if args.kills < 1 or args.rotate < 0:
        parser.error("--kills must be at least 1 and --rotate at least 0")
    if args.store is not None and not args.store.startswith(("postgresql://", "postgres://", "s3+postgres")):
        parser.error("--store takes a postgresql:// or s3+postgresql:// location")
    stats = soak(workdir, args.kills, args.seed, args.rotate, args.log_in_store, args.store)
    elapsed = time.monotonic() - started
    print("| kills | acknowledged ops | in-flight ops that landed | rolled forward | failures | seconds |")
    print("|---|---|---|---|---|---|")
    print(f"| {stats.kills} | {stats.acknowledged} | {stats.in_flight_landed} | {stats.rolled_forward} | "
          f"{len(stats.failures)} | {elapsed:.0f} |")
    if args.store is not None:
        print(f"{stats.during_start} of the kills aimed at a worker's start")
    for failure in stats.failures:
        print(f"FAILURE: {failure}")
    return 0 if not stats.failures and stats.kills == args.kills else 1


if __name__ == "__main__":
    sys.exit(main())

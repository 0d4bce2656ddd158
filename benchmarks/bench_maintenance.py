"""Maintenance on the embedded SQLite store: does it keep garbage, and what do gc and compact give back?

    python benchmarks/bench_maintenance.py [--conversations N] [--events N] [--keep N] [--dir DIR]

Builds a store of N conversations driven like the orchestrator drives them
(``_common.ConversationModel``: mostly exchanges of about 1 KB, spawns,
merges), one snapshot per event, then:

1. prunes every conversation to its newest ``--keep`` snapshots;
2. runs ``gc --grace 0`` twice (the first run only records candidates);
3. commits more, to see whether freed pages are reused;
4. runs ``compact`` (checkpoint TRUNCATE + VACUUM + checkpoint TRUNCATE).

After each stage it reports the database file, the WAL file, the page count
and the freelist, as SQLite itself reports them. Results go in
docs/maintenance.md.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import SEED, ConversationModel, machine, table  # noqa: E402
from snapstore.compact import compact, sqlite_space  # noqa: E402
from snapstore.gc import collect_garbage  # noqa: E402
from snapstore.objects import Event  # noqa: E402
from snapstore.prune import prune  # noqa: E402
from snapstore.repository import Repository  # noqa: E402
from snapstore.stats import store_stats  # noqa: E402


def mib(n: int) -> str:
    return f"{n / (1 << 20):.2f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conversations", type=int, default=20)
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--keep", type=int, default=10)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(dir=args.dir, prefix="snap-maint-"))
    location = str(folder / "store")
    db = folder / "store" / "store.sqlite"
    repo = Repository.init(location)
    rng = random.Random(SEED)
    models = [ConversationModel(random.Random(rng.random())) for _ in range(args.conversations)]
    rows = []

    def measure(stage: str, seconds: float | None = None) -> None:
        space = sqlite_space(db)
        objects, stored, _ = repo.backend.count_objects()
        rows.append([stage, objects, mib(stored), mib(space.file_bytes), mib(space.wal_bytes), space.pages,
                     space.free_pages, mib(space.free_bytes), "" if seconds is None else f"{seconds:.2f} s"])

    def commit_events(n: int) -> float:
        start = time.perf_counter()
        for i, model in enumerate(models):
            for _ in range(n):
                model.event()
                repo.commit(f"conv-{i}", model.state(), event=Event("exchange"))
        return time.perf_counter() - start

    measure("built", commit_events(args.events))
    stats = store_stats(repo)
    start = time.perf_counter()
    for i in range(len(models)):
        prune(repo, f"conv-{i}", keep_last=args.keep)
    measure(f"pruned to {args.keep} per conversation", time.perf_counter() - start)
    start = time.perf_counter()
    first = collect_garbage(repo, timedelta(0))
    measure(f"gc #1 (recorded {first.pending})", time.perf_counter() - start)
    start = time.perf_counter()
    second = collect_garbage(repo, timedelta(0))
    measure(f"gc #2 (deleted {second.deleted}, {mib(second.bytes_freed)})", time.perf_counter() - start)
    measure(f"+{args.events // 3} events per conversation", commit_events(args.events // 3))
    start = time.perf_counter()
    report = compact(repo.backend)
    measure("compact", time.perf_counter() - start)
    assert repo.fsck().ok
    print(machine(str(folder)))
    print(f"{args.conversations} conversations x {args.events} events; before pruning: "
          f"{stats.snapshots} snapshots, dedup {stats.dedup_ratio:.1f}x, compression {stats.compression_ratio:.1f}x")
    print(table(["stage", "objects", "stored", "file", "WAL", "pages", "free pages", "free", "time"], rows))
    print(f"compact reclaimed {mib(report.reclaimed)}")
    repo.close()


if __name__ == "__main__":
    main()

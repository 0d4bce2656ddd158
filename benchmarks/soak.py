"""Soak mode of the crash harness: SIGKILL a working orchestrator 1,000+ times.

    python benchmarks/soak.py [--kills 1000] [--seed 1] [--dir PATH] [--rotate 25] [--log-in-store]

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
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.crash.harness import KillStats, run_kills  # noqa: E402


def soak(workdir: Path, kills: int, seed: int, rotate: int, log_in_store: bool) -> KillStats:
    """``kills`` kills in stores of ``rotate`` kills each (one store if 0); the stats summed, stopping at a failure."""
    total = KillStats()
    per_store = rotate if rotate > 0 else kills
    for number, first in enumerate(range(0, kills, per_store)):
        count = min(per_store, kills - first)
        # A seed per store: its own operations and kill moments, reproducible from --seed.
        stats = run_kills(workdir / f"store-{number:03d}", count, seed=seed * 1009 + number,
                          log_in_store=log_in_store)
        total.kills += stats.kills
        total.acknowledged += stats.acknowledged
        total.in_flight_landed += stats.in_flight_landed
        total.rolled_forward += stats.rolled_forward
        total.failures.extend(f"store {number}: {failure}" for failure in stats.failures)
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
    args = parser.parse_args()
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="snapstore-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    if args.kills < 1 or args.rotate < 0:
        parser.error("--kills must be at least 1 and --rotate at least 0")
    stats = soak(workdir, args.kills, args.seed, args.rotate, args.log_in_store)
    elapsed = time.monotonic() - started
    print("| kills | acknowledged ops | in-flight ops that landed | rolled forward | failures | seconds |")
    print("|---|---|---|---|---|---|")
    print(f"| {stats.kills} | {stats.acknowledged} | {stats.in_flight_landed} | {stats.rolled_forward} | "
          f"{len(stats.failures)} | {elapsed:.0f} |")
    for failure in stats.failures:
        print(f"FAILURE: {failure}")
    return 0 if not stats.failures and stats.kills == args.kills else 1


if __name__ == "__main__":
    sys.exit(main())

"""Soak mode of the crash harness: SIGKILL a working orchestrator 1,000+ times.

    python benchmarks/soak.py [--kills 1000] [--seed 1] [--dir PATH]

Each round starts tests/crash/worker.py (random operations with long Unicode
texts, each acknowledged once durable), kills it with SIGKILL at a random
moment, restarts as an API would (rolling forward what was in flight) and
checks: the state equals the last acknowledged one or the one in flight,
`fsck` and `verify` (log chain + cross-check + replay) pass. CI runs 100
kills in tests/test_crash.py; this is the long version.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.crash.harness import run_kills  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--log-in-store", action="store_true",
                        help="the store keeps the audit log (Session(log_in_store=True)) instead of a log file")
    args = parser.parse_args()
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="snapstore-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    stats = run_kills(workdir, args.kills, seed=args.seed, log_in_store=args.log_in_store)
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

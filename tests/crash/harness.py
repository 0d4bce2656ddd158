"""Kill a working orchestrator with SIGKILL at random moments; check nothing acknowledged is lost.

Used by tests/test_crash.py (CI: 100 kills), tests/test_crash_shared.py (the
shared store: PostgreSQL, and PostgreSQL + S3) and benchmarks/soak.py (1,000+).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from snapstore.errors import StoreNotFound
from snapstore.ozolith import OzolithLog
from snapstore.storelog import StoreLog
from snapstore.startup import Session

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class KillStats:
    kills: int = 0
    acknowledged: int = 0
    in_flight_landed: int = 0
    rolled_forward: int = 0
    # Kills aimed at the worker's start (Session init, roll-forward, presence) rather than its work;
    # only runs on a store location choose them (run_kills).
    during_start: int = 0
    failures: list[str] = field(default_factory=list)

    def absorb(self, other: KillStats, label: str) -> None:
        """Add the counts of another run (one store of a run that starts a new store every so many kills),
        its failures named by ``label``."""
        self.kills += other.kills
        self.acknowledged += other.acknowledged
        self.in_flight_landed += other.in_flight_landed
        self.rolled_forward += other.rolled_forward
        self.during_start += other.during_start
        self.failures.extend(f"{label}: {failure}" for failure in other.failures)


def run_kills_rotating(workdir: Path, kills: int, per_store: int, seed: int = 0, **options: object) -> KillStats:
    """``kills`` kills as :func:`run_kills` makes them, in a new embedded store every ``per_store`` kills (each with
    a seed of its own), stopping at a failure: each round reloads and checks the whole tree, so in one store
    rounds grow slower with the kills before them, and a crash is as well proven in 25 kills of a small store."""
    total = KillStats()
    for number, first in enumerate(range(0, kills, per_store)):
        count = min(per_store, kills - first)
        stats = run_kills(workdir / f"store-{number:03d}", count, seed=seed * 1009 + number, **options)  # type: ignore[arg-type]
        total.absorb(stats, f"store {number}")
        if stats.failures or stats.kills < count:
            break
    return total


def _read_acks(proc: subprocess.Popen, deadline: float,
               after_start: float | None = None) -> tuple[list[tuple[int, str, str]], float | None]:
    """Read ACK lines until the deadline; returns (n, snapshot, root) tuples and when START came.

    With ``after_start``, ``deadline`` is only how long the start may take: the
    START line sets the deadline ``after_start`` seconds after it.
    """
    acks = []
    started = None
    os.set_blocking(proc.stdout.fileno(), False)
    buffer = b""
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            chunk = proc.stdout.read()
        except BlockingIOError:
            chunk = None
        if chunk:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                parts = line.decode().split()
                if parts and parts[0] == "ACK":
                    acks.append((int(parts[1]), parts[2], parts[3]))
                elif parts and parts[0] == "START":
                    started = time.monotonic()
                    if after_start is not None:
                        deadline = started + after_start
        else:
            time.sleep(0.001)
    return acks, started


FULL_EVERY = 20
# A store location (run_kills' ``store``): how long a worker may take to start, and the share of kills
# aimed at a start instead of the work after it.
START_TIMEOUT = 60.0
START_KILLS = 0.2


def check_store(store: str | Path, log: Path, last: tuple[int, str, str] | None,
                stats: KillStats, final: bool = False) -> tuple[int, str, str] | None:
    """Restart as the API would (rolling forward) and compare with the last acknowledged state.

    Returns the state now committed: the baseline for the next round.
    """
    hosted = str(log) == "store"
    # Once an operation was acknowledged the store must be there: never made again here (a lost store
    # would pass as a new one). Before that, a worker killed before it made the store leaves none.
    try:
        session = (Session(str(store), log_in_store=True, create=last is None) if hosted
                   else Session(str(store), ozolith=str(log), create=last is None))
    except StoreNotFound:
        stats.failures.append(f"kill {stats.kills}: the store is gone after acknowledged operations")
        return last
    stats.rolled_forward += sum(1 for r in session.report.recoveries if r.action == "rolled-forward")
    repo = session.repo
    try:
        if session.report.status.value == "RECOVERY_NEEDED":
            stats.failures.append(f"kill {stats.kills}: recovery needed: {session.report.problems}")
        head = repo.head("crash")
        if head is None:
            if last is not None:
                stats.failures.append(f"kill {stats.kills}: conversation 'crash' is gone after acknowledged operations")
            return last
        if last is None:
            return (0, head, repo.snapshot(head).root)
        _, acked_snapshot, acked_root = last
        if head == acked_snapshot:
            if repo.snapshot(head).root != acked_root:
                stats.failures.append(f"kill {stats.kills}: head root differs from the acknowledged root")
        elif head is not None and repo.snapshot(head).parents[:1] == (acked_snapshot,):
            stats.in_flight_landed += 1
        else:
            stats.failures.append(f"kill {stats.kills}: head {head} is neither the acknowledged "
                                  f"{acked_snapshot} nor one operation after it")
        repo.load("crash")  # every object of the current tree re-hashed
        from snapstore.verify import verify

        # A full check (every object, the whole chain, the cross-check and the
        # replay) every FULL_EVERY kills and at the end; a sampled one between.
        full = stats.kills % FULL_EVERY == 0 or final
        audit_log = StoreLog(repo.backend) if hosted else OzolithLog(log)
        report = verify(repo, audit_log, sample=None if full else 32, seed=stats.kills)
        if not report.ok:
            stats.failures.append(f"kill {stats.kills}: verify: {[p.message for p in report.problems][:3]}")
        return (last[0], head, repo.snapshot(head).root)
    finally:
        session.close(clean=False)


def run_kills(workdir: Path, kills: int, seed: int = 0, max_run: float = 0.25,
              log_in_store: bool = False, store: str | None = None) -> KillStats:
    """Start, let run for a random moment, SIGKILL, check; ``kills`` times.

    With ``log_in_store`` the store keeps the audit log (snapstore.storelog)
    instead of the OZOLITH file beside it. ``store``: the location to work on
    (``postgresql://...``, ``s3+postgresql://...``: a fresh database, and
    bucket, that the worker creates the store in) instead of the embedded
    folder ``workdir/store``; an OZOLITH file stays in ``workdir``. The worker
    and the checks open the same location, so verify and fsck run against the
    shared store; S3 credentials reach the worker through the environment.

    The embedded folder's kill moments are a fixed delay from the worker's
    launch (as CI has always run them). A worker on a shared store takes
    longer to start (psycopg, boto3, round trips), and by an amount that
    grows with the store and the machine's load, so from a launch it would
    often die before its first operation: there the moment counts from the
    worker's START line, and a share (:data:`START_KILLS`) of kills aim at
    the start itself, anywhere in the time the last start took.
    """
    rng = random.Random(seed)
    location: str | Path = store if store is not None else workdir / "store"
    log = Path("store") if log_in_store else workdir / "ozolith.jsonl"
    stats = KillStats()
    last: tuple[int, str, str] | None = None
    start_took: float | None = None  # the last start seen (a store location only)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for i in range(kills):
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.crash.worker", str(location), str(log), str(seed * 100003 + i)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=env,
        )
        launched = time.monotonic()
        if store is None:
            # Wait for the worker to be up, then kill it at a random moment of its work.
            acks, _ = _read_acks(proc, launched + 0.05 + rng.uniform(0, max_run) + 0.6)
        elif start_took is not None and rng.random() < START_KILLS:
            stats.during_start += 1
            acks, _ = _read_acks(proc, launched + rng.uniform(0, start_took))
        else:
            acks, started = _read_acks(proc, launched + START_TIMEOUT, after_start=0.05 + rng.uniform(0, max_run))
            if started is None and proc.poll() is None:  # (one that exited is reported below)
                stats.failures.append(f"kill {i}: the worker did not start within {START_TIMEOUT:.0f} s")
            elif started is not None:
                start_took = started - launched
        proc.send_signal(signal.SIGKILL)
        rest, err = proc.communicate()
        for line in rest.decode().splitlines():
            parts = line.split()
            if parts and parts[0] == "ACK":
                acks.append((int(parts[1]), parts[2], parts[3]))
        if proc.returncode != -signal.SIGKILL:
            stats.failures.append(f"kill {i}: worker exited {proc.returncode} before the kill: {err.decode()[-500:]}")
            break
        stats.kills += 1
        stats.acknowledged += len(acks)
        if acks:
            last = acks[-1]
        last = check_store(location, log, last, stats, final=i == kills - 1)
        if stats.failures:
            break
    return stats

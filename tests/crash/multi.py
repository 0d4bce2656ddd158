"""Several API replicas on one store; SIGKILL one at random moments while the others keep working.

tests/crash/harness.py kills the only writer of a store. Deployments run
several API processes on one store (docs/scaling.md), so here two or three
worker processes (tests/crash/multi_worker.py) write at once, each on a
conversation of its own or all on one (``shared``: they lose compare-and-swaps
and rebase, and may be refused with ``MergeConflict``). One of them, chosen
at random, is killed at a random moment; then, while the others go on:

- the restart the API would do (a :class:`~snapstore.startup.Session`, which
  rolls forward what the kill left half-done) must not report
  ``RECOVERY_NEEDED``;
- every operation any worker acknowledged (its ``ACK`` line) must be reached
  from its conversation's head, and each head must descend from the head the
  previous check saw (nothing rewound);
- on a conversation of its own, the killed worker's head must be its last
  acknowledged operation or the one in flight;
- every surviving worker must still be running (a survivor's error, or one
  stuck on a lock the dead process held, shows as its exit or its silence);
- every ``verify_every`` kills, every worker is killed at once (the store is
  then still: fsck reads the objects, then the refs, so on a store writers
  keep changing it would find refs naming objects written after its read)
  and ``verify`` runs in full (chain, store, cross-check, replay); once more
  at the end;
- no worker may have written anything to stderr.

The killed worker is then started again (``Session`` + ``resume``), as the
API would. The kill moments count from the victim's ``START`` line (a share
of kills, :data:`~tests.crash.harness.START_KILLS`, hit the start itself), so
a victim always had time to work.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from snapstore.ozolith import OzolithLog
from snapstore.startup import RecoveryStatus, Session
from snapstore.storelog import StoreLog
from tests.crash.harness import ROOT, START_KILLS, START_TIMEOUT

# How long a survivor may go without acknowledging anything (or being refused) while the checks run:
# a writer stuck on a lock the dead process held shows as this silence.
STALL_TIMEOUT = 30.0


@dataclass
class MultiStats:
    kills: int = 0
    # Acknowledged operations per worker slot (every generation of that slot together).
    acknowledged: list[int] = field(default_factory=list)
    refused: int = 0  # MergeConflict / InvalidInput on a shared conversation (nothing written)
    in_flight_landed: int = 0
    rolled_forward: int = 0
    during_start: int = 0
    verified: int = 0
    failures: list[str] = field(default_factory=list)


class _Worker:
    """One worker process, its stdout read by a thread: ACK and REFUSED lines, the START moment."""

    def __init__(self, slot: int, generation: int, conversation: str, location: str, log: str, seed: int,
                 shared: bool, workdir: Path, env: dict[str, str]) -> None:
        self.slot, self.generation, self.conversation = slot, generation, conversation
        self.acks: list[tuple[int, str, str]] = []
        self.refused: list[str] = []
        self.start_head: str | None = None
        self.started = threading.Event()
        self.started_at: float | None = None
        self.last_line = time.monotonic()
        self.err_path = workdir / f"worker-{slot}-{generation}.err"
        with open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.crash.multi_worker", location, log, str(seed), conversation,
                 "1" if shared else "0"],
                stdout=subprocess.PIPE, stderr=err, cwd=ROOT, env=env,
            )
        self.launched = time.monotonic()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            parts = raw.decode().split()
            self.last_line = time.monotonic()
            if parts and parts[0] == "ACK":
                self.acks.append((int(parts[1]), parts[2], parts[3]))
            elif parts and parts[0] == "REFUSED":
                self.refused.append(" ".join(parts[2:]))
            elif parts and parts[0] == "START":
                self.start_head = None if parts[2] == "None" else parts[2]
                self.started_at = time.monotonic()
                self.started.set()

    def kill(self) -> None:
        """SIGKILL, then wait for the process and for every line it printed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._reader.join()
        self.proc.stdout.close()

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    @property
    def name(self) -> str:
        return f"worker {self.slot} (generation {self.generation}, pid {self.proc.pid})"


class _History:
    """What the checks know of each conversation: its head at the last check, and the snapshots it reaches."""

    def __init__(self) -> None:
        self.head: dict[str, str | None] = {}
        self.reached: dict[str, set[str]] = {}

    def advance(self, repo, conv: str, head: str | None) -> str | None:
        """Walk from ``head`` back to the previous check's head; a failure message if it is not an ancestor."""
        before = self.head.get(conv)
        seen = self.reached.setdefault(conv, set())
        walked, at = [], head
        while at is not None and at != before:
            walked.append(at)
            parents = repo.snapshot(at).parents
            at = parents[0] if parents else None
        if at != before:
            return f"conversation {conv!r}: head {head} does not descend from {before}, its head at the last check"
        seen.update(walked)
        self.head[conv] = head
        return None


def run_multi(workdir: Path, kills: int, *, writers: int = 2, shared: bool = False, seed: int = 0,
              max_run: float = 0.25, log_in_store: bool = False, store: str | None = None,
              verify_every: int = 5) -> MultiStats:
    """``writers`` workers on one store; ``kills`` times: kill one at random, check, start it again.

    ``shared``: every worker on the conversation ``crash``; else worker k on
    ``crash-k``. ``log_in_store``: the store keeps the audit log (one chain
    every writer appends to in its commits); else every worker appends to the
    OZOLITH file ``workdir/ozolith.jsonl``. ``store``: a location
    (``postgresql://...``) instead of the embedded folder ``workdir/store``.
    """
    rng = random.Random(seed)
    location = store if store is not None else str(workdir / "store")
    log = "store" if log_in_store else str(workdir / "ozolith.jsonl")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    conversations = ["crash"] * writers if shared else [f"crash-{k}" for k in range(writers)]
    stats = MultiStats(acknowledged=[0] * writers)
    history = _History()
    checked_acks: set[str] = set()
    every: list[_Worker] = []  # every process started, for the acks and the stderr checks
    generations = [0] * writers

    def launch(slot: int) -> _Worker:
        worker = _Worker(slot, generations[slot], conversations[slot], location, log,
                         seed * 100003 + slot * 1009 + generations[slot], shared, workdir, env)
        generations[slot] += 1
        every.append(worker)
        return worker

    running = [launch(k) for k in range(writers)]
    start_took: float | None = None
    try:
        for i in range(kills):
            slot = rng.randrange(writers)
            victim = running[slot]
            if start_took is not None and not victim.started.is_set() and rng.random() < START_KILLS:
                stats.during_start += 1
                time.sleep(max(0.0, victim.launched + rng.uniform(0, start_took) - time.monotonic()))
            else:
                if not _wait_start(victim):
                    if victim.proc.poll() is None:
                        stats.failures.append(f"kill {i}: {victim.name} did not start within {START_TIMEOUT:.0f} s")
                    else:
                        stats.failures.append(f"kill {i}: {victim.name} exited {victim.proc.returncode} "
                                              f"before its start: {victim.stderr()[-800:]}")
                    break
                start_took = victim.started_at - victim.launched
                time.sleep(0.05 + rng.uniform(0, max_run))
            if victim.proc.poll() is not None:
                stats.failures.append(f"kill {i}: {victim.name} exited {victim.proc.returncode} before the kill: "
                                      f"{victim.stderr()[-800:]}")
                break
            victim.kill()
            stats.kills += 1
            if verify_every and (i + 1) % verify_every == 0 and i + 1 < kills:
                # Every worker at once: the store is still, so verify may read it whole (on a store writers
                # keep changing, fsck would read objects, then refs naming objects written since).
                for worker in running:
                    worker.kill()
                _check(i, location, log, [], running, history, checked_acks, stats, full=True)
                if stats.failures:
                    break
                running = [launch(k) for k in range(writers)]
                continue
            _check(i, location, log, [w for w in running if w is not victim], [victim], history, checked_acks,
                   stats, full=False)
            if stats.failures:
                break
            running[slot] = launch(slot)
    finally:
        for worker in running:
            worker.kill()
    if not stats.failures:
        _check(kills, location, log, [], running, history, checked_acks, stats, full=True)
    for worker in every:
        stats.acknowledged[worker.slot] += len(worker.acks)
        stats.refused += len(worker.refused)
        if not stats.failures and worker.stderr().strip():
            stats.failures.append(f"{worker.name} wrote to stderr: {worker.stderr()[-800:]}")
    if not stats.failures:
        for worker in every:
            if not shared and worker.refused:
                stats.failures.append(f"{worker.name} was refused on its own conversation: {worker.refused[:2]}")
    return stats


def _check(i: int, location: str, log: str, survivors: list[_Worker], killed: list[_Worker], history: _History,
           checked_acks: set[str], stats: MultiStats, full: bool) -> None:
    """Restart as the API would, beside the ``survivors`` still running; see the module doc."""
    hosted = log == "store"
    session = (Session(location, log_in_store=True, create=False) if hosted
               else Session(location, ozolith=log, create=False))
    stats.rolled_forward += sum(1 for r in session.report.recoveries if r.action == "rolled-forward")
    repo = session.repo
    try:
        if session.report.status == RecoveryStatus.RECOVERY_NEEDED:
            stats.failures.append(f"kill {i}: recovery needed: {list(session.report.problems)[:3]}")
        for victim in killed:
            if victim.conversation.startswith("crash-"):
                _check_own(i, repo, victim, history, stats)
        # Acks read before the heads: each was durable before it was printed, so the heads reach it.
        acks = {(w.conversation, snap, w.name) for w in survivors + killed for _, snap, _ in list(w.acks)}
        for conv in sorted({w.conversation for w in survivors + killed} | set(history.head)):
            problem = history.advance(repo, conv, repo.head(conv))
            if problem is not None:
                stats.failures.append(f"kill {i}: {problem}")
        for conv, snap, name in sorted(acks):
            if snap not in checked_acks and snap not in history.reached.get(conv, ()):
                stats.failures.append(f"kill {i}: {name}: acknowledged snapshot {snap} is not reached "
                                      f"from the head of {conv!r}")
            checked_acks.add(snap)
        for conv in sorted({w.conversation for w in killed}):
            if repo.head(conv) is not None:
                repo.load(conv)  # every object of its current tree re-hashed
        for worker in survivors:
            if worker.proc.poll() is not None:
                stats.failures.append(f"kill {i}: survivor {worker.name} exited {worker.proc.returncode}: "
                                      f"{worker.stderr()[-800:]}")
            elif worker.started.is_set() and time.monotonic() - worker.last_line > STALL_TIMEOUT:
                stats.failures.append(f"kill {i}: survivor {worker.name} printed nothing for "
                                      f"{STALL_TIMEOUT:.0f} s (stuck?)")
        if full:
            from snapstore.verify import verify

            audit_log = StoreLog(repo.backend) if hosted else OzolithLog(log)
            report = verify(repo, audit_log)
            stats.verified += 1
            if not report.ok:
                stats.failures.append(f"kill {i}: verify: {[p.message for p in report.problems][:3]}")
    finally:
        session.close(clean=False)


def _check_own(i: int, repo, victim: _Worker, history: _History, stats: MultiStats) -> None:
    """A killed worker's own conversation (nobody else moves it): its last acknowledged operation, or the next."""
    if victim.acks:
        _, base, root = victim.acks[-1]
    else:
        base, root = (victim.start_head if victim.started.is_set() else history.head.get(victim.conversation)), None
    head = repo.head(victim.conversation)
    if head == base:
        if root is not None and repo.snapshot(head).root != root:
            stats.failures.append(f"kill {i}: {victim.name}: head root differs from the acknowledged root")
    elif head is not None and repo.snapshot(head).parents[:1] == ((base,) if base else ()):
        stats.in_flight_landed += 1
    else:
        stats.failures.append(f"kill {i}: {victim.name}: head {head} is neither its last acknowledged "
                              f"{base} nor one operation after it")


def _wait_start(worker: _Worker) -> bool:
    """Wait for the worker's START line; False once it exited without one, or after START_TIMEOUT."""
    deadline = time.monotonic() + START_TIMEOUT
    while not worker.started.wait(0.05):
        if worker.proc.poll() is not None or time.monotonic() > deadline:
            return worker.started.is_set()
    return True

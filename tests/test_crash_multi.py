"""Crash proof with several replicas on one embedded store: SIGKILL one writer while the others keep working.

tests/crash/multi.py: two or three worker processes on one store, each on a
conversation of its own or all on one; one is killed at random moments, the
store is restarted beside the survivors as the API would, then the killed
one starts again. Every acknowledged operation of every worker must stay
reached, the killed worker's own conversation must be at its last
acknowledged operation or the one in flight, no start may report
``RECOVERY_NEEDED``, no worker may write to stderr, and ``verify`` must pass
(every few kills, with every worker killed at once, and at the end).
"""

from __future__ import annotations

import os

import pytest

from tests.crash.multi import run_multi

# About 10 s each on a busy 2-core machine.
KILLS = int(os.environ.get("SNAPSTORE_CRASH_KILLS_MULTI", "12"))


@pytest.mark.parametrize("writers, shared, log_in_store", [
    (2, False, False),  # one OZOLITH file every writer appends to
    (3, False, True),  # one chain in the store, every writer's commits append to it
    (2, True, True),  # two writers on one conversation: lost compare-and-swaps, rebases, MergeConflict
    # and with one OZOLITH file: a writer killed between its entry and its ref move while the other moved the
    # conversation on leaves an orphan the next start voids (before: verify failed, or RECOVERY_NEEDED)
    (2, True, False),
], ids=["own-conversations-shared-log-file", "own-conversations-log-in-store", "one-conversation-log-in-store",
        "one-conversation-shared-log-file"])
def test_sigkill_one_of_several_writers(tmp_path, writers, shared, log_in_store):
    stats = run_multi(tmp_path, KILLS, writers=writers, shared=shared, log_in_store=log_in_store,
                      seed=20261201 + writers + 10 * shared + 100 * log_in_store, verify_every=6)
    assert stats.failures == []
    assert stats.kills == KILLS
    assert stats.verified >= 2  # a round with every worker killed, and the end
    # Every worker slot acknowledged operations (each survived some rounds while another was killed).
    assert all(count > KILLS for count in stats.acknowledged), stats.acknowledged
    if log_in_store:
        assert stats.rolled_forward == 0  # entry, objects and ref commit together


def test_a_start_beside_a_writer_waits_for_its_operation_in_flight(tmp_path, monkeypatch):
    """Before, a start beside a running replica (one OZOLITH file) took the replica's entry, appended but
    its ref not moved yet, for one a crash left: it read the head, loaded the snapshot to roll forward,
    and the replica moved the ref meanwhile, so the start's compare-and-swap failed and it reported
    ``RECOVERY_NEEDED`` ("ref ... moved"). Now the start waits for operations in flight."""
    import threading

    from snapstore import audit
    from snapstore.repository import Repository
    from snapstore.startup import RecoveryStatus, Session

    store, log = str(tmp_path / "store"), str(tmp_path / "log.jsonl")
    writer = Session(store, ozolith=log)
    orch = writer.start_new("c", "root")
    appended, finished = threading.Event(), threading.Event()
    real_append, real_tree_of_state = writer._audit.log.append, Repository.tree_of_state
    starting: list[threading.Thread] = []

    def append(*args, **kwargs):
        entry = real_append(*args, **kwargs)
        if args[0] == "exchange":
            appended.set()
            # Paused between the entry and the ref move until the start below is far enough.
            assert go.wait(10), "the start neither blocked nor read the head"
        return entry

    go = threading.Event()
    monkeypatch.setattr(writer._audit.log, "append", append)

    def tree_of_state(self, *args, **kwargs):
        if starting and threading.current_thread() is starting[0]:
            go.set()  # the start is rolling the entry forward: let the writer move its ref first
            assert finished.wait(10)
        return real_tree_of_state(self, *args, **kwargs)

    monkeypatch.setattr(Repository, "tree_of_state", tree_of_state)

    import fcntl

    class Flock:  # the start about to wait for the writer's operation: let the writer finish it
        LOCK_EX, LOCK_SH = fcntl.LOCK_EX, fcntl.LOCK_SH

        @staticmethod
        def flock(fd, op):
            if op == fcntl.LOCK_EX and starting and threading.current_thread() is starting[0]:
                go.set()
            return fcntl.flock(fd, op)

    monkeypatch.setattr(audit, "fcntl", Flock, raising=False)  # (the code before had no such lock)

    def operate():
        orch.add_exchange("SB-1", "q", "a")
        finished.set()

    working = threading.Thread(target=operate)
    working.start()
    assert appended.wait(10)
    reports = []
    starting.append(threading.Thread(target=lambda: reports.append(Session(store, ozolith=log))))
    starting[0].start()
    starting[0].join(20)
    working.join(20)
    assert finished.is_set() and reports
    started = reports[0]
    try:
        assert started.report.status != RecoveryStatus.RECOVERY_NEEDED, started.report.problems
        assert started.repo.head("c") == orch.head
    finally:
        started.close()
        writer.close()

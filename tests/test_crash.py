"""Crash proof: SIGKILL a working orchestrator at random moments; nothing acknowledged is lost."""

from __future__ import annotations

import os

from tests.crash.harness import run_kills, run_kills_rotating

# CI runs at least 100 kills; benchmarks/soak.py runs 1,000 or more.
KILLS = int(os.environ.get("SNAPSTORE_CRASH_KILLS", "100"))
KILLS_LOG_IN_STORE = int(os.environ.get("SNAPSTORE_CRASH_KILLS_LOG_IN_STORE", "20"))
PER_STORE = 25


def test_sigkill_at_random_moments_loses_nothing_acknowledged(tmp_path):
    # A new store every PER_STORE kills, as the soak does: in one store each round reloads a tree grown by
    # every round before it (5 minutes for 100 kills; 2 in stores of 25), and proves no more.
    stats = run_kills_rotating(tmp_path, KILLS, PER_STORE, seed=20261127)
    assert stats.failures == []
    assert stats.kills == KILLS
    # The harness really exercised the store: operations were acknowledged between kills.
    assert stats.acknowledged > KILLS


def test_sigkill_with_the_log_in_the_store(tmp_path):
    """The same with the audit log kept in the store: entry, objects and ref commit together,
    so after any kill the head is the acknowledged operation or the one in flight, never between."""
    stats = run_kills(tmp_path, KILLS_LOG_IN_STORE, seed=20261128, log_in_store=True)
    assert stats.failures == []
    assert stats.kills == KILLS_LOG_IN_STORE
    assert stats.acknowledged > KILLS_LOG_IN_STORE
    assert stats.rolled_forward == 0  # nothing is ever half-committed


def test_the_harness_reports_a_store_or_conversation_lost_after_acknowledgements(tmp_path):
    """The check itself: before, a store gone after acknowledged operations was made again by the restart
    and a missing conversation passed as "nothing committed yet"."""
    from snapstore.startup import Session
    from tests.crash.harness import KillStats, check_store

    stats, log = KillStats(), tmp_path / "log.jsonl"
    acknowledged = (3, "ab" * 32, "cd" * 32)
    assert check_store(tmp_path / "gone", log, acknowledged, stats) == acknowledged
    assert not (tmp_path / "gone").exists()
    Session(str(tmp_path / "empty"), ozolith=str(log)).close()
    check_store(tmp_path / "empty", log, acknowledged, stats)
    assert len(stats.failures) == 2, stats.failures
    assert "the store is gone" in stats.failures[0] and "'crash' is gone" in stats.failures[1]
    # Before anything was acknowledged, neither is a failure.
    assert check_store(tmp_path / "empty", log, None, stats) is None and len(stats.failures) == 2

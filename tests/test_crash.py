"""Crash proof: SIGKILL a working orchestrator at random moments; nothing acknowledged is lost."""

from __future__ import annotations

import os

from tests.crash.harness import run_kills

# CI runs at least 100 kills; benchmarks/soak.py runs 1,000 or more.
KILLS = int(os.environ.get("SNAPSTORE_CRASH_KILLS", "100"))
KILLS_LOG_IN_STORE = int(os.environ.get("SNAPSTORE_CRASH_KILLS_LOG_IN_STORE", "20"))


def test_sigkill_at_random_moments_loses_nothing_acknowledged(tmp_path):
    stats = run_kills(tmp_path, KILLS, seed=20261127)
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

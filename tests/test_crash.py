"""Crash proof: SIGKILL a working orchestrator at random moments; nothing acknowledged is lost."""

from __future__ import annotations

import os

from tests.crash.harness import run_kills

# CI runs at least 100 kills; benchmarks/soak.py runs 1,000 or more.
KILLS = int(os.environ.get("SNAPSTORE_CRASH_KILLS", "100"))


def test_sigkill_at_random_moments_loses_nothing_acknowledged(tmp_path):
    stats = run_kills(tmp_path, KILLS, seed=20261127)
    assert stats.failures == []
    assert stats.kills == KILLS
    # The harness really exercised the store: operations were acknowledged between kills.
    assert stats.acknowledged > KILLS

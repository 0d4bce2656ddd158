"""Startup against an OZOLITH log that is behind the store, and a discard that lasts across restarts."""

from __future__ import annotations

import pytest

from snapstore.audit import link_of
from snapstore.errors import InvalidInput, LogError
from snapstore.ozolith import OzolithLog
from snapstore.repository import Repository
from snapstore.startup import RecoveryStatus, Session, inspect


def _store_with_entries(tmp_path, exchanges: int):
    """A store whose conversation 'c' links log entries 1 .. 1 + exchanges; the session is left open."""
    store, logfile = str(tmp_path / "store"), tmp_path / "log.jsonl"
    s = Session(store, ozolith=str(logfile))
    orch = s.start_new("c", "root")
    for i in range(exchanges):
        orch.add_exchange(orch.active_context_id, f"q{i}", f"a{i}")
    return s, orch, store, logfile


def _behind(store: str, logfile, highest: int, holds: str) -> None:
    """A start on this log reports RECOVERY_NEEDED saying why, and appends nothing to it."""
    before = logfile.read_bytes() if logfile.exists() else None
    # `snap status`'s read-only inspection says so too.
    repo = Repository.open(store)
    try:
        assert inspect(repo, OzolithLog(logfile)).status is RecoveryStatus.RECOVERY_NEEDED
    finally:
        repo.close()
    s = Session(store, ozolith=str(logfile))
    try:
        assert s.report.status is RecoveryStatus.RECOVERY_NEEDED, s.report
        [problem] = [p for p in s.report.problems if str(logfile) in p]
        assert str(highest) in problem and "'c'" in problem and holds in problem, problem
        orch = s.resume("c")
        head = orch.head
        with pytest.raises(LogError, match="not appending"):
            orch.add_exchange(orch.active_context_id, "after", "the restart")
        assert s.repo.head("c") == head  # the operation did not happen
        assert (logfile.read_bytes() if logfile.exists() else None) == before  # and wrote nothing
        with pytest.raises(InvalidInput, match="nothing to discard"):  # the log must be restored
            s.discard()
    finally:
        s.close()
    # Still refused at the next start: nothing was decided on the caller's behalf.
    again = Session(store, ozolith=str(logfile))
    try:
        assert again.report.status is RecoveryStatus.RECOVERY_NEEDED
    finally:
        again.close()


def test_a_deleted_log_is_recovery_needed_and_not_reused(tmp_path):
    s, _, store, logfile = _store_with_entries(tmp_path, 3)
    s.close()
    logfile.unlink()
    _behind(store, logfile, 4, "missing")


def test_an_older_copy_of_the_log_is_recovery_needed_and_not_reused(tmp_path):
    s, orch, store, logfile = _store_with_entries(tmp_path, 2)
    old = logfile.read_bytes()  # entries 1..3
    orch.add_exchange(orch.active_context_id, "q", "a")  # entry 4, linked by the store
    s.close()
    logfile.write_bytes(old)
    _behind(store, logfile, 4, "ends at entry 3")


def test_another_log_of_the_same_length_is_recovery_needed(tmp_path):
    s, _, store, logfile = _store_with_entries(tmp_path, 1)
    s.close()
    logfile.unlink()
    other = Session(str(tmp_path / "other"), ozolith=str(logfile))  # a log of its own, 2 entries long
    o = other.start_new("x", "root")
    o.add_exchange(o.active_context_id, "q", "a")
    other.close()
    _behind(store, logfile, 2, "hash")


def test_a_log_ahead_of_the_store_still_rolls_forward(tmp_path):
    s, orch, store, logfile = _store_with_entries(tmp_path, 1)
    head = orch.head

    appended = []
    real = s._audit

    def append_then_die(event_type, context_id, actor, payload):
        appended.append(real(event_type, context_id, actor, payload))
        orch._audit = None  # a dead process writes no correction entry either
        raise KeyboardInterrupt  # the process died after the entry, before the ref moved

    orch._audit = append_then_die
    with pytest.raises(KeyboardInterrupt):
        orch.add_exchange(orch.active_context_id, "q", "a")
    s.close(clean=False)
    assert appended and Repository.open(store).head("c") == head
    again = Session(store, ozolith=str(logfile))
    try:
        assert [r.action for r in again.report.recoveries] == ["rolled-forward"]
        assert again.report.status is not RecoveryStatus.RECOVERY_NEEDED, again.report.problems
        resumed = again.resume("c")
        resumed.add_exchange(resumed.active_context_id, "more", "after")  # appends are allowed
    finally:
        again.close()


@pytest.mark.parametrize("clean", [True, False])
def test_discard_is_remembered_across_restarts(tmp_path, clean):
    s, orch, store, logfile = _store_with_entries(tmp_path, 1)
    last = s.log.last()
    # An entry whose snapshot never reached the store: the caller discards it.
    s.log.append("exchange", orch.active_context_id, "system", {"snapstore": dict(
        link_of(last), snapshot="ab" * 32, parent=orch.head, root="cd" * 32, nodes={})})
    s.close()
    first = Session(store, ozolith=str(logfile))
    assert first.report.status is RecoveryStatus.RECOVERY_NEEDED
    assert [(r.sequence, r.action) for r in first.report.recoveries] == [(3, "missing-objects")]
    first.discard()
    assert first.report.status is not RecoveryStatus.RECOVERY_NEEDED
    first.close(clean=clean)
    again = Session(store, ozolith=str(logfile))
    try:
        assert again.report.status is (RecoveryStatus.CLEAN if clean else RecoveryStatus.AUDIT_RECOMMENDED)
        assert again.report.recoveries == () and not any("ab" * 6 in p for p in again.report.problems)
        resumed = again.resume("c")
        resumed.add_exchange(resumed.active_context_id, "q", "a")  # entry 4: the log goes on
        assert again.log.last().sequence == 4
    finally:
        again.close()
    # A later unmatched entry is still reported: only what was discarded is left alone.
    log = OzolithLog(logfile)
    log.append("exchange", "SB-1", "system", {"snapstore": dict(
        link_of(log.last()), snapshot="ef" * 32, root="cd" * 32, nodes={})})
    third = Session(store, ozolith=str(logfile))
    try:
        assert third.report.status is RecoveryStatus.RECOVERY_NEEDED
        assert [r.sequence for r in third.report.recoveries] == [5]
    finally:
        third.close()


def test_snap_status_reports_a_deleted_log_and_still_catches_a_mistyped_path(tmp_path):
    from click.testing import CliRunner

    from snapstore.cli.main import cli

    s, _, store, logfile = _store_with_entries(tmp_path, 1)
    s.close()
    logfile.unlink()
    result = CliRunner().invoke(cli, ["--store", store, "status", "--ozolith", str(logfile)])
    assert result.exit_code == 1, result.output
    assert "status: RECOVERY_NEEDED" in result.output and "is missing or empty" in result.output
    assert "conversation 'c' to its entry 2" in result.output
    empty = str(tmp_path / "empty")
    Repository.init(empty).close()
    typo = CliRunner().invoke(cli, ["--store", empty, "status", "--ozolith", str(tmp_path / "typo.jsonl")])
    assert typo.exit_code == 1 and typo.output.strip().endswith("typo.jsonl: no such log file"), typo.output

"""An entry left by a writer killed before its ref move, while another writer moved the conversation on.

Two writers of one OZOLITH file on one conversation: A appends its entry N
(its snapshot's parent is the head H) and dies before its ref move; B then
commits its own operation on H (entry N+1) and moves the ref. Entry N is an
orphan: never applied, and it never can be (the head moved on from its
parent). Before, a start read the log only past the conversation's newest
link (N+1) or past a recorded mark, so it never judged N, and even recorded a
mark past it; ``verify`` then reported it forever ("log entry N names snapshot
..., which no history of ... reaches", and a replay mismatch). Now a start
judges every linked entry past the mark, voids such an orphan with a
``correction`` entry (action ``voided``), and ``verify`` passes.
"""

from __future__ import annotations

import json

import pytest

from snapstore.audit import CHECKED_KEY, LinkedLog
from snapstore.errors import CommitOutcomeUnknown
from snapstore.orchestrator import ConversationOrchestrator
from snapstore.ozolith import OzolithLog
from snapstore.ozolith import log as ozolith_log
from snapstore.startup import RecoveryStatus, Session, inspect
from snapstore.verify import verify

from .factories import crash_after_append


def _work(session: Session, conversation: str, operations: int) -> ConversationOrchestrator:
    orch = session.resume(conversation) if session.repo.head(conversation) else session.start_new(conversation, "t")
    for i in range(operations):
        orch.add_exchange(orch.active_context_id, f"q{i}", f"a{i}")
    return orch


def _orphan_then_moved_on(store: str, logfile: str, *, marked: bool) -> tuple[int, str]:
    """Conversation "c" with entry N orphaned (A died) and B's later commit on the same head; the orphan's
    sequence and its snapshot. ``marked``: a clean run and a start recorded a mark first."""
    s = Session(store, ozolith=logfile)
    _work(s, "c", 3)
    if marked:
        s.close()
        s = Session(store, ozolith=logfile)
    head = s.repo.head("c")
    orphan = crash_after_append(s, "c", "never acknowledged")
    snapshot = s.log.last().payload["snapstore"]["snapshot"]
    assert s.log.last().payload["snapstore"]["parent"] == head and s.repo.head("c") == head
    _work(s, "c", 2)  # B: its first commit continues the same head, entry N+1
    s.close(clean=False)  # and B is killed too (or not: the start below is the same)
    return orphan, snapshot


@pytest.mark.parametrize("marked", [False, True], ids=["no-mark", "past-a-mark"])
def test_a_start_voids_an_entry_the_conversation_moved_on_from(tmp_path, marked):
    store, logfile = str(tmp_path / "store"), str(tmp_path / "log.jsonl")
    orphan, snapshot = _orphan_then_moved_on(store, logfile, marked=marked)
    s = Session(store, ozolith=logfile)
    try:
        # Before: no recovery at all (the entry was never read as pending), and verify failed below.
        assert [(r.sequence, r.action) for r in s.report.recoveries] == [(orphan, "voided")], s.report
        assert s.report.status is RecoveryStatus.AUDIT_RECOMMENDED, s.report
        message = s.report.recoveries[0].message
        assert f"log entry {orphan}" in message and f"entry {orphan + 1}" in message and "voided" in message
        correction = s.log.last()
        assert correction.event_type == "correction"
        assert correction.payload["snapstore"] == {"void": orphan, "conversation": "c"}
        assert snapshot not in {info.id for info in s.repo.log("c")}  # voided, not applied
        assert [x["user"] for x in s.repo.load("c").contexts[0]["local_memory"]] == [
            "q0", "q1", "q2", "q0", "q1"]
        report = verify(s.repo, OzolithLog(logfile))
        assert report.ok, [p.message for p in report.problems]
    finally:
        s.close()
    with Session(store, ozolith=logfile) as s:  # settled: nothing to report again, and the mark is past it
        assert s.report.status is RecoveryStatus.CLEAN and s.report.recoveries == (), s.report
        assert json.loads(s.repo.backend.get_meta(CHECKED_KEY))["sequence"] >= orphan + 1


def test_the_mark_a_start_records_never_passes_an_orphan(tmp_path):
    """Before, the start below recorded a mark past the orphan ("every entry up to here is settled"), so no
    later start could find it even once its judging was fixed."""
    store, logfile = str(tmp_path / "store"), str(tmp_path / "log.jsonl")
    orphan, _ = _orphan_then_moved_on(store, logfile, marked=True)
    with Session(store, ozolith=logfile) as s:
        assert [r.action for r in s.report.recoveries] == ["voided"]
        voided = {e.payload["snapstore"]["void"] for e in s.log.entries() if e.event_type == "correction"}
    assert voided == {orphan}


def test_an_orphan_between_other_conversations_links_is_found(tmp_path):
    """The orphan is below every conversation's newest link (the old bound read none of it) but past the mark."""
    store, logfile = str(tmp_path / "store"), str(tmp_path / "log.jsonl")
    with Session(store, ozolith=logfile) as s:
        _work(s, "c", 2)
        _work(s, "d", 2)
    s = Session(store, ozolith=logfile)
    orphan = crash_after_append(s, "c", "never acknowledged")
    _work(s, "c", 1)
    _work(s, "d", 1)
    s.close(clean=False)
    with Session(store, ozolith=logfile) as s:
        assert [(r.sequence, r.action) for r in s.report.recoveries] == [(orphan, "voided")], s.report
        assert verify(s.repo, s.log).ok


def test_an_entry_of_unknown_outcome_that_never_landed_is_voided_once_the_next_operation_moves_on(tmp_path):
    """One writer alone: a commit whose outcome the store could not report (the ref never moved), then the same
    orchestrator's next operation on the head it knew. The first entry is an orphan as after a kill."""
    store, logfile = str(tmp_path / "store"), str(tmp_path / "log.jsonl")
    s = Session(store, ozolith=logfile)
    orch = _work(s, "c", 2)
    real = s.repo.backend.write

    def write(objects=(), ref_updates=(), *args, **kwargs):
        if ref_updates:
            raise CommitOutcomeUnknown("connection lost during COMMIT")
        return real(objects, ref_updates, *args, **kwargs)

    s.repo.backend.write = write
    with pytest.raises(CommitOutcomeUnknown):
        orch.add_exchange(orch.active_context_id, "in doubt", "a")
    del s.repo.backend.write
    unknown = s.log.last().sequence
    orch.add_exchange(orch.active_context_id, "next", "a")
    s.close()
    with Session(store, ozolith=logfile) as s:
        assert [(r.sequence, r.action) for r in s.report.recoveries] == [(unknown, "voided")], s.report
        assert "in doubt" not in [x["user"] for x in s.repo.load("c").contexts[0]["local_memory"]]
        assert verify(s.repo, s.log).ok


def test_an_orphan_whose_parent_is_the_head_again_is_rolled_forward_as_before(tmp_path):
    """Judged, not voided blindly: an entry whose parent is the head can still be rolled forward (here the head
    was put back on its parent by a write that links no entry), as a pending entry is."""
    from snapstore.backends.base import RefUpdate
    from snapstore.refs import ref_name

    store, logfile = str(tmp_path / "store"), str(tmp_path / "log.jsonl")
    s = Session(store, ozolith=logfile)
    _work(s, "c", 2)
    head = s.repo.head("c")
    orphan = crash_after_append(s, "c", "never acknowledged")
    _work(s, "c", 1)
    s.repo.backend.write(ref_updates=[RefUpdate(ref_name("c"), s.repo.head("c"), head, "put back by hand")])
    s.close(clean=False)
    with Session(store, ozolith=logfile) as s:
        assert [(r.sequence, r.action) for r in s.report.recoveries] == [(orphan, "rolled-forward")], s.report
        assert s.repo.load("c").contexts[0]["local_memory"][-1]["user"] == "never acknowledged"


def test_a_read_only_inspect_reports_the_orphan_and_leaves_the_log_alone(tmp_path):
    store, logfile = str(tmp_path / "store"), str(tmp_path / "log.jsonl")
    orphan, _ = _orphan_then_moved_on(store, logfile, marked=True)
    from snapstore.repository import Repository

    repo = Repository.open(store)
    try:
        last = OzolithLog(logfile).last().sequence
        report = inspect(repo, OzolithLog(logfile))
        assert [(r.sequence, r.action) for r in report.recoveries] == [(orphan, "pending")], report
        assert "a start voids it" in report.recoveries[0].message
        assert report.status is RecoveryStatus.RECOVERY_NEEDED
        assert OzolithLog(logfile).last().sequence == last
    finally:
        repo.close()


def test_a_start_after_a_long_run_reads_only_past_the_mark_to_find_the_orphan(tmp_path, monkeypatch):
    """The bound: a long clean run, then a short crashed one leaving an orphan. The start reads the crashed run's
    entries (past the mark the clean close recorded), not the log."""
    counted = [0]
    parse = ozolith_log._parse_entry

    def count(*args):
        counted[0] += 1
        return parse(*args)

    store, logfile = str(tmp_path / "store"), str(tmp_path / "log.jsonl")
    with Session(store, ozolith=logfile) as s:
        _work(s, "idle", 1)
        for n in range(3):
            _work(s, f"busy{n}", 100)
    total = OzolithLog(logfile).last().sequence
    s = Session(store, ozolith=logfile)
    orphan = crash_after_append(s, "busy1", "never acknowledged")
    for n in range(3):
        _work(s, f"busy{n}", 4)
    s.close(clean=False)
    monkeypatch.setattr(ozolith_log, "_parse_entry", count)
    with Session(store, ozolith=logfile) as s:
        assert [(r.sequence, r.action) for r in s.report.recoveries] == [(orphan, "voided")], s.report
    assert counted[0] < 30 < total, (counted[0], total)


def test_an_entry_that_lost_the_race_to_an_earlier_entry_is_voided(tmp_path):
    """The orphan is past the conversation's newest link: B appended its entry N first, A its entry N+1 on the same
    head and died, then B moved the ref linking N. Before, the start reported N+1 "diverged" (the head is not its
    parent: RECOVERY_NEEDED), found by tests/crash/multi.py (two writers, one conversation, one log file)."""
    store, logfile = str(tmp_path / "store"), str(tmp_path / "log.jsonl")
    s = Session(store, ozolith=logfile)
    _work(s, "c", 2)
    hook, lost = LinkedLog(s.log), []

    def append_then_another_appends_and_dies(*args):
        appended = hook(*args)
        if not lost:
            lost.append(crash_after_append(s, "c", "never acknowledged"))
        return appended

    winner = ConversationOrchestrator(s.repo, "c", audit=append_then_another_appends_and_dies)
    winner.add_exchange(winner.active_context_id, "won", "a")
    assert s.repo.head("c") == winner.head and s.repo.reflog("c")[-1].log_sequence == lost[0] - 1
    s.close(clean=False)
    with Session(store, ozolith=logfile) as s:
        assert [(r.sequence, r.action) for r in s.report.recoveries] == [(lost[0], "voided")], s.report
        assert s.report.status is RecoveryStatus.AUDIT_RECOMMENDED
        assert f"(entry {lost[0] - 1})" in s.report.recoveries[0].message
        assert [x["user"] for x in s.repo.load("c").contexts[0]["local_memory"]] == ["q0", "q1", "won"]
        assert verify(s.repo, s.log).ok

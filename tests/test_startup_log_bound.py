"""How much of the audit log a start reads when one conversation has long been idle.

A start looks for log entries no ref reached (to roll them forward). Before,
it read every entry after the *oldest* conversation's newest link, so one idle
conversation made every start read and parse nearly the whole log. Now the
bound follows what can be pending (snapstore/audit.py): with the log kept in
the store, nothing older than the newest link of any conversation; with an
OZOLITH file, nothing at or below the mark the previous start recorded. These
tests count the entries parsed through a wrapper of the real parser, and check
that every recovery still happens: a crash-left entry is rolled forward, an
unresolved one is reported at every start until discarded, and a damaged mark,
another log's mark or an older copy of the log costs reads, never an entry.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from snapstore.audit import LinkedLog
from snapstore.errors import InvalidInput
from snapstore.ozolith import OzolithLog
from snapstore.ozolith import log as ozolith_log
from snapstore.startup import RecoveryStatus, Session
from snapstore.storelog import StoreLog

from .factories import crash_after_append
from .shared_backends import SHARED_FACTORIES

CHECKED_KEY = "startup/log_checked"  # the meta a start records its mark in (docs/design.md)
BUSY = 3  # conversations that keep working while "idle" does nothing
OPERATIONS = 40  # per busy conversation


class Parsed:
    """How many log entries were parsed (each through the real parser) since the last :meth:`reset`."""

    def __init__(self) -> None:
        self.count = 0

    def reset(self) -> None:
        self.count = 0


@pytest.fixture
def parsed(monkeypatch) -> Parsed:
    """Counts rows of the log kept in the store and lines of an OZOLITH file as they are parsed."""
    counter = Parsed()
    row, line = StoreLog._entry, ozolith_log._parse_entry

    def count_row(self, sequence, text):
        counter.count += 1
        return row(self, sequence, text)

    def count_line(*args):
        counter.count += 1
        return line(*args)

    monkeypatch.setattr(StoreLog, "_entry", count_row)
    monkeypatch.setattr(ozolith_log, "_parse_entry", count_line)
    return counter


@pytest.fixture(params=["sqlite", "postgres"])
def location(request, tmp_path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "store")
        return
    for factory in SHARED_FACTORIES["postgres"](tmp_path):
        factory.init().close()
        yield factory.location


def _work(session: Session, conversation: str, operations: int) -> None:
    orch = session.resume(conversation) if session.repo.head(conversation) else session.start_new(conversation, "t")
    for i in range(operations):
        orch.add_exchange(orch.active_context_id, f"q{i}", f"a{i}")


def _idle_then_busy(session: Session, operations: int = OPERATIONS) -> None:
    """Conversation 'idle' links the first entries of the log; the busy ones everything after."""
    _work(session, "idle", 1)
    for n in range(BUSY):
        _work(session, f"busy{n}", operations)


def test_in_store_log_start_reads_past_the_newest_link_only(location, parsed):
    with Session(location, log_in_store=True) as s:
        _idle_then_busy(s)
        entries = s.log.last().sequence
    assert entries > BUSY * OPERATIONS
    parsed.reset()
    s = Session(location, log_in_store=True)
    try:
        assert s.report.status is RecoveryStatus.CLEAN, s.report
        # Before: every entry after idle's newest link, nearly the whole log.
        assert parsed.count <= 2, parsed.count
        # The busy conversations work on; the next start (after a kill) reads as little.
        _work(s, "busy0", 5)
    finally:
        s.close(clean=False)
    parsed.reset()
    again = Session(location, log_in_store=True)
    try:
        assert again.report.status is RecoveryStatus.AUDIT_RECOMMENDED, again.report
        assert again.report.recoveries == ()
        assert parsed.count <= 4, parsed.count  # the log's last entry, and the chain's sampled check reads its own
    finally:
        again.close()


def test_the_log_kept_in_the_store_appends_no_linked_entry_on_its_own(tmp_path):
    """What the in-store bound rests on: a linked entry only ever commits with its ref move."""
    with Session(str(tmp_path / "store"), log_in_store=True) as s:
        orch = s.start_new("c", "root")
        last = s.log.last()
        with pytest.raises(InvalidInput, match="committed with its ref move"):
            s.log.append("exchange", orch.active_context_id, "system", {"snapstore": {
                "conversation": "c", "snapshot": "ab" * 32, "parent": s.repo.head("c"), "root": "cd" * 32,
                "nodes": {}}})
        assert s.log.last() == last
        # An entry naming no snapshot (a correction, a note) is still appended on its own.
        s.log.append("correction", orch.active_context_id, "system", {"snapstore": {"void": 1, "conversation": "c"}})
        assert s.log.last().sequence == last.sequence + 1


def _missing_objects_entry(logfile, conversation: str, parent: str) -> int:
    """A linked entry naming a snapshot the store never got; its sequence."""
    return OzolithLog(logfile).append("exchange", "SB-1", "system", {"snapstore": {
        "conversation": conversation, "snapshot": "ab" * 32, "parent": parent, "root": "cd" * 32,
        "nodes": {}}}).sequence


def test_ozolith_start_reads_past_the_previous_starts_mark(tmp_path, parsed):
    store, logfile = str(tmp_path / "store"), tmp_path / "log.jsonl"
    with Session(store, ozolith=str(logfile)) as s:
        _idle_then_busy(s)
    Session(store, ozolith=str(logfile)).close()  # the first start with a mark to record reads it all
    total = OzolithLog(logfile).last().sequence

    # Work on, then a kill between an entry and its ref move.
    s = Session(store, ozolith=str(logfile))
    _work(s, "busy1", 10)
    lost = crash_after_append(s, "busy1")
    s.close(clean=False)
    parsed.reset()
    s = Session(store, ozolith=str(logfile))
    assert [(r.sequence, r.action) for r in s.report.recoveries] == [(lost, "rolled-forward")]
    assert s.repo.load("busy1").contexts[0]["local_memory"][-1]["user"] == "lost?"
    # Before: every entry after idle's link (> total); now the 11 since the mark and a few for the checks.
    assert parsed.count < 25 < total, (parsed.count, total)

    # An entry that cannot be rolled forward is reported by every start, however far the log moves on.
    unresolved = _missing_objects_entry(logfile, "busy2", s.repo.head("busy2"))
    s.close()
    for _ in range(2):
        parsed.reset()
        s = Session(store, ozolith=str(logfile))
        assert s.report.status is RecoveryStatus.RECOVERY_NEEDED
        assert [(r.sequence, r.action) for r in s.report.recoveries] == [(unresolved, "missing-objects")]
        assert parsed.count < 25, parsed.count
        _work(s, "busy0", 5)
        s.close()
    s = Session(store, ozolith=str(logfile))
    s.discard()
    s.close()
    for _ in range(2):  # discarded: left alone, and the mark moves past it
        parsed.reset()
        s = Session(store, ozolith=str(logfile))
        assert s.report.status is RecoveryStatus.CLEAN and s.report.recoveries == (), s.report
        assert parsed.count < 20, parsed.count
        s.close()
    with Session(store, ozolith=str(logfile)) as s:
        assert json.loads(s.repo.backend.get_meta(CHECKED_KEY))["sequence"] == s.log.last().sequence


@pytest.mark.parametrize("mark", ["not json", json.dumps({"sequence": "7", "entry_hash": 1}), "another log"])
def test_a_mark_this_log_does_not_hold_costs_reads_never_an_entry(tmp_path, mark):
    store, logfile = str(tmp_path / "store"), tmp_path / "log.jsonl"
    with Session(store, ozolith=str(logfile)) as s:
        _idle_then_busy(s, 5)
    s = Session(store, ozolith=str(logfile))
    lost = crash_after_append(s, "busy0")
    _work(s, "busy1", 3)  # the mark below names an entry past the lost one
    last = s.log.last().sequence
    if mark == "another log":
        mark = json.dumps({"sequence": last, "entry_hash": "00" * 32})
    s.repo.backend.write(meta={CHECKED_KEY: mark})
    s.close(clean=False)
    s = Session(store, ozolith=str(logfile))
    try:
        assert [(r.sequence, r.action) for r in s.report.recoveries] == [(lost, "rolled-forward")]
        assert any(CHECKED_KEY in c or "with the hash a start recorded" in c for c in s.report.checks), s.report
    finally:
        s.close()
    with Session(store, ozolith=str(logfile)) as s:  # recorded again, and used
        assert s.report.status is RecoveryStatus.CLEAN, s.report
        assert json.loads(s.repo.backend.get_meta(CHECKED_KEY))["sequence"] == last


def test_an_older_copy_of_the_log_is_read_whole_and_named(tmp_path):
    store, logfile = str(tmp_path / "store"), tmp_path / "log.jsonl"
    with Session(store, ozolith=str(logfile)) as s:
        _idle_then_busy(s, 5)
    older = logfile.read_bytes()
    with Session(store, ozolith=str(logfile)) as s:
        _work(s, "busy2", 5)
    with Session(store, ozolith=str(logfile)) as s:  # records a mark past the older copy's end
        marked = json.loads(s.repo.backend.get_meta(CHECKED_KEY))["sequence"]
    logfile.write_bytes(older)
    s = Session(store, ozolith=str(logfile))
    try:
        assert s.report.status is RecoveryStatus.RECOVERY_NEEDED and s.report.log_behind is not None
        assert any(f"no entry {marked}" in c for c in s.report.checks), s.report.checks
        # Nothing is recorded from a log behind the store.
        assert json.loads(s.repo.backend.get_meta(CHECKED_KEY))["sequence"] == marked
    finally:
        s.close()


# -- a clean close moves the mark over what the run settled ------------------------------------------------------

LONG = 150  # operations of the "long" run, per busy conversation


def _marked(session: Session) -> int:
    return json.loads(session.repo.backend.get_meta(CHECKED_KEY))["sequence"]


@pytest.mark.parametrize("fresh", [True, False], ids=["first-run", "after-a-start"])
def test_a_start_after_a_long_clean_run_reads_only_past_it(tmp_path, parsed, fresh):
    """Before, the mark moved only at starts: the next start parsed every entry of the whole run."""
    store, logfile = str(tmp_path / "store"), tmp_path / "log.jsonl"
    if not fresh:  # a store with a history and a mark its last start recorded
        with Session(store, ozolith=str(logfile)) as s:
            _idle_then_busy(s, 5)
        Session(store, ozolith=str(logfile)).close()
    with Session(store, ozolith=str(logfile)) as s:
        _idle_then_busy(s, LONG)
        last = s.log.last()
    assert last.sequence > BUSY * LONG
    parsed.reset()
    s = Session(store, ozolith=str(logfile))
    try:
        assert s.report.status is RecoveryStatus.CLEAN and s.report.recoveries == (), s.report
        # The marked entry (checked to be this log's) and nothing past it: 1, not the run's 450+.
        assert parsed.count <= 2, parsed.count
        assert _marked(s) == last.sequence
        # Appends go on where the log ends, and the mark moves again at this close.
        _work(s, "busy0", 3)
        assert s.log.last().sequence == last.sequence + 3
    finally:
        s.close()
    assert _marked_after(store) == last.sequence + 3


def _marked_after(store: str) -> int:
    from snapstore.repository import Repository

    repo = Repository.open(store)
    try:
        return json.loads(repo.backend.get_meta(CHECKED_KEY))["sequence"]
    finally:
        repo.close()


def test_a_clean_close_marks_nothing_past_another_writers_entry(tmp_path):
    """An entry another writer of the file appended mid-run (here: and died before its ref moved) is not this
    process's to vouch for: the mark stays below it and the next start rolls it forward."""
    store, logfile = str(tmp_path / "store"), tmp_path / "log.jsonl"
    with Session(store, ozolith=str(logfile)) as s:
        _idle_then_busy(s, 5)
    s = Session(store, ozolith=str(logfile))
    _work(s, "busy0", 5)
    before = s.log.last().sequence
    lost = crash_after_append(s, "busy1")  # through another hook: to this session, another writer
    _work(s, "busy0", 5)
    s.close()
    assert _marked_after(store) == before < lost
    s = Session(store, ozolith=str(logfile))
    try:
        assert [(r.sequence, r.action) for r in s.report.recoveries] == [(lost, "rolled-forward")]
        assert s.repo.load("busy1").contexts[0]["local_memory"][-1]["user"] == "lost?"
    finally:
        s.close()


class _RefMoveFails:
    """The backend's next ref-moving write raises ``error`` without writing (a full disk; a lost connection)."""

    def __init__(self, session: Session, error: Exception) -> None:
        self.backend, self.error, self.real = session.repo.backend, error, session.repo.backend.write

    def __enter__(self) -> None:
        def write(objects=(), ref_updates=(), *args, **kwargs):
            if ref_updates and self.error is not None:
                error, self.error = self.error, None
                raise error
            return self.real(objects, ref_updates, *args, **kwargs)

        self.backend.write = write

    def __exit__(self, *exc: object) -> None:
        del self.backend.write


def test_a_clean_close_marks_nothing_past_an_entry_whose_commit_is_unknown(tmp_path, parsed):
    """The session's own entry whose ref move may or may not have happened is never settled: later entries of the
    same run are not marked either, and the next start finds it (here: not applied, so rolled forward)."""
    from snapstore.errors import CommitOutcomeUnknown

    store, logfile = str(tmp_path / "store"), tmp_path / "log.jsonl"
    with Session(store, ozolith=str(logfile)) as s:
        _idle_then_busy(s, 5)
    s = Session(store, ozolith=str(logfile))
    _work(s, "busy0", 5)
    before = s.log.last().sequence
    orch = s.resume("busy2")
    with _RefMoveFails(s, CommitOutcomeUnknown("connection lost during COMMIT")):
        with pytest.raises(CommitOutcomeUnknown):
            orch.add_exchange(orch.active_context_id, "in doubt", "a")
    unknown = s.log.last().sequence
    _work(s, "busy0", 5)
    s.close()
    assert _marked_after(store) == before == unknown - 1
    parsed.reset()
    s = Session(store, ozolith=str(logfile))
    try:
        assert [(r.sequence, r.action) for r in s.report.recoveries] == [(unknown, "rolled-forward")]
        assert s.repo.load("busy2").contexts[0]["local_memory"][-1]["user"] == "in doubt"
        assert parsed.count < 25, parsed.count
    finally:
        s.close()


def test_a_voided_entry_is_settled_and_the_mark_passes_it(tmp_path, parsed):
    """An operation that failed after its entry was written is voided by a correction: settled, so the mark
    moves over it and the run's later entries."""
    store, logfile = str(tmp_path / "store"), tmp_path / "log.jsonl"
    with Session(store, ozolith=str(logfile)) as s:
        _idle_then_busy(s, 5)
    s = Session(store, ozolith=str(logfile))
    orch = s.resume("busy2")
    with _RefMoveFails(s, OSError(28, "No space left on device")):
        with pytest.raises(OSError):
            orch.add_exchange(orch.active_context_id, "failed", "a")
    voided = [e for e in s.log.entries_after(0) if e.event_type == "correction"]
    assert len(voided) == 1
    _work(s, "busy2", 3)
    last = s.log.last().sequence
    s.close()
    assert _marked_after(store) == last
    parsed.reset()
    s = Session(store, ozolith=str(logfile))
    try:
        assert s.report.status is RecoveryStatus.CLEAN and s.report.recoveries == (), s.report
        assert parsed.count <= 2, parsed.count
        assert "failed" not in [x["user"] for x in s.repo.load("busy2").contexts[0]["local_memory"]]
    finally:
        s.close()


@pytest.mark.parametrize("every", [None, 16], ids=["before-any-mark", "past-a-commit-mark"])
def test_a_crash_after_a_long_run_still_rolls_the_entry_in_flight_forward(tmp_path, parsed, monkeypatch, every):
    """No clean close: the next start reads from the last mark and finds the entry in flight. Before any
    commit carried a mark that is the previous start's; every LinkedLog.MARK_EVERY commits the mark now
    rides in a commit's own write (before, a start after a crash read every entry since the last start)."""
    if every is not None:
        monkeypatch.setattr(LinkedLog, "MARK_EVERY", every)
    store, logfile = str(tmp_path / "store"), tmp_path / "log.jsonl"
    with Session(store, ozolith=str(logfile)) as s:
        _idle_then_busy(s, 5)
    marked = _marked_after(store)
    s = Session(store, ozolith=str(logfile))
    _work(s, "busy0", 30 if every is None else 100)
    lost = crash_after_append(s, "busy1")  # killed between the entry and its ref move
    s.close(clean=False)
    moved = _marked_after(store)
    if every is None:
        assert moved == marked
    else:
        assert lost - every - 1 <= moved < lost, (marked, moved, lost)  # within the last MARK_EVERY commits
    parsed.reset()
    s = Session(store, ozolith=str(logfile))
    try:
        assert [(r.sequence, r.action) for r in s.report.recoveries] == [(lost, "rolled-forward")]
        assert s.repo.load("busy1").contexts[0]["local_memory"][-1]["user"] == "lost?"
        if every is None:
            assert parsed.count >= lost - marked  # every entry since the last mark
        else:
            assert parsed.count <= lost - moved + 2, parsed.count  # the marked entry, what follows, the tail
    finally:
        s.close()

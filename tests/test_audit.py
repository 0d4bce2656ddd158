"""The store and the OZOLITH log together: linking, roll-forward, verify, replay."""

from __future__ import annotations

import json
import os
import random

import pytest

from snapstore.audit import LinkedLog, roll_forward
from snapstore.orchestrator import ConversationOrchestrator
from snapstore.ozolith import OzolithLog, UnparsableLine
from snapstore.replay import replay, structure
from snapstore.repository import Repository
from snapstore.startup import RecoveryStatus, Session, inspect
from snapstore.verify import verify

from .crash.worker import step


@pytest.fixture
def session(tmp_path):
    s = Session(str(tmp_path / "store"), ozolith=str(tmp_path / "log.jsonl"))
    yield s
    s.close()


def build(session, n_ops: int = 60, seed: int = 7) -> ConversationOrchestrator:
    orch = session.start_new("c1", "root task")
    rng = random.Random(seed)
    done = 0
    while done < n_ops:
        if step(orch, rng) != "skip":
            done += 1
    return orch


def test_each_operation_is_one_snapshot_and_one_linked_entry(session):
    orch = session.start_new("c1", "root")
    child = orch.spawn_sidebar("SB-1", "dig into it", inherit_last_n=0)
    orch.add_exchange(child, "q", "a")
    entries = list(session.log.entries())
    assert [e.event_type for e in entries] == ["context_created", "sidebar_spawn", "exchange"]
    log = session.repo.log("c1")
    assert len(log) == 3
    for entry, info in zip(entries, reversed(log)):
        link = entry.payload["snapstore"]
        assert link["snapshot"] == info.id and link["root"] == info.snapshot.root
        assert link["conversation"] == "c1"
    spawn_nodes = entries[1].payload["snapstore"]["nodes"]
    assert set(spawn_nodes) == {"SB-1", "SB-2"}  # the child and the paused parent
    reflog = session.repo.reflog("c1")
    assert [(r.log_sequence, r.log_hash) for r in reflog] == [(e.sequence, e.entry_hash) for e in entries]
    assert entries[2].payload["user_hash"] and "q" not in json.dumps(entries[2].payload)


def test_verify_passes_on_a_consistent_store(session):
    build(session)
    report = verify(session.repo, session.log)
    assert report.ok, report.problems
    assert report.entries == 61 and report.snapshots == 61


def test_replay_reproduces_the_stored_structure(session):
    orch = build(session, 200, seed=3)
    replayed = replay(session.log, "c1")
    assert structure(replayed.state("c1")) == structure(orch.state())
    assert replayed.placeholders > 0 and "exchange texts" in replayed.missing()


def test_crash_between_log_and_ref_is_rolled_forward(tmp_path):
    repo = Repository.init(str(tmp_path / "store"))
    log = OzolithLog(tmp_path / "log.jsonl")
    orch = ConversationOrchestrator(repo, "c", audit=LinkedLog(log))
    orch.create_root_context("root")
    head = repo.head("c")

    class Died(Exception):
        pass

    def append_then_die(event_type, context_id, actor, payload):
        LinkedLog(log)(event_type, context_id, actor, payload)
        raise Died

    crashing = ConversationOrchestrator(repo, "c", audit=append_then_die)
    with pytest.raises(Died):
        crashing.add_exchange("SB-1", "q", "a")
    assert repo.head("c") == head  # the ref never moved
    report = verify(repo, log)
    assert not report.ok and any(p.kind == "unreachable" for p in report.problems)
    recoveries = roll_forward(repo, log)
    assert [r.action for r in recoveries] == ["rolled-forward"]
    assert repo.head("c") != head and repo.load("c").contexts[0]["local_memory"][0]["user"] == "q"
    assert verify(repo, log).ok


def test_missing_objects_mean_recovery_needed(tmp_path):
    store, logfile = str(tmp_path / "store"), tmp_path / "log.jsonl"
    with Session(store, ozolith=str(logfile)) as s:
        s.start_new("c", "root")
    log = OzolithLog(logfile)
    log.append("exchange", "SB-1", "system", {"exchange_id": "EXCH-9", "snapstore": {
        "conversation": "c", "snapshot": "ab" * 32, "parent": None, "root": "cd" * 32, "nodes": {}}})
    s = Session(store, ozolith=str(logfile))
    assert s.report.status is RecoveryStatus.RECOVERY_NEEDED
    assert any("ab" * 6 in p for p in s.report.problems)
    assert s.export(tmp_path / "unmatched.jsonl") == 1
    s.discard()
    assert s.report.status is RecoveryStatus.AUDIT_RECOMMENDED
    s.close()


def test_startup_statuses_and_conversation_choice(tmp_path):
    store, logfile = str(tmp_path / "store"), str(tmp_path / "log.jsonl")
    s = Session(store, ozolith=logfile)
    a = s.start_new("a", "first")
    b = s.start_new("b", "second")
    b.spawn_sidebar("SB-1", "side")
    s.close()
    s = Session(store, ozolith=logfile)
    assert s.report.status is RecoveryStatus.CLEAN
    assert s.report.conversation == "b" and s.report.focus == "SB-2"
    assert [c.conversation for c in s.conversations()] == ["b", "a"]
    resumed = s.resume("a")
    assert resumed.tree.records.keys() == a.tree.records.keys()
    s.close(clean=False)  # a crash: no marker
    s = Session(store, ozolith=logfile)
    assert s.report.status is RecoveryStatus.AUDIT_RECOMMENDED
    assert s.report.conversation == "a" and any("re-hashed" in c for c in s.report.checks)
    last = s.continue_last()
    assert last.conversation == "a"
    s.close()


def test_export_replaces_the_file_whole_and_durably(tmp_path, fsynced):
    store, logfile = str(tmp_path / "store"), tmp_path / "log.jsonl"
    with Session(store, ozolith=str(logfile)) as s:
        s.start_new("c", "root")
    OzolithLog(logfile).append("exchange", "SB-1", "system", {"snapstore": {
        "conversation": "c", "snapshot": "ab" * 32, "parent": None, "root": "cd" * 32, "nodes": {}}})
    out = tmp_path / "exports" / "unmatched.jsonl"
    out.parent.mkdir()
    out.write_text("an older export\n")
    s = Session(store, ozolith=str(logfile))
    fsynced.clear()
    assert s.export(out) == 1
    assert [json.loads(line)["sequence"] for line in out.read_text().splitlines()] == [2]
    assert os.listdir(out.parent) == ["unmatched.jsonl"]  # no temporary file left
    # The content was fsynced under a temporary name beside the file, then the folder after the rename.
    assert [p.parent for p in fsynced] == [out.parent, out.parent.parent]
    assert fsynced[0].name.startswith(".unmatched.jsonl.") and fsynced[1] == out.parent
    s.close(clean=False)


@pytest.mark.parametrize("clean", [True, False])
def test_a_torn_last_line_is_cut_at_start_and_kept_beside_the_log(tmp_path, clean):
    store, logfile = str(tmp_path / "store"), tmp_path / "log.jsonl"
    s = Session(store, ozolith=str(logfile))
    s.start_new("c", "root")
    s.close(clean=clean)
    torn = b'{"sequence": 2, "timestamp": "2026-01-0'
    with logfile.open("ab") as handle:  # an append a SIGKILL or power loss cut short (it never returned)
        handle.write(torn)
    before = logfile.read_bytes()
    # snap status's read-only inspection names the line and changes nothing.
    report = inspect(Repository.open(store), OzolithLog(logfile))
    assert report.status is RecoveryStatus.RECOVERY_NEEDED
    assert "torn_line at line 2, sequence 2" in report.problems[0]
    assert logfile.read_bytes() == before
    # A start cuts the interrupted write off, keeps its bytes beside the log and goes on.
    s = Session(store, ozolith=str(logfile))
    assert s.report.status is RecoveryStatus.AUDIT_RECOMMENDED, s.report.problems
    [cut] = s.report.recoveries
    assert (cut.action, cut.sequence) == ("cut-torn-tail", 2)
    assert "line 2" in cut.message and f"{len(torn)} bytes" in cut.message
    assert logfile.read_bytes() == before[: -len(torn)]
    [kept] = tmp_path.glob("log.jsonl.torn-*")
    assert kept.read_bytes() == torn and kept.name in cut.message
    s.resume("c").add_exchange("SB-1", "q", "a")  # the log takes appends again
    assert len(s.repo.log("c")) == 2
    assert OzolithLog(logfile).verify().ok
    s.close(clean=True)
    assert Session(store, ozolith=str(logfile)).report.status is RecoveryStatus.CLEAN


def test_an_unparsable_complete_last_line_starts_a_session_that_needs_recovery(tmp_path):
    store, logfile = str(tmp_path / "store"), tmp_path / "log.jsonl"
    s = Session(store, ozolith=str(logfile))
    s.start_new("c", "root")
    s.close(clean=True)
    with logfile.open("ab") as handle:  # whole, but not an entry: damage, not an interrupted write
        handle.write(b'{"sequence": 2, "timestamp": "2026-01-0\n')
    before = logfile.read_bytes()
    s = Session(store, ozolith=str(logfile))
    assert s.report.status is RecoveryStatus.RECOVERY_NEEDED
    assert "line 2" in s.report.problems[0]
    with pytest.raises(UnparsableLine, match="line \\(2\\)"):
        s.resume("c").add_exchange("SB-1", "q", "a")  # appending onto it stays refused
    assert len(s.repo.log("c")) == 1
    assert logfile.read_bytes() == before and not list(tmp_path.glob("log.jsonl.torn-*"))
    s.close(clean=False)

"""The audit log kept in the store: one write per operation, one chain, the client's format."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from snapstore.backends.base import LOG_KEY_META, AppendedEntry, Backend, LogAppend
from snapstore.errors import InvalidInput, RefConflict
from snapstore.objects import Event
from snapstore.orchestrator import ConversationOrchestrator
from snapstore.ozolith import CorruptEntry, verify_chain
from snapstore.repository import AuditEntry, Repository
from snapstore.startup import RecoveryStatus, Session
from snapstore.storelog import StoreAudit, StoreLog
from snapstore.verify import verify

from .factories import run_replicas
from .ozolith_client_reference import reference_verify


def _orchestrate(repo: Repository, conversation: str = "c") -> tuple[ConversationOrchestrator, StoreLog]:
    log = StoreLog(repo.backend)
    orch = ConversationOrchestrator(repo, conversation, audit=StoreAudit(log))
    root = orch.create_root_context("root task")
    side = orch.spawn_sidebar(root, "look into it")
    orch.add_exchange(side, "question \u00fc \u0000 \U0001f600", "answer")
    orch.pause_context(root)
    orch.merge_sidebar(side, "it was fine")
    return orch, log


def _tamper(store, backend: Backend, sequence: int, line: str) -> None:
    """Overwrite one stored log line behind the store's back."""
    if store.name == "memory":
        backend._log = [(s, line if s == sequence else text) for s, text in backend._log]  # type: ignore[attr-defined]
    elif store.name == "sqlite":
        db = sqlite3.connect(Path(store.location) / "store.sqlite")
        db.execute("UPDATE ozolith SET line = ? WHERE sequence = ?", (line, sequence))
        db.commit()
        db.close()
    else:
        backend._transaction(lambda cur: cur.execute(  # type: ignore[attr-defined]
            "UPDATE snapstore_ozolith SET line = %s WHERE sequence = %s", (line, sequence)))


def test_each_operation_commits_its_entry_with_the_ref(store):
    repo = store.init()
    orch, log = _orchestrate(repo)
    entries = list(log.entries())
    assert [e.sequence for e in entries] == [1, 2, 3, 4, 5]
    assert [e.event_type for e in entries] == [
        "context_created", "sidebar_spawn", "exchange", "context_pause", "sidebar_merge"]
    moves = [r for r in repo.reflog("c") if r.new is not None]
    assert len(moves) == 5
    for move, entry in zip(moves, entries, strict=True):
        # linked both ways: the ref change names the entry, the entry names the snapshot
        assert (move.log_sequence, move.log_hash) == (entry.sequence, entry.entry_hash)
        assert entry.payload["snapstore"]["snapshot"] == move.new
        assert entry.payload["snapstore"]["parent"] == move.old
    assert log.verify().ok
    report = verify(repo, log)
    assert report.ok, report.problems
    assert log.last() == entries[-1] and log.get(3) == entries[2] and log.get(6) is None


def test_export_is_the_clients_file_format(store, tmp_path):
    repo = store.init()
    _, log = _orchestrate(repo)
    target = tmp_path / "out" / "ozolith.jsonl"
    assert log.export(target) == 5
    key = (target.parent / ".ozolith_key").read_text()
    assert key == repo.backend.get_meta(LOG_KEY_META) and len(key) == 64
    assert (target.parent / ".ozolith_key").stat().st_mode & 0o777 == 0o600
    assert verify_chain(target).ok
    assert reference_verify(str(target), key) == (True, None)  # an independent reader of the client's format
    lines = target.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["sequence"] for line in lines] == [1, 2, 3, 4, 5]
    assert lines == [line for _, line in repo.backend.log_lines()]


def test_export_makes_its_folders_durably(tmp_path, fsynced):
    repo = Repository.init("memory:")
    _, log = _orchestrate(repo)
    target = tmp_path / "audit" / "2026" / "ozolith.jsonl"
    assert log.export(target) == 5
    assert {tmp_path, tmp_path / "audit", tmp_path / "audit" / "2026"} <= set(fsynced)


def test_a_lost_compare_and_swap_appends_nothing(store):
    repo = store.init()
    orch, log = _orchestrate(repo)
    stale = repo.stage("c")
    winner = repo.stage("c")
    winner.workspace.update_fields("SB-1", {"priority": "high"})
    repo.commit_staged(winner, audit=AuditEntry(log, "context_updated", "SB-1", "system", lambda p: {"n": 1}))
    before = repo.backend.log_tail()
    stale.workspace.update_fields("SB-2", {"priority": "low"})
    with pytest.raises(RefConflict):
        repo.commit_staged(stale, audit=AuditEntry(log, "context_updated", "SB-2", "system", lambda p: {"n": 2}))
    assert repo.backend.log_tail() == before
    assert repo.backend.log_tail()[0] == 6
    assert verify(repo, log).ok


def test_a_failing_entry_leaves_store_and_log_as_they_were(store):
    repo = store.init()
    orch, log = _orchestrate(repo)
    head, tail = repo.head("c"), repo.backend.log_tail()
    staging = repo.stage("c")
    staging.workspace.update_fields("SB-1", {"priority": "urgent"})
    bad = AuditEntry(log, "context_updated", "SB-1", "nobody-such", lambda p: {})  # not an actor the client knows
    with pytest.raises(InvalidInput, match="actor"):
        repo.commit_staged(staging, event=Event("context_updated", "SB-1"), audit=bad)
    assert repo.head("c") == head and repo.backend.log_tail() == tail
    assert len(repo.reflog("c")) == 5
    orch.add_exchange("SB-1", "still works", "yes")  # the next operation goes through
    assert repo.backend.log_tail()[0] == 6


def test_a_tampered_line_is_found_and_refused_as_a_base(store):
    repo = store.init()
    orch, log = _orchestrate(repo)
    entry = log.get(5)
    forged = entry.to_line().replace("it was fine", "it was awful")
    _tamper(store, repo.backend, 5, forged)
    fresh = StoreLog(repo.backend)  # another process: it has not written that line itself
    report = fresh.verify()
    assert not report.ok and report.findings[0].sequence == 5
    head = repo.head("c")
    other = ConversationOrchestrator(repo, "c", audit=StoreAudit(fresh))
    with pytest.raises(CorruptEntry, match="sequence 5"):
        other.add_exchange("SB-1", "on a forged log", "no")
    assert repo.head("c") == head  # nothing committed on top of a forged entry


def test_an_explicit_key_must_match_the_chain(store):
    repo = store.init()
    _, log = _orchestrate(repo)
    assert not StoreLog(repo.backend, key="another key").verify().ok
    intruder = ConversationOrchestrator(repo, "c", audit=StoreAudit(StoreLog(repo.backend, key="another key")))
    with pytest.raises(Exception, match="not signed by this key"):
        intruder.add_exchange("SB-1", "x", "y")


OPS = 15  # per replica process


def _replica(location: str, seed: int, ops: int, out) -> None:
    session = Session(location, log_in_store=True)
    orch = session.resume("shared")
    acked = []
    for i in range(ops):
        target = sorted(orch.tree.records)[(seed + i) % len(orch.tree.records)]
        orch.add_exchange(target, f"replica {seed} op {i}", "ok")
        acked.append(orch.head)
    session.close()
    out.put(acked)


def test_replicas_write_one_chain(durable_store):
    location = durable_store.location
    durable_store.init().close()
    with Session(location, log_in_store=True) as s:
        orch = s.start_new("shared", "shared root")
        orch.spawn_sidebar(orch.active_context_id, "a sidebar")
    acked = run_replicas(_replica, [(location, seed, OPS) for seed in range(4)])
    repo = Repository.open(location)
    log = StoreLog(repo.backend)
    entries = list(log.entries())
    assert [e.sequence for e in entries] == list(range(1, 2 + 4 * OPS + 1))
    history = {info.id for info in repo.log("shared")}
    linked = {e.payload["snapstore"]["snapshot"] for e in entries}
    for heads in acked:
        assert set(heads) <= history and set(heads) <= linked
    report = verify(repo, log)
    assert report.ok, report.problems[:5]
    repo.close()


def _own_conversation(location: str, seed: int, ops: int, out) -> None:
    session = Session(location, log_in_store=True)
    orch = session.start_new(f"conv-{seed}", f"replica {seed}")
    heads = [orch.head]
    for i in range(ops):
        orch.add_exchange(orch.active_context_id, f"replica {seed} op {i}", "ok")
        heads.append(orch.head)
    session.close()
    out.put((f"conv-{seed}", heads))


def test_replicas_on_different_conversations_share_one_chain(durable_store):
    """Each process its own conversation, all of them one audit log: nothing lost, nothing interleaved wrongly."""
    location = durable_store.location
    durable_store.init().close()
    results = run_replicas(_own_conversation, [(location, seed, OPS) for seed in range(4)])
    repo = Repository.open(location)
    log = StoreLog(repo.backend)
    entries = list(log.entries())
    assert [e.sequence for e in entries] == list(range(1, 4 * (OPS + 1) + 1))
    for conversation, heads in results:
        assert heads[-1] == repo.head(conversation)
        assert set(heads) <= {info.id for info in repo.log(conversation)}
        mine = [e for e in entries if e.payload["snapstore"]["conversation"] == conversation]
        assert [e.payload["snapstore"]["snapshot"] for e in mine] == heads  # in order, one per operation
    report = verify(repo, log)
    assert report.ok, report.problems[:5]
    repo.close()


def test_session_with_the_log_in_the_store(tmp_path):
    location = str(tmp_path / "store")
    with Session(location, log_in_store=True) as s:
        orch = s.start_new("c", "task")
        orch.spawn_sidebar(orch.active_context_id, "why")
    again = Session(location, log_in_store=True)
    assert again.report.status is RecoveryStatus.CLEAN
    again.continue_last().add_exchange("SB-2", "after restart", "ok")
    again.close(clean=False)  # as if killed
    third = Session(location, log_in_store=True)
    assert third.report.status is RecoveryStatus.AUDIT_RECOMMENDED and not third.report.problems
    assert any("log chain: ok" in c for c in third.report.checks)
    third.close()
    with pytest.raises(InvalidInput, match="not both"):
        Session(location, ozolith=str(tmp_path / "log.jsonl"), log_in_store=True)


# -- the tail this process wrote is remembered, and only by its exact line ------------------------------


def test_a_line_built_on_the_remembered_tail_is_the_line_built_on_a_verified_one(store, monkeypatch):
    repo = store.init()
    _, log = _orchestrate(repo)  # log wrote the last line itself: it chains without parsing it
    monkeypatch.setattr("snapstore.ozolith.entry.utc_timestamp", lambda: "2025-12-05T09:30:01.123456Z")
    last_line, stored_key = repo.backend.log_tail()[1], repo.backend.get_meta(LOG_KEY_META)
    payload = {"n": 1, "text": "caf\u00e9 \U0001f600", "nested": {"b": [1, 2.5, None, True], "a": "x"}}
    remembered, _ = log.prepare("exchange", "SB-1", "system", payload).build(last_line, stored_key)
    fresh = StoreLog(repo.backend)  # parses and verifies the same line
    verified, _ = fresh.prepare("exchange", "SB-1", "system", payload).build(last_line, stored_key)
    assert remembered == verified
    assert remembered.sequence == 6 and remembered.line.startswith('{"sequence": 6, "timestamp": "2025-12-05T09')


def test_the_writer_itself_refuses_its_last_line_once_changed_in_the_table(store):
    repo = store.init()
    orch, log = _orchestrate(repo)
    forged = log.get(5).to_line().replace("it was fine", "it was awful")
    _tamper(store, repo.backend, 5, forged)  # behind the back of the very log that wrote line 5
    head = repo.head("c")
    with pytest.raises(CorruptEntry, match="sequence 5"):
        orch.add_exchange("SB-1", "on a forged log", "no")
    assert repo.head("c") == head and repo.backend.log_tail()[1] == forged


def test_a_tail_another_writer_appended_is_verified_then_chained(store):
    repo = store.init()
    orch, log = _orchestrate(repo)
    other = ConversationOrchestrator(repo, "c", audit=StoreAudit(StoreLog(repo.backend)))
    other.add_exchange("SB-1", "from another process", "ok")  # entry 6, not written by ``log``
    orch.add_exchange("SB-1", "back here", "ok")  # chains onto entry 6 after checking it
    entries = list(log.entries())
    assert [e.sequence for e in entries] == [1, 2, 3, 4, 5, 6, 7]
    assert entries[6].previous_hash == entries[5].entry_hash
    assert log.verify().ok
    # Another process appends a forged entry 8 after our line 7: it is refused, not chained onto.
    forged = entries[6].to_line().replace("back here", "not here").replace('"sequence": 7', '"sequence": 8')
    repo.backend.write(append=LogAppend(lambda last, key: (AppendedEntry(8, entries[6].entry_hash, forged), None)))
    head = repo.head("c")
    with pytest.raises(CorruptEntry, match="sequence 8"):
        orch.add_exchange("SB-1", "on a forged entry", "no")
    assert repo.head("c") == head


def test_the_remembered_tail_is_checked_again_under_another_key(store):
    repo = store.init()
    orch, _ = _orchestrate(repo)
    repo.backend.write(meta={LOG_KEY_META: "a key that did not sign the chain"})  # the last line is still ours
    with pytest.raises(Exception, match="not signed by this key"):
        orch.add_exchange("SB-1", "x", "y")

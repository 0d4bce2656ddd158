"""Orchestrator and startup defects found by review: each test fails on the code before its fix."""

from __future__ import annotations

import pytest

from snapstore.errors import InvalidInput
from snapstore.orchestrator import ConversationOrchestrator
from snapstore.startup import RecoveryStatus, Session
from snapstore.verify import verify

LONE = "\ud800"  # a lone surrogate: a str Python allows, UTF-8 cannot hold


@pytest.fixture
def session(tmp_path):
    s = Session(str(tmp_path / "store"), ozolith=tmp_path / "log.jsonl")
    yield s
    s.close()


def _ids(orch: ConversationOrchestrator) -> list[str]:
    return [item["exchange_id"] for record in orch.tree.records.values()
            for item in record.memory.get("local_memory").items] if orch.tree.records else []


@pytest.mark.parametrize("key", ["exchange_id", "timestamp"])
def test_add_exchange_metadata_cannot_set_what_the_orchestrator_sets(session, key):
    orch = session.start_new("c")
    root = orch.active_context_id
    orch.add_exchange(root, "q", "a")
    head, entries = orch.head, len(list(session.log.entries()))
    with pytest.raises(InvalidInput, match=f"metadata may not set {key}"):
        orch.add_exchange(root, "q2", "a2", **{key: "EXCH-1"})
    assert orch.head == head and len(list(session.log.entries())) == entries
    assert orch.add_exchange(root, "q3", "a3", source="api") == "EXCH-2"
    (item,) = [i for i in orch.tree.records[root].memory["local_memory"].items if i["exchange_id"] == "EXCH-2"]
    assert item["source"] == "api"


def test_exchange_ids_stay_unique_after_reopening(session):
    orch = session.start_new("c")
    root = orch.active_context_id
    orch.add_exchange(root, "q", "a")
    side = orch.spawn_sidebar(root, "look into it")
    orch.add_exchange(side, "q", "a")
    orch.add_exchange(side, "q", "a")
    orch.merge_sidebar(side, "done")  # a summary exchange in the root
    other = orch.spawn_sidebar(root, "another")
    orch.add_exchange(other, "q", "a")
    again = session.resume("c")
    made = [again.add_exchange(root, "q", "a"), again.add_exchange(other, "q", "a")]
    ids = [item["exchange_id"] for record in again.tree.records.values()
           for item in record.memory["local_memory"].items]
    assert len(ids) == len(set(ids)), ids
    assert made == ["EXCH-6", "EXCH-7"]


def test_reparenting_under_the_same_parent_keeps_the_siblings_order(session):
    orch = session.start_new("c")
    root = orch.active_context_id
    kids = [orch.spawn_sidebar(root, f"s{i}") for i in range(3)]
    for kid in kids:
        orch.switch_focus(root)
    assert orch.tree.records[root].children == tuple(kids)
    orch.reparent_context(kids[0], root)
    assert orch.tree.records[root].children == tuple(kids)
    assert orch.tree.records[root].fields.get("child_sidebar_ids", list(kids)) == kids
    assert orch.tree.records[kids[0]].parent == root
    assert verify(session.repo, session.log).ok
    # a real move still moves
    orch.reparent_context(kids[0], kids[1])
    assert orch.tree.records[root].children == tuple(kids[1:])
    assert orch.tree.records[kids[1]].children == (kids[0],)


def test_text_with_a_lone_surrogate_is_persisted_and_linked(tmp_path):
    session = Session(str(tmp_path / "store"), ozolith=tmp_path / "log.jsonl")
    orch = session.start_new("c", f"task {LONE}")
    root = orch.active_context_id
    orch.add_exchange(root, f"user {LONE}", f"assistant {LONE}")
    side = orch.spawn_sidebar(root, f"reason {LONE}", task_description=f"t {LONE}", success_criteria=LONE)
    orch.pause_context(side, f"pause {LONE}")
    orch.merge_sidebar(side, f"summary {LONE}")
    assert verify(session.repo, session.log).ok
    state = session.repo.load("c").to_json()
    assert state["contexts"][0]["local_memory"][0]["user"] == f"user {LONE}"
    session.close()
    again = Session(str(tmp_path / "store"), ozolith=tmp_path / "log.jsonl")
    try:
        assert again.report.status is RecoveryStatus.CLEAN
        assert again.repo.load("c").to_json() == state
    finally:
        again.close()


def test_start_new_twice_in_one_second_makes_two_conversations(session):
    first = session.start_new()
    second = session.start_new()
    third = session.start_new()
    names = {first.conversation, second.conversation, third.conversation}
    assert len(names) == 3
    assert session.repo.active_conversation == third.conversation
    assert all(session.repo.head(n) is not None for n in names)


# -- a log behind the store ---------------------------------------------------------------


def _three_operations(tmp_path):
    s = Session(str(tmp_path / "store"), ozolith=tmp_path / "log.jsonl")
    orch = s.start_new("c")
    root = orch.active_context_id
    orch.add_exchange(root, "q1", "a1")
    return s, orch, root


def test_a_restored_log_is_accepted_again(tmp_path):
    s, _, _ = _three_operations(tmp_path)
    s.close()
    saved = (tmp_path / "log.jsonl").read_bytes()
    (tmp_path / "log.jsonl").unlink()
    broken = Session(str(tmp_path / "store"), ozolith=tmp_path / "log.jsonl")
    assert broken.report.status is RecoveryStatus.RECOVERY_NEEDED
    broken.close(clean=False)
    (tmp_path / "log.jsonl").write_bytes(saved)
    again = Session(str(tmp_path / "store"), ozolith=tmp_path / "log.jsonl")
    try:
        assert again.report.log_behind is None and again.report.status is RecoveryStatus.AUDIT_RECOMMENDED
        orch = again.resume("c")
        orch.add_exchange(orch.active_context_id, "q", "a")
        assert verify(again.repo, again.log).ok
    finally:
        again.close()


def test_entries_of_a_renamed_conversation_are_not_rolled_forward_again(tmp_path):
    s = Session(str(tmp_path / "store"), ozolith=tmp_path / "log.jsonl")
    a = s.start_new("a")
    a.add_exchange(a.active_context_id, "q", "a")
    b = s.start_new("b")
    b.add_exchange(b.active_context_id, "q", "a")
    a.add_exchange(a.active_context_id, "q2", "a2")
    s.repo.rename_conversation("a", "z")
    s.close()
    again = Session(str(tmp_path / "store"), ozolith=tmp_path / "log.jsonl")
    try:
        assert again.report.status is RecoveryStatus.CLEAN, again.report
        assert again.report.recoveries == ()
        assert sorted(again.repo.conversation_ids()) == ["b", "z"]  # "a" is not brought back
        assert verify(again.repo, again.log).ok
    finally:
        again.close()


# -- clean shutdown with several processes on one store -------------------------------------

_REPLICA = """
import sys, time
from snapstore.startup import Session
s = Session(sys.argv[1])
orch = s.resume("c") if s.repo.head("c") else s.start_new("c")
orch.add_exchange(orch.active_context_id, "q", "a")
print(s.report.status.value, flush=True)
time.sleep(120)
"""


def _replica(location: str):
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", _REPLICA, location], stdout=subprocess.PIPE, text=True)
    status = proc.stdout.readline().strip()
    return proc, status



@pytest.fixture
def pg_location(tmp_path):
    from .shared_backends import SHARED_FACTORIES

    gen = SHARED_FACTORIES["postgres"](tmp_path)
    store = next(gen)
    yield store.location
    next(gen, None)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_replica_killed_beside_running_ones_is_noticed(request, tmp_path, backend):
    import signal

    location = str(tmp_path / "store") if backend == "sqlite" else request.getfixturevalue("pg_location")
    first, status = _replica(location)
    second, second_status = _replica(location)
    try:
        assert status in {"CLEAN", "AUDIT_RECOMMENDED"}
        assert second_status == "CLEAN"  # the first is running: nothing ended badly
        with Session(location) as beside:
            assert beside.report.status is RecoveryStatus.CLEAN, beside.report
            assert any("2 other sessions running" in c for c in beside.report.checks)
        first.send_signal(signal.SIGKILL)
        first.wait()
        after = Session(location)  # the second still runs, the first was killed
        try:
            assert after.report.status is RecoveryStatus.AUDIT_RECOMMENDED, after.report
            assert any(f"pid {first.pid}" in c and "without a clean close" in c for c in after.report.checks)
        finally:
            after.close()
        with Session(location) as later:  # reported once, then forgotten
            assert later.report.status is RecoveryStatus.CLEAN, later.report
    finally:
        for proc in (first, second):
            proc.kill()
            proc.wait()

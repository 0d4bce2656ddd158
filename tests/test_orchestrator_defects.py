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


# -- orchestrator: generated exchange fields, reopening, same-parent moves, text, actor ------------


def _linked(tmp_path):
    from snapstore.audit import LinkedLog
    from snapstore.ozolith import OzolithLog
    from snapstore.repository import Repository

    repo = Repository.init(str(tmp_path / "s"))
    log = OzolithLog(tmp_path / "log.jsonl")
    return repo, log, (lambda: ConversationOrchestrator(repo, "c", audit=LinkedLog(log)))


@pytest.mark.parametrize("key", ["exchange_id", "user", "assistant", "timestamp", "context_id"])
def test_no_generated_exchange_key_can_come_from_metadata(tmp_path, key):
    repo, log, open_orch = _linked(tmp_path)
    orch = open_orch()
    root = orch.create_root_context("r")
    orch.add_exchange(root, "q", "a")
    head, size = repo.head("c"), log.path.read_bytes()
    # user, assistant and context_id are parameters: Python itself refuses them as metadata
    with pytest.raises(InvalidInput if key in ("exchange_id", "timestamp") else TypeError, match=key):
        orch.add_exchange(root, "q2", "a2", **{key: "EXCH-1"})
    assert repo.head("c") == head and log.path.read_bytes() == size
    assert orch.add_exchange(root, "q3", "a3", note="x") == "EXCH-2"


def test_reopening_never_repeats_an_exchange_id(tmp_path):
    repo, log, open_orch = _linked(tmp_path)
    orch = open_orch()
    root = orch.create_root_context("r")
    made = [orch.add_exchange(root, "q", "a")]
    a = orch.spawn_sidebar(root, "a")
    made += [orch.add_exchange(a, "q", "a") for _ in range(3)]
    b = orch.spawn_sidebar(a, "b")  # inherits a's exchanges: older ids at the end of b's inherited chain
    made.append(open_orch().add_exchange(b, "q", "a"))
    made.append(open_orch().merge_sidebar(b, "b done"))  # the summary lands in a
    made.append(open_orch().merge_sidebar(a, "a done"))  # and in root
    for cid in (root, a, b, root):
        made.append(open_orch().add_exchange(cid, "q", "a", source="reopen"))
    assert len(made) == len(set(made)), made
    assert [int(m[5:]) for m in made] == sorted(int(m[5:]) for m in made)
    ids = [item["exchange_id"] for record in open_orch().tree.records.values()
           for item in record.memory["local_memory"].items]
    assert sorted(ids) == sorted(made)
    from snapstore.verify import verify as check

    assert check(repo, log).ok


@pytest.mark.parametrize("top_level", [False, True])
def test_reparent_to_the_same_parent_commits_and_keeps_the_order(tmp_path, top_level):
    repo, log, open_orch = _linked(tmp_path)
    orch = open_orch()
    root = orch.create_root_context("r")
    kids = [orch.spawn_sidebar(root, f"k{i}") for i in range(3)]
    if top_level:
        others = [orch.create_root_context(f"t{i}") for i in range(2)]
        moving, parent, order = root, None, (root, *others)
    else:
        moving, parent, order = kids[0], root, tuple(kids)
    head, entries = repo.head("c"), len(list(log.entries()))
    orch.reparent_context(moving, parent)
    assert repo.head("c") != head and len(list(log.entries())) == entries + 1  # still one operation
    tree = open_orch().tree
    assert (tree.roots if top_level else tree.records[root].children) == order
    assert tree.records[root].fields["child_sidebar_ids"] == kids
    orch.add_exchange(moving, "q", "a")  # the next operation works


def test_lone_surrogates_in_any_text_leave_no_entry_without_a_snapshot(tmp_path):
    from snapstore.audit import voided_sequences
    from snapstore.verify import verify as check

    repo, log, open_orch = _linked(tmp_path)
    orch = open_orch()
    root = orch.create_root_context(LONE, creator=LONE)
    orch.add_exchange(root, LONE, LONE, **{"note": LONE, LONE: [LONE, {LONE: LONE}]})
    side = orch.spawn_sidebar(root, LONE, task_description=LONE, success_criteria=LONE, creator=LONE)
    orch.archive_context(side, LONE)
    orch.merge_sidebar(side, LONE, merge_type=LONE)
    entries = list(log.entries())
    assert len(entries) == 5 and not voided_sequences(entries)
    assert check(repo, log).ok
    item = open_orch().tree.records[root].memory["local_memory"].items[0]
    assert item[LONE] == [LONE, {LONE: LONE}] and item["note"] == LONE


def test_an_actor_the_log_refuses_is_refused_before_any_operation(tmp_path):
    from snapstore.audit import LinkedLog

    repo, log, open_orch = _linked(tmp_path)
    open_orch().create_root_context("r")
    head, size = repo.head("c"), log.path.read_bytes()
    with pytest.raises(InvalidInput, match="actor"):
        ConversationOrchestrator(repo, "c", audit=LinkedLog(log), actor="AGENT-operator")
    assert repo.head("c") == head and log.path.read_bytes() == size
    assert ConversationOrchestrator(repo, "c", actor="AGENT-operator").head == head  # no log: any actor
    open_orch().add_exchange("SB-1", "q", "a")

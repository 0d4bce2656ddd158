"""The drop-in ``sidebar_persistence`` module: the client's interface, exactly."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone

import pytest

from snapstore.adapters import sidebar_persistence as sp
from snapstore.repository import Repository

from .client.model import SidebarContext, SidebarPriority, SidebarStatus


@pytest.fixture
def persistence(tmp_path):
    sp.reset_persistence()
    sp.configure(store=str(tmp_path / "store"), context_class=SidebarContext)
    instance = sp.get_persistence()
    yield instance
    sp.reset_persistence()
    sp.configure()


def rich_context(sid: str = "SB-1", parent: str | None = None) -> SidebarContext:
    return SidebarContext(
        sidebar_id=sid,
        uuid="0190a0b0-0000-7000-8000-000000000001",
        parent_context_id=parent,
        participants=["AGENT-operator", "AGENT-x"],
        inherited_memory=[{"exchange_id": "EXCH-1", "user": "u", "assistant": "a", "_inherited": True,
                           "_inherited_from": parent}],
        local_memory=[{"exchange_id": f"EXCH-{i}", "user": f"q{i} \u0000 ü 🙂 \"\\", "assistant": "x" * i,
                       "timestamp": "2026-01-05T10:00:00", "context_id": sid, "meta": {}} for i in range(5)],
        data_refs={},
        cross_sidebar_refs={"SB-9": {"ref_type": "cites", "strength": 0.75, "confidence": None,
                                     "created_at": datetime(2026, 1, 5, 9, 30, 1, 5),
                                     "validation_history": [], "aware": datetime(2026, 1, 1, tzinfo=timezone.utc)}},
        scratchpad=None,
        yarn_board_layout={"nodes": {}},
        relevance_scores={"EXCH-1": 0.5, "EXCH-2": 1.0},
        active_focus=["EXCH-2"],
        status=SidebarStatus.TESTING,
        priority=SidebarPriority.BACKGROUND,
        created_at=datetime(2026, 1, 5, 10, 0, 0, 123456),
        last_activity=datetime(2026, 1, 5, 11, 0, 0),
        task_description="Ünïcode task",
        success_criteria=None,
        failure_reason="",
        tags=["a", "b"],
        display_names={"AGENT-x": "Xavier"},
    )


def test_every_field_round_trips_exactly(persistence):
    original = rich_context()
    assert persistence.save_context(original) is True
    loaded = persistence.load_context("SB-1")
    assert isinstance(loaded, SidebarContext)
    assert loaded == original
    assert loaded.status is SidebarStatus.TESTING and loaded.priority is SidebarPriority.BACKGROUND
    assert loaded.created_at == datetime(2026, 1, 5, 10, 0, 0, 123456) and loaded.created_at.tzinfo is None
    assert loaded.data_refs == {} and loaded.scratchpad is None and loaded.success_criteria is None
    assert loaded.cross_sidebar_refs["SB-9"]["created_at"] == datetime(2026, 1, 5, 9, 30, 1, 5)
    assert loaded.local_memory[0]["meta"] == {}
    assert loaded is not original and loaded.local_memory is not original.local_memory


def test_loads_survive_a_new_process(persistence, tmp_path):
    persistence.save_context(rich_context())
    code = (
        "import sys; sys.path.insert(0, %r)\n"
        "from tests.client.model import SidebarContext\n"
        "from tests.test_adapter import rich_context\n"
        "from snapstore.adapters import sidebar_persistence as sp\n"
        "p = sp.SidebarPersistence(%r, context_class=SidebarContext)\n"
        "print(p.load_context('SB-1') == rich_context())\n"
    ) % (str(__import__("pathlib").Path(__file__).resolve().parent.parent), str(tmp_path / "store"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_load_all_newest_first_and_archived_only_when_asked(persistence):
    a, b, c = rich_context("SB-1"), rich_context("SB-2", "SB-1"), rich_context("SB-3", "SB-1")
    a.last_activity, b.last_activity, c.last_activity = (datetime(2026, 1, d) for d in (1, 3, 2))
    c.status = SidebarStatus.ARCHIVED
    a.child_sidebar_ids = ["SB-2", "SB-3"]
    for ctx in (a, b, c):
        persistence.save_context(ctx)
    assert [x.sidebar_id for x in persistence.load_all_contexts()] == ["SB-2", "SB-1"]
    assert [x.sidebar_id for x in persistence.load_all_contexts(include_archived=True)] == ["SB-2", "SB-3", "SB-1"]


def test_delete_keeps_history(persistence):
    persistence.save_context(rich_context("SB-1"))
    persistence.save_context(rich_context("SB-2", "SB-1"))
    assert persistence.delete_context("SB-2", reason="cleanup", deleted_by="human") is True
    assert persistence.load_context("SB-2") is None and not persistence.context_exists("SB-2")
    assert persistence.delete_context("SB-2") is False
    repo = persistence.repo
    conv = repo.conversation_ids()[0]
    ids_before = {c["sidebar_id"] for c in repo.load(f"{conv}~1").contexts}
    assert "SB-2" in ids_before
    event = repo.log(conv)[0].snapshot.event
    assert event.type == "context_deleted"
    assert "reason: cleanup" in event.message and "deleted by: human" in event.message


def test_a_delete_in_the_operation_that_saved_the_context_keeps_it_in_history(persistence):
    """Saves of one operation amend one snapshot; a delete must not amend away the only one holding the context."""
    persistence.save_context(rich_context("SB-1"))
    with persistence.operation("sidebar_spawn", "SB-2"):
        persistence.save_context(rich_context("SB-2", "SB-1"))
        assert persistence.delete_context("SB-2", reason="spawned by mistake") is True
    repo = persistence.repo
    conv = repo.conversation_ids()[0]
    holding = [e for e in repo.log(conv) if "SB-2" in {c["sidebar_id"] for c in repo.load(e.id).contexts}]
    assert len(holding) == 1
    kept = {c["sidebar_id"]: c for c in repo.load(holding[0].id).contexts}["SB-2"]
    assert kept["local_memory"] == rich_context("SB-2", "SB-1").local_memory
    assert "SB-2" not in {c["sidebar_id"] for c in repo.load(conv).contexts}


def test_an_instance_sees_what_another_instance_created_moved_and_deleted(tmp_path):
    store = str(tmp_path / "store")
    a = sp.SidebarPersistence(store, context_class=SidebarContext)
    a.save_context(rich_context("SB-1"))
    b = sp.SidebarPersistence(store, context_class=SidebarContext)
    b.save_context(rich_context("SB-2", "SB-1"))  # a child in a's conversation
    b.save_context(rich_context("SB-3"))  # a new root: a conversation a has never seen
    assert a.load_context("SB-2") == rich_context("SB-2", "SB-1") and a.context_exists("SB-3")
    assert a.load_context("SB-3") == rich_context("SB-3")
    assert sorted(c.sidebar_id for c in a.load_all_contexts()) == ["SB-1", "SB-2", "SB-3"]
    assert a.get_statistics()["total_contexts"] == 3
    b.delete_context("SB-1")
    assert not a.context_exists("SB-1") and a.load_context("SB-1") is None
    assert a.delete_context("SB-1") is False
    # a saves a child of the root b made: it goes to that root's conversation.
    a.save_context(rich_context("SB-4", "SB-3"))
    fresh = sp.SidebarPersistence(store, context_class=SidebarContext)
    assert sorted(c.sidebar_id for c in fresh.load_all_contexts()) == ["SB-2", "SB-3", "SB-4"]
    assert fresh._where["SB-4"] == fresh._where["SB-3"]


def test_a_change_between_values_python_finds_equal_is_saved(persistence, tmp_path):
    """``1 == True == 1.0`` in Python; as JSON they differ, and so must what a save keeps."""
    ctx = rich_context()
    ctx.local_memory[0]["flag"] = 1
    ctx.relevance_scores["EXCH-1"] = 1
    ctx.data_refs["done"] = 0
    persistence.save_context(ctx)
    ctx.local_memory[0]["flag"] = True  # an exchange already stored: compared with its mirror
    ctx.relevance_scores["EXCH-1"] = 1.0
    ctx.data_refs["done"] = False
    persistence.save_context(ctx)
    loaded = sp.SidebarPersistence(str(tmp_path / "store"), context_class=SidebarContext).load_context("SB-1")
    assert loaded.local_memory[0]["flag"] is True
    assert type(loaded.relevance_scores["EXCH-1"]) is float and loaded.data_refs["done"] is False


def test_loads_give_the_saved_class_in_a_new_process_without_configure(tmp_path):
    instance = sp.SidebarPersistence(str(tmp_path / "store"))  # no class configured
    instance.save_context(rich_context())
    assert instance.load_context("SB-1") == rich_context()
    instance.close()
    code = (
        "import sys; sys.path.insert(0, %r)\n"
        "from tests.test_adapter import rich_context\n"
        "from snapstore.adapters import sidebar_persistence as sp\n"
        "p = sp.get_persistence(%r)\n"
        "loaded = p.load_context('SB-1')\n"
        "print(type(loaded).__name__, loaded == rich_context(), [type(c).__name__ for c in p.load_all_contexts()])\n"
    ) % (str(__import__("pathlib").Path(__file__).resolve().parent.parent), str(tmp_path / "store"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["SidebarContext", "True", "['SidebarContext']"]


def test_a_scratchpad_json_cannot_hold_is_left_out_not_a_failed_save(persistence):
    """The client's own layer does not persist ``scratchpad``; an object of the caller's must not fail the save."""
    ctx = rich_context()
    ctx.scratchpad = object()
    assert persistence.save_context(ctx) is True
    assert persistence.load_context("SB-1").scratchpad is None
    ctx.scratchpad = {"notes": ["kept when JSON can hold it"]}
    persistence.save_context(ctx)
    assert persistence.load_context("SB-1").scratchpad == {"notes": ["kept when JSON can hold it"]}


def test_non_finite_floats_round_trip(persistence, tmp_path):
    ctx = rich_context()
    ctx.relevance_scores = {"EXCH-1": float("nan"), "EXCH-2": float("inf"), "EXCH-3": -float("inf")}
    ctx.local_memory[0]["score"] = float("-inf")
    assert persistence.save_context(ctx) is True
    loaded = sp.SidebarPersistence(str(tmp_path / "store"), context_class=SidebarContext).load_context("SB-1")
    scores = loaded.relevance_scores
    assert scores["EXCH-1"] != scores["EXCH-1"] and scores["EXCH-2"] == float("inf") and scores["EXCH-3"] == -float("inf")
    assert loaded.local_memory[0]["score"] == -float("inf")


def test_one_hint_a_type_checker_alone_can_resolve_leaves_the_other_fields_typed(tmp_path):
    from .client.forward_model import ForwardContext

    instance = sp.SidebarPersistence(str(tmp_path / "store"), context_class=ForwardContext)
    instance.save_context(ForwardContext("SB-1", None, SidebarStatus.ARCHIVED, datetime(2026, 1, 2)))
    instance.save_context(ForwardContext("SB-2", None, SidebarStatus.ACTIVE, datetime(2026, 1, 1)))
    assert [(c.sidebar_id, c.status) for c in instance.load_all_contexts()] == [("SB-2", SidebarStatus.ACTIVE)]
    assert instance.get_statistics()["by_status"] == {"archived": 1, "active": 1}
    assert instance.load_context("SB-1").last_activity == datetime(2026, 1, 2)


def test_aware_last_activity_orders_by_the_moment_it_names(persistence):
    from datetime import timedelta

    a, b = rich_context("SB-1"), rich_context("SB-2")
    a.last_activity = datetime(2026, 1, 1, 10, 0, tzinfo=timezone(timedelta(hours=5)))  # 05:00 UTC
    b.last_activity = datetime(2026, 1, 1, 6, 0, tzinfo=timezone.utc)  # 06:00 UTC: newer, yet sorts first as text
    persistence.save_context(a)
    persistence.save_context(b)
    assert [c.sidebar_id for c in persistence.load_all_contexts()] == ["SB-2", "SB-1"]


def test_session_state_and_focus(persistence):
    persistence.save_context(rich_context("SB-1"))
    persistence.save_context(rich_context("SB-2", "SB-1"))
    assert persistence.get_session_state("missing", "dflt") == "dflt"
    assert persistence.set_session_state("active_context_id", "SB-2") is True
    assert persistence.set_session_state("blob", {"when": datetime(2026, 1, 1), "n": [1, 2]})
    assert persistence.get_session_state("active_context_id") == "SB-2"
    assert persistence.get_session_state("blob") == {"when": datetime(2026, 1, 1), "n": [1, 2]}
    conv = persistence.repo.conversation_ids()[0]
    assert persistence.repo.load(conv).active_context_id == "SB-2"


def test_conversation_roots(persistence):
    persistence.save_context(rich_context("SB-1"))
    assert persistence.register_conversation_root("conv-42", "SB-1") is True
    assert persistence.get_conversation_root("conv-42") == "SB-1"
    assert persistence.get_conversation_root("nope") is None
    assert persistence.repo.conversation_ids() == ["conv-42"]
    persistence.save_context(rich_context("SB-2", "SB-1"))
    assert {c["sidebar_id"] for c in persistence.repo.load("conv-42").contexts} == {"SB-1", "SB-2"}
    assert persistence.mark_conversation_historical("conv-42") is True
    # A client id that is not a valid snapstore name still works.
    persistence.save_context(rich_context("SB-7"))
    assert persistence.register_conversation_root("weird id/with:chars", "SB-7")
    assert persistence.get_conversation_root("weird id/with:chars") == "SB-7"


def test_statistics(persistence):
    a = rich_context("SB-1")
    a.child_sidebar_ids = ["SB-2"]
    persistence.save_context(a)
    b = rich_context("SB-2", "SB-1")
    b.status = SidebarStatus.PAUSED
    persistence.save_context(b)
    stats = persistence.get_statistics()
    assert stats["total_contexts"] == 2
    assert stats["by_status"] == {"testing": 1, "paused": 1}
    assert stats["max_depth"] == 1 and stats["total_exchanges"] == 10


def test_one_log_entry_per_operation_yet_every_save_durable(persistence, tmp_path):
    persistence.save_context(rich_context("SB-1"))
    with persistence.operation("sidebar_spawn", "SB-2", "spawned SB-2"):
        child = rich_context("SB-2", "SB-1")
        persistence.save_context(child)
        # Durable already: another reader sees the child before the operation ends.
        other = Repository.open(str(tmp_path / "store"))
        conv = other.conversation_ids()[0]
        assert "SB-2" in {c["sidebar_id"] for c in other.load(conv).contexts}
        other.close()
        parent = rich_context("SB-1")
        parent.child_sidebar_ids = ["SB-2"]
        parent.status = SidebarStatus.PAUSED
        persistence.save_context(parent)
        persistence.set_session_state("active_context_id", "SB-2")
    log = persistence.repo.log(conv)
    assert [e.snapshot.event.type for e in log] == ["sidebar_spawn", "save_context"]
    assert log[0].snapshot.event.message == "spawned SB-2"
    state = persistence.repo.load(conv)
    assert state.active_context_id == "SB-2"
    assert {c["sidebar_id"]: c["status"] for c in state.contexts} == {"SB-1": "paused", "SB-2": "testing"}
    # The replaced intermediate snapshots are still in the reflog.
    assert len(persistence.repo.reflog(conv)) == 4


def test_module_global_can_be_replaced(tmp_path):
    sp.reset_persistence()
    mine = sp.SidebarPersistence(str(tmp_path / "own"))
    sp._persistence_instance = mine
    assert sp.get_persistence() is mine
    sp.reset_persistence()
    assert sp._persistence_instance is None


def test_default_location_follows_snapstore_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SNAPSTORE", str(tmp_path / "env-store"))
    assert sp.default_store_location() == str(tmp_path / "env-store")
    monkeypatch.delenv("SNAPSTORE")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert sp.default_store_location() == str(tmp_path / "xdg" / "snapstore")


def test_without_a_class_loads_are_dicts(tmp_path):
    instance = sp.SidebarPersistence(str(tmp_path / "store"))
    instance.save_context({"sidebar_id": "SB-1", "parent_context_id": None, "status": "active", "local_memory": []})
    assert instance.load_context("SB-1") == {"sidebar_id": "SB-1", "parent_context_id": None,
                                              "status": "active", "local_memory": []}
    instance.close()


def test_state_is_plain_json_in_the_store(persistence):
    persistence.save_context(rich_context())
    conv = persistence.repo.conversation_ids()[0]
    stored = persistence.repo.load(conv).contexts[0]
    assert stored["status"] == "testing" and stored["created_at"] == "2026-01-05T10:00:00.123456"
    json.dumps(stored)


def test_two_replicas_saving_different_contexts_merge(tmp_path):
    from snapstore.merge import MergeConflict

    store = str(tmp_path / "shared")
    first = sp.SidebarPersistence(store, context_class=SidebarContext)
    root = rich_context("SB-1")
    root.child_sidebar_ids = ["SB-2", "SB-3"]
    first.save_context(root)
    first.save_context(rich_context("SB-2", "SB-1"))
    first.save_context(rich_context("SB-3", "SB-1"))
    second = sp.SidebarPersistence(store, context_class=SidebarContext)
    # Both replicas hold the same view; each changes a different context.
    a = first.load_context("SB-2")
    b = second.load_context("SB-3")
    a.status = SidebarStatus.PAUSED
    first.save_context(a)
    b.tags = ["from the second replica"]
    second.save_context(b)  # its view is stale: merged, not overwritten
    third = sp.SidebarPersistence(store, context_class=SidebarContext)
    assert third.load_context("SB-2").status is SidebarStatus.PAUSED
    assert third.load_context("SB-3").tags == ["from the second replica"]
    # The same field changed two ways is a conflict naming the context.
    x, y = first.load_context("SB-3"), third.load_context("SB-3")
    x.status, y.status = SidebarStatus.MERGED, SidebarStatus.ARCHIVED
    first.save_context(x)
    with pytest.raises(MergeConflict) as info:
        third.save_context(y)
    assert info.value.context_id == "SB-3"


def test_a_save_reads_the_ref_once_besides_its_compare_and_swap(tmp_path, monkeypatch):
    instance = sp.SidebarPersistence(str(tmp_path / "store"), context_class=SidebarContext)
    context = rich_context("SB-1")
    instance.save_context(context)
    reads = []
    backend = type(instance.repo.backend)
    original = backend.get_ref
    monkeypatch.setattr(backend, "get_ref", lambda self, name: reads.append(name) or original(self, name))
    context.local_memory.append({"exchange_id": "EXCH-9", "user": "more", "assistant": "yes"})
    instance.save_context(context)
    assert len(reads) == 1
    assert [e["exchange_id"] for e in instance.load_context("SB-1").local_memory][-1] == "EXCH-9"


def _their_tags_then_my_two_saves(tmp_path, monkeypatch, when: str) -> SidebarContext:
    """Another replica sets the tags; this one, unaware, saves a status, then saves again from the same
    object. The other replica's save lands ``when``: "before" this save begins (the save itself
    merges), "during" it, between its read of the head and its commit (the commit is refused and
    merged), or "after" its commit, before it notes what it saved."""
    store = str(tmp_path / "shared")
    mine = sp.SidebarPersistence(store, context_class=SidebarContext)
    context = rich_context("SB-1")
    mine.save_context(context)
    other = sp.SidebarPersistence(store, context_class=SidebarContext)
    theirs = other.load_context("SB-1")
    theirs.tags = ["set by the other replica"]
    if when == "before":
        other.save_context(theirs)
    else:
        committed = mine.repo.commit_staged
        pending = [theirs]

        def racing_commit(*args, **kwargs):
            if when == "during":
                while pending:
                    other.save_context(pending.pop())
            result = committed(*args, **kwargs)
            while pending:
                other.save_context(pending.pop())
            return result

        monkeypatch.setattr(mine.repo, "commit_staged", racing_commit)
    context.status = SidebarStatus.PAUSED
    mine.save_context(context)
    context.failure_reason = "saved again"
    mine.save_context(context)  # the object still has the old tags
    return sp.SidebarPersistence(store, context_class=SidebarContext).load_context("SB-1")


@pytest.mark.parametrize("when", ["before", "during", "after"])
def test_what_another_replica_changed_around_a_save_survives_the_next_save(tmp_path, monkeypatch, when):
    # The base of a save is the context as the caller holds it: not a merge with the other replica's
    # change, nor a newer head made right after the save. So the next save of the caller's object
    # merges that change in again instead of writing the caller's older tags over it.
    stored = _their_tags_then_my_two_saves(tmp_path, monkeypatch, when)
    assert stored.status is SidebarStatus.PAUSED and stored.failure_reason == "saved again"
    assert stored.tags == ["set by the other replica"]

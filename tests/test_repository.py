"""The repository on every backend: commits, loads, history, revisions, diff, fsck."""

from __future__ import annotations

import copy
import json
import time

import pytest

from snapstore.errors import (
    AmbiguousRevision, CorruptObject, InvalidInput, ObjectNotFound, RefConflict, UnknownRevision,
)
from snapstore.objects import Event, LogLink
from snapstore.state import ConversationState
from snapstore.timeutil import format_time, parse_time

from .factories import context, exchange, sample_state


def test_round_trip_is_exact(repo):
    state = sample_state()
    state["contexts"][0]["data_refs"] = {}
    state["contexts"][0]["scratchpad"] = None
    state["contexts"][0]["unknown_future_field"] = {"nested": [1, 2.5, None, "\u0000\U0001f642"]}
    del state["contexts"][3]["tags"]  # a field the context does not have stays absent
    state["top_level_extra"] = {"kept": True}
    repo.commit("conv-1", state)
    loaded = repo.load("conv-1")
    assert loaded.to_json() == state
    assert "tags" not in loaded.contexts[3]
    assert loaded.contexts[0]["data_refs"] == {} and loaded.contexts[0]["scratchpad"] is None


def test_identical_state_creates_nothing(repo):
    first = repo.commit("conv-1", sample_state())
    again = repo.commit("conv-1", sample_state())
    assert first.created and not again.created
    assert again.snapshot == first.snapshot
    assert len(repo.log("conv-1")) == 1


@pytest.mark.parametrize("path, old, new", [
    (("status_code",), 1, True),
    (("data_refs", "done"), 0, False),
    (("relevance_scores", "EXCH-1"), 1, 1.0),
    (("relevance_scores", "EXCH-1"), 0.0, -0.0),
    (("local_memory", 0, "flag"), 1, True),
    (("inherited_memory", 0, "score"), 2, 2.0),
])
def test_a_change_between_values_python_finds_equal_is_a_change(repo, path, old, new):
    """``1 == True == 1.0`` and ``0.0 == -0.0`` in Python, but their JSON texts differ."""
    def state_with(value):
        state = sample_state()
        target = state["contexts"][1]  # SB-2: has local and inherited memory
        for key in path[:-1]:
            if isinstance(key, str):
                target = target.setdefault(key, {})
            else:
                target = target[key]
        target[path[-1]] = value
        return state

    first = repo.commit("conv-1", state_with(old))
    second = repo.commit("conv-1", state_with(new))
    assert second.created and second.root != first.root
    loaded = repo.load("conv-1").to_json()
    assert json.dumps(loaded, sort_keys=True) == json.dumps(state_with(new), sort_keys=True)
    changed = repo.diff("conv-1~1", "conv-1").changed
    assert [c.id for c in changed] == ["SB-2"]
    # Committing the first state again is a change back, not "nothing to commit".
    assert repo.commit("conv-1", state_with(old)).root == first.root


def test_one_change_writes_node_ancestors_state_and_snapshot(repo):
    state = sample_state()
    repo.commit("conv-1", state)
    state["contexts"][2]["status"] = "archived"  # SB-3, under SB-2 under SB-1
    result = repo.commit("conv-1", state)
    # SB-3, SB-2, SB-1 nodes + state + snapshot; SB-4 and every chunk reused.
    assert result.objects_written == 5


def test_unchanged_objects_are_never_written_again(repo):
    state = sample_state()
    repo.commit("conv-1", state)
    changed = copy.deepcopy(state)
    changed["contexts"][1]["status"] = "paused"
    repo.commit("conv-1", changed)
    back = repo.commit("conv-1", state)  # back to the first state: only a snapshot is new
    assert back.created and back.objects_written == 1


def test_append_writes_a_bounded_number_of_bytes(repo):
    state = {"conversation_id": "c", "active_context_id": "SB-1",
             "contexts": [context("SB-1", children=["SB-2"]), context("SB-2", parent="SB-1")]}
    repo.commit("c", state)
    written = {}
    for target in (50, 1000):
        staging = repo.stage("c")
        have = len(repo.load("c").contexts[1]["local_memory"])
        for n in range(have, target - 1):
            staging.workspace.append_exchange("SB-2", exchange(n, "SB-2"))
        repo.commit_staged(staging)
        staging = repo.stage("c")
        staging.workspace.append_exchange("SB-2", exchange(target, "SB-2"))
        result = repo.commit_staged(staging, event=Event("exchange", "SB-2"))
        # One chunk, SB-2's node, SB-1's node, the state and the snapshot.
        assert result.objects_written == 5
        written[target] = result.bytes_written
    assert written[1000] <= written[50] * 1.2


def test_staged_commit_loses_a_race(repo):
    repo.commit("c", sample_state("c"))
    first, second = repo.stage("c"), repo.stage("c")
    first.workspace.append_exchange("SB-1", exchange(10, "SB-1"))
    second.workspace.append_exchange("SB-1", exchange(11, "SB-1"))
    repo.commit_staged(first)
    head = repo.head("c")
    with pytest.raises(RefConflict):
        repo.commit_staged(second)
    assert repo.head("c") == head


def test_log_and_revisions(repo):
    state = sample_state()
    ids = []
    for i in range(4):
        state["contexts"][0]["local_memory"].append(exchange(100 + i, "SB-1"))
        ids.append(repo.commit("conv-1", state, event=Event("exchange", "SB-1", f"step {i}")).snapshot)
    log = repo.log("conv-1")
    assert [e.id for e in log] == ids[::-1]
    assert [e.snapshot.event.message for e in repo.log("conv-1", 2)] == ["step 3", "step 2"]
    assert repo.resolve("conv-1") == ids[-1]
    assert repo.resolve("conv-1~1") == ids[-2]
    assert repo.resolve("conv-1~3") == ids[0]
    assert repo.resolve("conv-1~~") == ids[-3]
    assert repo.resolve(ids[1]) == ids[1]
    assert repo.resolve(ids[1][:12]) == ids[1]
    assert repo.resolve(ids[2][:12] + "~1") == ids[1]
    with pytest.raises(UnknownRevision, match="only 4"):
        repo.resolve("conv-1~4")
    with pytest.raises(UnknownRevision):
        repo.resolve("nope")
    with pytest.raises(UnknownRevision):
        repo.resolve("f" * 64)
    with pytest.raises(UnknownRevision):
        repo.resolve("conv-1@{not a time}")


def test_revision_as_of_a_time(repo):
    state = sample_state()
    first = repo.commit("conv-1", state).snapshot
    time.sleep(0.01)
    between = repo.reflog("conv-1")[-1].time
    moment = format_time(parse_time(between))
    time.sleep(0.01)
    state["contexts"][0]["status"] = "active"
    second = repo.commit("conv-1", state).snapshot
    assert repo.resolve(f"conv-1@{{{moment}}}") == first
    assert repo.resolve("conv-1@{2999-01-01T00:00:00Z}") == second
    with pytest.raises(UnknownRevision, match="did not exist"):
        repo.resolve("conv-1@{2000-01-01T00:00:00Z}")


def test_ambiguous_prefix(repo):
    from snapstore.objects import Snapshot, encode

    root = repo.commit("c", sample_state("c")).root
    by_prefix: dict[str, tuple] = {}
    for i in range(100000):  # about 300 tries find two ids sharing 4 hex digits
        kind, body, oid = encode(Snapshot("c", root, (), "2026-01-05T10:00:00.000000Z", Event("commit", None, str(i))))
        if oid[:4] in by_prefix:
            break
        by_prefix[oid[:4]] = (kind, body, oid)
    first = by_prefix[oid[:4]]
    repo.backend.write(repo._store({first[2]: first[:2], oid: (kind, body)}))
    with pytest.raises(AmbiguousRevision, match="ambiguous"):
        repo.resolve(oid[:4])
    assert repo.resolve(oid) == oid
    with pytest.raises(UnknownRevision):
        repo.resolve(oid[:3])  # shorter than 4 digits is never an id


def test_checkout_at_restores_on_top(repo):
    state = sample_state()
    first = repo.commit("conv-1", state).snapshot
    state["contexts"][1]["status"] = "merged"
    repo.commit("conv-1", state)
    result = repo.checkout("conv-1", at="conv-1~1")
    assert result.created
    log = repo.log("conv-1")
    assert len(log) == 3 and log[0].snapshot.event.type == "checkout"
    assert log[0].snapshot.root == repo.snapshot(first).root
    assert repo.active_conversation == "conv-1"


def test_checkout_output_recommits_to_the_same_root(repo):
    repo.commit("conv-1", sample_state())
    loaded = repo.load("conv-1")
    head_root = repo.snapshot(repo.head("conv-1")).root
    result = repo.commit("conv-2", loaded.to_json() | {"conversation_id": "conv-2"})
    assert result.root == head_root


def test_same_state_same_root_whatever_the_history(repo):
    state = sample_state()
    repo.commit("a", state)
    edited = copy.deepcopy(state)
    edited["contexts"][2]["parent_context_id"] = "SB-4"  # SB-3 moves under SB-4
    edited["contexts"].append(context("SB-9", parent="SB-2"))
    moved = repo.commit("a", edited).root
    fresh = repo.commit("b", edited | {"conversation_id": "b"}).root
    assert moved == fresh


def test_snapshot_records_event_and_log_link(repo):
    link = LogLink(12, "ab" * 32)
    result = repo.commit("c", sample_state("c"), event=Event("sidebar_spawn", "SB-2", "spawned"), log=link)
    snap = repo.snapshot(result.snapshot)
    assert snap.event == Event("sidebar_spawn", "SB-2", "spawned")
    assert snap.log == link
    assert repo.reflog("c")[-1].log_sequence == 12


def test_conversations_and_active(repo):
    repo.commit("a", sample_state("a"))
    repo.commit("b", sample_state("b"), activate=True)
    infos = {i.conversation: i for i in repo.conversations()}
    assert set(infos) == {"a", "b"}
    assert infos["b"].active and not infos["a"].active
    assert infos["a"].contexts == 4 and infos["a"].exchanges == 6
    repo.checkout("a")
    assert repo.active_conversation == "a"


@pytest.mark.parametrize("bad", ["../x", "a/b", "/abs", "x\x00y", "x\ny", "\x1b[2J", "", "a" * 200, "-rf", "a..b",
                                 "sp ace", "ümlaut", "a~1", "a@{x}"])
def test_hostile_conversation_ids_are_refused(repo, bad):
    with pytest.raises(InvalidInput):
        repo.commit(bad, sample_state())
    assert repo.conversations() == []


@pytest.mark.parametrize("mutate, message", [
    (lambda s: s["contexts"].append(copy.deepcopy(s["contexts"][0])), "twice"),
    (lambda s: s["contexts"][0].pop("sidebar_id"), "sidebar_id"),
    (lambda s: s["contexts"][0].__setitem__("sidebar_id", "x\x1b"), "control"),
    (lambda s: s["contexts"][0].__setitem__("parent_context_id", "SB-3"), "cycle"),
    (lambda s: s["contexts"][0].__setitem__("child_sidebar_ids", "SB-2"), "child_sidebar_ids"),
    (lambda s: s["contexts"][0].__setitem__("status", float("nan")), "JSON"),
    (lambda s: s.__setitem__("contexts", {"a": 1}), "contexts"),
])
def test_bad_states_are_refused_and_change_nothing(repo, mutate, message):
    repo.commit("c", sample_state("c"))
    head = repo.head("c")
    bad = sample_state("c")
    mutate(bad)
    with pytest.raises(InvalidInput, match=message):
        repo.commit("c", bad)
    assert repo.head("c") == head
    assert repo.fsck().ok


def test_fsck_clean_store(repo):
    repo.commit("c", sample_state("c"))
    report = repo.fsck()
    assert report.ok and report.objects == report.reachable > 0


def test_fsck_beside_a_writer_does_not_report_what_it_committed_after_the_listing(durable_store):
    """fsck lists the objects, then reads the refs: a writer committing in between (an API running beside
    `snap fsck`) made a head whose new objects were not in the listing, reported missing before. They
    are read and checked when the walk meets them; an object truly gone is still missing."""
    repo, writer = durable_store.init(), None
    try:
        repo.commit("c", sample_state("c"))
        writer = durable_store.open()
        listing = repo.backend.iter_objects

        def listing_then_a_commit(*args, **kwargs):
            yield from listing(*args, **kwargs)
            state = writer.load("c").to_json()
            state["contexts"][0]["local_memory"].append(exchange(99, "SB-1", "committed during fsck"))
            writer.commit("c", state)
            writer.commit("d", sample_state("d"))

        repo.backend.iter_objects = listing_then_a_commit
        report = repo.fsck()
        assert report.ok, report.problems
        assert report.reachable > report.objects  # the late objects were walked, and checked
    finally:
        repo.close()
        if writer is not None:
            writer.close()


def test_corrupt_and_missing_objects_are_named(store):
    if store.corrupt is None:
        pytest.skip(f"no way to corrupt objects behind the {store.name} backend's back")
    repo = store.init()
    repo.commit("c", sample_state("c"))
    tree = repo.tree(repo.head("c"))
    victim = tree.records["SB-3"].node_id
    store.corrupt(repo.backend, victim)
    fresh = store.open()
    with pytest.raises(CorruptObject) as info:
        fresh.load("c")
    assert info.value.object_id == victim
    report = fresh.fsck()
    assert not report.ok
    assert [p.object for p in report.problems] == [victim]
    chunk = tree.records["SB-1"].memory["local_memory"].head
    repo.backend.delete_objects([chunk])
    fresh = store.open()
    with pytest.raises((ObjectNotFound, CorruptObject)):
        fresh.load("c")
    kinds = {p.kind: p.object for p in fresh.fsck().problems}
    assert kinds == {"corrupt": victim, "missing": chunk}


def test_state_objects_accept_conversation_state(repo):
    state = ConversationState.from_json(sample_state())
    assert repo.commit("conv-1", state).created
    assert repo.load("conv-1").contexts == state.contexts

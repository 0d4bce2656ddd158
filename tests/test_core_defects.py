"""Core defects found by review: each test fails on the code before its fix.

A snapshot that could not be read back is never written (badly typed events
and log links, values nested too deeply to load); the diff reports every
difference (exchanges reordered, ``[]`` against absent or null); revisions
read full ids as ids and follow a conversation's history through renames.
"""

from __future__ import annotations

import copy
import time
from datetime import datetime, timezone

import pytest

from snapstore import Event, LogLink
from snapstore.errors import CorruptObject, InvalidInput, UnknownRevision
from snapstore.objects import MAX_NESTING
from snapstore.repository import Repository

from .factories import context, sample_state


def _nested(depth: int) -> object:
    """A JSON value nesting lists ``depth`` deep (a scalar is 0 deep)."""
    value: object = "leaf"
    for _ in range(depth):
        value = [value]
    return value


@pytest.fixture
def sqlite_repo(tmp_path):
    repo = Repository.init(str(tmp_path / "store"))
    yield repo
    repo.close()


def _unchanged(repo: Repository, conv: str, head: str | None) -> None:
    assert repo.head(conv) == head
    assert repo.fsck().ok


# -- events and log links -------------------------------------------------------------------


@pytest.mark.parametrize("make", [
    lambda: Event(type=1),
    lambda: Event(type="x", context_id=5),
    lambda: Event(type="x", message=None),
    lambda: LogLink("1", "abc"),
    lambda: LogLink(True, "abc"),
    lambda: LogLink(-1, "abc"),
    lambda: LogLink(1, None),
])
def test_badly_typed_event_or_log_link_is_refused_when_made(make):
    with pytest.raises(InvalidInput):
        make()


def test_commit_refuses_an_event_or_log_that_is_not_one(sqlite_repo):
    sqlite_repo.commit("c", sample_state("c"))
    head = sqlite_repo.head("c")
    state = sample_state("c")
    state["contexts"][0]["status"] = "active"
    with pytest.raises(InvalidInput, match="event must be an Event"):
        sqlite_repo.commit("c", state, event={"type": "x"})
    with pytest.raises(InvalidInput, match="log must be a LogLink"):
        sqlite_repo.commit("c", state, log=(1, "abc"))
    _unchanged(sqlite_repo, "c", head)
    assert [info.id for info in sqlite_repo.log("c")] == [head]


# -- nesting -------------------------------------------------------------------------------


def test_field_nested_at_the_limit_commits_and_loads(sqlite_repo):
    state = sample_state("c")
    state["contexts"][0]["scratchpad"] = _nested(MAX_NESTING)
    sqlite_repo.commit("c", state)
    assert sqlite_repo.load("c").contexts[0]["scratchpad"] == _nested(MAX_NESTING)
    assert sqlite_repo.fsck().ok


@pytest.mark.parametrize("depth", [MAX_NESTING + 1, 990, 5000])
def test_field_nested_too_deep_is_refused_naming_it(sqlite_repo, depth):
    sqlite_repo.commit("c", sample_state("c"))
    head = sqlite_repo.head("c")
    state = sample_state("c")
    state["contexts"][1]["scratchpad"] = _nested(depth)
    with pytest.raises(InvalidInput, match=r"context SB-2: field 'scratchpad' nests .* more than 200"):
        sqlite_repo.commit("c", state)
    _unchanged(sqlite_repo, "c", head)
    # the store still loads
    assert sqlite_repo.load("c").contexts[1]["scratchpad"] is None


def test_exchange_nested_too_deep_is_refused(sqlite_repo):
    sqlite_repo.commit("c", sample_state("c"))
    head = sqlite_repo.head("c")
    state = sample_state("c")
    state["contexts"][0]["local_memory"].append({"exchange_id": "EXCH-99", "deep": _nested(MAX_NESTING)})
    with pytest.raises(InvalidInput, match=r"context SB-1: local_memory: an exchange nests"):
        sqlite_repo.commit("c", state)
    _unchanged(sqlite_repo, "c", head)


def test_extra_value_nested_too_deep_is_refused(sqlite_repo):
    state = sample_state("c")
    state["extra_top"] = _nested(MAX_NESTING + 1)
    with pytest.raises(InvalidInput, match=r"extra key 'extra_top' nests"):
        sqlite_repo.commit("c", state)
    _unchanged(sqlite_repo, "c", None)


def test_update_fields_nested_too_deep_is_refused(sqlite_repo):
    sqlite_repo.commit("c", sample_state("c"))
    head = sqlite_repo.head("c")
    staging = sqlite_repo.stage("c")
    with pytest.raises(InvalidInput, match=r"context SB-1: field 'tags' nests"):
        staging.workspace.update_fields("SB-1", {"tags": _nested(3000)})
    _unchanged(sqlite_repo, "c", head)


# -- diff ---------------------------------------------------------------------------------


def _diff_of(repo: Repository, old: dict, new: dict):
    repo.commit("d", old)
    a = repo.head("d")
    repo.commit("d", new)
    return repo.diff(a, "d")


def test_diff_reports_exchanges_reordered(sqlite_repo):
    old = sample_state("d")
    new = copy.deepcopy(old)
    memory = new["contexts"][0]["local_memory"]
    memory[0], memory[2] = memory[2], memory[0]
    diff = _diff_of(sqlite_repo, old, new)
    assert diff, "a reorder is a difference"
    (change,) = diff.changed
    assert change.id == "SB-1"
    assert set(change.memory["local_memory"].changed) & {"EXCH-1", "EXCH-3"}
    assert not change.memory["local_memory"].added and not change.memory["local_memory"].removed


def test_diff_reports_empty_list_against_absent(sqlite_repo):
    old = sample_state("d")
    new = copy.deepcopy(old)
    del new["contexts"][2]["inherited_memory"]  # [] -> absent
    diff = _diff_of(sqlite_repo, old, new)
    (change,) = diff.changed
    assert change.fields == {"inherited_memory": {"old": []}}


def test_diff_reports_empty_list_replaced_by_null_with_old_value(sqlite_repo):
    old = sample_state("d")
    new = copy.deepcopy(old)
    assert old["contexts"][2]["inherited_memory"] == []
    new["contexts"][2]["inherited_memory"] = None
    diff = _diff_of(sqlite_repo, old, new)
    (change,) = diff.changed
    assert change.fields == {"inherited_memory": {"old": [], "new": None}}


def test_diff_reports_list_replaced_by_null_with_its_items(sqlite_repo):
    old = sample_state("d")
    new = copy.deepcopy(old)
    new["contexts"][0]["local_memory"] = None
    diff = _diff_of(sqlite_repo, old, new)
    (change,) = diff.changed
    assert change.fields["local_memory"] == {"old": old["contexts"][0]["local_memory"], "new": None}


# -- revisions and names ------------------------------------------------------------------


def test_new_conversation_named_like_an_object_id_is_refused(sqlite_repo):
    with pytest.raises(InvalidInput, match="look like an object id"):
        sqlite_repo.commit("ab" * 32, sample_state("x"))
    sqlite_repo.commit("c", sample_state("c"))
    with pytest.raises(InvalidInput, match="look like an object id"):
        sqlite_repo.rename_conversation("c", "0" * 64)
    assert sqlite_repo.head("c") is not None and sqlite_repo.head("0" * 64) is None


def test_id_longer_than_an_object_id_names_nothing(sqlite_repo):
    sqlite_repo.commit("c", sample_state("c"))
    head = sqlite_repo.head("c")
    assert sqlite_repo.resolve(head) == head
    with pytest.raises(UnknownRevision):
        sqlite_repo.resolve(head + "0")
    with pytest.raises(UnknownRevision):
        sqlite_repo.show(head + "00")


def test_at_time_follows_a_rename(sqlite_repo):
    sqlite_repo.commit("old", sample_state("old"))
    first = sqlite_repo.head("old")
    time.sleep(0.02)
    between = datetime.now(timezone.utc).isoformat()
    time.sleep(0.02)
    state = sample_state("old")
    state["contexts"][0]["status"] = "active"
    sqlite_repo.commit("old", state)
    sqlite_repo.rename_conversation("old", "new")
    assert sqlite_repo.resolve(f"new@{{{between}}}") == first
    assert [info.id for info in sqlite_repo.log("new")][-1] == first
    assert sqlite_repo.load("new").conversation_id == "new"


def test_fsck_checks_snapshots_named_only_by_an_earlier_names_reflog(tmp_path):
    import sqlite3

    from .conftest import flip_byte

    location = str(tmp_path / "store")
    repo = Repository.init(location)
    repo.commit("old", sample_state("old"))
    staging = repo.stage("old")
    staging.workspace.update_fields("SB-1", {"status": "active"})
    replaced = repo.commit_staged(staging).snapshot
    staging = repo.stage("old")
    staging.workspace.update_fields("SB-1", {"status": "merged"})
    repo.commit_staged(staging, amend=True)  # ``replaced`` is named by the reflog of "old" only
    before = repo.fsck()
    repo.rename_conversation("old", "new")
    after = repo.fsck()
    assert before.ok and after.ok
    assert after.reachable == before.reachable  # the replaced snapshot is still checked from the reflog
    repo.close()
    db = sqlite3.connect(tmp_path / "store" / "store.sqlite")
    (data,) = db.execute("SELECT data FROM objects WHERE id = ?", (bytes.fromhex(replaced),)).fetchone()
    db.execute("UPDATE objects SET data = ? WHERE id = ?", (flip_byte(data), bytes.fromhex(replaced)))
    db.commit()
    db.close()
    repo = Repository.open(location)
    try:
        report = repo.fsck()
        assert not report.ok
        assert [p.object for p in report.problems] == [replaced]
    finally:
        repo.close()


# -- a commit that makes a damaged object again ---------------------------------------------


def test_commit_replaces_a_damaged_copy_of_an_object_it_makes_again(store):
    if store.corrupt is None:
        pytest.fail(f"backend {store.name} offers no way to damage an object")
    repo = store.init()
    a = sample_state("c")
    repo.commit("c", a)
    first = repo.head("c")
    b = copy.deepcopy(a)
    b["contexts"][2]["status"] = "paused"
    repo.commit("c", b)
    # SB-3's node as of the first snapshot is no longer in the head's tree; damage it there
    victim = _node_id(repo, first, "SB-3")
    assert victim != _node_id(repo, repo.head("c"), "SB-3")
    store.corrupt(repo.backend, victim)
    repo.commit("c", copy.deepcopy(a))  # SB-3 as it first was: the same node id, carried again
    assert _node_id(repo, repo.head("c"), "SB-3") == victim
    fresh = store.open()
    assert fresh.load("c").contexts[2] == a["contexts"][2]
    assert fresh.fsck().ok


def _node_id(repo: Repository, snapshot_id: str, context_id: str) -> str:
    return repo.tree(snapshot_id).records[context_id].node_id


class _Killed(Exception):
    """The process dying at this point (not a snapstore error: nothing on the way out catches it)."""


def _damaged_and_made_again(store) -> tuple[Repository, dict, str]:
    """A store whose SB-3 node of its first snapshot (no longer in the head's tree) is damaged, the repository
    on it, and the state that makes that node again."""
    if store.corrupt is None:
        pytest.fail(f"backend {store.name} offers no way to damage an object")
    repo = store.init()
    a = sample_state("c")
    first = repo.commit("c", a).snapshot
    b = copy.deepcopy(a)
    b["contexts"][2]["status"] = "paused"
    repo.commit("c", b)
    victim = _node_id(repo, first, "SB-3")
    store.corrupt(repo.backend, victim)
    return repo, a, victim


def _kill_at_the_heals_first_change(backend, monkeypatch, after: bool, meanwhile=None) -> None:
    """From the end of the commit's own write, the next call that changes objects (the heal's first step)
    kills the process: before it does anything, or ``after`` it is done; ``meanwhile`` runs just before it."""
    armed = []
    for name in ("write_reporting_new", "write", "delete_objects", "replace_objects"):
        real = getattr(backend, name, None)
        if real is None:
            continue  # replace_objects, before there was one

        def step(*args, _real=real, _name=name, **kwargs):
            if not armed or armed[0] != "armed":
                result = _real(*args, **kwargs)
                if _name == "write_reporting_new" and not armed:
                    armed.append("armed")  # the commit is durable: what follows is the heal
                return result
            armed[0] = "killed"
            if meanwhile is not None:
                meanwhile()
            if after:
                _real(*args, **kwargs)
            raise _Killed(f"killed {'after' if after else 'before'} {_name}")

        monkeypatch.setattr(backend, name, step)


def _stored_copy(repo: Repository, oid: str) -> bytes:
    """The verified body of the store's copy of ``oid``; fails if the store no longer has one."""
    stored = repo.backend.get_objects([oid]).get(oid)
    assert stored is not None, f"{oid} is missing from the store: the head names an object it no longer has"
    return repo.verified_body(stored)


@pytest.mark.parametrize("after", [False, True], ids=["killed-before", "killed-after"])
def test_a_commit_killed_while_it_replaces_a_damaged_copy_leaves_the_old_copy_or_the_new(store, monkeypatch,
                                                                                            after):
    """The heal removed the damaged copy, then wrote the commit's: a process killed between the two (or a
    full disk, a gateway that stopped answering) left the durable head naming an object the store no
    longer had, and nobody could even stage a commit of the conversation any more. Now it is one step."""
    repo, a, victim = _damaged_and_made_again(store)
    before = repo.head("c")
    _kill_at_the_heals_first_change(repo.backend, monkeypatch, after)
    with pytest.raises(_Killed):
        repo.commit("c", copy.deepcopy(a))
    monkeypatch.undo()
    fresh = store.open()
    assert fresh.head("c") != before  # the commit was durable: its head names the node
    if after:
        _stored_copy(fresh, victim)
        assert fresh.load("c").contexts[2] == a["contexts"][2]
        assert fresh.fsck().ok
    else:
        with pytest.raises(CorruptObject):  # still the damaged copy, named as before
            _stored_copy(fresh, victim)
        fresh.commit("d", copy.deepcopy(a))  # the next commit that makes it mends it
        assert fresh.load("c").contexts[2] == a["contexts"][2] and fresh.fsck().ok


@pytest.fixture
def s3_store(tmp_path):
    from .conftest import BACKEND_FACTORIES

    yield from BACKEND_FACTORIES["s3"](tmp_path)


def test_an_s3_replacement_killed_between_its_puts_and_its_index_rows_leaves_the_new_bodies(s3_store, monkeypatch):
    """S3 replaces the body (a PUT over the key) before the index row: dying in between leaves the good
    body under the old row, never a row without a body."""
    repo, a, victim = _damaged_and_made_again(s3_store)

    def killed(*args, **kwargs):
        raise _Killed("killed between the PUTs and the index transaction")

    monkeypatch.setattr(repo.backend, "_replace_rows", killed)
    with pytest.raises(_Killed):
        repo.commit("c", copy.deepcopy(a))
    monkeypatch.undo()
    fresh = s3_store.open()
    _stored_copy(fresh, victim)
    assert fresh.load("c").contexts[2] == a["contexts"][2] and fresh.fsck().ok


def test_two_replicas_mending_one_damaged_copy_never_remove_each_others(store, monkeypatch):
    """Both read the damaged copy back. B mended it; A, mending it just after, removed B's good copy before
    writing its own: the object was gone meanwhile, and for good when A died there."""
    repo, a, victim = _damaged_and_made_again(store)
    other = store.open()  # replica B (its own connection, but for the in-memory store)
    mended_by_b = []

    def b_mends_it_first() -> None:
        monkeypatch.undo()  # B's calls are its own
        other.commit("d", copy.deepcopy(a))  # B makes the same node in another conversation
        mended_by_b.append(_stored_copy(other, victim))

    _kill_at_the_heals_first_change(repo.backend, monkeypatch, after=True, meanwhile=b_mends_it_first)
    with pytest.raises(_Killed):
        repo.commit("c", copy.deepcopy(a))
    assert mended_by_b
    fresh = store.open()
    assert _stored_copy(fresh, victim) == mended_by_b[0]
    assert fresh.load("c").contexts[2] == fresh.load("d").contexts[2] == a["contexts"][2]
    assert fresh.fsck().ok


def test_event_message_with_a_lone_surrogate_commits_on_every_backend(repo):
    lone = "a\ud800b"
    result = repo.commit("c", sample_state("c"), event=Event("commit", message=lone))
    assert repo.snapshot(result.snapshot).event.message == lone  # the snapshot keeps it exactly
    (row,) = repo.reflog("c")
    assert row.reason == "commit: a\\ud800b"
    assert repo.log("c")[0].snapshot.event.message == lone


@pytest.mark.parametrize("damage", ["'not an id'", "x'00ff'"])
def test_damaged_ref_row_is_named(tmp_path, damage):
    import sqlite3

    from click.testing import CliRunner

    from snapstore.cli.main import cli
    from snapstore.errors import DamagedRecord as BackendError

    location = str(tmp_path / "store")
    repo = Repository.init(location)
    repo.commit("c", sample_state("c"))
    repo.close()
    db = sqlite3.connect(tmp_path / "store" / "store.sqlite")
    db.execute(f"UPDATE refs SET target = {damage} WHERE name = 'conversations/c'")
    db.commit()
    db.close()
    repo = Repository.open(location)
    try:
        for read in (lambda: repo.head("c"), lambda: repo.conversation_ids(), lambda: repo.reflog("c") and repo.head("c")):
            with pytest.raises(BackendError, match=r"ref 'conversations/c' holds .*not a 32-byte object id"):
                read()
    finally:
        repo.close()
    for args in (["log", "c"], ["conversations"]):
        result = CliRunner().invoke(cli, ["--store", location, *args])
        assert result.exit_code != 0
        assert "conversations/c" in result.output and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
    fsck = CliRunner().invoke(cli, ["--store", location, "fsck"])
    assert fsck.exit_code == 1 and "damaged-row: " in fsck.output and "ref 'conversations/c' holds" in fsck.output


def test_event_message_with_a_nul_commits_on_every_backend(repo):
    result = repo.commit("c", sample_state("c"), event=Event("commit", message="a\x00b"))
    assert repo.snapshot(result.snapshot).event.message == "a\x00b"
    (row,) = repo.reflog("c")
    assert row.reason == "commit: a\\x00b"


# -- a store whose file went away under an open repository ----------------------------------


def _orchestrator_on(store: str):
    from snapstore.startup import Session

    session = Session(store, log_in_store=True)
    return session, session.start_new("conv", "root task")


def test_a_commit_after_the_store_was_deleted_is_refused_not_lost(tmp_path):
    """SQLite writes on into the unlinked file: the commit used to succeed and vanish."""
    import shutil

    from snapstore.errors import StoreNotFound

    store = str(tmp_path / "store")
    session, orchestrator = _orchestrator_on(store)
    root = orchestrator.active_context_id
    orchestrator.add_exchange(root, "kept", "yes")
    shutil.rmtree(store)
    with pytest.raises(StoreNotFound, match="deleted"):
        orchestrator.add_exchange(root, "after rm", "lost?")
    repo = Repository(session.repo.backend)  # the same open backend: still refuses
    with pytest.raises(StoreNotFound):
        repo.commit("other", sample_state())


def test_a_commit_after_the_store_was_replaced_goes_nowhere_silently(tmp_path):
    """A store put in place of the open one (a restore, a re-init) is not written through the old file."""
    import shutil

    from snapstore.errors import StoreNotFound

    store = str(tmp_path / "store")
    session, orchestrator = _orchestrator_on(store)
    root = orchestrator.active_context_id
    shutil.rmtree(store)
    Repository.init(store).close()
    with pytest.raises(StoreNotFound, match="replaced"):
        orchestrator.add_exchange(root, "into which file?", "neither")
    fresh = Repository.open(store)
    assert fresh.conversation_ids() == []
    fresh.close()


def test_stats_names_an_object_the_head_needs_but_the_store_lacks(tmp_path):
    """store_stats raised a bare KeyError (an internal error for the CLI) when a head's node was gone."""
    import sqlite3

    from snapstore.errors import ObjectNotFound
    from snapstore.stats import store_stats

    store = tmp_path / "store"
    repo = Repository.init(str(store))
    result = repo.commit("conv", sample_state())
    node_id = next(iter(repo.tree(result.snapshot).records.values())).node_id
    repo.close()
    with sqlite3.connect(store / "store.sqlite") as db:
        db.execute("DELETE FROM objects WHERE id = ?", (bytes.fromhex(node_id),))
    repo = Repository.open(str(store))
    with pytest.raises(ObjectNotFound, match=node_id):
        store_stats(repo)
    repo.close()


# -- a focus naming no context of the state ----------------------------------------------------


def _focus(repo: Repository, conv: str) -> str | None:
    return repo.load(conv).active_context_id


def test_commit_refuses_a_focus_naming_no_context(sqlite_repo):
    ghost = sample_state("c")
    ghost["active_context_id"] = "SB-9"
    with pytest.raises(InvalidInput, match=r"active_context_id 'SB-9' names no context in the state"):
        sqlite_repo.commit("c", ghost)
    assert sqlite_repo.conversation_ids() == [] and sqlite_repo.backend.count_objects()[0] == 0
    head = sqlite_repo.commit("c", sample_state("c")).snapshot
    # The focused context left out of the state while the focus still names it: refused too.
    gone = sample_state("c")
    gone["contexts"] = [c for c in gone["contexts"] if c["sidebar_id"] != "SB-2"]
    with pytest.raises(InvalidInput, match="'SB-2' names no context"):
        sqlite_repo.commit("c", gone)
    _unchanged(sqlite_repo, "c", head)
    assert _focus(sqlite_repo, "c") == "SB-2"


def test_a_staged_focus_naming_no_context_is_refused(sqlite_repo):
    head = sqlite_repo.commit("c", sample_state("c")).snapshot
    staging = sqlite_repo.stage("c")
    staging.workspace.set_active("ghost")
    with pytest.raises(InvalidInput, match="active_context_id 'ghost' names no context"):
        sqlite_repo.commit_staged(staging, event=Event("focus_switch", "ghost"))
    _unchanged(sqlite_repo, "c", head)
    assert _focus(sqlite_repo, "c") == "SB-2"


def test_removing_the_focused_context_clears_the_focus(sqlite_repo):
    sqlite_repo.commit("c", sample_state("c"))
    staging = sqlite_repo.stage("c")
    assert staging.workspace.remove_context("SB-2")
    assert staging.workspace.active_context_id is None
    sqlite_repo.commit_staged(staging, event=Event("context_deleted", "SB-2"))
    state = sqlite_repo.load("c")
    assert state.active_context_id is None and "SB-2" not in {c["sidebar_id"] for c in state.contexts}
    # Removing another context leaves the focus where it is.
    staging = sqlite_repo.stage("c")
    staging.workspace.set_active("SB-1")
    staging.workspace.remove_context("SB-4")
    sqlite_repo.commit_staged(staging)
    assert _focus(sqlite_repo, "c") == "SB-1"


def test_merge_refuses_a_focus_moved_to_a_context_the_other_side_removed(sqlite_repo):
    from snapstore.merge import MergeConflict, merge_trees

    base = sqlite_repo.tree(sqlite_repo.commit("c", sample_state("c")).snapshot)
    theirs = sqlite_repo.stage("c")
    theirs.workspace.remove_context("SB-4")
    ours = sqlite_repo.stage("c")
    ours.workspace.set_active("SB-4")
    with pytest.raises(MergeConflict, match="SB-4.*focus moved to it"):
        merge_trees(base, theirs.workspace.build(), ours.workspace.build())


def test_replay_of_a_deleted_focused_context_commits_no_focus(sqlite_repo, tmp_path):
    from snapstore.ozolith import OzolithLog
    from snapstore.replay import commit_replay

    log = OzolithLog(tmp_path / "ozolith.jsonl")
    log.append("context_created", "SB-1", "system", {"task_description": "root"})
    log.append("sidebar_spawn", "SB-2", "system", {"spawn_reason": "look", "parent_context": "SB-1",
                                                    "child_id": "SB-2"})
    log.append("context_deleted", "SB-2", "system", {})
    commit_replay(sqlite_repo, log, "c")  # was: committed the focus on SB-2, which the state no longer holds
    state = sqlite_repo.load("c")
    assert [c["sidebar_id"] for c in state.contexts] == ["SB-1"]
    assert state.active_context_id is None


def test_adapter_deleting_the_focused_context_clears_the_tree_focus_not_the_session_value(tmp_path):
    """The client's key/value store keeps what it was given; no snapshot names a focus that is not in its tree."""
    from snapstore.adapters import sidebar_persistence as sp

    from .client.model import SidebarContext
    from .test_adapter import rich_context

    persistence = sp.SidebarPersistence(str(tmp_path / "store"), context_class=SidebarContext)
    # The client may set the focus before it saves the context: stored, and no snapshot is refused.
    assert persistence.set_session_state("active_context_id", "SB-2") is True
    persistence.save_context(rich_context("SB-1"))
    persistence.save_context(rich_context("SB-2", "SB-1"))
    assert persistence.set_session_state("active_context_id", "SB-2") is True
    conv = persistence.repo.conversation_ids()[0]
    assert persistence.repo.load(conv).active_context_id == "SB-2"
    assert persistence.delete_context("SB-2") is True  # was: the head kept the focus on the deleted SB-2
    assert persistence.repo.load(conv).active_context_id is None
    assert persistence.get_session_state("active_context_id") == "SB-2"
    assert persistence.repo.fsck().ok


# -- an ambiguous short id lists what it matches -----------------------------------------------


def test_an_ambiguous_short_id_lists_its_candidates_by_unique_digits():
    from snapstore.errors import AmbiguousRevision
    from snapstore.revisions import ambiguous_short_id

    shared = "ab12" + "0" * 10  # 14 digits in common: 12 would not tell them apart
    ids = [shared + f"{i:x}" + "0" * 49 for i in range(8)]
    error = ambiguous_short_id("ab12", ids, {ids[0]: "snapshot", ids[1]: "node"})
    assert isinstance(error, AmbiguousRevision)
    message = str(error)
    assert message.startswith("short id 'ab12' is ambiguous: ")
    assert f"{ids[0][:15]} (snapshot), {ids[1][:15]} (node), {ids[2][:15]} (object)" in message
    assert message.endswith("and 3 more") and ids[5][:15] not in message
    assert "at least 3 more" in str(ambiguous_short_id("ab12", ids, {}, complete=False))

"""Property tests: round trips, history-independent ids, and the diff against a naive oracle."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hypothesis import assume, given
from hypothesis import strategies as st

from snapstore.backends.memory import MemoryBackend
from snapstore.errors import InvalidInput
from snapstore.repository import FORMAT_KEY, STORE_FORMAT, Repository
from snapstore.tree import Workspace, tree_from_contexts

from .factories import exchange, json_values, mutated, states


def fresh_repo() -> Repository:
    backend = MemoryBackend()
    backend.write(meta={FORMAT_KEY: str(STORE_FORMAT)})
    return Repository(backend, "memory:")


def effective_parents(state: dict[str, Any]) -> dict[str, str | None]:
    ids = {c["sidebar_id"] for c in state["contexts"]}
    out = {}
    for c in state["contexts"]:
        p = c.get("parent_context_id")
        out[c["sidebar_id"]] = p if p in ids and p != c["sidebar_id"] else None
    return out


def has_cycle(state: dict[str, Any]) -> bool:
    parents = effective_parents(state)
    for start in parents:
        seen, p = {start}, parents[start]
        while p is not None:
            if p in seen:
                return True
            seen.add(p)
            p = parents[p]
    return False


def naive_diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The diff computed the slow way, from whole materialized states."""
    a = {c["sidebar_id"]: c for c in old["contexts"]}
    b = {c["sidebar_id"]: c for c in new["contexts"]}
    pa, pb = effective_parents(old), effective_parents(new)

    return {
        "added": sorted(b.keys() - a.keys()),
        "removed": sorted(a.keys() - b.keys()),
        "moved": sorted(k for k in a.keys() & b.keys() if pa[k] != pb[k]),
        "changed": sorted(k for k in a.keys() & b.keys() if a[k] != b[k]),
    }


@given(state=states())
def test_commit_then_load_is_identity(state):
    assume(not has_cycle(state))
    repo = fresh_repo()
    repo.commit("conv", state)
    loaded = repo.load("conv").to_json()
    # Contexts come back in tree order (each parent before its children).
    by_id = {c["sidebar_id"]: c for c in loaded["contexts"]}
    assert len(by_id) == len(loaded["contexts"])
    assert by_id == {c["sidebar_id"]: c for c in state["contexts"]}
    assert {k: v for k, v in loaded.items() if k != "contexts"} == {k: v for k, v in state.items() if k != "contexts"}


@given(data=st.data())
def test_incremental_build_equals_fresh_build(data):
    old = data.draw(states())
    assume(not has_cycle(old))
    new = data.draw(mutated(old))
    if has_cycle(new):
        try:
            tree_from_contexts(new["contexts"], new["active_context_id"])
        except InvalidInput as exc:
            assert "cycle" in str(exc)
            return
        raise AssertionError("a cycle was accepted")
    base, _ = tree_from_contexts(old["contexts"], old["active_context_id"])
    incremental, _ = tree_from_contexts(new["contexts"], new["active_context_id"], base=base)
    fresh, _ = tree_from_contexts(new["contexts"], new["active_context_id"])
    assert incremental.state_id == fresh.state_id
    assert incremental.materialize() == fresh.materialize()


def committed_pair(data) -> tuple[Repository, dict[str, Any], dict[str, Any], str]:
    """A random state and a random edit of it, both committed: (repo, old, new, old snapshot id)."""
    old = data.draw(states())
    assume(not has_cycle(old))
    new = data.draw(mutated(old))
    assume(not has_cycle(new))
    repo = fresh_repo()
    repo.commit("conv", old)
    repo.commit("conv", new)
    return repo, old, new, repo.log("conv")[-1].id


@given(data=st.data())
def test_diff_agrees_with_the_naive_diff(data):
    repo, old, new, old_rev = committed_pair(data)
    result = repo.diff(old_rev, "conv")
    expected = naive_diff(old, new)
    assert sorted(c.id for c in result.added) == expected["added"]
    assert sorted(c.id for c in result.removed) == expected["removed"]
    assert sorted(m.id for m in result.moved) == expected["moved"]
    assert sorted(c.id for c in result.changed) == expected["changed"]
    # A diff is empty exactly when nothing changed; and it is symmetric.
    focus_moved = old["active_context_id"] != new["active_context_id"]
    assert bool(result) == (any(expected.values()) or focus_moved)
    back = repo.diff("conv", old_rev)
    assert sorted(c.id for c in back.added) == expected["removed"]
    assert sorted(c.id for c in back.removed) == expected["added"]
    assert sorted(m.id for m in back.moved) == expected["moved"]
    assert not repo.diff("conv", "conv")


@given(data=st.data())
def test_diff_field_changes_rebuild_the_new_fields(data):
    """apply(diff(a, b), a) == b for the fields of every changed context."""
    repo, old, new, old_rev = committed_pair(data)
    result = repo.diff(old_rev, "conv")
    a = {c["sidebar_id"]: c for c in old["contexts"]}
    b = {c["sidebar_id"]: c for c in new["contexts"]}
    for change in result.changed:
        fields = {k: v for k, v in a[change.id].items() if k not in ("sidebar_id", "local_memory", "inherited_memory") or not isinstance(v, list)}
        for name, delta in change.fields.items():
            if "new" in delta:
                fields[name] = delta["new"]
            else:
                fields.pop(name)
        want = {k: v for k, v in b[change.id].items() if k not in ("sidebar_id", "local_memory", "inherited_memory") or not isinstance(v, list)}
        assert fields == want
        local = change.memory.get("local_memory")
        old_len = len(a[change.id].get("local_memory") or [])
        new_len = len(b[change.id].get("local_memory") or [])
        if local is not None:
            assert new_len - old_len == len(local.added) - len(local.removed)


def test_diff_cost_is_proportional_to_the_change():
    """A one-context change costs the same number of reads in a small and a large tree."""
    from .factories import context

    reads = {}
    for n in (30, 3000):
        contexts = [context("SB-1")]
        for i in range(2, n + 1):
            parent = f"SB-{(i - 2) // 10 + 1}"  # a tree of fanout 10
            contexts.append(context(f"SB-{i}", parent=parent))
        for c in contexts:
            c["child_sidebar_ids"] = []
        state = {"conversation_id": "c", "active_context_id": "SB-1", "contexts": contexts}
        repo = fresh_repo()
        repo.commit("c", state)
        contexts[3]["status"] = "paused"  # SB-4: depth 1 in both trees
        repo.commit("c", state)
        result = repo.diff("c~1", "c")
        assert [c.id for c in result.changed] == ["SB-4"]
        reads[n] = result.reads
    assert reads[3000] == reads[30]


@given(data=st.data())
def test_a_chain_of_incremental_builds_equals_fresh_builds(data):
    """Builds made from the previous build's bodies (ids swapped, fields replaced), step after step."""
    state = data.draw(states())
    assume(not has_cycle(state))
    tree, _ = tree_from_contexts(state["contexts"], state["active_context_id"])
    for _ in range(data.draw(st.integers(min_value=1, max_value=5))):
        new = data.draw(mutated(state))
        if has_cycle(new):
            continue
        tree, _ = tree_from_contexts(new["contexts"], new["active_context_id"], base=tree)
        fresh, _ = tree_from_contexts(new["contexts"], new["active_context_id"])
        assert tree.state_id == fresh.state_id
        assert tree.materialize() == fresh.materialize()
        state = new


@given(data=st.data())
def test_staged_field_updates_and_appends_equal_fresh_builds(data):
    """The orchestrator's path: update_fields and append_exchange on a workspace, built from the
    previous build's bodies (the fields' canonical bytes spliced in), step after step."""
    state = data.draw(states())
    assume(not has_cycle(state))
    assume(state["contexts"])
    tree, _ = tree_from_contexts(state["contexts"], state["active_context_id"])
    ids = sorted(tree.records)
    for step in range(data.draw(st.integers(min_value=1, max_value=6))):
        workspace = Workspace(tree)
        for cid in data.draw(st.lists(st.sampled_from(ids), min_size=1, max_size=3)):
            if data.draw(st.booleans()):
                workspace.append_exchange(cid, exchange(step, cid))
            changes = data.draw(st.dictionaries(st.sampled_from(["status", "priority", "tags", "x"]),
                                                json_values, min_size=1, max_size=2))
            workspace.update_fields(cid, changes)
        tree = workspace.build()
        contexts = tree.materialize()
        fresh, _ = tree_from_contexts(contexts, tree.active_context_id)
        assert tree.state_id == fresh.state_id
        for cid, record in tree.records.items():
            assert record.node_id == fresh.records[cid].node_id, cid


def test_reused_bodies_fall_back_where_a_part_occurs_twice():
    """A field holding a child's node id, or fields whose text occurs elsewhere in the node, are encoded anew."""
    contexts: list[dict[str, Any]] = [
        {"sidebar_id": "P", "parent_context_id": None, "child_sidebar_ids": ["K"]},
        {"sidebar_id": "K", "parent_context_id": "P", "child_sidebar_ids": []},
        {"sidebar_id": "{}"},
    ]
    tree, _ = tree_from_contexts(contexts, None)
    contexts[0]["see"] = tree.records["K"].node_id  # P's body names K's node id twice
    tree, _ = tree_from_contexts(contexts, None, base=tree)
    contexts[1]["status"] = "paused"  # K's id changes: only the child entry of P may follow
    contexts[2]["status"] = "new"  # "{}": its fields, its id and its lists were the same text
    tree, _ = tree_from_contexts(contexts, None, base=tree)
    fresh, _ = tree_from_contexts(contexts, None)
    assert tree.state_id == fresh.state_id
    assert tree.records["P"].fields["see"] != tree.records["K"].node_id


def test_update_fields_stages_what_a_json_round_trip_gives_and_checks_the_links():
    """Values are copied as JSON would give them back (tuples as lists, int keys as strings);
    a parent or children list of the wrong type, or a value JSON cannot hold, is refused."""
    tree, _ = tree_from_contexts([{"sidebar_id": "A", "status": "active"}], None)
    workspace = Workspace(tree)
    tags = ["x"]
    workspace.update_fields("A", {"tags": tags, "pair": (1, 2), "by_id": {1: "one"}, "n": 1.5})
    tags.append("changed later")  # the workspace holds its own copy
    fields = workspace.fields("A")
    assert fields == {"status": "active", "tags": ["x"], "pair": [1, 2], "by_id": {"1": "one"}, "n": 1.5}
    for bad in ({"parent_context_id": 7}, {"child_sidebar_ids": "B"}, {"child_sidebar_ids": [1]},
                {"n": float("nan")}, {"x": object()}):
        try:
            workspace.update_fields("A", bad)
        except InvalidInput:
            pass
        else:
            raise AssertionError(f"{bad} was accepted")
    assert workspace.fields("A") == fields
    built = workspace.build()
    fresh, _ = tree_from_contexts(built.materialize(), None)
    assert built.state_id == fresh.state_id


def test_a_node_once_encoded_is_spliced_from_then_on(monkeypatch):
    """Whatever staged a context's new fields (put_context, update_fields, put_record), a node
    encoded once keeps its fields' bytes, and later changes to it or below it encode no node."""
    from snapstore import tree as tree_module

    contexts = [{"sidebar_id": "P", "parent_context_id": None, "child_sidebar_ids": ["K"], "status": "active"},
                {"sidebar_id": "K", "parent_context_id": "P", "child_sidebar_ids": [], "status": "active",
                 "local_memory": [exchange(0, "K")]}]
    tree, _ = tree_from_contexts(contexts, None)
    encoded: list[str] = []
    real = tree_module._encode_node
    monkeypatch.setattr(tree_module, "_encode_node", lambda node, fields_json: encoded.append(node.id)
                        or real(node, fields_json))
    for step, stage in enumerate([
        lambda ws: ws.update_fields("K", {"status": "paused"}),
        lambda ws: ws.put_record(replace(ws.record("P"), fields={**ws.record("P").fields, "tags": ["t"]}),
                                 changed=True),
        lambda ws: (ws.append_exchange("K", exchange(1, "K")), ws.update_fields("P", {"status": "merged"})),
    ]):
        workspace = Workspace(tree)
        stage(workspace)
        tree = workspace.build()
        assert encoded == [], step
        fresh, _ = tree_from_contexts(tree.materialize(), None)
        assert tree.state_id == fresh.state_id, step
        encoded.clear()  # the fresh build encodes every node

"""Wide nodes (store format 3): a node with many children names them through ``page`` objects.

Checks the canonical layout, that a change under a wide node rewrites one page
per level and that diff and incremental load read only the pages that
differ, that every reader (load, diff, fsck, gc, verify, stats, bundle,
transfer, show) understands pages, and the laws of ``test_laws`` again with
tiny pages so that every small random tree is paged several levels deep.
"""

from __future__ import annotations

import copy
import json
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from snapstore import objects
from snapstore import tree as tree_module
from snapstore.backends.memory import MemoryBackend
from snapstore.bundle import export_bundle, import_bundle
from snapstore.cli.main import cli
from snapstore.errors import CorruptObject, ObjectNotFound
from snapstore.gc import collect_garbage
from snapstore.objects import PAGE_SIZE, PAGE_THRESHOLD, Node, Page, canonical_json, encode, page_children
from snapstore.ozolith import OzolithLog
from snapstore.repository import FORMAT_KEY, STORE_FORMAT, Repository
from snapstore.startup import Session
from snapstore.stats import store_stats
from snapstore.transfer import copy_conversations
from snapstore.verify import verify

from . import test_laws as laws
from .factories import context, exchange


def fresh_repo() -> Repository:
    backend = MemoryBackend()
    backend.write(meta={FORMAT_KEY: str(STORE_FORMAT)})
    return Repository(backend, "memory:")


def wide_state(width: int, listed: bool = False, grandchildren: int = 0) -> dict[str, Any]:
    """A root with ``width`` children (listed in its child_sidebar_ids or not) and a few grandchildren."""
    kids = [f"C-{i:05d}" for i in range(width)]
    root = context("R-0", children=kids if listed else [], exchanges=1)
    contexts = [root] + [context(k, parent="R-0", exchanges=i % 2) for i, k in enumerate(kids)]
    for j in range(grandchildren):
        contexts.append(context(f"G-{j}", parent=kids[(j * 7) % width], exchanges=1))
    return {"conversation_id": "c", "active_context_id": "R-0", "contexts": contexts}


def root_node(repo: Repository, rev: str = "c") -> Node:
    tree = repo.tree(repo.resolve(rev))
    node = repo.read(tree.records["R-0"].node_id, "node")
    assert isinstance(node, Node)
    return node


class Counting:
    """Wraps a repository's read_many, counting the objects read by kind."""

    def __init__(self, repo: Repository) -> None:
        self.repo, self.counts = repo, {}
        self._inner = repo.read_many

    def __call__(self, ids, kind=None):
        ids = list(ids)
        self.counts[kind] = self.counts.get(kind, 0) + len(set(ids))
        return self._inner(ids, kind)


@contextmanager
def tiny_pages(size: int = 2):
    """Page every node with more than ``size`` children, ``size`` entries to a page (ids differ: tests only)."""
    saved = objects.PAGE_SIZE, objects.PAGE_THRESHOLD, tree_module.PAGE_SIZE, tree_module.PAGE_THRESHOLD
    objects.PAGE_SIZE = objects.PAGE_THRESHOLD = tree_module.PAGE_SIZE = tree_module.PAGE_THRESHOLD = size
    try:
        yield
    finally:
        objects.PAGE_SIZE, objects.PAGE_THRESHOLD, tree_module.PAGE_SIZE, tree_module.PAGE_THRESHOLD = saved


# -- the layout -------------------------------------------------------------------


def pairs(n: int) -> tuple[tuple[str, str], ...]:
    return tuple((f"C-{i:05d}", f"{i:064x}") for i in range(n))


@pytest.mark.parametrize("n, shape", [
    (PAGE_THRESHOLD + 1, [2]),                   # two leaves: 32 + 1
    (PAGE_SIZE * PAGE_SIZE, [PAGE_SIZE]),        # 1,024: one level of 32 full leaves
    (PAGE_SIZE * PAGE_SIZE + 1, [33, 2]),        # 1,025: 33 leaves under 2 interior pages
    (40_000, [1250, 40, 2]),                     # three levels
])
def test_page_layout_is_canonical(n, shape):
    out: dict = {}
    top, levels = page_children(pairs(n), None, out)
    assert [len(level) for level in levels] == shape
    assert top == tuple(pid for pid, _ in levels[-1]) and len(top) <= PAGE_SIZE
    for depth, level in enumerate(levels):
        entries = [e for _, run in level for e in run]
        assert entries == (list(pairs(n)) if depth == 0 else [pid for pid, _ in levels[depth - 1]])
        assert all(len(run) == PAGE_SIZE for _, run in level[:-1]) and 0 < len(level[-1][1]) <= PAGE_SIZE
        for pid, run in level:
            page = Page(children=run) if depth == 0 else Page(pages=run)
            assert encode(page)[2] == pid and out[pid] == encode(page)[:2]
    with pytest.raises(ValueError):
        page_children(pairs(PAGE_THRESHOLD))


def test_reusing_an_earlier_layout_encodes_one_page_per_level():
    before = pairs(2000)
    _, levels = page_children(before)
    after = list(before)
    after[1500] = (after[1500][0], "f" * 64)
    out: dict = {}
    top, new_levels = page_children(tuple(after), levels, out)
    assert len(out) == 2  # the leaf holding child 1500, and the interior page above it
    assert (top, new_levels) == page_children(tuple(after))  # same ids as a layout made from nothing


@settings(max_examples=60, deadline=None)
@given(n=st.integers(PAGE_THRESHOLD + 1, 3000), data=st.data())
def test_repaging_in_place_equals_paging_from_nothing(n, data):
    """A staged change under a wide node re-encodes only the pages holding the rebuilt children
    (tree._repaged), and gets the ids that paging the whole new list gives."""
    before = pairs(n)
    _, levels = page_children(before)
    kids = tuple(c for c, _ in before)
    old = tree_module.ContextRecord(kids[0], {}, {}, "0" * 64, None, kids, levels)
    places = data.draw(st.lists(st.integers(0, n - 1), max_size=6, unique=True))
    swaps = [(before[i][1], f"{i:063x}f", kids[i]) for i in places]
    after = list(before)
    for i in places:
        after[i] = (kids[i], f"{i:063x}f")
    out: dict = {}
    top, new_levels = tree_module._repaged(old, swaps, out)
    assert (top, new_levels) == page_children(tuple(after))
    assert len(out) <= len(places) * len(levels)  # one page per level per change, at most
    # A child that is not where its place says: no shortcut, the caller pages the whole list.
    untouched: dict = {}
    assert tree_module._repaged(old, [(before[0][1], "f" * 64, "not-a-child")], untouched) is None
    assert tree_module._repaged(old, [*swaps, ("e" * 64, "f" * 64, kids[-1])], untouched) is None
    assert untouched == {}  # nothing encoded for a shortcut not taken


def test_a_staged_change_under_a_wide_node_skips_the_pass_over_its_children(monkeypatch):
    """The orchestrator's path (stage, change, commit_staged) under a wide root: no full paging,
    and the same root ids as committing the same state from nothing."""
    repo = fresh_repo()
    repo.commit("c", wide_state(1100, listed=True))
    full = []
    real = tree_module.page_children
    monkeypatch.setattr(tree_module, "page_children", lambda *a, **k: full.append(1) or real(*a, **k))
    for step, cid in enumerate(["C-00700", "C-00003", "R-0", "C-01099"]):
        staging = repo.stage("c")
        staging.workspace.append_exchange(cid, exchange(100 + step, cid))
        staging.workspace.update_fields(cid, {"status": "paused" if step % 2 else "active"})
        repo.commit_staged(staging)
    assert full == []
    state = {"conversation_id": "c", "active_context_id": "R-0",
             "contexts": repo.tree(repo.head("c")).materialize()}
    assert repo.snapshot(repo.head("c")).root == fresh_repo_root(state)


def fresh_repo_root(state: dict[str, Any]) -> str:
    repo = fresh_repo()
    return repo.snapshot(repo.commit("c", state).snapshot).root


def test_up_to_the_threshold_a_node_keeps_the_inline_encoding():
    repo = fresh_repo()
    repo.commit("c", wide_state(PAGE_THRESHOLD))
    node = root_node(repo)
    assert len(node.children) == PAGE_THRESHOLD and not node.pages
    assert b'"children":[[' in encode(node)[1] and b'"pages"' not in encode(node)[1]
    state = wide_state(PAGE_THRESHOLD + 1)
    repo.commit("c", state)
    node = root_node(repo)
    assert not node.children and len(node.pages) == 2
    body = json.loads(encode(node)[1])
    assert "children" not in body and len(body["pages"]) == 2
    # Back to 32: inline again, and the very ids of the first commit.
    state["contexts"].pop()
    repo.commit("c", state)
    assert repo.tree(repo.head("c")).state_id == repo.tree(repo.resolve("c~2")).state_id


def test_a_context_listing_exactly_its_children_leaves_the_list_to_the_pages():
    repo = fresh_repo()
    state = wide_state(1100, listed=True)
    repo.commit("c", state)
    node = root_node(repo)
    body = encode(node)[1]
    assert node.listed and "child_sidebar_ids" not in node.fields and len(body) < 2000
    assert json.loads(body)["listed"] is True
    loaded = Repository(repo.backend, "memory:").load("c").to_json()["contexts"]
    assert loaded[0] == state["contexts"][0]  # the list is back, exactly
    # A spawn under it: the diff reports the whole list, old and new.
    state["contexts"].append(context("C-99999", parent="R-0"))
    state["contexts"][0]["child_sidebar_ids"].append("C-99999")
    repo.commit("c", state)
    assert root_node(repo).listed
    diff = Repository(repo.backend, "memory:").diff("c~1", "c")
    assert [c.id for c in diff.added] == ["C-99999"]
    change = {c.id: c for c in diff.changed}["R-0"]
    assert change.fields == {"child_sidebar_ids": {"old": state["contexts"][0]["child_sidebar_ids"][:-1],
                                                   "new": state["contexts"][0]["child_sidebar_ids"]}}
    # A list that is not exactly the children stays in the fields.
    state["contexts"][0]["child_sidebar_ids"].append("C-00000")
    repo.commit("c", state)
    node = root_node(repo)
    assert not node.listed and node.fields["child_sidebar_ids"] == state["contexts"][0]["child_sidebar_ids"]
    diff = Repository(repo.backend, "memory:").diff("c~1", "c")
    assert [(c.id, list(c.fields)) for c in diff.changed] == [("R-0", ["child_sidebar_ids"])]
    assert Repository(repo.backend, "memory:").load("c").to_json()["contexts"][0] == state["contexts"][0]


# -- cost: one page per level -------------------------------------------------------


@pytest.mark.parametrize("width, listed", [(1100, False), (1100, True), (2000, True)])
def test_a_change_under_a_wide_node_writes_and_reads_one_page_per_level(width, listed):
    repo = fresh_repo()
    state = wide_state(width, listed=listed)
    repo.commit("c", state)
    assert len(root_node(repo).pages) == 2  # two levels of pages
    state["contexts"][1 + 700]["local_memory"].append(exchange(9, "C-00700"))
    result = repo.commit("c", state)
    written = repo.backend.get_objects(repo.backend.find_ids("", limit=1 << 30))
    kinds: dict[str, int] = {}
    for oid in set(written) - _ids_of_first_commit(repo):
        kinds[written[oid].kind] = kinds.get(written[oid].kind, 0) + 1
    assert result.objects_written == 7
    assert kinds == {"chunk": 1, "node": 2, "page": 2, "state": 1, "snapshot": 1}
    assert max(o.size for o in written.values() if o.kind in ("node", "page")) < 4000

    fresh = Repository(repo.backend, "memory:")
    counting = Counting(fresh)
    fresh.read_many = counting  # type: ignore[method-assign]
    diff = fresh.diff("c~1", "c")
    assert [c.id for c in diff.changed] == ["C-00700"] and not (diff.added or diff.removed or diff.moved)
    assert counting.counts["page"] == 4  # one leaf and one interior page, old and new
    # Incremental load: the new head on top of the old tree reads the new pages only.
    other = Repository(repo.backend, "memory:")
    base = other.tree(other.resolve("c~1"))
    new_root = other.snapshot(other.head("c")).root
    counting = Counting(other)
    other.read_many = counting  # type: ignore[method-assign]
    loaded = other.tree_of_state(new_root, base)
    assert counting.counts == {"state": 1, "node": 2, "page": 2, "chunk": 1}
    assert loaded.materialize() == fresh_repo_load(state)


@pytest.mark.parametrize("listed", [False, True])
def test_an_outline_shows_what_the_tree_shows_without_reading_an_exchange(listed):
    """`snap tree` and `snap checkout` show Repository.outline: nodes and pages only."""
    from snapstore.cli.render import render_tree, tree_json

    repo = fresh_repo()
    state = wide_state(1100, listed=listed, grandchildren=40)
    state["contexts"].append(context("OTHER-ROOT", exchanges=3))  # a second root
    state["active_context_id"] = "G-7"
    head = repo.commit("c", state).snapshot
    full = Repository(repo.backend, "memory:").tree(head)
    fresh = Repository(repo.backend, "memory:")
    counting = Counting(fresh)
    fresh.read_many = counting  # type: ignore[method-assign]
    outline = fresh.outline(head)
    assert set(counting.counts) == {"snapshot", "state", "node", "page"}
    assert render_tree(outline) == render_tree(full) and tree_json(outline) == tree_json(full)
    assert outline.roots == full.roots and outline.active_context_id == full.active_context_id == "G-7"
    for cid, record in full.records.items():
        shape = outline.records[cid]
        assert (shape.fields, shape.parent, shape.children, shape.exchange_count()) == (
            record.fields, record.parent, record.children, record.exchange_count())
    assert outline.records.keys() == full.records.keys()
    assert repo.outline(head) is repo.tree(head)  # a tree already loaded is used as it is


def _ids_of_first_commit(repo: Repository) -> set[str]:
    first = repo.log("c")[-1].id
    seen, stack = set(), [first]
    while stack:
        oid = stack.pop()
        if oid in seen:
            continue
        seen.add(oid)
        stack.extend(child for child, _ in objects.references(repo.read(oid)))
    return seen


def fresh_repo_load(state: dict[str, Any]) -> list[dict[str, Any]]:
    repo = fresh_repo()
    repo.commit("c", state)
    return repo.tree(repo.head("c")).materialize()


def test_diff_reads_do_not_grow_with_the_width():
    reads = {}
    for width in (1100, 3000):
        repo = fresh_repo()
        state = wide_state(width)
        repo.commit("c", state)
        state["contexts"][1 + 1050]["status"] = "paused"
        repo.commit("c", state)
        diff = Repository(repo.backend, "memory:").diff("c~1", "c")
        assert [c.id for c in diff.changed] == ["C-01050"]
        reads[width] = diff.reads
    assert reads[1100] == reads[3000]


# -- round trips and the diff oracle on wide random trees ------------------------------


@st.composite
def wide_states(draw) -> dict[str, Any]:
    width = draw(st.integers(PAGE_THRESHOLD - 2, 140))
    state = wide_state(width, listed=draw(st.booleans()), grandchildren=draw(st.integers(0, 6)))
    if draw(st.booleans()):  # a second wide node, under the first
        parent = state["contexts"][1]["sidebar_id"]
        for j in range(draw(st.integers(PAGE_THRESHOLD - 1, 70))):
            state["contexts"].append(context(f"H-{j:03d}", parent=parent))
    return state


@st.composite
def one_change(draw, state: dict[str, Any]) -> dict[str, Any]:
    new = copy.deepcopy(state)
    contexts = new["contexts"]
    ids = [c["sidebar_id"] for c in contexts]
    op = draw(st.sampled_from(["append", "field", "add", "add-listed", "remove", "reparent", "reorder", "focus",
                               "unlist"]))
    target = contexts[draw(st.integers(0, len(contexts) - 1))]
    if op == "append":
        target["local_memory"].append(exchange(draw(st.integers(100, 200)), target["sidebar_id"]))
    elif op == "field":
        target["status"] = draw(st.sampled_from(["paused", "merged", "archived"]))
    elif op in ("add", "add-listed"):
        sid = f"N-{draw(st.integers(0, 99)):02d}"
        contexts.append(context(sid, parent=target["sidebar_id"], exchanges=1))
        if op == "add-listed":
            target["child_sidebar_ids"].append(sid)
    elif op == "remove" and target["sidebar_id"] != "R-0":
        contexts.remove(target)
    elif op == "reparent" and target["sidebar_id"] != "R-0":
        target["parent_context_id"] = draw(st.sampled_from([None, "R-0", ids[1], ids[-1]]))
    elif op == "reorder":
        root = contexts[0]
        root["child_sidebar_ids"] = list(reversed(root["child_sidebar_ids"])) or [ids[-1]]
    elif op == "focus":
        new["active_context_id"] = draw(st.sampled_from(ids))
    elif op == "unlist":  # the list no longer matches the children: kept in the node's fields
        contexts[0]["child_sidebar_ids"].append("not-a-child")
    return new


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_wide_trees_round_trip_and_diff_like_the_oracle(data):
    old = data.draw(wide_states())
    new = data.draw(one_change(old))
    if laws.has_cycle(new):
        return
    repo = fresh_repo()
    old_rev = repo.commit("c", old).snapshot
    repo.commit("c", new)
    # Load from nothing, and on top of the old tree, give the committed state back.
    cold = Repository(repo.backend, "memory:")
    loaded = cold.load("c").to_json()
    assert {c["sidebar_id"]: c for c in loaded["contexts"]} == {c["sidebar_id"]: c for c in new["contexts"]}
    old_tree = cold.tree(old_rev)
    on_top = cold.tree_of_state(cold.snapshot(cold.head("c")).root, old_tree)
    from_nothing = Repository(repo.backend, "memory:").tree(repo.head("c"))
    assert on_top.materialize() == from_nothing.materialize()
    assert {c: (r.node_id, r.parent, r.children, r.pages) for c, r in on_top.records.items()} == \
        {c: (r.node_id, r.parent, r.children, r.pages) for c, r in from_nothing.records.items()}
    # The same state always gives the same ids, whatever history led to it.
    again = fresh_repo()
    again.commit("c", new)
    assert again.snapshot(again.head("c")).root == repo.snapshot(repo.head("c")).root
    # The diff equals the brute-force comparison, both ways.
    diff = Repository(repo.backend, "memory:").diff(old_rev, "c")
    expected = laws.naive_diff(old, new)
    assert sorted(c.id for c in diff.added) == expected["added"]
    assert sorted(c.id for c in diff.removed) == expected["removed"]
    assert sorted(m.id for m in diff.moved) == expected["moved"]
    assert sorted(c.id for c in diff.changed) == expected["changed"]
    back = Repository(repo.backend, "memory:").diff("c", old_rev)
    assert sorted(c.id for c in back.added) == expected["removed"]
    assert sorted(m.id for m in back.moved) == expected["moved"]
    assert repo.fsck().ok


def test_the_laws_hold_with_tiny_pages():
    """test_laws' properties again, with every node of more than two children paged (several levels)."""
    with tiny_pages(2):
        repo = fresh_repo()
        repo.commit("c", wide_state(7))
        assert [len(level) for level in repo.tree(repo.head("c")).records["R-0"].pages] == [4, 2]
        laws.test_commit_then_load_is_identity()
        laws.test_incremental_build_equals_fresh_build()
        laws.test_diff_agrees_with_the_naive_diff()
        laws.test_diff_field_changes_rebuild_the_new_fields()
        test_wide_trees_round_trip_and_diff_like_the_oracle()


def test_checkout_then_commit_from_gives_the_identical_root(tmp_path):
    store = str(tmp_path / "s")
    Repository.init(store).close()
    state = tmp_path / "state.json"
    state.write_text(json.dumps(wide_state(1100, listed=True, grandchildren=3)))
    runner = CliRunner()
    assert runner.invoke(cli, ["--store", store, "commit", "c", "--from", str(state)]).exit_code == 0
    out = tmp_path / "out.json"
    assert runner.invoke(cli, ["--store", store, "checkout", "c", "-o", str(out)]).exit_code == 0
    with Repository.open(store) as repo:
        root = repo.snapshot(repo.head("c")).root
    other = str(tmp_path / "other")
    Repository.init(other).close()
    result = runner.invoke(cli, ["--store", other, "commit", "c", "--from", str(out)])
    assert result.exit_code == 0, result.output
    with Repository.open(other) as repo:
        assert repo.snapshot(repo.head("c")).root == root


# -- every reader ------------------------------------------------------------------------


def test_fsck_gc_stats_bundle_and_transfer_follow_pages(repo, tmp_path):
    """Every reader follows pages (pages of 4 here, so that a small tree has two levels of them:
    the test runs on every backend, and on S3 each object is a request)."""
    with tiny_pages(4):
        _follow_pages(repo, tmp_path)


def _follow_pages(repo: Repository, tmp_path) -> None:
    state = wide_state(40, listed=True, grandchildren=4)
    repo.commit("c", state)
    state["contexts"][5]["local_memory"].append(exchange(7, "C-00004"))
    repo.commit("c", state)
    repo.commit("small", {"conversation_id": "small", "active_context_id": None, "contexts": [context("S-1")]})
    pages = [o for o in repo.backend.iter_objects(kind="page")]
    assert len(pages) == 10 + 3 + 2  # 10 leaves and 3 interior pages, then one of each again

    report = repo.fsck()
    assert report.ok and report.reachable == report.objects
    stats = store_stats(repo)
    assert {k.kind for k in stats.kinds} == {"chunk", "node", "page", "state", "snapshot"}
    assert stats.heads_materialized_bytes == sum(len(canonical_json(repo.load(c).to_json())) for c in ("c", "small"))
    assert verify(repo).ok

    # gc keeps every page a ref reaches, and frees them with their conversation.
    assert collect_garbage(repo, timedelta(0)).unreachable == 0
    assert collect_garbage(repo, timedelta(0)).deleted == 0
    assert repo.load("c").to_json() == {**state, "contexts": repo.load("c").to_json()["contexts"]}

    bundle = tmp_path / "c.bundle"
    export_bundle(repo, ["c"], bundle)
    other = fresh_repo()
    import_bundle(other, bundle)
    assert other.load("c").to_json() == repo.load("c").to_json() and other.fsck().ok
    copied = fresh_repo()
    copy_conversations(repo, copied, ["c"])
    assert copied.head("c") == repo.head("c") and copied.fsck().ok
    assert {o.id for o in copied.backend.iter_objects(kind="page")} == {o.id for o in pages}

    repo.backend.write(ref_updates=[_delete_ref(repo, "c")])
    collect_garbage(repo, timedelta(0))
    collect_garbage(repo, timedelta(0))
    assert list(repo.backend.iter_objects(kind="page")) == [] and repo.fsck().ok


def _delete_ref(repo: Repository, conv: str):
    from snapstore.backends.base import RefUpdate
    from snapstore.refs import ref_name

    return RefUpdate(ref_name(conv), repo.head(conv), None, "test: drop")


def test_show_decodes_a_page(tmp_path):
    store = str(tmp_path / "s")
    with Repository.init(store) as repo:
        repo.commit("c", wide_state(40))
        pid = root_node(repo).pages[0]
    result = CliRunner().invoke(cli, ["--store", store, "show", pid, "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["kind"] == "page" and len(shown["object"]["children"]) == PAGE_SIZE


def test_a_corrupt_or_missing_page_is_named(store):
    repo = store.init()
    repo.commit("c", wide_state(40))
    pid = root_node(repo).pages[1]
    if store.corrupt is None:
        pytest.skip("this backend cannot be corrupted from the outside")
    store.corrupt(repo.backend, pid)
    fresh = Repository(repo.backend, store.location or "memory:")
    with pytest.raises(CorruptObject) as info:
        fresh.load("c")
    assert info.value.object_id == pid
    assert any(p.object == pid for p in fresh.fsck().problems)
    repo.close()


def test_a_missing_page_is_named():
    repo = fresh_repo()
    repo.commit("c", wide_state(40))
    pid = root_node(repo).pages[0]
    del repo.backend._objects[pid]  # type: ignore[attr-defined]
    fresh = Repository(repo.backend, "memory:")
    with pytest.raises(ObjectNotFound) as info:
        fresh.load("c")
    assert pid in str(info.value)
    assert [p.kind for p in fresh.fsck().problems] == ["missing"]


def test_verify_checks_spawns_under_a_paged_parent(tmp_path):
    session = Session(str(tmp_path / "store"), ozolith=str(tmp_path / "log.jsonl"))
    orch = session.start_new("c", "root")
    root = orch.create_root_context("wide root")
    for i in range(40):
        orch.spawn_sidebar(root, f"sidebar {i}", inherit_last_n=0)
        orch.switch_focus(root)
    orch.add_exchange(root, "question", "answer")
    tree = orch.tree
    assert tree.records[root].pages is not None and len(tree.records[root].children) == 40
    session.close()
    with Repository.open(str(tmp_path / "store")) as repo:
        report = verify(repo, OzolithLog(tmp_path / "log.jsonl"))
        assert report.ok, report.problems[:3]

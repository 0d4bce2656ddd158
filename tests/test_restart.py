"""Restarting fast: one load per start, counts from nodes, chain hints, the log read from its end,
and the adapter's saves encoding only what changed (issue 4)."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

import snapstore.repository as repository_module
from snapstore.adapters import sidebar_persistence as sp
from snapstore.adapters import typed
from snapstore.ozolith import OzolithLog
from snapstore.ozolith.log import TornLine
from snapstore.repository import HINTS_PREFIX, Repository
from snapstore.startup import Session
from snapstore.tree import HINT_STRIDE, Tree

from .client.model import SidebarContext, SidebarStatus
from .factories import context, exchange


def chains_of(tree: Tree) -> dict:
    """Everything a loaded tree holds, comparable: fields, places, and each list's items and chunk ids."""
    return {
        cid: (record.fields, record.node_id, record.parent, record.children,
              {name: (chain.items, chain._links[: chain.n]) for name, chain in record.memory.items()})
        for cid, record in tree.records.items()
    } | {"": (tree.roots, tree.active_context_id, tree.extra, tree.state_id)}


def build_store(path, root_exchanges: int = 150) -> Repository:
    """A conversation with a long main thread, a long sidebar, short ones and inherited copies."""
    repo = Repository.init(str(path))
    state = {"conversation_id": "c1", "active_context_id": "SB-2", "contexts": [
        context("SB-1", children=["SB-2", "SB-3", "SB-4"], exchanges=root_exchanges),
        context("SB-2", parent="SB-1", exchanges=HINT_STRIDE * 2 + 5),
        context("SB-3", parent="SB-1", exchanges=3),
        context("SB-4", parent="SB-1", exchanges=HINT_STRIDE),
    ]}
    state["contexts"][1]["inherited_memory"] = [dict(e, _inherited=True) for e in
                                                state["contexts"][0]["local_memory"][-5:]]
    repo.commit("c1", state)
    other = {"conversation_id": "c2", "active_context_id": "SB-9",
             "contexts": [context("SB-9", exchanges=HINT_STRIDE * 3)]}
    repo.commit("c2", other)
    return repo


class Counting:
    """Counts a backend's object round trips and the kinds of what they return."""

    def __init__(self, backend) -> None:
        self.backend, self.calls, self.kinds = backend, 0, []
        self._get = backend.get_objects
        backend.get_objects = self

    def __call__(self, ids):
        self.calls += 1
        found = self._get(ids)
        self.kinds.extend(o.kind for o in found.values())
        return found


def test_conversations_count_from_nodes_without_reading_an_exchange(tmp_path):
    repo = build_store(tmp_path / "s")
    expected = {c.conversation: (c.contexts, c.exchanges) for c in repo.conversations()}  # from cached trees
    trees = {conv: repo.tree(repo.head(conv)) for conv in ("c1", "c2")}
    assert expected == {conv: (len(t.records), t.exchange_count()) for conv, t in trees.items()}
    repo.close()
    reopened = Repository.open(str(tmp_path / "s"))
    counting = Counting(reopened.backend)
    infos = reopened.conversations()
    assert {c.conversation: (c.contexts, c.exchanges) for c in infos} == expected
    assert "chunk" not in counting.kinds and counting.kinds
    reopened.close()


def test_counts_of_a_wide_tree_match_its_loaded_tree(tmp_path):
    repo = Repository.init(str(tmp_path / "s"))
    kids = [f"SB-{i}" for i in range(2, 120)]
    contexts = [context("SB-1", children=kids, exchanges=3)]
    contexts += [context(k, parent="SB-1", exchanges=i % 4) for i, k in enumerate(kids)]
    contexts += [context("SB-500", parent="SB-7", exchanges=2)]
    repo.commit("wide", {"conversation_id": "wide", "active_context_id": "SB-1", "contexts": contexts})
    tree = repo.tree(repo.head("wide"))
    repo.close()
    reopened = Repository.open(str(tmp_path / "s"))
    [info] = reopened.conversations()
    assert (info.contexts, info.exchanges) == (len(tree.records), tree.exchange_count()) == (120, 3 + sum(i % 4 for i in range(len(kids))) + 2)
    reopened.close()


def test_hinted_load_is_the_same_tree_in_a_few_round_trips(tmp_path):
    repo = build_store(tmp_path / "s", root_exchanges=400)
    plain = chains_of(repo.tree(repo.head("c1")))
    assert repo.save_chain_hints() is True
    assert repo.save_chain_hints() is False  # fresh: nothing to write
    hints = json.loads(repo.backend.get_meta(HINTS_PREFIX + "c1"))
    assert set(hints["lists"]) == {"SB-1", "SB-2"}  # only lists longer than the stride
    repo.close()

    unhinted = Repository.open(str(tmp_path / "s"))
    counting = Counting(unhinted.backend)
    snap = unhinted.snapshot(unhinted.head("c1"))
    assert chains_of(unhinted.tree_of_state(snap.root)) == plain
    walked = counting.calls
    unhinted.close()

    hinted = Repository.open(str(tmp_path / "s"))
    counting = Counting(hinted.backend)
    assert chains_of(hinted.tree(hinted.head("c1"))) == plain
    assert walked > 400 and counting.calls < HINT_STRIDE + 20
    hinted.close()


@pytest.mark.parametrize("spoil", ["stale", "shifted", "other-list", "missing", "not-chunks", "garbage",
                                   "wrong-version", "bad-stride", "wrong-shape"])
def test_wrong_hints_cost_reads_never_correctness(tmp_path, spoil):
    repo = build_store(tmp_path / "s", root_exchanges=200)
    repo.tree(repo.head("c1"))
    repo.save_chain_hints()
    key = HINTS_PREFIX + "c1"
    hints = json.loads(repo.backend.get_meta(key))
    lists = hints["lists"]
    if spoil == "stale":  # the lists grew and one was rewritten since the hints
        staging = repo.stage("c1")
        for i in range(HINT_STRIDE * 3):
            staging.workspace.append_exchange("SB-1", exchange(1000 + i, "SB-1"))
        replaced = context("SB-2", parent="SB-1", exchanges=HINT_STRIDE + 7)
        replaced["local_memory"] = [exchange(5000 + i, "SB-2") for i in range(HINT_STRIDE + 7)]
        staging.workspace.put_context(replaced)
        repo.commit_staged(staging)
        text = None
    elif spoil == "shifted":
        lists["SB-1"]["local_memory"] = lists["SB-1"]["local_memory"][1:]
    elif spoil == "other-list":
        lists["SB-1"]["local_memory"], lists["SB-2"]["local_memory"] = (
            lists["SB-2"]["local_memory"], lists["SB-1"]["local_memory"])
    elif spoil == "missing":
        lists["SB-1"]["local_memory"] = ["ab" * 32] * len(lists["SB-1"]["local_memory"])
    elif spoil == "not-chunks":
        node = repo.tree(repo.head("c1")).records["SB-1"].node_id
        lists["SB-1"]["local_memory"] = [node, repo.head("c1"), "not an id", 7]
    elif spoil == "wrong-version":
        hints["v"] = 99
    elif spoil == "bad-stride":
        hints["stride"] = 0
    elif spoil == "wrong-shape":
        hints["lists"] = {"SB-1": ["x"], "SB-2": {"local_memory": "x"}}
    if spoil != "stale":
        text = "{not json" if spoil == "garbage" else json.dumps(hints)
    if text is not None:
        repo.backend.write(meta={key: text})
    head = repo.head("c1")
    expected = chains_of(repo.tree_of_state(repo.snapshot(head).root))
    repo.close()
    reopened = Repository.open(str(tmp_path / "s"))
    assert chains_of(reopened.tree(head)) == expected
    reopened.close()


def test_a_restart_loads_the_tree_once_and_the_first_operation_does_not_reload(tmp_path, monkeypatch):
    store, log = str(tmp_path / "store"), str(tmp_path / "log.jsonl")
    session = Session(store, ozolith=log)
    orch = session.start_new("c1", "root task")
    side = orch.spawn_sidebar("SB-1", "look aside", inherit_last_n=0)
    for i in range(HINT_STRIDE * 2 + 3):
        orch.add_exchange("SB-1" if i % 3 else side, f"q{i}", f"a{i}")
    records = {cid: (r.fields, r.memory["local_memory"].items) for cid, r in orch.tree.records.items()}
    session.close()

    loads = []
    real = repository_module.load_tree
    monkeypatch.setattr(repository_module, "load_tree", lambda *a, **k: loads.append(1) or real(*a, **k))
    session = Session(store, ozolith=log)
    assert loads == []  # inspecting counts from nodes and reads the focus from the state
    assert session.report.focus == orch.active_context_id
    assert [(c.contexts, c.exchanges) for c in session.report.conversations] == [(2, HINT_STRIDE * 2 + 3)]
    resumed = session.continue_last()
    assert len(loads) == 1
    assert {cid: (r.fields, r.memory["local_memory"].items) for cid, r in resumed.tree.records.items()} == records
    resumed.add_exchange("SB-1", "after", "the restart")
    assert len(loads) == 1
    session.close()


def test_hints_are_written_at_a_clean_close_and_after_a_crash(tmp_path):
    store, log = str(tmp_path / "store"), str(tmp_path / "log.jsonl")
    session = Session(store, ozolith=log)
    orch = session.start_new("c1", "root task")
    for i in range(HINT_STRIDE + 3):
        orch.add_exchange("SB-1", f"q{i}", f"a{i}")
    session.close()
    repo = Repository.open(store)
    first = json.loads(repo.backend.get_meta(HINTS_PREFIX + "c1"))
    assert len(first["lists"]["SB-1"]["local_memory"]) == 1
    repo.close()

    session = Session(store, ozolith=log)
    orch = session.continue_last()
    for i in range(HINT_STRIDE * 2):
        orch.add_exchange("SB-1", f"q{i}", f"a{i}")
    session.close(clean=False)  # a crash: no marker, no fresh hints

    session = Session(store, ozolith=log)
    repo = session.repo
    assert json.loads(repo.backend.get_meta(HINTS_PREFIX + "c1")) == first
    session.continue_last()  # loads with the stale hints, then refreshes them
    assert len(json.loads(repo.backend.get_meta(HINTS_PREFIX + "c1"))["lists"]["SB-1"]["local_memory"]) == 3
    session.close()


def test_entries_after_reads_only_the_newest_entries(tmp_path):
    log = OzolithLog(tmp_path / "log.jsonl", key="k")
    assert log.entries_after(0) == []
    for i in range(40):
        log.append("exchange", f"SB-{i % 3}", "human", {"text": "x" * (i * 500), "i": i})
    every = list(log.entries())
    for floor in (0, 1, 17, 39, 40, 99):
        assert [e.to_line() for e in log.entries_after(floor)] == [e.to_line() for e in every if e.sequence > floor]
    with open(log.path, "ab") as handle:
        handle.write(b'{"sequence": 41, "torn')
    with pytest.raises(TornLine):
        log.entries_after(39)


# -- the adapter --------------------------------------------------------------------


@pytest.fixture
def persistence(tmp_path):
    instance = sp.SidebarPersistence(str(tmp_path / "store"), context_class=SidebarContext)
    yield instance
    instance.close()


def reloaded(tmp_path, sid: str):
    fresh = sp.SidebarPersistence(str(tmp_path / "store"), context_class=SidebarContext)
    try:
        return fresh.load_context(sid)
    finally:
        fresh.close(clean=False)


def client_context(n: int) -> SidebarContext:
    return SidebarContext(sidebar_id="SB-1", uuid="u-1", parent_context_id=None,
                          local_memory=[dict(exchange(i, "SB-1"), meta={"tags": ["a"]}) for i in range(n)],
                          created_at=datetime(2026, 1, 5, 10, 0, 0, 7), last_activity=datetime(2026, 1, 5, 11))


def test_saves_see_every_change_to_old_exchanges(tmp_path, persistence):
    ctx = client_context(40)
    persistence.save_context(ctx)
    ctx.local_memory.append(exchange(40, "SB-1"))
    persistence.save_context(ctx)  # from here on the saves compare through the mirror
    for change in (
        lambda: ctx.local_memory[3]["meta"]["tags"].append("b"),      # nested, in place
        lambda: ctx.local_memory[5].__setitem__("user", "edited"),    # a leaf replaced
        lambda: ctx.local_memory[7].pop("timestamp"),                 # a key removed
        lambda: ctx.local_memory.insert(0, exchange(99, "SB-1")),     # shifted
        lambda: ctx.local_memory.__setitem__(9, {"when": datetime(2026, 1, 1, 9, 30)}),  # not JSON
        lambda: ctx.local_memory.__delitem__(slice(20, None)),        # truncated
        lambda: ctx.local_memory.append(exchange(100, "SB-1")),       # grown again
    ):
        change()
        persistence.save_context(ctx)
        assert reloaded(tmp_path, "SB-1") == ctx
        assert persistence.load_context("SB-1") == ctx


def test_loaded_contexts_share_nothing_mutable_with_the_store(persistence):
    ctx = client_context(5)
    ctx.status = SidebarStatus.PAUSED
    persistence.save_context(ctx)
    for loaded in (persistence.load_context("SB-1"), persistence.load_all_contexts()[0]):
        loaded.local_memory[0]["user"] = "changed"
        loaded.local_memory[1]["meta"]["tags"].append("z")
        loaded.local_memory.append({"x": 1})
        loaded.child_sidebar_ids.append("SB-9")
    again = persistence.load_context("SB-1")
    assert again == ctx and again.status is SidebarStatus.PAUSED


def test_encode_fast_path_keeps_every_tag():
    class Tagged(dict):
        pass

    value = {"a": [1, 2.5, True, None, "s", (1, [2]), {"$snapstore": "x"}, datetime(2026, 1, 1)],
             "b": {"c": {}, "d": [], "e": {SidebarStatus.MERGED}}, "f": Tagged(g=1)}
    encoded = typed.encode_value(value)
    assert encoded["a"][5] == {"$snapstore": "tuple", "value": [1, [2]]}
    assert encoded["a"][6] == {"$snapstore": "dict", "value": {"$snapstore": "x"}}
    assert encoded["b"]["c"] == {} and encoded["b"]["d"] == [] and encoded["f"] == {"g": 1}
    decoded = typed.decode_value(json.loads(json.dumps(encoded)))
    assert decoded == {**value, "f": {"g": 1}}
    assert decoded["a"][5] == (1, [2]) and isinstance(decoded["a"][5], tuple)
    with pytest.raises(Exception, match="not a string"):
        typed.encode_value([{"a": {1: "x"}}])

"""Store format versions: stores written by format-1 and format-2 snapstore, upgrades, refusals.

``tests/fixtures/format1/`` was written by snapstore at store format 1
(``tests/fixtures/make_format1_store.py``); ``format1_expected.json`` pins
what it holds. ``tests/fixtures/format2/`` likewise at format 2, with a node
of 40 children listed inline (format 3 pages such a node). Every later
snapstore must read them exactly after ``snap upgrade``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from snapstore.cli.main import cli
from snapstore.errors import FormatError, StoreNotFound
from snapstore.location import open_backend
from snapstore.repository import FORMAT_KEY, STORE_FORMAT, Repository
from snapstore.upgrade import STEPS, store_format, upgrade
from snapstore.verify import verify

FIXTURES = Path(__file__).resolve().parent / "fixtures"
EXPECTED = json.loads((FIXTURES / "format1_expected.json").read_text())
EXPECTED2 = json.loads((FIXTURES / "format2_expected.json").read_text())


@pytest.fixture
def format1(tmp_path) -> str:
    """A copy of the format-1 fixture store (opening a store writes to it)."""
    target = tmp_path / "format1"
    shutil.copytree(FIXTURES / "format1", target)
    return str(target)


@pytest.fixture
def format2(tmp_path) -> str:
    """A copy of the format-2 fixture store."""
    target = tmp_path / "format2"
    shutil.copytree(FIXTURES / "format2", target)
    return str(target)


def snap(location: str, *args: str):
    return CliRunner().invoke(cli, ["--store", location, *args])


def test_the_fixture_is_format_1_and_is_refused_until_upgraded(format1):
    assert EXPECTED["format"] == 1
    with open_backend(format1) as backend:
        assert store_format(backend) == 1
    with pytest.raises(FormatError, match="store format 1 is old; run `snap upgrade`"):
        Repository.open(format1)
    result = snap(format1, "log", "alpha")
    assert result.exit_code == 1 and "run `snap upgrade`" in result.stderr


def test_upgrade_then_every_conversation_reads_exactly(format1):
    result = snap(format1, "upgrade")
    assert result.exit_code == 0, result.output
    assert "upgraded 1 -> 2" in result.stdout and f"now at store format {STORE_FORMAT}" in result.stdout
    repo = Repository.open(format1)
    assert sorted(repo.conversation_ids()) == sorted(EXPECTED["conversations"])
    assert repo.active_conversation == EXPECTED["active"]
    assert repo.backend.count_objects()[0] == EXPECTED["objects"]
    for conv, pinned in EXPECTED["conversations"].items():
        assert repo.head(conv) == pinned["head"]
        log = repo.log(conv)
        assert [i.id for i in log] == pinned["log"]
        assert [i.snapshot.root for i in log] == pinned["roots"]
        assert [[e.old, e.new, e.reason] for e in repo.reflog(conv)] == pinned["reflog"]
        # Pinned as format-1 snapstore read it, except that `load` now names a conversation by
        # its ref (a later fix): "gamma" was renamed from "gamma-old", whose name its snapshot keeps.
        assert repo.load(conv).to_json() == {**pinned["state"], "conversation_id": conv}
        assert log[0].snapshot.conversation == pinned["state"]["conversation_id"]
    assert repo.fsck().ok and verify(repo).ok
    assert json.loads(repo.backend.get_meta("upgraded/2"))["step"] == STEPS[0].name
    # The upgraded store works as any other: commit, and history goes on.
    state = repo.load("alpha").to_json()
    state["contexts"][0]["status"] = "archived"
    assert repo.commit("alpha", state).created and repo.log("alpha")[1].id == EXPECTED["conversations"]["alpha"]["head"]


def test_upgrade_of_a_current_store_is_a_no_op_that_says_so(format1):
    assert snap(format1, "upgrade").exit_code == 0
    with open_backend(format1) as backend:
        meta = backend.list_meta()
    again = snap(format1, "upgrade")
    assert again.exit_code == 0 and "nothing to do" in again.stdout
    report = json.loads(snap(format1, "upgrade", "--json").stdout)
    assert report == {"before": STORE_FORMAT, "after": STORE_FORMAT, "changed": False, "applied": [],
                      "current_format": STORE_FORMAT}
    with open_backend(format1) as backend:
        assert backend.list_meta() == meta


def test_a_newer_store_is_refused_clearly(format1):
    with open_backend(format1) as backend:
        backend.write(meta={FORMAT_KEY: "99"})
    newer = f"store format 99 is newer than this snapstore supports \\({STORE_FORMAT}\\)"
    with pytest.raises(FormatError, match=newer):
        Repository.open(format1)
    for args in (("upgrade",), ("log", "alpha"), ("gc",), ("stats",)):
        result = snap(format1, *args)
        assert result.exit_code == 1 and "Traceback" not in result.output
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "newer than this snapstore supports" in lines[0], result.stderr
    with open_backend(format1) as backend:
        assert backend.get_meta(FORMAT_KEY) == "99"


def test_upgrade_steps_are_ordered_and_idempotent(format1):
    assert [s.version for s in STEPS] == list(range(2, STORE_FORMAT + 1))
    with open_backend(format1) as backend:
        first = upgrade(backend)
        assert first.changed and first.before == 1 and first.after == STORE_FORMAT
        # An upgrade interrupted after a step's changes but before the bump just runs the step again.
        backend.write(meta={FORMAT_KEY: "1"})
        assert upgrade(backend).after == STORE_FORMAT and not upgrade(backend).changed


def test_new_stores_and_non_stores(tmp_path, store):
    repo = store.init()
    assert repo.backend.get_meta(FORMAT_KEY) == str(STORE_FORMAT)
    Repository.init(str(tmp_path / "fresh")).close()
    with open_backend(str(tmp_path / "fresh")) as backend:
        assert store_format(backend) == STORE_FORMAT and not upgrade(backend).changed
        backend.write(meta={FORMAT_KEY: None})
        with pytest.raises(StoreNotFound):
            upgrade(backend)


def test_a_format_2_store_upgrades_without_a_rewrite_and_reads_exactly(format2):
    assert EXPECTED2["format"] == 2
    with pytest.raises(FormatError, match="store format 2 is old; run `snap upgrade`"):
        Repository.open(format2)
    with open_backend(format2) as backend:
        stored = {o.id: o.data for o in backend.iter_objects()}
    result = snap(format2, "upgrade")
    assert result.exit_code == 0, result.output
    assert "upgraded 2 -> 3" in result.stdout and "1 -> 2" not in result.stdout
    repo = Repository.open(format2)
    # Nothing stored changed: old wide nodes stay readable as they are.
    assert {o.id: o.data for o in repo.backend.iter_objects()} == stored
    assert len(stored) == EXPECTED2["objects"]
    assert json.loads(repo.backend.get_meta("upgraded/3"))["step"] == STEPS[1].name
    for conv, pinned in EXPECTED2["conversations"].items():
        assert repo.head(conv) == pinned["head"]
        log = repo.log(conv)
        assert [i.id for i in log] == pinned["log"]
        assert [i.snapshot.root for i in log] == pinned["roots"]
        assert [[e.old, e.new, e.reason] for e in repo.reflog(conv)] == pinned["reflog"]
        assert repo.load(conv).to_json() == pinned["state"]
        assert {c: r.node_id for c, r in repo.tree(repo.head(conv)).records.items()} == pinned["nodes"]
    assert repo.fsck().ok and verify(repo).ok
    legacy_root = repo.read(EXPECTED2["conversations"]["wide"]["nodes"]["W-0"], "node")
    assert len(legacy_root.children) == 40 and not legacy_root.pages

    # checkout -o then commit --from: the identical root, so nothing is committed.
    state = repo.load("wide").to_json()
    assert not repo.commit("wide", state).created
    # The first commit that changes the wide node or anything under it writes it paged ...
    legacy_head = repo.head("wide")
    w20 = next(c for c in state["contexts"] if c["sidebar_id"] == "W-20")
    w20["local_memory"].append({"exchange_id": "EXCH-99", "user": "u", "assistant": "a"})
    repo.commit("wide", state)
    root = repo.read(repo.tree(repo.head("wide")).records["W-0"].node_id, "node")
    assert not root.children and len(root.pages) == 2
    # ... with the ids a store that never saw format 2 gives the same state,
    fresh = Repository.init(str(Path(format2).parent / "fresh"))
    assert fresh.commit("wide", state).root == repo.snapshot(repo.head("wide")).root
    # and the diff across the two encodings sees only the change.
    for a, b in ((legacy_head, "wide"), ("wide", legacy_head)):
        diff = repo.diff(a, b)
        assert [c.id for c in diff.changed] == ["W-20"] and not (diff.added or diff.removed or diff.moved)
    assert repo.fsck().ok and verify(repo).ok
    fresh.close()
    repo.close()

"""Moving conversations between stores (embedded <-> shared and back), verified by hash."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from snapstore.cli.main import cli
from snapstore.errors import CorruptObject, RefConflict
from snapstore.objects import Event
from snapstore.repository import Repository

from .conftest import flip_byte
from .factories import exchange, sample_state


def filled(location: str) -> Repository:
    repo = Repository.init(location)
    state = sample_state("a")
    for i in range(5):
        state["contexts"][1]["local_memory"].append(exchange(100 + i, "SB-2"))
        repo.commit("a", state, event=Event("exchange", "SB-2"))
    repo.commit("b", sample_state("b"))
    return repo


def test_round_trip_through_every_backend(tmp_path, store):
    from snapstore.transfer import copy_conversations

    src = filled(str(tmp_path / "src"))
    middle = store.init()
    report = copy_conversations(src, middle)
    assert report.objects_copied == src.backend.count_objects()[0]
    back = Repository.init(str(tmp_path / "back"))
    copy_conversations(middle, back)
    for conv in ("a", "b"):
        assert back.head(conv) == middle.head(conv) == src.head(conv)
        assert back.load(conv).to_json() == src.load(conv).to_json()
        assert [e.id for e in back.log(conv)] == [e.id for e in src.log(conv)]
    assert middle.fsck().ok and back.fsck().ok
    again = copy_conversations(src, middle)
    assert again.objects_copied == 0 and again.refs_updated == {}


def test_fast_forward_and_divergence(tmp_path):
    from snapstore.transfer import copy_conversations

    src = filled(str(tmp_path / "src"))
    dst = Repository.init(str(tmp_path / "dst"))
    copy_conversations(src, dst, ["a"])
    state = src.load("a").to_json()
    state["contexts"][0]["status"] = "active"
    src.commit("a", state)
    assert copy_conversations(src, dst, ["a"]).refs_updated == {"a": src.head("a")}
    other = dst.load("a").to_json()
    other["contexts"][0]["tags"] = ["diverged"]
    dst.commit("a", other)
    state["contexts"][0]["tags"] = ["elsewhere"]
    src.commit("a", state)
    head = dst.head("a")
    with pytest.raises(RefConflict):
        copy_conversations(src, dst, ["a"])
    assert dst.head("a") == head


def test_corrupt_source_object_stops_the_copy_before_any_ref_moves(tmp_path):
    import sqlite3

    from snapstore.transfer import copy_conversations

    src = filled(str(tmp_path / "src"))
    victim = src.tree(src.head("a")).records["SB-3"].node_id
    db = sqlite3.connect(tmp_path / "src" / "store.sqlite")
    (data,) = db.execute("SELECT data FROM objects WHERE id = ?", (bytes.fromhex(victim),)).fetchone()
    db.execute("UPDATE objects SET data = ? WHERE id = ?", (flip_byte(data), bytes.fromhex(victim)))
    db.commit()
    dst = Repository.init(str(tmp_path / "dst"))
    with pytest.raises(CorruptObject) as info:
        copy_conversations(Repository.open(str(tmp_path / "src")), dst)
    assert info.value.object_id == victim
    assert dst.conversation_ids() == []


def test_clone_and_push_commands(tmp_path):
    filled(str(tmp_path / "src")).close()
    runner = CliRunner()
    result = runner.invoke(cli, ["clone", str(tmp_path / "src"), str(tmp_path / "dst"), "a", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["refs"].keys() == {"a"}
    result = runner.invoke(cli, ["--store", str(tmp_path / "src"), "push", str(tmp_path / "dst")])
    assert result.exit_code == 0 and "every hash checked" in result.stdout
    dst = Repository.open(str(tmp_path / "dst"))
    assert sorted(dst.conversation_ids()) == ["a", "b"]

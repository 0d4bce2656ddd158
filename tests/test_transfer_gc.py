"""`snap clone` / `push` into a store where gc runs: a copied object is never left unnamed for gc to take.

Every write to the destination that moves a ref is preceded, here, by two
`gc --grace 0` runs on the destination (record, then delete): the worst
moment for gc to run. The copy must still leave a destination whose refs
reach only objects it holds.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from snapstore.backends.base import StoredObject
from snapstore.errors import RefConflict
from snapstore.gc import collect_garbage
from snapstore.graph import Walk
from snapstore.objects import Event
from snapstore.repository import Repository
from snapstore.transfer import copy_conversations

from .test_transfer import filled


def gc_before_ref_moves(monkeypatch, dst: Repository) -> list[int]:
    """Run gc --grace 0 twice on ``dst`` before each write that moves a ref; returns what each pair deleted."""
    backend = dst.backend
    write = backend.write
    deleted: list[int] = []

    def write_after_gc(objects=(), ref_updates=(), meta=None, **kwargs):
        if ref_updates:
            deleted.append(sum(collect_garbage(dst, timedelta(0)).deleted for _ in range(2)))
        return write(objects, ref_updates, meta, **kwargs)

    monkeypatch.setattr(backend, "write", write_after_gc)
    return deleted


def assert_complete(src: Repository, dst: Repository, conversations=("a", "b")) -> None:
    fsck = dst.fsck()
    assert fsck.ok, fsck.problems
    for conv in conversations:
        assert dst.head(conv) == src.head(conv)
        assert dst.load(conv).to_json() == src.load(conv).to_json()


def test_clone_survives_gc_before_its_ref_moves(tmp_path, store, monkeypatch):
    src = filled(str(tmp_path / "src"))
    dst = store.init()
    gc_before_ref_moves(monkeypatch, dst)
    report = copy_conversations(src, dst)
    assert report.refs_updated.keys() == {"a", "b"}
    assert_complete(src, dst)


def test_clone_puts_back_what_an_interrupted_copy_left_as_garbage(tmp_path, store, monkeypatch):
    """An earlier copy wrote objects and died before its ref moved: they are garbage, and gc has
    recorded them. A copy that skipped them as "already there" would name objects gc deletes."""
    src = filled(str(tmp_path / "src"))
    dst = store.init()
    stored = list(src.backend.iter_objects())
    dst.backend.write([StoredObject(o.id, o.kind, o.size, dst.codec.compress(src.codec.decompress(o.data, o.id)))
                       for o in stored])
    first = collect_garbage(dst, timedelta(0))
    assert first.pending == len(stored) and first.deleted == 0  # recorded: the next run deletes them
    deleted = gc_before_ref_moves(monkeypatch, dst)
    report = copy_conversations(src, dst)
    assert deleted[0] == len(stored)  # gc took them all just before the first ref moved...
    # b's objects that only b names were gone by the time b's copy looked: copied, not present.
    assert report.objects_copied + report.objects_present == len(stored) and report.objects_present > 0
    assert_complete(src, dst)  # ...and that write put them back


def test_fast_forward_carries_only_what_their_head_lacks(tmp_path, store, monkeypatch):
    src = filled(str(tmp_path / "src"))
    dst = store.init()
    copy_conversations(src, dst)
    state = src.load("a").to_json()
    state["contexts"][0]["status"] = "active"
    new = src.commit("a", state, event=Event("commit")).snapshot
    before = Walk(src)
    before.add([(dst.head("a"), "snapshot", "test")])
    after = Walk(src)
    after.add([(new, "snapshot", "test")])
    gc_before_ref_moves(monkeypatch, dst)
    written: list[int] = []
    write = dst.backend.write

    def counting(objects=(), ref_updates=(), meta=None, **kwargs):
        if ref_updates:
            written.append(len(objects))
        return write(objects, ref_updates, meta, **kwargs)

    monkeypatch.setattr(dst.backend, "write", counting)
    report = copy_conversations(src, dst)
    assert report.refs_updated == {"a": new}
    assert written == [len(after.seen - before.seen)]
    assert report.objects_copied == len(after.seen - before.seen)
    assert_complete(src, dst)


def test_a_destination_ref_that_moves_during_the_copy_is_not_overwritten(tmp_path, monkeypatch):
    src = filled(str(tmp_path / "src"))
    dst = Repository.init(str(tmp_path / "dst"))
    copy_conversations(src, dst, ["a"])
    state = src.load("a").to_json()
    state["contexts"][0]["status"] = "active"
    src.commit("a", state)
    write = dst.backend.write
    theirs = dst.load("a").to_json()
    theirs["contexts"][0]["tags"] = ["written meanwhile"]

    def commit_first(objects=(), ref_updates=(), meta=None, **kwargs):
        if ref_updates and not commit_first.done:  # type: ignore[attr-defined]
            commit_first.done = True  # type: ignore[attr-defined]
            other = Repository.open(str(tmp_path / "dst"))
            other.commit("a", theirs)
            other.close()
        return write(objects, ref_updates, meta, **kwargs)

    commit_first.done = False  # type: ignore[attr-defined]
    monkeypatch.setattr(dst.backend, "write", commit_first)
    with pytest.raises(RefConflict):
        copy_conversations(src, dst, ["a"])
    assert dst.load("a").to_json() == theirs and dst.fsck().ok

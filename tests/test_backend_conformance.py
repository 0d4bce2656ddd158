"""The backend contract, run in full on every backend (see the ``store`` fixture)."""

from __future__ import annotations

import threading

import pytest

from snapstore.backends.base import Backend, Capability, RefUpdate, StoredObject
from snapstore.errors import RefConflict
from snapstore.objects import ObjectId, hash_object


def obj(n: int, kind: str = "chunk") -> StoredObject:
    body = b'{"n":%d}' % n
    return StoredObject(hash_object(kind, body), kind, len(body), b"data-%d" % n)


def test_missing_methods_fail_at_construction():
    class Half(Backend):
        def get_objects(self, ids):
            return {}

    with pytest.raises(TypeError):
        Half()  # type: ignore[abstract]


def test_objects_round_trip(store):
    backend = store.backend(create=True)
    a, b = obj(1), obj(2, "node")
    backend.write([a, b])
    found = backend.get_objects([a.id, b.id, obj(3).id])
    assert found == {a.id: a, b.id: b}
    assert backend.has_objects([a.id, obj(3).id]) == {a.id}
    assert {o.id for o in backend.iter_objects()} == {a.id, b.id}
    assert {o.id for o in backend.iter_objects("node")} == {b.id}
    count, stored, logical = backend.count_objects()
    assert count == 2 and stored == len(a.data) + len(b.data) and logical == a.size + b.size


def test_existing_object_is_not_rewritten(store):
    backend = store.backend(create=True)
    a = obj(1)
    backend.write([a])
    backend.write([StoredObject(a.id, a.kind, a.size, b"other bytes")])
    assert backend.get_objects([a.id])[a.id].data == a.data


def test_many_objects_in_one_write(store):
    backend = store.backend(create=True)
    objects = [obj(i) for i in range(1200)]
    backend.write(objects)
    assert len(backend.get_objects([o.id for o in objects])) == 1200
    assert len(backend.has_objects([o.id for o in objects])) == 1200


def test_find_ids_by_prefix(store):
    backend = store.backend(create=True)
    objects = [obj(i) for i in range(50)]
    backend.write(objects)
    target = objects[7].id
    assert backend.find_ids(target[:12]) == [target]
    assert backend.find_ids(target) == [target]
    odd = backend.find_ids(target[:5], limit=100)
    assert target in odd and all(i.startswith(target[:5]) for i in odd)
    absent = next(p for p in ("0" * 40, "f" * 40, "a" * 40) if not any(o.id.startswith(p) for o in objects))
    assert backend.find_ids(absent) == []
    first_digit = objects[0].id[0]
    same = sorted(o.id for o in objects if o.id.startswith(first_digit))
    assert backend.find_ids(first_digit, limit=100) == same


def test_delete_objects(store):
    backend = store.backend(create=True)
    a, b = obj(1), obj(2)
    backend.write([a, b])
    assert backend.delete_objects([a.id, obj(9).id]) == 1
    assert backend.has_objects([a.id, b.id]) == {b.id}


def test_replace_objects_writes_over_the_stored_copy(store):
    """What a commit mending a damaged copy relies on (``Repository._heal``): the given bytes replace the
    stored ones (kind and size too), an absent object is stored, each is stored once, nothing else changes."""
    backend = store.backend(create=True)
    a, b, c, d = obj(1), obj(2, "node"), obj(3), obj(4)
    wrong_kind = StoredObject(b.id, "chunk", b.size + 1, b"a damaged row")
    backend.write([a, wrong_kind, d], [RefUpdate("conversations/x", None, d.id, "create")], {"k": "v"})
    mended = StoredObject(a.id, a.kind, a.size, b"the commit's bytes")
    backend.replace_objects([mended, b, c, mended])
    expected = {a.id: mended, b.id: b, c.id: c, d.id: d}
    reader = store.backend()  # another connection sees it too (the same backend for the in-memory store)
    try:
        for seen in (backend, reader):
            assert seen.get_objects(list(expected)) == expected
            assert sorted(o.id for o in seen.iter_objects()) == sorted(expected)
            assert seen.count_objects() == (4, sum(len(o.data) for o in expected.values()),
                                             sum(o.size for o in expected.values()))
            assert seen.get_ref("conversations/x") == d.id and len(seen.reflog("conversations/x")) == 1
            assert seen.get_meta("k") == "v"
    finally:
        if reader is not backend:
            reader.close()
    backend.replace_objects([])


def test_a_reader_never_finds_an_object_gone_while_it_is_replaced(store):
    backend = store.backend(create=True)
    a = obj(1)
    backend.write([a])
    reader = store.backend()
    done = threading.Event()
    reads: list[bool] = []

    def read() -> None:
        while not done.is_set() or not reads:
            reads.append(a.id in reader.get_objects([a.id]))

    thread = threading.Thread(target=read)
    thread.start()
    try:
        for i in range(40):
            backend.replace_objects([StoredObject(a.id, a.kind, a.size, b"copy %d" % i)])
    finally:
        done.set()
        thread.join()
        if reader is not backend:
            reader.close()
    assert reads and all(reads), f"{reads.count(False)} of {len(reads)} reads found {a.id} gone"
    assert backend.get_objects([a.id])[a.id].data == b"copy 39"


def test_ref_compare_and_swap(store):
    backend = store.backend(create=True)
    a, b, c = obj(1, "snapshot"), obj(2, "snapshot"), obj(3, "snapshot")
    backend.write([a, b, c])
    backend.write(ref_updates=[RefUpdate("conversations/x", None, a.id, "create")])
    assert backend.get_ref("conversations/x") == a.id
    with pytest.raises(RefConflict) as info:
        backend.write(ref_updates=[RefUpdate("conversations/x", None, b.id, "create again")])
    assert info.value.actual == a.id
    with pytest.raises(RefConflict):
        backend.write(ref_updates=[RefUpdate("conversations/x", b.id, c.id, "stale")])
    assert backend.get_ref("conversations/x") == a.id
    backend.write(ref_updates=[RefUpdate("conversations/x", a.id, b.id, "advance")])
    assert backend.get_ref("conversations/x") == b.id
    backend.write(ref_updates=[RefUpdate("conversations/x", b.id, None, "delete")])
    assert backend.get_ref("conversations/x") is None
    log = backend.reflog("conversations/x")
    assert [(e.old, e.new, e.reason) for e in log] == [
        (None, a.id, "create"), (a.id, b.id, "advance"), (b.id, None, "delete")
    ]
    assert all(e.time.endswith("Z") for e in log)


def test_failed_cas_applies_nothing(store):
    backend = store.backend(create=True)
    a, b = obj(1, "snapshot"), obj(2, "snapshot")
    backend.write([a], [RefUpdate("conversations/x", None, a.id, "create")])
    with pytest.raises(RefConflict):
        backend.write(
            [b],
            [RefUpdate("conversations/y", None, b.id, "ok"), RefUpdate("conversations/x", None, b.id, "lost")],
            {"k": "v"},
        )
    assert backend.get_ref("conversations/y") is None
    assert backend.get_meta("k") is None
    assert backend.reflog("conversations/y") == []
    assert len(backend.reflog("conversations/x")) == 1


def test_reflog_carries_log_link(store):
    backend = store.backend(create=True)
    a = obj(1, "snapshot")
    backend.write([a], [RefUpdate("conversations/x", None, a.id, "spawn", 7, "ab" * 32)])
    entry = backend.reflog("conversations/x")[0]
    assert (entry.log_sequence, entry.log_hash) == (7, "ab" * 32)


def test_the_newest_reflog_rows_are_the_end_of_the_reflog(store):
    backend = store.backend(create=True)
    previous = {"conversations/x": None, "conversations/y": None}
    for i in range(7):
        name = "conversations/x" if i % 3 else "conversations/y"
        a = obj(i, "snapshot")
        backend.write([a], [RefUpdate(name, previous[name], a.id, f"step {i}", i, "ab" * 32)])
        previous[name] = a.id
    for name in previous:
        whole = backend.reflog(name)
        assert [backend.reflog_newest(name, n) for n in range(len(whole) + 3)] == [
            whole[max(0, len(whole) - n):] if n else [] for n in range(len(whole) + 3)]
    assert backend.reflog_newest("conversations/none", 3) == []


def test_the_reflogs_of_many_refs_read_together_are_each_ones_reflog(store):
    """gc, fsck and verify read every conversation's reflog together (``reflogs``): the same rows, in the same
    order, as each ref's own :meth:`~Backend.reflog` and as the base class's loop, deleted and absent refs too."""
    backend = store.backend(create=True)
    previous: dict[str, str | None] = {"conversations/x": None, "conversations/y": None, "conversations/z": None}
    for i in range(8):
        name = ("conversations/x", "conversations/y", "conversations/z")[i % 3]
        a = obj(i, "snapshot")
        backend.write([a], [RefUpdate(name, previous[name], a.id, f"step {i}", i, "ab" * 32)])
        previous[name] = a.id
    backend.write(ref_updates=[RefUpdate("conversations/z", previous["conversations/z"], None, "deleted")])
    names = ["conversations/y", "conversations/none", "conversations/x", "conversations/z", "conversations/y"]
    each = {name: backend.reflog(name) for name in names}
    assert [len(rows) for rows in each.values()] == [3, 0, 3, 3]
    assert list(backend.reflogs(names).items()) == list(each.items())
    assert list(Backend.reflogs(backend, names).items()) == list(each.items())
    assert backend.reflogs([]) == {}


def test_list_refs_and_meta(store):
    backend = store.backend(create=True)
    a = obj(1, "snapshot")
    backend.write([a], [RefUpdate("conversations/b", None, a.id, "r"), RefUpdate("conversations/a", None, a.id, "r"),
                        RefUpdate("tags/t", None, a.id, "r")])
    assert list(backend.list_refs("conversations/")) == ["conversations/a", "conversations/b"]
    assert len(backend.list_refs()) == 3
    backend.write(meta={"x/1": "one", "x/2": "two", "y": "why"})
    assert backend.get_meta("x/1") == "one"
    assert backend.list_meta("x/") == {"x/1": "one", "x/2": "two"}
    backend.write(meta={"x/1": None, "y": "changed"})
    assert backend.get_meta("x/1") is None and backend.get_meta("y") == "changed"


def test_concurrent_cas_has_one_winner(store):
    backend = store.backend(create=True)
    base = obj(0, "snapshot")
    backend.write([base], [RefUpdate("conversations/x", None, base.id, "create")])
    results: list[str] = []
    lock = threading.Lock()

    def contender(i: int) -> None:
        mine = store.backend()
        try:
            candidate = obj(100 + i, "snapshot")
            mine.write([candidate], [RefUpdate("conversations/x", base.id, candidate.id, f"try {i}")])
            outcome = "won"
        except RefConflict:
            outcome = "lost"
        finally:
            if mine is not backend:
                mine.close()
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=contender, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["lost"] * 5 + ["won"]
    assert len(backend.reflog("conversations/x")) == 2


def test_durable_backend_survives_reopen(durable_store):
    backend = durable_store.backend(create=True)
    a = obj(1, "snapshot")
    backend.write([a], [RefUpdate("conversations/x", None, a.id, "create")], {"k": "v"})
    backend.close()
    again = durable_store.backend()
    try:
        assert Capability.DURABLE in again.capabilities
        assert again.get_ref("conversations/x") == a.id
        assert again.get_objects([a.id])[a.id] == a
        assert again.get_meta("k") == "v"
    finally:
        again.close()


def test_ids_are_object_ids(store):
    backend = store.backend(create=True)
    a = obj(5)
    backend.write([a])
    (found,) = backend.find_ids(a.id[:10])
    assert isinstance(found, str) and found == ObjectId(a.id)

"""Packs: cold objects, log lines and reflog rows compressed together (embedded SQLite store).

Packing must change nothing a reader can see (every object, the log, the
reflogs, loads, diffs and revisions) while it shrinks the store; damage to a
pack is found and named; a kill in the middle leaves everything readable.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from snapstore.cli.main import cli

from snapstore import packing, packs
from snapstore.backends.memory import MemoryBackend
from snapstore.compression import Codec
from snapstore.errors import CorruptObject
from snapstore.gc import collect_garbage
from snapstore.orchestrator import ConversationOrchestrator
from snapstore.prune import prune
from snapstore.repository import FORMAT_KEY, STORE_FORMAT, Repository
from snapstore.startup import RecoveryStatus, Session
from snapstore.storelog import StoreAudit, StoreLog
from snapstore.verify import verify

from .conftest import flip_byte
from .factories import sample_state

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def small_packs(monkeypatch):
    """Packs of 8 objects and log/reflog packs of 4 lines, so a small store makes many."""
    monkeypatch.setattr(packing, "MAX_MEMBERS", 8)
    monkeypatch.setattr(packing, "SMALL_PACK", 2)
    monkeypatch.setattr(packing, "LOG_PACK_LINES", 4)


def _busy(location: Path, operations: int = 24, conversation: str = "c") -> tuple[Repository, StoreLog]:
    """A store whose conversation went through spawns, exchanges (Unicode), a pause and a merge."""
    repo = Repository.init(str(location))
    log = StoreLog(repo.backend)
    orch = ConversationOrchestrator(repo, conversation, audit=StoreAudit(log))
    root = orch.create_root_context("root task")
    side = orch.spawn_sidebar(root, "look into it")
    for i in range(operations):
        orch.add_exchange(side if i % 3 else root, f"question {i} \u00fc\u00df \u4e2d \U0001f600", f"answer {i} " * 20)
    orch.pause_context(side)
    orch.resume_context(side)
    orch.merge_sidebar(side, "done")
    return repo, log


def _visible(repo: Repository, log: StoreLog) -> dict:
    """Everything a reader can see of a store."""
    objects = {o.id: (o.kind, repo.verified_body(o)) for o in repo.backend.iter_objects()}
    return {
        "objects": objects,
        "count": repo.backend.count_objects()[::2],  # objects and uncompressed bytes (stored bytes shrink)
        "state": repo.load("c").to_json(),
        "log": repo.backend.log_lines(0),
        "reflog": repo.reflog("c"),
        "history": [i.id for i in repo.log("c")],
        "ids": sorted(objects),
    }


def _packs(location: Path, table: str = "packs") -> int:
    db = sqlite3.connect(location / "store.sqlite")
    try:
        return db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    finally:
        db.close()


def test_the_pack_format_round_trips_and_a_raw_frame_is_a_loose_object():
    members = [packs.Member(packs.hash_object("chunk", body), "chunk", body)
               for body in (b"", b"x", "\u00fc".encode() * 70000, bytes(range(256)) * 600)]
    pack = packs.decode_objects(packs.encode_objects(members), 1)
    for m in members:
        assert pack.get(m.id) == (m.kind, m.body)
    assert pack.members() == {m.id: (m.kind, m.body) for m in members}
    # Only the first 8 bytes name a member: another id with that prefix is not served.
    other = members[1].id[:16] + "0" * 48
    assert other != members[1].id and pack.get(other) is None
    for m in members:  # a packed object is handed out as the stored form of a loose one
        assert Codec().decompress(packs.raw_frame(m.body), m.id) == m.body
    ids = sorted(m.id for m in members)
    assert sorted(ids, key=packs.prefix_key) == ids
    low, high = packs.prefix_range(ids[0][:5])
    assert low <= packs.prefix_key(ids[0]) <= high


def test_packing_changes_nothing_a_reader_sees(tmp_path, small_packs):
    location = tmp_path / "s"
    repo, log = _busy(location)
    before = _visible(repo, log)
    stored_before = repo.backend.count_objects()[1]
    report = packing.pack(repo)
    assert report.objects == len(before["objects"]) and report.packs_written > 1 and not report.corrupt
    # Whole packs of 4 lines, the newest line always loose.
    assert report.log_lines == (len(before["log"]) - 1) // 4 * 4 > 0
    assert repo.backend.loose_count() == 0 and _packs(location) == report.packs_written
    assert repo.backend.count_objects()[1] < stored_before
    # A fresh process sees the same, with nothing cached.
    repo.close()
    again = Repository.open(str(location))
    assert _visible(again, StoreLog(again.backend)) == before
    for oid in before["ids"][:40]:
        assert again.backend.find_ids(oid[:7], limit=5) == [i for i in before["ids"] if i.startswith(oid[:7])][:5]
        assert again.backend.has_objects([oid]) == {oid}
    # An id sharing a packed object's 8-byte prefix is not that object.
    twin = before["ids"][0][:16] + ("1" if before["ids"][0][16] != "1" else "2") + before["ids"][0][17:]
    assert again.backend.has_objects([twin]) == set() and again.backend.get_objects([twin]) == {}
    # Paged log reads across packs and loose rows are the slices of the whole.
    lines = before["log"]
    for after in (0, 1, 3, 4, 5, len(lines) - 1, len(lines)):
        for limit in (1, 2, 4, 7, None):
            want = [x for x in lines if x[0] > after]
            assert again.backend.log_lines(after, limit) == (want if limit is None else want[:limit])
    assert again.backend.log_tail() == lines[-1]
    assert again.fsck().ok and verify(again).ok
    # Revisions and diffs over packed history.
    assert again.resolve("c~3") == before["history"][3]
    assert again.diff("c~5", "c").changed
    again.close()


def test_the_log_export_is_byte_identical_after_packing(tmp_path, small_packs):
    location = tmp_path / "s"
    repo, _ = _busy(location)
    repo.close()
    runner = CliRunner()
    first = runner.invoke(cli, ["--store", str(location), "export-log", "-o", str(tmp_path / "a.jsonl")])
    assert first.exit_code == 0, first.output
    packed = runner.invoke(cli, ["--store", str(location), "pack"])
    assert packed.exit_code == 0 and "packed" in packed.output, packed.output
    assert _packs(location, "ozolith_packs") > 0 and _packs(location, "reflog_packs") > 0
    second = runner.invoke(cli, ["--store", str(location), "export-log", "-o", str(tmp_path / "b.jsonl")])
    assert second.exit_code == 0, second.output
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    for command in (["verify"], ["fsck"]):
        result = runner.invoke(cli, ["--store", str(location), *command])
        assert result.exit_code == 0, result.output


def test_commits_continue_on_top_of_packs(tmp_path, small_packs):
    location = tmp_path / "s"
    repo, log = _busy(location, operations=10)
    packing.pack(repo)
    orch = ConversationOrchestrator(repo, "c", audit=StoreAudit(log))
    before = repo.head("c")
    for i in range(5):
        orch.add_exchange(orch.active_context_id, f"after packing {i}", "ok")
    assert repo.head("c") != before and repo.backend.loose_count() > 0
    assert [e.sequence for e in log.entries()] == list(range(1, len(log.backend.log_lines(0)) + 1))
    assert repo.fsck().ok and verify(repo).ok
    state = repo.load("c").to_json()
    packing.pack(repo)  # the new loose objects join, small packs merge
    assert repo.load("c").to_json() == state and repo.fsck().ok and verify(repo).ok


def test_gc_deletes_packed_objects_and_packing_gives_their_space_back(tmp_path, small_packs):
    location = tmp_path / "s"
    repo, _ = _busy(location, operations=30)
    state = repo.load("c").to_json()
    packing.pack(repo)
    prune(repo, "c", keep_last=2)
    collect_garbage(repo, timedelta(0))
    count, stored, _ = repo.backend.count_objects()
    second = collect_garbage(repo, timedelta(0))
    assert second.deleted > 0
    after = repo.backend.count_objects()
    assert after[0] == count - second.deleted and after[1] <= stored
    assert repo.backend.sparse_packs(), "gc left packs less than half full"
    report = packing.pack(repo)
    assert report.packs_rewritten > 0 and not repo.backend.sparse_packs()
    assert repo.backend.count_objects()[1] < after[1]
    assert repo.load("c").to_json() == state and repo.fsck().ok and verify(repo).ok


def _damage(location: Path, table: str, key: str) -> None:
    db = sqlite3.connect(location / "store.sqlite")
    (rowkey, data) = db.execute(f"SELECT {key}, data FROM {table} ORDER BY {key} LIMIT 1").fetchone()
    db.execute(f"UPDATE {table} SET data = ? WHERE {key} = ?", (flip_byte(data), rowkey))
    db.commit()
    db.close()


def test_a_damaged_pack_is_found_and_named(tmp_path):
    location = tmp_path / "s"
    repo, _ = _busy(location)
    packing.pack(repo)
    repo.close()
    _damage(location, "packs", "id")
    again = Repository.open(str(location))
    with pytest.raises(CorruptObject, match="damaged pack: pack 1 fails its CRC-32 check") as caught:
        again.load("c")
    assert len(caught.value.object_id) == 64
    report = again.fsck()
    assert not report.ok
    result = CliRunner().invoke(cli, ["--store", str(location), "fsck"])
    assert result.exit_code != 0 and "pack 1" in result.output


def test_a_damaged_log_pack_is_named_by_its_sequences(tmp_path, small_packs):
    location = tmp_path / "s"
    repo, _ = _busy(location)
    packing.pack(repo)
    repo.close()
    _damage(location, "ozolith_packs", "first")
    result = CliRunner().invoke(cli, ["--store", str(location), "verify"])
    assert result.exit_code != 0
    assert "log entries 1-4 are damaged" in result.output and "Traceback" not in result.output


def test_a_corrupt_loose_object_is_not_packed(tmp_path):
    location = tmp_path / "s"
    repo, _ = _busy(location)
    victim = repo.head("c")
    repo.close()
    db = sqlite3.connect(location / "store.sqlite")
    (data,) = db.execute("SELECT data FROM objects WHERE id = ?", (bytes.fromhex(victim),)).fetchone()
    db.execute("UPDATE objects SET data = ? WHERE id = ?", (flip_byte(data), bytes.fromhex(victim)))
    db.commit()
    db.close()
    result = CliRunner().invoke(cli, ["--store", str(location), "pack"])
    assert result.exit_code == 1 and f"corrupt object {victim}" in result.output
    again = Repository.open(str(location))
    assert again.backend.loose_count() == 1 and again.backend.has_objects([victim]) == {victim}


def test_objects_whose_prefix_is_taken_stay_loose(tmp_path, monkeypatch):
    import snapstore.backends.sqlite as sqlite_backend

    # Only 16 index keys: most objects collide with one packed before them.
    monkeypatch.setattr(sqlite_backend, "prefix_key", lambda oid: int(oid[0], 16))
    location = tmp_path / "s"
    repo, log = _busy(location)
    before = _visible(repo, log)
    report = packing.pack(repo)
    assert 0 < report.objects and repo.backend.loose_count() > 0
    assert _visible(repo, log) == before
    assert repo.fsck().ok


def test_readers_in_other_processes_see_every_object_while_packing(tmp_path, small_packs):
    location = tmp_path / "s"
    repo, log = _busy(location, operations=6)
    reader = subprocess.Popen(
        [sys.executable, "-c", (
            "import sys, time\n"
            "from snapstore.repository import Repository\n"
            "repo = Repository.open(sys.argv[1]); end = time.time() + 3; n = 0\n"
            "while time.time() < end:\n"
            "    repo._cache.clear(); repo._trees.clear()\n"
            "    repo.load('c'); [repo.snapshot(i.id) for i in repo.log('c')]; n += 1\n"
            "print(n)\n"), str(location)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    orch = ConversationOrchestrator(repo, "c", audit=StoreAudit(log))
    deadline = time.time() + 3
    while time.time() < deadline:
        orch.add_exchange(orch.active_context_id, "more", "text")
        packing.pack(repo)
    out, err = reader.communicate(timeout=60)
    assert reader.returncode == 0, err
    assert int(out) > 0
    assert repo.fsck().ok and verify(repo).ok


def test_a_kill_in_the_middle_of_packing_loses_nothing(tmp_path):
    location = tmp_path / "s"
    repo, log = _busy(location, operations=150)
    before = _visible(repo, log)
    repo.close()
    rng = random.Random(7)
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, "-m", "snapstore.cli.main", "--store", str(location), "pack"],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 0.9))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        again = Repository.open(str(location))
        assert _visible(again, StoreLog(again.backend)) == before
        again.close()
    again = Repository.open(str(location))
    assert again.fsck().ok and verify(again).ok


def test_a_clean_shutdown_packs_and_the_file_shrinks(tmp_path, monkeypatch):
    monkeypatch.setattr(packing, "SHUTDOWN_MINIMUM", 16)
    location = tmp_path / "s"
    session = Session(str(location), log_in_store=True)
    orch = session.start_new("c", "root")
    root = orch.active_context_id
    for i in range(120):
        orch.add_exchange(root, f"q{i} " * 40, f"a{i} " * 80)
    state = orch.repo.load("c").to_json()
    db_file = location / "store.sqlite"
    size_open = db_file.stat().st_size + Path(f"{db_file}-wal").stat().st_size
    hot = session.repo.hot_objects()
    assert len(hot) == 2  # the state and the root's node
    session.close()
    assert _packs(location) > 0
    assert db_file.stat().st_size < size_open / 2
    again = Session(str(location), log_in_store=True)
    assert again.report.status is RecoveryStatus.CLEAN
    assert again.repo.load("c").to_json() == state
    # the tree the session worked on stays loose: the next load and diff read no pack
    assert {o.id for o in again.repo.backend.loose_for_packing(0, 1000)[0]} == hot
    again.close()



def test_the_wal_a_large_transaction_grew_is_cut_back_while_the_store_stays_open(tmp_path):
    """SQLite writes its WAL again from the start after each checkpoint but never shrinks it: a transaction
    larger than what commits write between checkpoints (~4 MB: a pack round, gc, an import, here one
    exchange of 12 MB) left a WAL that large for as long as the store stayed open. The next commits cut
    it back (PRAGMA journal_size_limit)."""
    from snapstore.backends.sqlite import WAL_SIZE_LIMIT

    location = tmp_path / "s"
    session = Session(str(location), log_in_store=True)
    orch = session.start_new("c", "root")
    root = orch.active_context_id
    orch.add_exchange(root, "the log", random.Random(7).randbytes(6 << 20).hex())  # zstd halves hex at best
    wal = location / "store.sqlite-wal"
    grown = wal.stat().st_size
    assert grown > 1.2 * WAL_SIZE_LIMIT
    for i in range(5):
        orch.add_exchange(root, f"after {i}", "a")
    assert wal.stat().st_size <= WAL_SIZE_LIMIT, (grown, wal.stat().st_size)
    session.close()


def test_packing_by_itself_leaves_the_current_trees_loose(tmp_path, monkeypatch):
    """History and exchanges go into packs; the tree's structure stays loose, so a diff of the newest
    change on a fresh repository decodes no pack."""
    import snapstore.backends.sqlite as sqlite_backend

    monkeypatch.setattr(packing, "AUTO_PACK_CHECK", 10)
    monkeypatch.setattr(packing, "AUTO_PACK_LOOSE", 20)
    monkeypatch.setattr(packing, "AUTO_PACK_KEEP", 12)  # the newest three commits' objects (the diff's old side)
    location = tmp_path / "s"
    repo = Repository.init(str(location))
    state = sample_state("c")
    for i in range(60):
        state["contexts"][i % 4]["status"] = f"s{i}"
        repo.commit("c", state)
    hot = repo.hot_objects()
    assert _packs(location) > 0
    loose = {o.id for o in repo.backend.loose_for_packing(0, 10_000)[0]}
    assert hot <= loose  # the head's state, nodes (and pages) were never packed
    tree = repo.tree(repo.head("c"))
    assert hot == {tree.state_id, *(r.node_id for r in tree.records.values())}
    repo.close()
    decoded = []
    real = sqlite_backend.decode_objects
    monkeypatch.setattr(sqlite_backend, "decode_objects", lambda *a, **k: decoded.append(a[1]) or real(*a, **k))
    fresh = Repository.open(str(location))
    try:
        assert fresh.diff("c~1", "c")
        assert decoded == []
        assert fresh.load("c").to_json()["contexts"] == state["contexts"]  # exchanges: history, packed
        assert fresh.fsck().ok
    finally:
        fresh.close()


def test_packing_runs_by_itself_after_many_commits(tmp_path, monkeypatch, small_packs):
    monkeypatch.setattr(packing, "AUTO_PACK_CHECK", 10)
    monkeypatch.setattr(packing, "AUTO_PACK_LOOSE", 20)
    monkeypatch.setattr(packing, "AUTO_PACK_KEEP", 5)
    monkeypatch.setattr(packing, "BATCH", 8)  # loose objects are read in batches smaller than the threshold
    location = tmp_path / "s"
    repo, _ = _busy(location, operations=40)
    assert _packs(location) > 0
    assert repo.backend.loose_count() < 20 + 5 + 20  # bounded: at most one check's worth above the limit
    assert repo.fsck().ok and verify(repo).ok


def test_other_backends_report_that_packing_does_not_apply():
    backend = MemoryBackend()
    backend.write(meta={FORMAT_KEY: str(STORE_FORMAT)})
    report = packing.pack(Repository(backend, "memory:"))
    assert not report.applicable and report.objects == 0


def test_the_newest_linked_log_sequence_is_read_from_loose_and_packed_rows(tmp_path, small_packs):
    from snapstore.audit import linked_sequences
    from snapstore.backends.base import Backend

    location = tmp_path / "s"
    repo, log = _busy(location)
    other = ConversationOrchestrator(repo, "d", audit=StoreAudit(log))
    other.create_root_context("another conversation")
    names = list(repo.backend.list_refs("conversations/"))
    expected = Backend.newest_log_sequences(repo.backend, names)  # the default: every reflog row read
    assert expected["conversations/c"] > 0 and expected["conversations/d"] == len(repo.backend.log_lines(0))
    assert repo.backend.newest_log_sequences(names) == expected
    packing.pack(repo)
    assert repo.backend.newest_log_sequences(names) == expected
    assert linked_sequences(repo) == {"c": expected["conversations/c"], "d": expected["conversations/d"]}
    orch = ConversationOrchestrator(repo, "c", audit=StoreAudit(log))
    orch.add_exchange(orch.active_context_id, "one more", "answer")
    assert linked_sequences(repo)["c"] == len(repo.backend.log_lines(0))


def test_a_limited_log_reads_the_end_of_the_reflog_and_gives_what_the_whole_log_gives(tmp_path, small_packs,
                                                                                      monkeypatch):
    from snapstore.backends.base import Backend, RefUpdate

    location = tmp_path / "s"
    repo, log = _busy(location, operations=60)
    other = ConversationOrchestrator(repo, "d", audit=StoreAudit(log))
    other.create_root_context("another conversation")  # rows of another ref among the packed ones
    for _ in range(3):
        other.add_exchange(other.active_context_id, "q", "a")
    full = repo.log("c")
    assert all(info.log is not None for info in full)  # every snapshot linked through its reflog row
    for packed in (False, True):
        if packed:
            packing.pack(repo)
            assert _packs(location, "reflog_packs") > 3
        for name in ("conversations/c", "conversations/d"):
            whole = repo.backend.reflog(name)
            for count in (1, 2, 5, 17, len(whole), len(whole) + 5):
                assert repo.backend.reflog_newest(name, count) == whole[-count:]
                assert Backend.reflog_newest(repo.backend, name, count) == whole[-count:]
        read: list[str] = []
        with monkeypatch.context() as patched:
            patched.setattr(type(repo.backend), "reflog", lambda self, name: read.append(name) or [])
            for limit in (1, 3, 10):
                assert repo.log("c", limit) == full[:limit]
        assert read == []  # the end of the reflog was enough
    # Snapshots that were never a head in this store (the reflog has no row for them): the whole reflog.
    repo.backend.write(ref_updates=[RefUpdate("conversations/c", full[0].id, full[40].id, "reset: test")])
    assert [i.id for i in repo.log("c", 5)] == [i.id for i in full[40:45]]
    assert repo.log("c", 5) == repo.log("c")[:5]


# -- a commit mending a damaged copy of an object a pack holds --------------------------------


def _pack_alone(repo: Repository, oid: str) -> None:
    """Move the loose object ``oid`` into a pack of its own."""
    stored = repo.backend.get_objects([oid])[oid]
    body = repo.verified_body(stored)
    repo.backend.write_packs([([(oid, stored.kind, stored.size, None)],
                               packs.encode_objects([packs.Member(oid, stored.kind, body)]))])


def _first_node_made_again(location: Path) -> tuple[Repository, dict, dict, str]:
    """A store whose SB-3 node of its first snapshot is no longer in the head's tree: the repository,
    the first state (which makes that node again), the head's, and the node's id."""
    import copy

    repo = Repository.init(str(location))
    a = sample_state("c")
    first = repo.commit("c", a).snapshot
    b = copy.deepcopy(a)
    b["contexts"][2]["status"] = "paused"
    repo.commit("c", b)
    return repo, a, b, repo.tree(first).records["SB-3"].node_id


def _flip(location: Path, table: str, column: str, key: object) -> None:
    db = sqlite3.connect(location / "store.sqlite")
    (data,) = db.execute(f"SELECT data FROM {table} WHERE {column} = ?", (key,)).fetchone()
    db.execute(f"UPDATE {table} SET data = ? WHERE {column} = ?", (flip_byte(data), key))
    db.commit()
    db.close()


def test_a_commit_mends_a_damaged_loose_copy_of_an_object_a_damaged_pack_also_holds(tmp_path):
    """The heal removed the damaged copy through delete_objects, which reads the pack holding the object
    too: a damaged pack made the durable commit raise CorruptObject and left the damaged copy in place."""
    import copy

    location = tmp_path / "s"
    repo, a, b, victim = _first_node_made_again(location)
    _pack_alone(repo, victim)
    repo.commit("c", copy.deepcopy(a))  # made again: stored loose beside the packed copy
    repo.commit("c", copy.deepcopy(b))
    assert repo.backend.loose_count() and _packs(location) == 1
    repo.close()
    _flip(location, "objects", "id", bytes.fromhex(victim))
    _flip(location, "packs", "id", 1)
    again = Repository.open(str(location))
    try:
        again.commit("c", copy.deepcopy(a))
        assert again.verified_body(again.backend.get_objects([victim])[victim])
        assert again.load("c").contexts[2] == a["contexts"][2]
        # The damaged pack keeps its index row (which object it is for cannot be read) and is named.
        assert [p.kind for p in again.fsck().problems] == ["corrupt-pack"]
    finally:
        again.close()


def test_replacing_a_packed_object_leaves_one_copy_loose_and_drops_its_index_row(tmp_path):
    from snapstore.backends.base import StoredObject

    location = tmp_path / "s"
    repo, _, _, victim = _first_node_made_again(location)
    good = repo.backend.get_objects([victim])[victim]
    _pack_alone(repo, victim)
    counted = repo.backend.count_objects()
    assert victim not in {o.id for o in repo.backend.loose_for_packing(0, 1000)[0]}
    repo.backend.replace_objects([StoredObject(good.id, good.kind, good.size, good.data)])
    assert _packs(location) == 0 and _packs(location, "packed") == 0  # its only member: the pack goes
    assert repo.backend.count_objects()[::2] == counted[::2]  # once: loose
    assert [o.id for o in repo.backend.iter_objects()].count(victim) == 1
    assert repo.backend.get_objects([victim])[victim] == good
    assert repo.fsck().ok
    repo.close()

"""The paths that touch every conversation of a store cost a few round trips, not a few per conversation.

A chat API keeps each user's conversation as one ref, so a store may hold
thousands. Before, every start listed them (``Repository.conversations``:
the head's snapshot, its state and each level of nodes read per
conversation, four reads each here, 40,000 at 10,000 conversations, about 6
seconds on SQLite), and so did ``snap status`` and ``snap conversations``;
the adapter's start loaded every conversation's whole tree, exchanges and
all, and each save of a new context looked every conversation up again in
a scan of the trees held (growing with the square of their number). These
tests count the backend's object reads (and the adapter's tree loads) at two
store sizes and require the same count: no timing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from snapstore.adapters.sidebar_persistence import SidebarPersistence
from snapstore.errors import DamagedRecord
from snapstore.repository import Repository
from snapstore.startup import RecoveryStatus, Session

from .factories import context
from .shared_backends import SHARED_FACTORIES

SIZES = (3, 24)


@pytest.fixture(params=["sqlite", "postgres"])
def locations(request, tmp_path) -> Iterator[dict[int, str]]:
    """One empty store per size in SIZES."""
    if request.param == "sqlite":
        yield {n: str(tmp_path / f"store{n}") for n in SIZES}
        return
    factories = {n: iter(SHARED_FACTORIES["postgres"](tmp_path / f"pg{n}")) for n in SIZES}
    out = {}
    for n, factory in factories.items():
        made = next(factory)
        made.init().close()
        out[n] = made.location
    yield out
    for factory in factories.values():
        for _ in factory:  # drops the database
            pass


def _fill(location: str, n: int, **log) -> None:
    """``n`` conversations of the same shape: a root with one exchange and a sidebar under it."""
    with Session(location, **log) as s:
        for i in range(n):
            orch = s.start_new(f"c{i:03d}", "t")
            root = orch.tree.roots[0]
            orch.add_exchange(root, f"q{i}", f"a{i}")
            orch.spawn_sidebar(root, "look", inherit_last_n=1)


def _fill_adapter(location: str, n: int) -> None:
    """``n`` conversations saved through the adapter: a root with one exchange and a child, ids unique."""
    p = SidebarPersistence(location)
    try:
        for i in range(n):
            root, child = f"SB-{2 * i + 1}", f"SB-{2 * i + 2}"
            p.save_context(context(root, children=[child], exchanges=1))
            p.save_context(context(child, parent=root))
    finally:
        p.close()


class Reads:
    """Counts the calls of one backend's object reads (``get_objects``)."""

    def __init__(self, monkeypatch, backend) -> None:
        self.count = 0
        real = backend.get_objects

        def get_objects(ids):
            self.count += 1
            return real(ids)

        monkeypatch.setattr(backend, "get_objects", get_objects)


class Calls:
    """Counts the calls of every public method of one backend (a call one of them makes to another, once)."""

    def __init__(self, monkeypatch, backend) -> None:
        self.count = 0
        self.names: list[str] = []
        self.depth = 0

        def counted(name, real):
            def call(*args, **kwargs):
                if self.depth == 0:
                    self.count += 1
                    self.names.append(name)
                self.depth += 1
                try:
                    return real(*args, **kwargs)
                finally:
                    self.depth -= 1
            return call

        for name in dir(backend):
            real = getattr(backend, name)
            if not name.startswith("_") and callable(real) and name != "close":
                monkeypatch.setattr(backend, name, counted(name, real))


def _conversations_reads(monkeypatch, location: str) -> tuple[int, list]:
    with Repository.open(location) as repo:  # a fresh repository: nothing cached
        reads = Reads(monkeypatch, repo.backend)
        infos = repo.conversations()
        return reads.count, infos


def test_listing_conversations_reads_in_batches(locations, monkeypatch):
    counts = {}
    for n, location in locations.items():
        _fill(location, n)
        counts[n], infos = _conversations_reads(monkeypatch, location)
        assert len(infos) == n
        # Counted from the nodes as a loaded tree counts them.
        assert {(i.contexts, i.exchanges) for i in infos} == {(2, 1)}
        with Repository.open(location) as repo:
            tree = repo.tree(repo.head("c000"))
            assert (len(tree.records), tree.exchange_count()) == (2, 1)
    # Before: 4 reads per conversation (12 and 96).
    assert counts[SIZES[0]] == counts[SIZES[1]] <= 4, counts


def test_listing_uses_the_trees_held_and_names_a_missing_head(tmp_path, monkeypatch):
    location = str(tmp_path / "store")
    _fill(location, 3)
    with Repository.open(location) as repo:
        loaded = repo.tree(repo.head("c001"))
        loaded_info = next(i for i in repo.conversations() if i.conversation == "c001")
        assert (loaded_info.contexts, loaded_info.exchanges) == (len(loaded.records), loaded.exchange_count())
        # Newest first, as before.
        infos = repo.conversations()
        assert [i.updated for i in infos] == sorted((i.updated for i in infos), reverse=True)


@pytest.mark.parametrize("log", ["in-store", "file", "none"])
def test_a_start_reads_objects_in_batches(locations, monkeypatch, tmp_path, log):
    counts = {}
    for n, location in locations.items():
        kwargs = ({"log_in_store": True} if log == "in-store"
                  else {"ozolith": str(tmp_path / f"log{n}.jsonl")} if log == "file" else {})
        _fill(location, n, **kwargs)
        reads: list[Reads] = []
        real_open = Repository.open

        def counting_open(cls_location=None, _reads=reads):
            repo = real_open(cls_location)
            _reads.append(Reads(monkeypatch, repo.backend))
            return repo

        monkeypatch.setattr(Repository, "open", staticmethod(counting_open))
        s = Session(location, **kwargs)
        monkeypatch.setattr(Repository, "open", real_open)
        try:
            assert s.report.status is RecoveryStatus.CLEAN, s.report
            assert len(s.report.conversations) == n
            counts[n] = reads[0].count
        finally:
            s.close()
    assert counts[SIZES[0]] == counts[SIZES[1]], counts


def test_adapter_start_and_new_context_do_not_read_every_conversation(locations, monkeypatch):
    """The adapter's start reads where each context lives from the nodes, all conversations together; a save
    of a new context afterwards reads only the conversation it made, not the others again."""
    starts, tree_loads, saves = {}, {}, {}
    for n, location in locations.items():
        _fill_adapter(location, n)
        real_open = Repository.open
        opened: list[Repository] = []

        def counting_open(cls_location=None, _opened=opened):
            repo = real_open(cls_location)
            _opened.append(repo)
            return repo

        monkeypatch.setattr(Repository, "open", staticmethod(counting_open))
        p = SidebarPersistence(location)
        monkeypatch.setattr(Repository, "open", real_open)
        try:
            repo = opened[0]
            # Where each context lives, as the trees hold it.
            assert p.context_exists("SB-0000") is False
            expected = {}
            for conv in sorted(repo.conversation_ids(), reverse=True):  # the first by name wins
                expected.update(dict.fromkeys(Repository(repo.backend).tree(repo.head(conv)).records, conv))
            assert p._where == expected
            reads = Reads(monkeypatch, repo.backend)
            p.load_all_contexts()  # every tree loaded and held, as a server that listed everything
            assert len(p.load_all_contexts()) == 2 * n
            loads = []
            real_tree = repo.tree
            monkeypatch.setattr(repo, "tree", lambda snapshot_id: loads.append(snapshot_id) or real_tree(snapshot_id))
            reads.count = 0
            p.save_context(context("SB-9001"))
            # Before: the save looked every conversation up again (a tree per conversation).
            tree_loads[n] = len(loads)
            saves[n] = reads.count
            assert p.load_context("SB-9001")["sidebar_id"] == "SB-9001"
        finally:
            p.close()
        with Repository.open(location) as fresh:
            reads = Reads(monkeypatch, fresh.backend)
            monkeypatch.setattr(Repository, "open", staticmethod(lambda cls_location=None: fresh))
            q = SidebarPersistence(location)
            monkeypatch.setattr(Repository, "open", real_open)
            # Before: every tree loaded whole (snapshot, state, nodes, exchanges: 5 reads per conversation).
            starts[n] = reads.count
            assert q.context_exists("SB-9001") and q.context_exists("SB-0000") is False
            q._presence.release()
    assert starts[SIZES[0]] == starts[SIZES[1]], starts
    assert tree_loads[SIZES[0]] == tree_loads[SIZES[1]], tree_loads
    assert saves[SIZES[0]] == saves[SIZES[1]], saves


def test_adapter_index_follows_moves_deletes_and_renames(tmp_path):
    """The index is kept up to date per conversation: what another instance made, moved, deleted or renamed
    is found where it is now, and a context two conversations hold is placed in the first by name."""
    location = str(tmp_path / "store")
    a, b = SidebarPersistence(location), SidebarPersistence(location)
    try:
        a.save_context(context("SB-1"))
        a.save_context(context("SB-2", parent="SB-1"))
        a.save_context(context("SB-7"))
        assert b.load_context("SB-2")["parent_context_id"] == "SB-1"
        b.register_conversation_root("chat-1", "SB-1")  # renames SB-1's conversation
        assert a.load_context("SB-2") is not None and a._where["SB-2"] == "chat-1"
        b.delete_context("SB-2")
        assert a.load_context("SB-2") is None and a.context_exists("SB-2") is False
        assert "SB-2" not in a._where
        # The same context in two conversations (a move between its two commits): the first by name.
        with Session(location) as s:
            orch = s.resume("chat-1")
            s.repo.commit("aaa", {"contexts": [context("SB-1")], "active_context_id": "SB-1"})
            assert orch.head is not None
        a._refresh()
        assert a._where["SB-1"] == "aaa"
        with Session(location) as s:
            s.repo.commit("aaa", {"contexts": [], "active_context_id": None})
        a._refresh()
        assert a._where["SB-1"] == "chat-1"
        assert a._where["SB-7"] == "tree-SB-7"
    finally:
        a.close()
        b.close()


def test_reading_every_reflog_of_a_packed_store_goes_through_each_row_once(tmp_path, monkeypatch):
    """gc and verify read every conversation's reflog. On SQLite a packed reflog is read pack by pack; each read
    went through every row of every pack for the ref's own (10,000 conversations: 45 s of ``snap gc``, 44 s of
    ``snap verify --sample 20``). Now each cached pack indexes its rows by ref once."""
    from snapstore import packing
    from snapstore.backends import base, sqlite

    monkeypatch.setattr(packing, "LOG_PACK_LINES", 4)  # many reflog packs from a small store
    location = str(tmp_path / "store")
    _fill(location, 12)
    with Repository.open(location) as repo:
        packing.pack(repo)
        expected = {conv: repo.reflog(conv) for conv in repo.conversation_ids()}
    reads = 0

    class Counted(base.ReflogEntry):
        def __getattribute__(self, attribute):
            nonlocal reads
            if attribute == "name":
                reads += 1
            return super().__getattribute__(attribute)

    monkeypatch.setattr(sqlite, "ReflogEntry", Counted)
    with Repository.open(location) as repo:
        packs = repo.backend._db.execute("SELECT count(*) FROM reflog_packs").fetchone()[0]
        rows = sum(len(rows) for rows in expected.values())
        assert packs > 1 and rows >= 3 * len(expected)
        read_back = {conv: repo.reflog(conv) for conv in expected}
    # Once to index each pack, once more for the rows a read returns. Before: every row's name compared
    # once per ref read (12 refs: 420 reads of 36 rows).
    assert reads <= 2 * rows, (reads, rows)
    assert {conv: [dataclasses.astuple(e) for e in rows] for conv, rows in read_back.items()} == {
        conv: [dataclasses.astuple(e) for e in rows] for conv, rows in expected.items()}


def test_gc_fsck_and_verify_read_every_conversation_in_batches(locations, monkeypatch):
    """gc, fsck and ``verify --sample`` read every conversation's reflog, and verify its head and snapshots.
    Each was a round trip per conversation (and verify's a read per snapshot): at 10,000 conversations
    10,131 backend calls for ``snap gc``, 60,082 for ``snap verify --sample 20``. Now the reflogs are read
    together (``Backend.reflogs``), the heads in one listing, the snapshots a generation at a time."""
    from snapstore.gc import collect_garbage
    from snapstore.storelog import StoreLog
    from snapstore import verify as verifying
    from snapstore.verify import verify

    counts: dict[str, dict[int, int]] = {"gc": {}, "fsck": {}, "verify": {}}
    for n, location in locations.items():
        _fill(location, n, log_in_store=True)
        with Repository.open(location) as repo, monkeypatch.context() as patched:
            calls = Calls(patched, repo.backend)
            report = collect_garbage(repo)
            counts["gc"][n] = calls.count
            assert (report.deleted, report.unreachable) == (0, 0)
            assert report.reachable == report.objects > 5 * n
        with Repository.open(location) as repo, monkeypatch.context() as patched:
            calls = Calls(patched, repo.backend)
            fsck = repo.fsck()
            counts["fsck"][n] = calls.count
            assert fsck.ok and fsck.reachable == fsck.objects, fsck.problems
        with Repository.open(location) as repo, monkeypatch.context() as patched:
            log = StoreLog(repo.backend)
            calls = Calls(patched, repo.backend)
            # The sampled entries' own reads (a few each, as many as the entries drawn need) are not counted.
            check = verifying._Checker.check_linked_entry

            def uncounted(checker, *args, _calls=calls, _check=check):
                _calls.depth += 1
                try:
                    return _check(checker, *args)
                finally:
                    _calls.depth -= 1

            patched.setattr(verifying._Checker, "check_linked_entry", uncounted)
            checked = verify(repo, log, sample=2, seed=1)
            counts["verify"][n] = calls.count
            # Every conversation's three snapshots checked against the log.
            assert checked.ok and checked.snapshots == 3 * n, checked.problems
    # Before: gc 2 + n + ... (a reflog read per conversation), fsck on PostgreSQL the same, verify
    # 3 reads per conversation and one per snapshot (6 per conversation here).
    for what, by_size in counts.items():
        assert by_size[SIZES[0]] == by_size[SIZES[1]], (what, counts)



def test_a_full_verify_reads_the_objects_of_every_linked_entry_together(locations, monkeypatch):
    """A full verify checks each linked log entry against the snapshot, state and nodes it names: a read
    per object, three or four per entry (tens of thousands of round trips at 10,000 conversations). They are
    read ahead a kind at a time for up to 1,024 entries (``verify._prefetch``): the same few calls at any
    number of entries, and none left for the checks themselves."""
    from snapstore import verify as verifying
    from snapstore.storelog import StoreLog
    from snapstore.verify import verify

    ahead: dict[int, int] = {}
    inside: dict[int, int] = {}
    for n, location in locations.items():
        _fill(location, n, log_in_store=True)
        with Repository.open(location) as repo, monkeypatch.context() as patched:
            calls = Calls(patched, repo.backend)
            prefetch, check = verifying._prefetch, verifying._Checker.check_linked_entry

            def counting(real, into):
                def run(*args):
                    before = calls.count
                    try:
                        return real(*args)
                    finally:
                        into[n] = into.get(n, 0) + calls.count - before
                return run

            patched.setattr(verifying, "_prefetch", counting(prefetch, ahead))
            patched.setattr(verifying._Checker, "check_linked_entry", counting(check, inside))
            report = verify(repo, StoreLog(repo.backend))
            assert report.ok and report.entries == 3 * n, report.problems
    assert inside == {n: 0 for n in SIZES}, inside  # every object the checks read was read ahead
    assert ahead[SIZES[0]] == ahead[SIZES[1]] <= 3, ahead  # snapshots (if not cached yet), states, nodes


def test_verify_names_a_damaged_reflog_and_a_missing_snapshot_read_in_batches(tmp_path):
    """Read together, a reflog that cannot be read and a snapshot that is gone are still named each (the
    reflog once, with the line reading it alone gives), and every other conversation is still checked."""
    from snapstore.verify import verify

    location = str(tmp_path / "store")
    _fill(location, 4)
    with Repository.open(location) as repo:
        gone = repo.reflog("c002")[0].new
        with pytest.raises(DamagedRecord) as alone:
            _damage_reflog_row(repo, "c001")
            repo.reflog("c001")
        repo.backend._db.execute("DELETE FROM objects WHERE id = ?", (bytes.fromhex(gone),))
        report = verify(repo, sample=1, seed=1)
    kinds = [(p.kind, p.message) for p in report.problems]
    assert kinds.count(("damaged-row", str(alone.value))) == 1, kinds
    missing = [p for p in report.problems if p.kind == "missing-object"]
    assert missing and {p.object for p in missing} == {gone}, kinds
    # Every snapshot but the one gone is read: c001's through its head's parents.
    assert report.snapshots == 3 * 4 - 1, report


def _damage_reflog_row(repo: Repository, conv: str) -> None:
    """Make the count of ``conv``'s packed reflog rows 0 (a session packs its rows as it goes): a row
    that no reader of its reflog takes (it names it)."""
    db = repo.backend._db
    changed = db.execute("UPDATE reflog_packed SET count = 0 WHERE name = ?", (f"conversations/{conv}",)).rowcount
    db.commit()
    assert changed == 1


@pytest.mark.parametrize("damage", ["counts", "pack"])
def test_reading_reflogs_together_on_a_packed_store_is_reading_each(tmp_path, monkeypatch, damage):
    """SQLite reads the reflogs of many refs a query per batch of names, each reflog pack once: the same rows as
    each ref's own read; a reflog that cannot be read raises, or is put aside, with the line its own read gives."""
    from snapstore import packing

    monkeypatch.setattr(packing, "LOG_PACK_LINES", 4)  # many reflog packs from a small store
    location = str(tmp_path / "store")
    _fill(location, 12)
    with Repository.open(location) as repo:
        packing.pack(repo)
        names = [*repo.backend.list_refs(), "conversations/never"]
        each = {name: repo.backend.reflog(name) for name in names}
        assert list(repo.backend.reflogs(names).items()) == list(each.items())
        db = repo.backend._db
        if damage == "counts":
            db.execute("UPDATE reflog_packed SET count = 0 WHERE name IN (?, ?)",
                       ("conversations/c003", "conversations/c007"))
        else:
            db.execute("UPDATE reflog_packs SET data = X'00' WHERE first = (SELECT min(first) FROM reflog_packs)")
        db.commit()
    with Repository.open(location) as repo:  # nothing cached
        alone = {}
        for name in names:
            try:
                repo.backend.reflog(name)
            except DamagedRecord as exc:
                alone[name] = str(exc)
    assert len(alone) >= 2
    with Repository.open(location) as repo:
        damaged: dict[str, DamagedRecord] = {}
        read = repo.backend.reflogs(names, damaged=damaged)
        assert {name: str(exc) for name, exc in damaged.items()} == alone
        assert read == {name: rows for name, rows in each.items() if name not in alone}
        with pytest.raises(DamagedRecord) as first:
            repo.backend.reflogs(names)
        assert str(first.value) == alone[next(name for name in names if name in alone)]

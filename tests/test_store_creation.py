"""Creating an embedded store: one transaction, safe to race, and what an interrupted init left is taken over."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from snapstore.errors import StoreExists, StoreNotFound
from snapstore.repository import FORMAT_KEY, STORE_FORMAT, Repository
from snapstore.startup import Session

from .factories import sample_state

# The schema as the init before this one committed it: each table on its own, the format key later.
_OLD_INIT_SCHEMA = """
CREATE TABLE objects (id BLOB NOT NULL UNIQUE, kind TEXT NOT NULL, size INTEGER NOT NULL, data BLOB NOT NULL);
CREATE TABLE refs (name TEXT PRIMARY KEY, target BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE reflog (seq INTEGER PRIMARY KEY, name TEXT NOT NULL, old BLOB, new BLOB, time TEXT NOT NULL,
                     reason TEXT NOT NULL, log_sequence INTEGER, log_hash TEXT);
CREATE INDEX reflog_name ON reflog (name, seq);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE ozolith (sequence INTEGER PRIMARY KEY, entry_hash TEXT NOT NULL, line TEXT NOT NULL);
"""

# A child that dies (SIGKILL) right after sqlite3.connect made store.sqlite, before anything is written.
_KILLED_INIT = r"""
import os, signal, sqlite3, sys
import snapstore.backends.sqlite as backend
real = sqlite3.connect
def connect(*args, **kwargs):
    real(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
backend.sqlite3.connect = connect
from snapstore.repository import Repository
Repository.init(sys.argv[1])
"""


def _usable(location: str) -> None:
    """Open the store, commit, reopen: it is a whole store of the current format."""
    with Repository.open(location) as repo:
        assert repo.backend.get_meta(FORMAT_KEY) == str(STORE_FORMAT)
        assert repo.backend.get_meta("created")
        repo.commit("c", sample_state("c"))
    with Repository.open(location) as repo:
        assert repo.load("c").to_json() == sample_state("c")
        assert repo.fsck().ok


def test_an_init_killed_after_creating_the_file_is_finished_by_the_next_init(tmp_path):
    location = str(tmp_path / "store")
    child = subprocess.run([sys.executable, "-c", _KILLED_INIT, location],
                           cwd=Path(__file__).parent.parent, capture_output=True, check=False)
    assert child.returncode == -signal.SIGKILL
    assert (tmp_path / "store" / "store.sqlite").stat().st_size == 0
    with pytest.raises(StoreNotFound, match="not a snapstore"):
        Repository.open(location)
    Repository.init(location).close()
    _usable(location)
    with pytest.raises(StoreExists, match="a store already exists at"):
        Repository.init(location)


def test_session_starts_on_the_empty_file_of_an_interrupted_init(tmp_path):
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "store.sqlite").touch()
    Session(str(tmp_path / "store")).close()
    _usable(str(tmp_path / "store"))


@pytest.mark.parametrize("start", ["init", "session"])
def test_tables_without_a_format_key_are_an_unfinished_init(tmp_path, start):
    """What the init before this one left when killed between its tables and its format key."""
    location = str(tmp_path / "store")
    (tmp_path / "store").mkdir()
    db = sqlite3.connect(tmp_path / "store" / "store.sqlite")
    db.execute("PRAGMA journal_mode = WAL")
    db.executescript(_OLD_INIT_SCHEMA)
    db.close()
    with pytest.raises(StoreNotFound, match="no format version"):
        Repository.open(location)
    if start == "init":
        Repository.init(location).close()
    else:
        Session(location).close()
    _usable(location)


def test_a_database_holding_anything_is_never_taken_over(tmp_path):
    # Tables without a format key but with rows: not an unfinished init, whatever it is.
    (tmp_path / "rows").mkdir()
    db = sqlite3.connect(tmp_path / "rows" / "store.sqlite")
    db.executescript(_OLD_INIT_SCHEMA)
    db.execute("INSERT INTO refs VALUES ('conversations/c', x'00')")
    db.commit()
    db.close()
    # Someone else's database.
    (tmp_path / "other").mkdir()
    db = sqlite3.connect(tmp_path / "other" / "store.sqlite")
    db.execute("CREATE TABLE users (name TEXT)")
    db.close()
    # Not a database at all.
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "store.sqlite").write_bytes(b"not sqlite" * 100)
    for name in ("rows", "other", "junk"):
        before = (tmp_path / name / "store.sqlite").read_bytes()
        with pytest.raises(StoreExists, match=f"a store already exists at {tmp_path / name}$"):
            Repository.init(str(tmp_path / name))
        assert (tmp_path / name / "store.sqlite").read_bytes() == before
        with pytest.raises(StoreNotFound, match="not a snapstore"):
            Session(str(tmp_path / name))
        with pytest.raises(StoreNotFound, match="not a snapstore"):
            Repository.open(str(tmp_path / name))
        # Refused unchanged: not switched to WAL (which rewrites the header), no -wal file made.
        assert (tmp_path / name / "store.sqlite").read_bytes() == before
        assert sorted(p.name for p in (tmp_path / name).iterdir()) == ["store.sqlite"]


def _start_sessions(base: str, rounds: int, barrier, out) -> None:
    """Start a Session on each round's fresh location together with the other processes."""
    for n in range(rounds):
        barrier.wait()
        try:
            session = Session(os.path.join(base, str(n)))
            out.put((n, "ok", session.repo.backend.get_meta("created")))
            session.close()
        except Exception as exc:  # noqa: BLE001 (the test reports what any process met)
            out.put((n, f"{type(exc).__name__}: {exc}", None))


def test_processes_creating_one_store_at_once_all_start_on_the_same_store(tmp_path):
    processes, rounds = 4, 25
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(processes), ctx.Queue()
    workers = [ctx.Process(target=_start_sessions, args=(str(tmp_path), rounds, barrier, out))
               for _ in range(processes)]
    for p in workers:
        p.start()
    results = [out.get(timeout=120) for _ in range(processes * rounds)]
    for p in workers:
        p.join(60)
        assert p.exitcode == 0
    failures = [r for r in results if r[1] != "ok"]
    assert not failures, f"{len(failures)} of {len(results)} starts failed, e.g. {failures[:3]}"
    for n in range(rounds):
        # One store per location: every process read the same creation time.
        assert len({created for m, _, created in results if m == n}) == 1
        _usable(str(tmp_path / str(n)))


def test_new_folders_of_a_store_are_fsynced(tmp_path, fsynced):
    Repository.init(str(tmp_path / "a" / "b" / "store")).close()
    # Each new folder's name lives in its parent: the parent is fsynced once the folder exists.
    assert {tmp_path, tmp_path / "a", tmp_path / "a" / "b"} <= set(fsynced)

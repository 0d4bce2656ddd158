"""Tamper sweep over stored objects, and replay of long random histories (issue: OZOLITH cross-check)."""

from __future__ import annotations

import random
import sqlite3

from hypothesis import given, settings
from hypothesis import strategies as st

from snapstore.ozolith import OzolithLog
from snapstore.replay import replay, structure
from snapstore.repository import Repository
from snapstore.startup import Session
from snapstore.verify import verify

from .crash.worker import step


def build_history(tmp_path, ops: int, seed: int):
    store, log = tmp_path / "store", tmp_path / "log.jsonl"
    session = Session(str(store), ozolith=str(log))
    orch = session.start_new("c", "root")
    rng = random.Random(seed)
    done = 0
    while done < ops:
        if step(orch, rng) != "skip":
            done += 1
    state = orch.state()
    session.close()
    return store, log, state


def test_one_changed_byte_in_any_stored_object_is_found_and_named(tmp_path):
    store, log, _ = build_history(tmp_path, 80, seed=11)
    db = sqlite3.connect(store / "store.sqlite")
    ids = [row[0] for row in db.execute("SELECT id FROM objects")]
    rng = random.Random(5)
    victims = rng.sample(ids, min(200, len(ids)))
    assert len(victims) >= 200 or len(victims) == len(ids)
    repo = Repository.open(str(store))
    for raw in victims:
        (data,) = db.execute("SELECT data FROM objects WHERE id = ?", (raw,)).fetchone()
        i = rng.randrange(len(data))
        db.execute("UPDATE objects SET data = ? WHERE id = ?",
                   (data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1:], raw))
        db.commit()
        fresh = Repository(repo.backend, str(store))  # no cache: every object read again
        report = verify(fresh, OzolithLog(log))
        named = {p.object for p in report.problems if p.object}
        assert raw.hex() in named, (raw.hex(), report.problems[:3])
        db.execute("UPDATE objects SET data = ? WHERE id = ?", (data, raw))
        db.commit()
    assert verify(Repository(repo.backend, str(store)), OzolithLog(log)).ok
    repo.close()


@settings(max_examples=3, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_replay_of_1000_random_operations_reproduces_the_structure(tmp_path_factory, seed):
    tmp = tmp_path_factory.mktemp("replay")
    store, log, state = build_history(tmp, 1000, seed)
    replayed = replay(OzolithLog(log), "c")
    assert structure(replayed.state("c")) == structure(state)
    repo = Repository.open(str(store))
    assert verify(repo, OzolithLog(log)).ok
    repo.close()

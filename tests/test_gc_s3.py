"""gc on the S3 backend beside writers: the sweep lock of snapstore/backends/s3.py, on the real servers.

The race it closes: a write PUTs a body with ``If-None-Match: *`` and gets 412
("already stored") for a body gc is deleting, commits its index row and ref,
and is left without the body. Each test below interleaves a writer and gc by
hand (two backends, two PostgreSQL sessions, hooks inside the backend) at
the exact points of that race, then checks with a fresh backend that every
acknowledged commit loads and ``fsck`` passes. Without the lock the first two
fail: the body is gone.

The concurrent version (a real second process committing while gc runs with
grace 0 again and again) is ``tests/test_gc.py::test_gc_is_safe_while_another_process_commits[s3]``.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pytest

from snapstore.gc import collect_garbage, load_pending
from snapstore.objects import Event
from snapstore.prune import prune
from snapstore.repository import Repository

from .conftest import BACKEND_FACTORIES
from .factories import exchange
from .test_gc import HOUR, history

ROOT = Path(__file__).resolve().parent.parent
WAIT = 30  # seconds: only ever reached when something is broken


@pytest.fixture
def s3_store(tmp_path):
    yield from BACKEND_FACTORIES["s3"](tmp_path)


def garbage_node(repo: Repository) -> str:
    """A node that pruning made garbage and a gc run recorded: the next gc --grace 0 deletes it.

    A commit that sets SB-4 to "paused" rebuilds exactly this node (content addressing).
    """
    state = history(repo, n=4)
    paused = copy.deepcopy(state)
    paused["contexts"][3]["status"] = "paused"
    node = repo.tree(repo.commit("c", paused).snapshot).records["SB-4"].node_id
    repo.commit("c", state)
    state["contexts"][2]["local_memory"].append(exchange(600, "SB-3"))
    repo.commit("c", state)
    prune(repo, "c", keep_last=1)
    collect_garbage(repo, timedelta(0))
    assert node in {oid for bucket in load_pending(repo)[0] for oid in bucket.ids}
    return node


def recreate(repo: Repository) -> object:
    """Commit SB-4 "paused" again: one write carrying the garbage node."""
    staging = repo.stage("c")
    staging.workspace.update_fields("SB-4", {"status": "paused"})
    return repo.commit_staged(staging, event=Event("context_pause", "SB-4"))


def body_keys(backend) -> set[str]:
    """Every key under the store's prefix in the bucket, listed behind the backend's back."""
    keys: set[str] = set()
    for page in backend._client.get_paginator("list_objects_v2").paginate(
        Bucket=backend.s3.bucket, Prefix=backend.s3.prefix
    ):
        keys.update(item["Key"] for item in page.get("Contents", []))
    return keys


def body_ids(backend) -> set[str]:
    prefix = backend.s3.prefix
    return {key[len(prefix):].replace("/", "") for key in body_keys(backend)}


def has_body(backend, oid: str) -> bool:
    return backend._key(oid) in body_keys(backend)


def assert_whole(store, node: str, status: str = "paused") -> None:
    """A fresh backend (no cached trees) reads every object back and finds the committed state."""
    fresh = store.open()
    fsck = fresh.fsck()
    assert fsck.ok, fsck.problems
    assert fresh.load("c").contexts[3]["status"] == status
    assert fresh.tree(fresh.head("c")).records["SB-4"].node_id == node
    assert has_body(fresh.backend, node)


def run(target) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def body() -> None:
        try:
            outcome["result"] = target()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            outcome["error"] = exc

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, outcome


def gc_side(store, repo: Repository, where: str) -> Repository:
    """gc's repository: its own backend (another PostgreSQL session, as another process has), or
    the writer's backend shared by two threads (one session: the backend's own lock must order them)."""
    if where == "own session":
        return store.open()
    return Repository(repo.backend, store.location)


SIDES = ["own session", "shared backend"]


@pytest.mark.parametrize("where", SIDES)
def test_gc_waits_for_a_write_between_its_puts_and_its_commit(s3_store, monkeypatch, where):
    """The writer has PUT the garbage node (412: its body is there) and not committed yet; gc runs."""
    repo = s3_store.init()
    node = garbage_node(repo)
    gc_repo = gc_side(s3_store, repo, where)
    writer = repo.backend
    uploaded, go = threading.Event(), threading.Event()
    commit = writer._commit

    def paused_commit(*args, **kwargs):
        uploaded.set()
        assert go.wait(WAIT)
        return commit(*args, **kwargs)

    monkeypatch.setattr(writer, "_commit", paused_commit)
    assert writer.has_objects([node]) and has_body(writer, node)  # so its PUT answers 412
    write, wrote = run(lambda: recreate(repo))
    assert uploaded.wait(WAIT)
    sweep, swept = run(lambda: collect_garbage(gc_repo, timedelta(0)))
    sweep.join(2)
    gc_waited = sweep.is_alive()
    go.set()
    write.join(WAIT)
    sweep.join(WAIT)
    assert "error" not in wrote, wrote
    assert "error" not in swept, swept
    assert_whole(s3_store, node)
    assert gc_waited  # the write held the lock from before its PUT until its commit
    assert swept["result"].fence_retries >= 1  # then gc saw the ref move and kept the node


@pytest.mark.parametrize("where", SIDES)
def test_a_write_during_gcs_body_deletion_waits_and_puts_again(s3_store, monkeypatch, where):
    """gc has deleted the node's index row, not yet its body; the writer re-creates the node."""
    repo = s3_store.init()
    node = garbage_node(repo)
    gc_repo = gc_side(s3_store, repo, where)
    sweeper = gc_repo.backend
    unindexed, go = threading.Event(), threading.Event()
    delete_index = sweeper._delete_index

    def paused_delete(ids, fence=None):
        removed = delete_index(ids, fence)
        if node in removed:
            unindexed.set()
            assert go.wait(WAIT)
        return removed

    monkeypatch.setattr(sweeper, "_delete_index", paused_delete)
    sweep, swept = run(lambda: collect_garbage(gc_repo, timedelta(0)))
    assert unindexed.wait(WAIT)
    assert not repo.backend.has_objects([node]) and has_body(repo.backend, node)  # the window
    write, wrote = run(lambda: recreate(repo))
    write.join(2)
    writer_waited = write.is_alive()
    go.set()
    sweep.join(WAIT)
    write.join(WAIT)
    assert "error" not in swept, swept
    assert "error" not in wrote, wrote
    assert_whole(s3_store, node)
    assert writer_waited  # no PUT answer while gc is between its two deletions


def test_a_write_that_loses_its_session_puts_again(s3_store, monkeypatch):
    """The writer's PostgreSQL session dies between its PUTs and its commit, releasing its claim;
    gc deletes the body meanwhile. The commit must not run on a new session as if nothing happened."""
    import psycopg

    from snapstore.backends.s3 import split_location

    repo = s3_store.init()
    node = garbage_node(repo)
    gc_repo = s3_store.open()
    writer = repo.backend
    commit = writer._commit
    calls = []

    def commit_after_losing_the_session(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            with psycopg.connect(split_location(s3_store.location)[0], autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (writer._conn.info.backend_pid,))
            deleted = collect_garbage(gc_repo, timedelta(0)).deleted  # not held back: the lock died too
            assert deleted > 0 and not has_body(writer, node)
        return commit(*args, **kwargs)

    monkeypatch.setattr(writer, "_commit", commit_after_losing_the_session)
    recreate(repo)
    assert len(calls) == 2  # the first commit found its claim gone; the write started again
    assert_whole(s3_store, node)


def test_bodies_left_by_a_gc_that_died_are_swept_after_the_grace_period(s3_store, monkeypatch):
    repo = s3_store.init()
    history(repo, n=6)
    prune(repo, "c", keep_last=1)
    collect_garbage(repo, timedelta(0))
    dying = s3_store.open()

    def die(ids):
        raise KeyboardInterrupt

    monkeypatch.setattr(dying.backend, "_delete_bodies", die)
    with pytest.raises(KeyboardInterrupt):  # dies after committing the index deletion
        collect_garbage(dying, timedelta(0))
    indexed = set(repo.backend.find_ids("", limit=1 << 40))
    orphans = body_ids(repo.backend) - indexed
    assert orphans  # bodies without index rows: invisible...
    fsck = s3_store.open().fsck()
    assert fsck.ok, fsck.problems  # ...so the store is sound
    kept = collect_garbage(repo, HOUR)
    assert kept.unindexed_deleted == 0 and body_ids(repo.backend) - indexed == orphans  # too young
    dry = collect_garbage(repo, timedelta(0), dry_run=True)
    assert dry.unindexed_deleted == len(orphans) and dry.unindexed_bytes_freed > 0
    assert body_ids(repo.backend) - indexed == orphans
    report = collect_garbage(repo, timedelta(0))
    assert report.unindexed_deleted == len(orphans) and report.deleted == 0
    assert body_ids(repo.backend) == set(repo.backend.find_ids("", limit=1 << 40))
    assert repo.fsck().ok


def test_a_writer_killed_between_its_puts_and_its_commit(s3_store, tmp_path):
    """A real process holds its claim, is killed: gc, which was waiting for it, goes on; its bodies are swept."""
    repo = s3_store.init()
    history(repo, n=2)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.s3_crash_writer", s3_store.location],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "uploaded", child.stderr
        sweep, swept = run(lambda: collect_garbage(repo, timedelta(0)))
        sweep.join(2)
        assert sweep.is_alive()  # waiting for the writer's claim
    finally:
        child.kill()
        child.communicate(timeout=WAIT)
    sweep.join(WAIT)
    assert not sweep.is_alive() and "error" not in swept, swept
    assert swept["result"].unindexed_deleted > 0  # the dead writer's bodies
    indexed = set(repo.backend.find_ids("", limit=1 << 40))
    assert body_ids(repo.backend) == indexed
    assert "crashed" not in repo.conversation_ids()
    fsck = s3_store.open().fsck()
    assert fsck.ok, fsck.problems

"""Replicas on one shared store, at the moments where one replica's work meets another's (or a server drops).

Each test plays one interleaving by hand, on the real servers of
scripts/testservers.py: a replica starting while another commits, a writer
that loses a race on a watched field, an S3 gateway that stops answering
just after a commit. Then a fresh repository checks what the store holds.
"""

from __future__ import annotations

import copy
import socket

import pytest

from snapstore import repository as repository_module
from snapstore.merge import MergeConflict
from snapstore.repository import Repository
from snapstore.startup import RecoveryStatus, Session
from snapstore.storelog import StoreLog

from .conftest import BACKEND_FACTORIES
from .factories import exchange, sample_state


def _store(name: str, tmp_path):
    """A created store of backend ``name`` on the test servers; its location."""
    for factory in BACKEND_FACTORIES[name](tmp_path):
        factory.init().close()
        yield factory.location


@pytest.fixture(params=["postgres", "sqlite"])
def location(request, tmp_path):
    yield from _store(request.param, tmp_path)


@pytest.fixture
def pg_location(tmp_path):
    yield from _store("postgres", tmp_path)


@pytest.fixture
def s3_location(tmp_path):
    yield from _store("s3", tmp_path)


def _gapless(log: StoreLog) -> list[str]:
    """The event types of the store's log, after checking it is one chain numbered 1, 2, ..."""
    entries = list(log.entries())
    assert [e.sequence for e in entries] == list(range(1, len(entries) + 1))
    assert log.verify().ok
    return [e.event_type for e in entries]


# -- a replica starting while another commits ----------------------------------------------


def test_a_replica_starting_while_another_commits_is_not_told_to_recover(location, monkeypatch):
    """A start reads the reflogs, then the log: entries another replica committed in between (log and
    ref move in one transaction) are applied, not pending. Before, two such commits read as a
    divergence: RECOVERY_NEEDED on a sound store, during every rolling deploy."""
    with Session(location, log_in_store=True) as running:
        orch = running.start_new("c", "root")
        orch.add_exchange("SB-1", "before", "ok")
        read_log = StoreLog.entries_after
        interleaved: list[int] = []

        def entries_after(self, sequence):
            if not interleaved:  # the starting replica has read the reflogs, not yet the log
                interleaved.append(sequence)
                orch.add_exchange("SB-1", "meanwhile 1", "ok")
                orch.add_exchange("SB-1", "meanwhile 2", "ok")
            return read_log(self, sequence)

        monkeypatch.setattr(StoreLog, "entries_after", entries_after)
        starting = Session(location, log_in_store=True)
        monkeypatch.setattr(StoreLog, "entries_after", read_log)
        try:
            assert interleaved, "the start never read the log"
            report = starting.report
            assert report.status is RecoveryStatus.CLEAN, report.problems
            assert report.recoveries == () and report.problems == ()
            assert starting.repo.head("c") == orch.head  # nothing was moved by the start
            users = [e["user"] for e in starting.repo.load("c").contexts[0]["local_memory"]]
            assert users == ["before", "meanwhile 1", "meanwhile 2"]
            assert _gapless(starting.log) == ["context_created", "exchange", "exchange", "exchange"]
        finally:
            starting.close()


# -- the loser of a race on a watched field -------------------------------------------------


def test_a_conflicting_operation_leaves_the_tree_at_the_stores_head(pg_location):
    """b resumes a sidebar while a pauses then archives it: b's first try loses to the pause (it
    starts over from a fresh read), its second to the archive, which changed the status b watches.
    b raises MergeConflict naming the change, and its tree is the store's head (the archived
    sidebar), not the intermediate head it had read; the log is one chain without b's entry."""
    with Session(pg_location, log_in_store=True) as sa, Session(pg_location, log_in_store=True) as sb:
        a = sa.start_new("c", "root")
        side = a.spawn_sidebar("SB-1", "side")
        b = sb.resume("c")
        commit = b.repo.commit_staged
        attempts: list[int] = []

        def commit_staged(*args, **kwargs):
            attempts.append(len(attempts))
            if len(attempts) == 1:
                a.pause_context(side)
            elif len(attempts) == 2:
                a.archive_context(side)
            return commit(*args, **kwargs)

        b.repo.commit_staged = commit_staged  # type: ignore[method-assign]
        with pytest.raises(MergeConflict, match=r"SB-2.*from 'paused' to 'archived'"):
            b.resume_context(side)
        assert len(attempts) == 2
        stored = Repository.open(pg_location)
        try:
            assert b.head == stored.head("c") == a.head
            assert b.get_context(side)["status"] == "archived" == stored.load("c").contexts[1]["status"]
            assert b.tree.state_id == stored.tree(stored.head("c")).state_id
        finally:
            stored.close()
        assert _gapless(sb.log) == ["context_created", "sidebar_spawn", "context_pause", "context_archive"]
        del b.repo.commit_staged
        b.add_exchange(side, "after the conflict", "ok")  # the next operation works from that head
        assert b.get_context(side)["status"] == "archived"
        assert _gapless(sb.log)[-1] == "exchange"


# -- the S3 gateway stops answering just after a commit -------------------------------------


def _unreachable_client():
    """A real S3 client for a port nothing listens on: every request is refused, at once."""
    import boto3
    from botocore.config import Config

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                        aws_access_key_id="unused", aws_secret_access_key="unused",
                        config=Config(retries={"mode": "standard", "max_attempts": 1}, connect_timeout=2))


def _gateway_drops_after_the_write(repo: Repository) -> list[str]:
    """From the end of the next write on, the repository's S3 gateway refuses every request."""
    backend = repo.backend
    write = backend.write_reporting_new
    events: list[str] = []

    def write_then_drop(*args, **kwargs):
        result = write(*args, **kwargs)
        backend._client = _unreachable_client()  # type: ignore[attr-defined]
        events.append("dropped")
        return result

    backend.write_reporting_new = write_then_drop  # type: ignore[method-assign]
    return events


def _assert_sound(location: str, conversation: str, state: dict, head: str) -> None:
    fresh = Repository.open(location)
    try:
        assert fresh.head(conversation) == head
        assert fresh.load(conversation).contexts == state["contexts"]
        report = fresh.fsck()
        assert report.ok, report.problems[:3]
    finally:
        fresh.close()


def test_a_commit_the_s3_gateway_stops_answering_after_keeps_its_objects(s3_location):
    """A commit that makes objects again (SB-3 back as it first was) reads the stored copies back after
    its write, to replace damaged ones. With the gateway gone by then, every copy failed to read and
    counted as damaged: their index rows were deleted (the bodies could not be, nor written again), the
    head named objects the store no longer listed, and the commit, durable, raised."""
    repo = Repository.open(s3_location)
    try:
        first = sample_state("c")
        repo.commit("c", first)
        paused = copy.deepcopy(first)
        paused["contexts"][2]["status"] = "paused"
        repo.commit("c", paused)
        events = _gateway_drops_after_the_write(repo)
        result = repo.commit("c", copy.deepcopy(first))
        assert events == ["dropped"] and result.created
    finally:
        repo.close()
    _assert_sound(s3_location, "c", first, result.snapshot)


def test_a_commit_the_s3_gateway_stops_answering_after_is_reported_committed(s3_location, monkeypatch):
    """After a commit the repository may train the store's dictionary, reading objects from S3; a gateway
    gone by then made the durable commit raise, and a caller retrying it commits it twice."""
    repo = Repository.open(s3_location)
    try:
        state = sample_state("c")
        repo.commit("c", state)
        monkeypatch.setattr(repository_module, "DICT_TRAIN_AFTER", 8)  # the next commit checks, and trains
        state["contexts"][0]["local_memory"].append(exchange(90, "SB-1"))
        events = _gateway_drops_after_the_write(repo)
        result = repo.commit("c", state)
        assert events == ["dropped"] and result.created
        assert repo.codec.current is None  # no dictionary yet: trained after a later commit
    finally:
        repo.close()
    _assert_sound(s3_location, "c", state, result.snapshot)


# -- queueing for one conversation while another thread queues for another ----------------------


def test_a_thread_queued_for_one_conversation_does_not_hold_back_another(pg_location):
    """The writer locks of one process were all taken on one connection under one thread lock, held for
    as long as the writer lock: a thread holding (or waiting for) conversation a's lock, during its
    retries, kept every other thread of the replica from queueing for any other conversation."""
    import threading

    import psycopg

    from snapstore.backends.postgres import PostgresBackend

    backend = PostgresBackend(pg_location)
    holding, release = threading.Event(), threading.Event()
    taken: list[str] = []

    def hold_a() -> None:
        with backend.writer_lock("conversations/a"):
            holding.set()
            release.wait(30)

    def take_b() -> None:
        with backend.writer_lock("conversations/b"):
            taken.append("b")

    holder, other = threading.Thread(target=hold_a), threading.Thread(target=take_b)
    holder.start()
    try:
        assert holding.wait(10)
        other.start()
        other.join(10)  # only ever reached when something is broken
        assert taken == ["b"], "the lock of conversation b waited for the lock of conversation a"
        with psycopg.connect(pg_location, autocommit=True) as probe:  # another replica still queues for a
            (held,) = probe.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                                    "AND granted AND database = (SELECT oid FROM pg_database "
                                    "WHERE datname = current_database())").fetchone()
        assert held == 1
    finally:
        release.set()
        holder.join(10)
        if other.ident is not None:
            other.join(10)
        backend.close()
    assert not holder.is_alive() and not other.is_alive()

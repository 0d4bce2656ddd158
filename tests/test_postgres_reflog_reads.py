"""What a start reads of the reflogs on the shared backends (PostgreSQL, and S3 with PostgreSQL).

Every start asks each conversation's newest log link (``newest_log_sequences``)
and, with an OZOLITH file, the newest rows of one reflog (``reflog_newest``).
Before, PostgreSQL answered both with the base class's defaults, which read
whole reflogs: a replica's start read every reflog row of every conversation.
These tests fail on that code; they count what the backend reads through a
wrapper around its one read method (the real queries still run), and check
that the answers are exactly the defaults' on a store with linked and
unlinked rows, a rename, a reused name and a link older than the row before it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from snapstore.backends import postgres
from snapstore.backends.base import Backend, RefUpdate
from snapstore.backends.postgres import MIGRATIONS, PostgresBackend
from snapstore.refs import ref_name
from snapstore.repository import Repository
from snapstore.startup import RecoveryStatus, Session

from .factories import sample_state
from .shared_backends import SHARED_FACTORIES

psycopg = pytest.importorskip("psycopg")

OPERATIONS = 12  # per conversation: far more reflog rows than conversations
ABSENT = "conversations/never-made"


@pytest.fixture(params=list(SHARED_FACTORIES))
def shared_location(request, tmp_path) -> Iterator[str]:
    for factory in SHARED_FACTORIES[request.param](tmp_path):
        factory.init().close()
        yield factory.location


@pytest.fixture
def pg_location(tmp_path) -> Iterator[str]:
    for factory in SHARED_FACTORIES["postgres"](tmp_path):
        factory.init().close()
        yield factory.location


class Reads:
    """The statements a backend ran through ``_read`` (while :meth:`counting`), with the rows each returned."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.statements: list[tuple[str, int]] = []
        original = PostgresBackend._read

        def counting(backend: PostgresBackend, sql: str, params=()) -> list[tuple]:
            rows = original(backend, sql, params)
            self.statements.append((sql, len(rows)))
            return rows

        monkeypatch.setattr(PostgresBackend, "_read", counting)

    def reset(self) -> None:
        self.statements.clear()

    def of_reflog(self) -> tuple[int, int]:
        """``(statements, rows)`` read from the reflog table."""
        hits = [rows for sql, rows in self.statements if "snapstore_reflog" in sql]
        return len(hits), sum(hits)


def _operations(session: Session, conversation: str, count: int) -> None:
    orch = session.start_new(conversation)
    for n in range(count - 1):
        orch.add_exchange(orch.active_context_id, f"question {n}", f"answer {n}")


def _history(location: str) -> list[str]:
    """A store whose reflogs hold every kind of row the answers must count or skip; every ref name in it.

    alpha: linked rows, then an unlinked commit, then a row linking an entry older than the rows
    before it; beta renamed to delta (delta's reflog: one unlinked row), then the name beta used
    again by a new conversation (its reflog holds both); plain: no linked row at all.
    """
    session = Session(location, log_in_store=True)
    try:
        for conv in ("alpha", "beta", "gamma"):
            _operations(session, conv, OPERATIONS)
        repo = session.repo
        repo.commit("alpha", sample_state("alpha"))  # no log link
        head = repo.head("alpha")
        repo.backend.write(ref_updates=[RefUpdate(ref_name("alpha"), head, head, "relinked", 2, "ab" * 32)])
        repo.rename_conversation("beta", "delta")
        _operations(session, "beta", 3)
        repo.commit("plain", sample_state("plain"))
        return sorted(repo.backend.list_refs())
    finally:
        session.close()


@pytest.fixture
def history(shared_location) -> Iterator[tuple[list[str], Backend]]:
    """The ref names of a store with every kind of reflog row (:func:`_history`), and its backend, open."""
    names = _history(shared_location)
    backend = Repository.open(shared_location).backend
    try:
        yield names, backend
    finally:
        backend.close()


def test_newest_log_sequences_equals_the_default_in_one_query(history, monkeypatch):
    names, backend = history
    wanted = [*names, ABSENT, names[0]]
    expected = Backend.newest_log_sequences(backend, wanted)
    assert expected[ref_name("alpha")] > 2 and expected[ref_name("delta")] == 0  # the cases are there
    assert expected[ref_name("plain")] == 0 and expected[ABSENT] == 0
    reads = Reads(monkeypatch)
    assert backend.newest_log_sequences(wanted) == expected
    assert list(backend.newest_log_sequences(wanted)) == list(expected)  # same keys, same order
    reads.reset()
    backend.newest_log_sequences(wanted)
    assert reads.of_reflog() == (1, len(names) + 1), reads.statements  # one row per name asked
    reads.reset()
    assert backend.newest_log_sequences([]) == {} and reads.statements == []


def test_reflog_newest_equals_the_default_reading_only_those_rows(history, monkeypatch):
    names, backend = history
    reads = Reads(monkeypatch)
    for name in [*names, ABSENT]:
        whole = backend.reflog(name)
        for count in (-1, 0, 1, 2, 5, len(whole), len(whole) + 10):
            expected = Backend.reflog_newest(backend, name, count)
            reads.reset()
            assert backend.reflog_newest(name, count) == expected, (name, count)
            statements, rows = reads.of_reflog()
            assert rows == len(expected) and statements <= 1, (name, count, reads.statements)


@pytest.mark.parametrize("log", ["in-store", "file"])
def test_a_start_reads_a_row_per_conversation_not_every_reflog(pg_location, tmp_path, monkeypatch, log):
    options = {"log_in_store": True} if log == "in-store" else {"ozolith": tmp_path / "audit.jsonl"}
    conversations = 4
    session = Session(pg_location, **options)
    try:
        for n in range(conversations):
            _operations(session, f"conv-{n}", OPERATIONS)
    finally:
        session.close()
    reads = Reads(monkeypatch)
    session = Session(pg_location, **options)
    try:
        assert session.report.status == RecoveryStatus.CLEAN, session.report
    finally:
        session.close()
    statements, rows = reads.of_reflog()
    # One row per conversation for the newest links, and with a file log a few rows of one reflog
    # for the hash of the newest link; before, every row of every reflog (4 x 12 here).
    assert rows <= conversations + 8 and statements <= 2, reads.statements


def test_a_store_made_before_the_index_gets_it_on_open(pg_location, monkeypatch):
    """Stores of schema version 2 (no index of log links) are upgraded by the next open, and answer the same."""
    url = pg_location
    with psycopg.connect(url, autocommit=True) as conn:  # the store as schema version 2 left it
        conn.execute("DROP INDEX IF EXISTS snapstore_reflog_log")
        conn.execute("DELETE FROM snapstore_schema_version WHERE version > 2")
    monkeypatch.setattr(postgres, "MIGRATIONS", MIGRATIONS[:2])
    names = _history(url)  # written by a snapstore that knows schema version 2 only
    monkeypatch.setattr(postgres, "MIGRATIONS", MIGRATIONS)
    backend = PostgresBackend(url)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            indexes = {r[0] for r in conn.execute(
                "SELECT indexname FROM pg_indexes WHERE tablename = 'snapstore_reflog'")}
            versions = [r[0] for r in conn.execute("SELECT version FROM snapstore_schema_version ORDER BY version")]
        assert "snapstore_reflog_log" in indexes
        assert versions == [m.version for m in MIGRATIONS]
        assert backend.newest_log_sequences(names) == Backend.newest_log_sequences(backend, names)
    finally:
        backend.close()

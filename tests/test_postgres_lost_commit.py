"""A PostgreSQL write whose connection drops while its COMMIT awaits the answer.

The caller must learn what happened: success when the server committed, a
clean failure (or a transparent redo) when it rolled back, and only when the
server cannot be asked, an error naming the uncertainty. Each test runs the
real server behind :class:`CommitCutter`, a socket relay that forwards
everything and, when told, cuts both sides at a COMMIT: just after relaying it
(the server commits, the client never hears) or just before (the server rolls
back). Then a direct connection checks what the store holds.

It can also cut a connection half-open (:meth:`CommitCutter.cut_half_open`):
the client's side closed, the server's kept open and silent, as when a network
partition or a NAT dropping the flow leaves the server unaware that its client
is gone; the server session stays "idle in transaction", holding its locks.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from snapstore import errors
from snapstore.audit import LinkedLog
from snapstore.backends.postgres import _LOG_LOCK
from snapstore.errors import BackendError
from snapstore.orchestrator import ConversationOrchestrator
from snapstore.ozolith import OzolithLog
from snapstore.refs import ref_name
from snapstore.repository import Repository
from snapstore.startup import Session
from snapstore.storelog import StoreLog

from .conftest import BACKEND_FACTORIES

_ENCRYPTION_REQUESTS = {80877103, 80877104}  # SSLRequest, GSSENCRequest: refused, the relay reads plain text


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


class CommitCutter:
    """A TCP relay to the test PostgreSQL that can cut a connection at its client's ``COMMIT``.

    ``cut(when, times)``: the next ``times`` COMMITs (psycopg sends a transaction's
    COMMIT as one simple ``Query`` message) end their connection - ``"after"``
    relaying the message (then the server reads COMMIT and end-of-stream: it
    commits) or ``"before"`` (it reads only end-of-stream: it rolls back). Both
    sides are closed, the client's at once, so psycopg sees a lost connection
    with no answer. ``refuse``: new connections are closed on arrival (the
    server cannot be reached again).
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.refuse = False
        self._cuts: list[str | None] = []
        self._half_open_at: bytes | None = None
        self.silent: list[socket.socket] = []  # server sides kept open by cut_half_open, until close()
        self._guard = threading.Lock()
        self.cut_count = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self, when: str, times: int = 1, skip: int = 0) -> None:
        """Cut the ``times`` COMMITs that follow the next ``skip``."""
        with self._guard:
            self._cuts = [None] * skip + [when] * times

    def cut_half_open(self, marker: bytes) -> None:
        """Cut the next message (of any type) holding ``marker``, half-open: not relayed, the client's side
        closed (psycopg sees a lost connection), the server's side left open and silent, so the server
        session waits for a next message that never comes, in whatever transaction it was."""
        with self._guard:
            self._half_open_at = marker

    def close(self) -> None:
        self._listener.close()
        for server in self.silent:  # end-of-stream at last: the server ends those sessions
            with contextlib.suppress(OSError):
                server.shutdown(socket.SHUT_RDWR)

    def _half_open(self, message: bytes) -> bool:
        with self._guard:
            if self._half_open_at is None or self._half_open_at not in message:
                return False
            self._half_open_at = None
            self.cut_count += 1
            return True

    def _next_cut(self) -> str | None:
        with self._guard:
            when = self._cuts.pop(0) if self._cuts else None
            self.cut_count += when is not None
            return when

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.refuse:
                client.close()
                continue
            server = socket.create_connection(self.target)
            for sock in (client, server):  # messages go one by one: no waiting for the delayed ACK
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._to_server, args=(client, server), daemon=True).start()
            threading.Thread(target=self._to_client, args=(server, client), daemon=True).start()

    @staticmethod
    def _to_client(server: socket.socket, client: socket.socket) -> None:
        try:
            while data := server.recv(65536):
                client.sendall(data)
        except OSError:
            pass
        finally:
            server.close()
            client.close()

    def _to_server(self, client: socket.socket, server: socket.socket) -> None:
        try:
            while True:  # untyped start-up messages: encryption requests, then the startup packet
                (length,) = struct.unpack("!I", _read_exactly(client, 4))
                body = _read_exactly(client, length - 4)
                if struct.unpack("!I", body[:4])[0] in _ENCRYPTION_REQUESTS:
                    client.sendall(b"N")
                    continue
                server.sendall(struct.pack("!I", length) + body)
                break
            while True:  # typed messages: one byte of type, then length
                header = _read_exactly(client, 5)
                message = header + _read_exactly(client, struct.unpack("!I", header[1:])[0] - 4)
                if self._half_open(message):
                    self.silent.append(server)
                    client.shutdown(socket.SHUT_RDWR)
                    client.close()
                    return
                when = self._next_cut() if message[:1] == b"Q" and message[5:].rstrip(b"\0") == b"COMMIT" else None
                if when == "after":
                    server.sendall(message)
                if when is not None:
                    server.shutdown(socket.SHUT_WR)  # the server reads what came, then end-of-stream
                    client.shutdown(socket.SHUT_RDWR)
                    client.close()
                    return
                server.sendall(message)
        except OSError:
            with contextlib.suppress(OSError):
                server.shutdown(socket.SHUT_WR)
            client.close()


@pytest.fixture
def stores(tmp_path):
    """``(direct location, location through a CommitCutter, the cutter)`` of a fresh store."""
    for factory in BACKEND_FACTORIES["postgres"](tmp_path):
        factory.init().close()
        parts = urlsplit(factory.location)
        cutter = CommitCutter((parts.hostname, parts.port))
        netloc = parts.netloc.rsplit("@", 1)
        relayed = (netloc[0] + "@" if len(netloc) == 2 else "") + f"127.0.0.1:{cutter.port}"
        try:
            yield factory.location, urlunsplit(parts._replace(netloc=relayed)), cutter
        finally:
            cutter.close()


def _stored(location: str) -> tuple[str | None, list[str], list[str]]:
    """What the store holds, read directly: conversation c's head, its reflog reasons, the log's event types
    (after checking the log is one sound chain numbered 1, 2, ...)."""
    repo = Repository.open(location)
    try:
        log = StoreLog(repo.backend)
        entries = list(log.entries())
        assert [e.sequence for e in entries] == list(range(1, len(entries) + 1))
        assert log.verify().ok
        reflog = [e.reason for e in repo.backend.reflog(ref_name("c"))]
        return repo.head("c"), reflog, [e.event_type for e in entries]
    finally:
        repo.close()


def _exchanges(orchestrator, context: str) -> list[str]:
    return [x["user"] for x in orchestrator.get_context(context)["local_memory"]]


def _settled_status(direct: str, xid: str) -> str:
    """pg_xact_status of ``xid`` once the server has finished with it: the relay cut the connection right
    after relaying COMMIT, so the server may still be committing when this asks ("in progress")."""
    deadline = time.monotonic() + 10
    with psycopg.connect(direct, autocommit=True) as conn:
        while True:
            (status,) = conn.execute("SELECT pg_xact_status(%s::xid8)", (xid,)).fetchone()
            if status != "in progress" or time.monotonic() > deadline:
                return status
            time.sleep(0.005)


def _assert_stored_once(direct: str, orchestrator, root: str) -> None:
    """The "question" exchange is stored once (one log entry, one ref move) and the tree is the store's head."""
    head, reflog, events = _stored(direct)
    assert orchestrator.head == head
    assert _exchanges(orchestrator, root) == ["question"]
    assert events == ["context_created", "exchange"]
    assert len(reflog) == 2


@pytest.mark.parametrize("cut", ["after", "before"])
def test_a_lost_commit_is_settled_and_stored_once(stores, cut):
    """``after``: the server commits, the answer never comes: the caller is told success (it happened,
    once). ``before``: the connection drops before the server reads COMMIT, so it rolls back; the write,
    known not applied, is done again on a new connection. Either way the caller sees one operation,
    stored once, the orchestrator's tree is the store's head, and the next operation builds on it."""
    direct, relayed, cutter = stores
    with Session(relayed, log_in_store=True) as session:
        orch = session.start_new("c", "root")
        root = orch.active_context_id
        cutter.cut(cut)
        orch.add_exchange(root, "question", "answer")
        assert cutter.cut_count == 1
        _assert_stored_once(direct, orch, root)
        orch.add_exchange(root, "next", "ok")
        assert _exchanges(orch, root) == ["question", "next"]
        assert _stored(direct)[2] == ["context_created", "exchange", "exchange"]


def test_commits_the_server_keeps_rolling_back_are_a_clean_failure(stores):
    """Every attempt's COMMIT is cut before the server reads it: the caller gets a failure saying nothing
    was applied, the store and the orchestrator's tree are as before, and the caller's retry applies
    the operation once."""
    direct, relayed, cutter = stores
    with Session(relayed, log_in_store=True) as session:
        orch = session.start_new("c", "root")
        root = orch.active_context_id
        before = _stored(direct)
        old_head = orch.head
        cutter.cut("before", times=100)
        with pytest.raises(BackendError, match=r"lost the connection while committing.*nothing was applied") as caught:
            orch.add_exchange(root, "question", "answer")
        assert not isinstance(caught.value, errors.CommitOutcomeUnknown)
        assert "\n" not in str(caught.value)
        assert _stored(direct) == before
        assert orch.head == old_head
        assert _exchanges(orch, root) == []
        cutter.cut("before", times=0)
        orch.add_exchange(root, "question", "answer")  # the caller's retry
        _assert_stored_once(direct, orch, root)


def test_a_commit_whose_outcome_cannot_be_learnt_says_so_and_the_next_operation_adopts_it(stores):
    """The server commits, the answer is lost, and the server cannot be reached again: the error names
    the uncertainty and how to look. The orchestrator's tree stays where it knew the store was; once
    the server answers again, its next operation finds the committed write (not done twice)."""
    direct, relayed, cutter = stores
    with Session(relayed, log_in_store=True) as session:
        orch = session.start_new("c", "root")
        root = orch.active_context_id
        old_head = orch.head
        cutter.cut("after")
        cutter.refuse = True
        with pytest.raises(errors.CommitOutcomeUnknown, match=r"could not learn whether the write was applied"
                           r".*pg_xact_status\('\d+'\)") as caught:
            orch.add_exchange(root, "question", "answer")
        assert "\n" not in str(caught.value)
        assert _settled_status(direct, caught.value.xid) == "committed"  # the way the message says to look
        head, _, events = _stored(direct)
        assert events == ["context_created", "exchange"]
        assert orch.head == old_head != head
        assert _exchanges(orch, root) == []
        cutter.refuse = False
        orch.add_exchange(root, "next", "ok")
        head, reflog, events = _stored(direct)
        assert orch.head == head
        assert _exchanges(orch, root) == ["question", "next"]
        assert events == ["context_created", "exchange", "exchange"]
        assert len(reflog) == 3


def test_an_operation_logged_outside_the_store_is_not_voided_when_its_outcome_is_unknown(stores, tmp_path):
    """With the audit log in a file, the entry is appended before the ref moves; that move's answer is
    lost and the server cannot be asked. The log must not say the operation failed (it happened):
    no correction entry, and the next operation adopts the stored head."""
    direct, relayed, cutter = stores
    log = OzolithLog(tmp_path / "log.jsonl")
    repo = Repository.open(relayed)
    try:
        orch = ConversationOrchestrator(repo, "c", audit=LinkedLog(log))
        root = orch.create_root_context("root")
        cutter.cut("after", skip=1)  # the objects' COMMIT passes, the ref move's is cut
        cutter.refuse = True
        with pytest.raises(errors.CommitOutcomeUnknown):
            orch.add_exchange(root, "question", "answer")
        assert cutter.cut_count == 1
        assert [e.event_type for e in log.entries()] == ["context_created", "exchange"]
        cutter.refuse = False
        orch.add_exchange(root, "next", "ok")
        assert _exchanges(orch, root) == ["question", "next"]
        assert [e.event_type for e in log.entries()] == ["context_created", "exchange", "exchange"]
        stored = Repository.open(direct)
        try:
            assert orch.head == stored.head("c")
            assert len(stored.backend.reflog(ref_name("c"))) == 3
        finally:
            stored.close()
    finally:
        repo.close()


# Text of the statement each write sends just before COMMIT: by then its transaction holds every lock it takes.
_BEFORE_COMMIT = b"pg_current_xact_id_if_assigned"


def _with_options(location: str, options: str) -> str:
    """``location`` with libpq ``options`` (server settings for its sessions) added to its query."""
    parts = urlsplit(location)
    query = (parts.query + "&" if parts.query else "") + "options=" + quote(options)
    return urlunsplit(parts._replace(query=query))


def _idle_in_transaction(direct: str) -> list[int]:
    """The pids of the sessions of the store's database left idle inside a transaction."""
    with psycopg.connect(direct, autocommit=True) as conn:
        return [pid for (pid,) in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND state = 'idle in transaction'"
        )]


@contextlib.contextmanager
def _orchestrator(location: str, log_in_store: bool):
    """An orchestrator of conversation c, with its root context, writing through ``location``."""
    if log_in_store:
        with Session(location, log_in_store=True) as session:
            yield session.start_new("c", "root")
        return
    repo = Repository.open(location)
    try:
        orch = ConversationOrchestrator(repo, "c")
        orch.create_root_context("root")
        yield orch
    finally:
        repo.close()


@pytest.mark.parametrize("log_in_store", [True, False])
def test_a_write_cut_half_open_before_commit_is_done_again_once_its_old_session_is_ended(stores, log_in_store):
    """The connection is cut half-open just before COMMIT: the server session, unaware, stays idle in
    its transaction, holding what it locked (the log's advisory lock; the ref's row and the new objects'
    keys). Done again on a new connection, the write would queue behind those locks until the server
    noticed the dead connection (TCP keepalive: hours); the backend ends the old session first, so the
    write goes through at once, stored once. The relayed sessions give up on a lock after 3 s
    (lock_timeout), so a redo queued behind the old session fails instead of hanging."""
    direct, relayed, cutter = stores
    with _orchestrator(_with_options(relayed, "-c lock_timeout=3s"), log_in_store) as orch:
        root = orch.active_context_id
        cutter.cut_half_open(_BEFORE_COMMIT)
        orch.add_exchange(root, "question", "answer")
        assert cutter.cut_count == 1
        assert _idle_in_transaction(direct) == []
        stored = Repository.open(direct)
        try:
            assert orch.head == stored.head("c")
            assert len(stored.backend.reflog(ref_name("c"))) == 2
        finally:
            stored.close()
        assert _exchanges(orch, root) == ["question"]
        if log_in_store:
            assert _stored(direct)[2] == ["context_created", "exchange"]
        orch.add_exchange(root, "next", "ok")
        assert _exchanges(orch, root) == ["question", "next"]


def test_an_old_session_that_cannot_be_ended_is_a_clear_error_and_the_server_ends_it_soon(stores):
    """Cut half-open as above, and the server cannot be reached again to end the old session: the write
    fails with one line saying nothing was applied and which session may hold its locks, instead of
    waiting on them. The server ends that session itself once it has sat idle in its transaction for the
    idle_in_transaction_session_timeout snapstore sets (10 s): another writer queued on the log lock and
    the ref's row goes through then, not hours later. Once the server answers again, the next write
    goes through."""
    direct, relayed, cutter = stores
    with Session(relayed, log_in_store=True) as session:
        orch = session.start_new("c", "root")
        root = orch.active_context_id
        before = _stored(direct)
        cutter.cut_half_open(_BEFORE_COMMIT)
        cutter.refuse = True
        with pytest.raises(BackendError, match=r"lost the connection in a transaction, and could not end its "
                           r"server session \d+, .*; this transaction applied nothing; to end that session: "
                           r"SELECT pg_terminate_backend\(pid\) .* WHERE pid = \d+ AND backend_start = '[^']+'$") \
                as caught:
            orch.add_exchange(root, "question", "answer")
        assert "\n" not in str(caught.value)
        (old_pid,) = _idle_in_transaction(direct)
        assert f"session {old_pid}, " in str(caught.value)
        with psycopg.connect(direct) as conn:  # another writer
            conn.execute("SET lock_timeout = '60s'")
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOG_LOCK,))
            conn.execute("SELECT 1 FROM snapstore_refs WHERE name = %s FOR UPDATE", (ref_name("c"),))
            conn.rollback()
        assert _idle_in_transaction(direct) == []
        assert _stored(direct) == before
        cutter.refuse = False
        orch.add_exchange(root, "next", "ok")
        assert _exchanges(orch, root) == ["next"]
        assert _stored(direct)[2] == ["context_created", "exchange"]


def test_sessions_end_a_transaction_left_idle_unless_the_url_or_the_database_says_otherwise(stores):
    """10 s of idling inside a transaction ends a snapstore session (its transactions never wait for
    anything but the server); a value given in the URL's options or set on the database is kept."""
    direct, _, _ = stores

    def timeout(location: str) -> str:
        repo = Repository.open(location)
        try:
            return repo.backend._read("SHOW idle_in_transaction_session_timeout")[0][0]
        finally:
            repo.close()

    assert timeout(direct) == "10s"
    assert timeout(_with_options(direct, "-c idle_in_transaction_session_timeout=1h")) == "1h"
    with psycopg.connect(direct, autocommit=True) as conn:
        (name,) = conn.execute("SELECT current_database()").fetchone()
        conn.execute(sql.SQL("ALTER DATABASE {} SET idle_in_transaction_session_timeout = '2min'")
                     .format(sql.Identifier(name)))
    assert timeout(direct) == "2min"

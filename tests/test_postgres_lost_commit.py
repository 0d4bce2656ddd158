"""A PostgreSQL write whose connection drops while its COMMIT awaits the answer.

The caller must learn what happened: success when the server committed, a
clean failure (or a transparent redo) when it rolled back, and only when the
server cannot be asked, an error naming the uncertainty. Each test runs the
real server behind :class:`CommitCutter`, a socket relay that forwards
everything and, when told, cuts both sides at a COMMIT: just after relaying it
(the server commits, the client never hears) or just before (the server rolls
back). Then a direct connection checks what the store holds.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from snapstore import errors
from snapstore.audit import LinkedLog
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
        self._guard = threading.Lock()
        self.cut_count = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self, when: str, times: int = 1, skip: int = 0) -> None:
        """Cut the ``times`` COMMITs that follow the next ``skip``."""
        with self._guard:
            self._cuts = [None] * skip + [when] * times

    def close(self) -> None:
        self._listener.close()

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

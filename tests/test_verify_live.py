"""``snap verify`` and ``snap status`` beside a writer that keeps committing.

An operator runs them (from cron, say) on the store a running API writes to.
Before, verify read the log first and the refs, the snapshots and each
head's tree later, so every operation committed in between looked like
damage: ``entry-missing: snapshot ... names log entry 199, which the log does
not hold`` and ``replay-mismatch: c1: the log replays to focus SB-19, the
store has SB-20``, hundreds of problems per run on a sound store. And with an
OZOLITH file, whose entry is appended before its ref moves, the entry of an
operation in flight read as one no history reaches, and ``snap status`` as
pending (``RECOVERY_NEEDED``).

Each test plays the writer's commits at chosen moments inside the reads (by
wrapping a read), so it is fast and the same every run: now verify reads
the log's end, then the refs, then the log, and judges an entry appended
after its view only against the objects it names; an OZOLITH file's end is
read at a moment no operation is in flight (its operations lock). A writer
that is gone still leaves an entry verify and status name.
"""

from __future__ import annotations

import fcntl
import threading
import types
from collections.abc import Iterator

import pytest

from snapstore import audit
from snapstore.audit import LinkedLog
from snapstore.orchestrator import ConversationOrchestrator
from snapstore.ozolith import OzolithLog
from snapstore.repository import Repository
from snapstore.startup import RecoveryStatus, Session, inspect
from snapstore.storelog import StoreLog
from snapstore.verify import verify

from .conftest import BACKEND_FACTORIES
from .factories import crash_after_append

MODES = ["store-log-sqlite", "store-log-postgres", "file-sqlite"]


@pytest.fixture(params=MODES)
def live(request, tmp_path) -> Iterator[tuple[Session, str, str | None]]:
    """A running session with conversations c1 (a sidebar open) and c2, its store's location, and its
    OZOLITH file (None: the log is kept in the store)."""
    mode, _, backend = request.param.rpartition("-")
    for factory in BACKEND_FACTORIES[backend](tmp_path):
        factory.init().close()
        logfile = str(tmp_path / "log.jsonl") if mode == "file" else None
        session = (Session(factory.location, ozolith=logfile) if logfile
                   else Session(factory.location, log_in_store=True))
        try:
            c1 = session.start_new("c1", "one")
            c1.add_exchange(c1.active_context_id, "q", "a")
            c1.spawn_sidebar(c1.active_context_id, "dig", inherit_last_n=1)
            c2 = session.start_new("c2", "two")
            c2.add_exchange(c2.active_context_id, "q", "a")
            yield session, factory.location, logfile
        finally:
            session.close()


def _writer(session: Session) -> tuple[ConversationOrchestrator, ConversationOrchestrator]:
    return session.resume("c1"), session.resume("c2")


def _commit(orchs: tuple[ConversationOrchestrator, ConversationOrchestrator], step: str) -> int:
    """Three operations of the live writer (a structural one among them); how many entries they appended."""
    c1, c2 = orchs
    c1.add_exchange(c1.active_context_id, f"{step} q", "a")
    c1.spawn_sidebar(c1.active_context_id, f"{step} side", inherit_last_n=1)
    c2.add_exchange(c2.active_context_id, f"{step} q", "a")
    return 3


def _reader(location: str, logfile: str | None) -> tuple[Repository, OzolithLog | StoreLog]:
    """What `snap verify` opens: the store, and the log (the file, or the one the store keeps)."""
    repo = Repository.open(location)
    return repo, OzolithLog(logfile) if logfile else StoreLog(repo.backend)


def _once(orchs, step: str, fired: list[str], real):
    """``real`` wrapped to let the writer commit just before its first call."""
    def wrapped(*args, **kwargs):
        if step not in fired:
            fired.append(step)
            _commit(orchs, step)
        return real(*args, **kwargs)
    return wrapped


@pytest.mark.parametrize("scope", ["all", "one-conversation", "sampled"])
def test_verify_beside_a_writer_committing_between_its_reads_finds_nothing(live, scope):
    """The writer commits between each pair of verify's reads: before, the first three each made findings
    (entry-missing, replay-mismatch); the one after the refs were read makes entries verify leaves for the
    next run, which judges them."""
    session, location, logfile = live
    orchs = _writer(session)
    repo, log = _reader(location, logfile)
    fired: list[str] = []
    try:
        # The refs (heads, then reflogs), the log's chain, the store check, and the replay's head tree.
        repo.backend.reflogs = _once(orchs, "reflogs", fired, repo.backend.reflogs)
        log.verify = _once(orchs, "chain", fired, log.verify)
        repo.fsck = _once(orchs, "fsck", fired, repo.fsck)
        repo.load = _once(orchs, "load", fired, repo.load)
        conversation = "c1" if scope == "one-conversation" else None
        sample = 4 if scope == "sampled" else None
        report = verify(repo, log, conversation, sample=sample, seed=1)
        expected = {"reflogs", "chain"} | (set() if sample else {"fsck", "load"})
        assert set(fired) == expected, fired
        assert report.ok, [f"{p.kind}: {p.message}" for p in report.problems]
        # The entries committed after the refs were read, of the conversations checked (c1 has two of the
        # three): those committed before the reflogs were read are reached, those after the log was read unread.
        assert report.after_view == (2 if conversation else 3), report
        again = verify(repo, log, conversation)  # the next run, the writer quiet: everything judged
        assert again.ok and again.after_view == 0, again.problems
        assert again.snapshots > report.snapshots
    finally:
        repo.close()


def _in_flight(session: Session, logfile: str) -> tuple[threading.Thread, threading.Event, threading.Event, list]:
    """A writer of ``logfile`` stopped between its entry and its ref move (holding its operations lock, as
    every operation does): the thread, the event set once it stopped there, the one that lets it go on,
    and where an error it raised goes."""
    linked = LinkedLog(OzolithLog(logfile))
    stopped, go, errors = threading.Event(), threading.Event(), []

    class Stopping:
        def __call__(self, *args):
            appended = linked(*args)
            stopped.set()
            go.wait(30)
            return appended

        def operation(self):
            return linked.operation()

    orch = ConversationOrchestrator(session.repo, "c2", audit=Stopping())

    def run():
        try:
            orch.add_exchange(orch.active_context_id, "in flight", "a")
        except BaseException as exc:  # noqa: BLE001 (the test names it)
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    assert stopped.wait(30), "the writer never appended"
    return thread, go, errors


def _letting_go_on_a_wait(monkeypatch, go: threading.Event) -> None:
    """Let the writer go on when a reader waits for the operations in flight (an exclusive flock of the
    operations lock); a reader that does not wait leaves it stopped while it reads."""
    real = fcntl.flock

    def flock(fd, operation):
        if operation & fcntl.LOCK_EX:
            go.set()
        return real(fd, operation)

    monkeypatch.setattr(audit, "fcntl", types.SimpleNamespace(LOCK_EX=fcntl.LOCK_EX, LOCK_SH=fcntl.LOCK_SH,
                                                               LOCK_NB=fcntl.LOCK_NB, LOCK_UN=fcntl.LOCK_UN,
                                                               flock=flock))


@pytest.mark.parametrize("live", ["file-sqlite"], indirect=True)
@pytest.mark.parametrize("reader", ["verify", "status"])
def test_an_operation_in_flight_is_not_judged_pending(live, reader, monkeypatch):
    """Its entry is in the file, its ref not moved yet. Before, verify named it (``unreachable: log entry 8
    names snapshot ..., which no history of c2 reaches``, and a replay mismatch) and `snap status` said
    RECOVERY_NEEDED (``pending: log entry 8 names snapshot ..., which no ref reaches yet``)."""
    session, location, logfile = live
    assert logfile is not None
    thread, go, errors = _in_flight(session, logfile)
    repo, log = _reader(location, logfile)
    try:
        _letting_go_on_a_wait(monkeypatch, go)
        if reader == "verify":
            report = verify(repo, log)
            assert report.ok, [f"{p.kind}: {p.message}" for p in report.problems]
        else:
            status = inspect(repo, log)
            assert status.status is not RecoveryStatus.RECOVERY_NEEDED, status.problems
            assert status.recoveries == (), status.recoveries
    finally:
        go.set()
        thread.join(30)
        repo.close()
    assert not errors and not thread.is_alive()
    assert [x["user"] for x in session.repo.load("c2").contexts[0]["local_memory"]] == ["q", "in flight"]


@pytest.mark.parametrize("live", ["file-sqlite"], indirect=True)
def test_an_entry_a_gone_writer_left_is_still_named(live):
    """The same entry, its writer killed before its ref move (no operations lock held): verify and status
    still name it, however many operations ran beside the file before."""
    session, location, logfile = live
    sequence = crash_after_append(session, "c2", "lost")
    repo, log = _reader(location, logfile)
    try:
        report = verify(repo, log)
        assert [(p.kind, p.sequence) for p in report.problems if p.kind == "unreachable"] == [
            ("unreachable", sequence)], report.problems
        assert report.after_view == 0
        status = inspect(repo, log)
        assert status.status is RecoveryStatus.RECOVERY_NEEDED
        assert [(r.sequence, r.action) for r in status.recoveries] == [(sequence, "pending")]
    finally:
        repo.close()

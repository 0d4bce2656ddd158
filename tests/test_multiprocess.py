"""Several processes on one embedded store: locking, and no half-written commit is ever seen."""

from __future__ import annotations

import multiprocessing as mp
import subprocess
import sys
import threading
import time

from snapstore.errors import RefConflict
from snapstore.repository import Repository

from .factories import context, exchange


def _writer(location: str, conversation: str, count: int) -> None:
    repo = Repository.open(location)
    state = {"conversation_id": conversation, "active_context_id": "SB-1",
             "contexts": [context("SB-1", children=["SB-2"]), context("SB-2", parent="SB-1")]}
    for i in range(count):
        # Two contexts change together in every commit: a reader must see both or neither.
        state["contexts"][0]["local_memory"].append(exchange(i, "SB-1", "x" * 500))
        state["contexts"][1]["local_memory"].append(exchange(i, "SB-2", "y" * 500))
        state["contexts"][0]["tags"] = [f"step-{i}"]
        state["contexts"][1]["tags"] = [f"step-{i}"]
        repo.commit(conversation, state)
    repo.close()


def _reader(location: str, conversation: str, seconds: float, out) -> None:
    repo = Repository.open(location)
    seen, torn = 0, 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if repo.head(conversation) is None:
            continue
        state = repo.load(conversation)
        a, b = state.contexts
        if not (a["tags"] == b["tags"] and len(a["local_memory"]) == len(b["local_memory"])):
            torn += 1
        seen += 1
    repo.close()
    out.put((seen, torn))


def test_concurrent_writers_and_readers(tmp_path):
    location = str(tmp_path / "store")
    Repository.init(location).close()
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    writers = [ctx.Process(target=_writer, args=(location, f"conv-{i}", 40)) for i in range(3)]
    readers = [ctx.Process(target=_reader, args=(location, "conv-0", 3.0, results)) for _ in range(2)]
    for p in writers + readers:
        p.start()
    for p in writers + readers:
        p.join(60)
        assert p.exitcode == 0
    for _ in readers:
        seen, torn = results.get(timeout=5)
        assert seen > 0 and torn == 0
    repo = Repository.open(location)
    assert sorted(repo.conversation_ids()) == ["conv-0", "conv-1", "conv-2"]
    for conv in repo.conversation_ids():
        assert len(repo.log(conv)) == 40
    assert repo.fsck().ok


def _racer(location: str, barrier, out) -> None:
    repo = Repository.open(location)
    staging = repo.stage("shared")
    staging.workspace.update_fields("SB-1", {"tags": [mp.current_process().name]})
    barrier.wait()
    try:
        repo.commit_staged(staging)
        out.put("won")
    except RefConflict:
        out.put("lost")


def test_compare_and_swap_across_processes(tmp_path):
    location = str(tmp_path / "store")
    repo = Repository.init(location)
    repo.commit("shared", {"conversation_id": "shared", "active_context_id": None, "contexts": [context("SB-1")]})
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(location, barrier, out)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    outcomes = sorted(out.get(timeout=5) for _ in procs)
    assert outcomes == ["lost", "lost", "lost", "won"]
    assert len(repo.log("shared")) == 2


def test_one_dictionary_per_store_even_when_two_processes_train(tmp_path):
    from snapstore.orchestrator import ConversationOrchestrator

    location = str(tmp_path / "store")
    first = Repository.init(location)
    second = Repository.open(location)
    orch = ConversationOrchestrator(first, "c")
    root = orch.create_root_context("root")
    for i in range(400):
        orch.add_exchange(root, f"question {i}", "answer " * (i % 7))
    # Both saw no dictionary; both train; only one may be installed.
    first.codec.current = None
    installed = first.train_dictionary() or first.codec.current
    assert second.codec.current is None
    assert second.train_dictionary() is None
    assert second.codec.current == first.codec.current == installed
    other = ConversationOrchestrator(second, "d")
    r = other.create_root_context("root")
    other.add_exchange(r, "q", "a")
    third = Repository.open(location)
    assert third.fsck().ok
    assert len(third.backend.list_meta("zstd_dict/")) == 1


def test_a_reader_opened_before_the_dictionary_reads_what_it_compressed(tmp_path):
    from snapstore.orchestrator import ConversationOrchestrator

    location = str(tmp_path / "store")
    writer = Repository.init(location)
    reader = Repository.open(location)  # knows no dictionary yet
    orch = ConversationOrchestrator(writer, "c")
    root = orch.create_root_context("root")
    for i in range(700):  # enough objects for the writer to train and install a dictionary
        orch.add_exchange(root, f"question {i}", "answer")
    assert writer.codec.current is not None and reader.codec.current is None
    assert len(reader.load("c").contexts[0]["local_memory"]) == 700


# Another process asks for one ref's byte of writer.lock without waiting.
_PROBE = r"""
import fcntl, hashlib, os, sys
offset = int.from_bytes(hashlib.blake2b(sys.argv[2].encode(), digest_size=4).digest(), "big") & 0x3FFFFFFF
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)
    print("got it")
except OSError:
    print("blocked")
"""


def _other_process_gets(location: str, name: str) -> bool:
    probe = subprocess.run([sys.executable, "-c", _PROBE, f"{location}/writer.lock", name],
                           capture_output=True, text=True, check=True)
    return probe.stdout.strip() == "got it"


def test_releasing_one_writer_lock_keeps_the_others_of_the_process(tmp_path):
    location = str(tmp_path / "store")
    first, second = Repository.init(location), Repository.open(location)
    held, release = threading.Event(), threading.Event()

    def hold_a() -> None:
        with first.backend.writer_lock("conversations/a"):
            held.set()
            release.wait()

    holder = threading.Thread(target=hold_a)
    holder.start()
    held.wait()
    try:
        assert not _other_process_gets(location, "conversations/a")
        # POSIX drops every lock a process holds on a file when it closes any descriptor of it:
        # taking and releasing another ref's lock, through either backend, must not do that.
        for backend in (first.backend, second.backend):
            with backend.writer_lock("conversations/b"):
                pass
        second.close()
        assert not _other_process_gets(location, "conversations/a")
    finally:
        release.set()
        holder.join()
    assert _other_process_gets(location, "conversations/a")
    first.close()


def test_two_repositories_on_one_store_in_one_process_queue_for_a_ref(tmp_path):
    location = str(tmp_path / "store")
    first, second = Repository.init(location), Repository.open(location)
    acquired = threading.Event()

    def take_through_second() -> None:
        with second.backend.writer_lock("conversations/a"):
            acquired.set()

    with first.backend.writer_lock("conversations/a"):
        waiter = threading.Thread(target=take_through_second)
        waiter.start()
        assert not acquired.wait(0.5)
    assert acquired.wait(10)
    waiter.join()
    first.close()
    second.close()

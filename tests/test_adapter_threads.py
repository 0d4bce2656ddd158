"""The drop-in adapter under a threaded API server, and two replicas in two processes on one store.

The client's API server calls the module-global instance from several
threads at once (reference §2). Tests marked "defect" failed before the fix
they name; the others guard behaviour that was already right. The
interleavings vary from run to run; the assertions hold for every one.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from snapstore.adapters import sidebar_persistence as sp
from snapstore.merge import MergeConflict
from snapstore.ozolith import OzolithLog
from snapstore.repository import Repository

from .client.model import SidebarContext, SidebarStatus
from .factories import run_replicas
from .test_adapter import rich_context

THREADS = 8
ROUNDS = 12
WAIT = 20  # seconds a barrier waits before it breaks: a deadlock fails the test instead of hanging it


def run_threads(target, count: int) -> list[str]:
    """Run ``target(n)`` in ``count`` threads; the errors they raised, as text."""
    errors: list[str] = []

    def run(n: int) -> None:
        try:
            target(n)
        except BaseException as exc:  # noqa: BLE001 (reported to the test)
            errors.append(f"thread {n}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads), "a thread is still blocked"
    return errors


def changed_contexts(repo: Repository, conv: str) -> list[tuple[str, set[str]]]:
    """Each snapshot of the history (oldest first) as its event's context and the contexts it changed."""
    out = []
    history = list(reversed(repo.log(conv)))
    previous: dict[str, Any] = {}
    for info in history:
        contexts = {c["sidebar_id"]: c for c in repo.load(info.id).contexts}
        changed = {cid for cid in contexts.keys() | previous.keys() if contexts.get(cid) != previous.get(cid)}
        out.append((info.snapshot.event.context_id, changed))
        previous = contexts
    return out


@pytest.fixture
def persistence(tmp_path):
    instance = sp.SidebarPersistence(str(tmp_path / "store"), context_class=SidebarContext)
    yield instance
    instance.close()


def test_threads_saving_loading_and_deleting_different_contexts_lose_nothing(persistence):
    """Guard: one instance, eight threads at once: every save lands in the one conversation, a load
    never gives a half-saved context, deletes and focus changes interleave without an error."""
    persistence.save_context(rich_context("SB-1"))
    barrier = threading.Barrier(THREADS, timeout=WAIT)

    def work(n: int) -> None:
        for i in range(ROUNDS):
            cid = f"SB-{100 * (n + 1) + i}"
            context = rich_context(cid, "SB-1")
            context.tags = [f"thread {n}", f"round {i}"]
            barrier.wait()
            assert persistence.save_context(context) is True
            assert persistence.load_context(cid) == context
            assert persistence.set_session_state("active_context_id", cid) is True
            listed = {c.sidebar_id: c for c in persistence.load_all_contexts()}
            assert listed[cid] == context and "SB-1" in listed
            assert persistence.get_statistics()["total_contexts"] >= 2
            if i % 3 == 2:
                assert persistence.delete_context(cid) is True
                assert not persistence.context_exists(cid)

    assert run_threads(work, THREADS) == []
    kept = {f"SB-{100 * (n + 1) + i}" for n in range(THREADS) for i in range(ROUNDS) if i % 3 != 2}
    other = sp.SidebarPersistence(persistence.location, context_class=SidebarContext)
    assert {c.sidebar_id for c in other.load_all_contexts()} == kept | {"SB-1"}
    (conv,) = other.repo.conversation_ids()
    assert {c["sidebar_id"] for c in other.repo.load(conv).contexts} == kept | {"SB-1"}
    other.close()


def test_threads_saving_one_context_apply_in_turn_never_a_merge_conflict(persistence):
    """Defect: saves of one context by threads of one instance raised MergeConflict ("both sides changed
    'tags'"): each was merged with the instance's own save of a moment before as if another replica had
    made it. They apply in turn now, each whole, as the client's INSERT OR REPLACE does."""
    persistence.save_context(rich_context("SB-1"))
    barrier = threading.Barrier(4, timeout=WAIT)
    saved: list[SidebarContext] = []

    def work(n: int) -> None:
        for i in range(ROUNDS):
            context = rich_context("SB-1")
            context.tags = [f"thread {n} round {i}"]
            context.local_memory.append({"exchange_id": f"EXCH-{n}-{i}", "user": "u", "assistant": "a"})
            saved.append(context)
            barrier.wait()
            persistence.save_context(context)

    assert run_threads(work, 4) == []
    stored = sp.SidebarPersistence(persistence.location, context_class=SidebarContext).load_context("SB-1")
    assert stored in saved  # one save's context, whole: no field of another mixed in


def test_an_open_operation_holds_no_lock_and_its_snapshots_are_its_own(persistence):
    """Defect: ``operation()`` held the instance's lock while open, so a second request of the server
    waited for the first to end (here: both wait at a barrier inside, which broke). Each operation is
    the opening thread's now; interleaved, they never share a snapshot."""
    root = rich_context("SB-1")
    persistence.save_context(root)
    barrier = threading.Barrier(2, timeout=WAIT)

    def spawn(n: int) -> None:
        child = f"SB-{n + 2}"
        with persistence.operation("sidebar_spawn", child, f"spawned {child}"):
            barrier.wait()
            for i in range(3):
                context = rich_context(child, "SB-1")
                context.tags = [f"step {i}"]
                persistence.save_context(context)
                barrier.wait()

    assert run_threads(spawn, 2) == []
    (conv,) = persistence.repo.conversation_ids()
    history = changed_contexts(persistence.repo, conv)
    assert {c["sidebar_id"] for c in persistence.repo.load(conv).contexts} == {"SB-1", "SB-2", "SB-3"}
    for named, changed in history[1:]:
        assert changed == {named}, history  # a snapshot holds the changes of the operation it names only


def test_a_save_an_operation_hands_to_a_worker_thread_joins_it(persistence):
    """Defect: an async server that opens an operation and awaits ``asyncio.to_thread(save_context)``
    deadlocked: the worker waited for the lock the operation held. The worker's saves join the
    operation (``to_thread`` carries it) and make its one snapshot."""
    persistence.save_context(rich_context("SB-1"))
    (conv,) = persistence.repo.conversation_ids()
    before = len(persistence.repo.log(conv))

    async def spawn() -> None:
        with persistence.operation("sidebar_spawn", "SB-2", "spawned SB-2"):
            await asyncio.wait_for(asyncio.to_thread(persistence.save_context, rich_context("SB-2", "SB-1")), WAIT)
            parent = rich_context("SB-1")
            parent.child_sidebar_ids, parent.status = ["SB-2"], SidebarStatus.PAUSED
            await asyncio.wait_for(asyncio.to_thread(persistence.save_context, parent), WAIT)

    asyncio.run(spawn())
    log = persistence.repo.log(conv)
    assert len(log) == before + 1 and log[0].snapshot.event.message == "spawned SB-2"
    assert persistence.load_context("SB-1").status is SidebarStatus.PAUSED


def test_interleaved_operations_under_a_log_are_snapshots_of_their_own(persistence, tmp_path):
    """Defect: with a log configured, a save amended the snapshot of the newest entry's operation,
    whichever thread made it: request A logs a spawn, request B logs an exchange, and A's saves and
    B's folded into one snapshot named after B's exchange. A thread's saves amend only its own."""
    log_path = tmp_path / "ozolith.jsonl"
    log = OzolithLog(log_path)
    instance = sp.SidebarPersistence(persistence.location, context_class=SidebarContext, ozolith=log_path)
    log.append("session_start", "SYSTEM", "system", {"session_id": "S-1", "interface": "api"})
    instance.save_context(rich_context("SB-1"))
    step = threading.Barrier(2, timeout=WAIT)

    def request(n: int) -> None:
        if n == 0:  # A: spawn SB-2 (saves the child, then the parent)
            log.append("sidebar_spawn", "SB-2", "system", {"parent_context": "SB-1", "spawn_reason": "look"})
            step.wait()  # B logs its exchange
            step.wait()
            instance.save_context(rich_context("SB-2", "SB-1"))
            parent = rich_context("SB-1")
            parent.child_sidebar_ids, parent.status = ["SB-2"], SidebarStatus.PAUSED
            instance.save_context(parent)
            step.wait()
        else:  # B: an exchange in SB-9, a root of its own in the same conversation
            step.wait()
            log.append("exchange", "SB-9", "human", {"exchange_id": "EXCH-1"})
            step.wait()
            step.wait()  # after A's saves
            instance.save_context(rich_context("SB-9", "SB-1"))

    assert run_threads(request, 2) == []
    (conv,) = instance.repo.conversation_ids()
    history = changed_contexts(instance.repo, conv)
    assert [changed for _, changed in history] == [{"SB-1"}, {"SB-1", "SB-2"}, {"SB-9"}]
    instance.close()


# -- two processes ----------------------------------------------------------------------------------


def _replica(location: str, name: str, rounds: int, barrier, out) -> None:
    """One API replica: each round saves a context of its own and one field of the shared root, then
    loads what the other replica saved that round."""
    instance = sp.SidebarPersistence(location, context_class=SidebarContext)
    other = "b" if name == "a" else "a"
    seen, won = [], []
    for i in range(rounds):
        instance.load_context("SB-1")  # the version this replica holds
        barrier.wait()
        instance.save_context(rich_context(f"SB-{name}{i}", "SB-1"))
        root = rich_context("SB-1")
        root.tags = [f"{name} {i}"]
        try:
            won.append(instance.save_context(root))
        except MergeConflict as exc:
            assert exc.context_id == "SB-1"
            won.append(False)
        barrier.wait()
        mine = instance.load_context(f"SB-{other}{i}")
        seen.append((mine is not None and mine.sidebar_id, instance.load_context("SB-1").tags))
    instance.close(clean=False)
    out.put((name, seen, won))


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_two_replica_processes_on_one_store_see_each_other_and_lose_nothing(backend, tmp_path):
    """Guard: two processes with adapters on one store. Each sees what the other saved; saves of
    different contexts both land; two saves of one field of one context at once are one save and one
    MergeConflict naming it, never two successes with one lost."""
    import multiprocessing as mp

    from .conftest import BACKEND_FACTORIES

    rounds = 8
    for factory in BACKEND_FACTORIES[backend](tmp_path):
        factory.init().close()
        location = factory.location
        first = sp.SidebarPersistence(location, context_class=SidebarContext)
        first.save_context(rich_context("SB-1"))
        first.close()
        barrier = mp.get_context("spawn").Barrier(2, timeout=60)
        results = {name: (seen, won) for name, seen, won in
                   run_replicas(_replica, [(location, name, rounds, barrier) for name in "ab"])}
        (seen_a, won_a), (seen_b, won_b) = results["a"], results["b"]
        for i in range(rounds):
            assert won_a[i] != won_b[i], f"round {i}: {won_a[i]} and {won_b[i]}"  # one saved, one refused
            winner = [f"{'a' if won_a[i] else 'b'} {i}"]
            assert seen_a[i] == (f"SB-b{i}", winner) and seen_b[i] == (f"SB-a{i}", winner)
        check = sp.SidebarPersistence(location, context_class=SidebarContext)
        ids = {c.sidebar_id for c in check.load_all_contexts()}
        assert ids == {"SB-1"} | {f"SB-{n}{i}" for n in "ab" for i in range(rounds)}
        check.close()

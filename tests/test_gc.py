"""Garbage collection on every backend: what it keeps, when it deletes, and safety beside writers.

Also the SQLite compaction measurement behind ``snap compact``.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from tests.conftest import BACKEND_FACTORIES
from click.testing import CliRunner

from snapstore.backends.base import RefUpdate
from snapstore.cli.main import cli
from snapstore.errors import ObjectNotFound, RefConflict
from snapstore.gc import PENDING_KEY, StoreBusy, collect_garbage, load_pending
from snapstore.objects import Event
from snapstore.prune import ConversationMoved, prune
from snapstore.repository import Repository
from snapstore.rewrites import Rewrites
from snapstore.verify import verify

from .factories import exchange, sample_state
from .gc_writer import CONVERSATION, digest

ROOT = Path(__file__).resolve().parent.parent
HOUR = timedelta(hours=1)


def history(repo: Repository, conv: str = "c", n: int = 8) -> dict:
    """``n`` snapshots of one conversation: exchanges appended, a status toggling; returns the last state."""
    state = sample_state(conv)
    for i in range(n):
        state["contexts"][0]["local_memory"].append(exchange(100 + i, "SB-1"))
        state["contexts"][1]["status"] = "paused" if i % 2 else "active"
        repo.commit(conv, state, event=Event("exchange", "SB-1"))
    return state


def stored_ids(repo: Repository) -> set[str]:
    return set(repo.backend.find_ids("", limit=1 << 40))


def test_first_run_records_second_run_deletes(repo):
    state = history(repo)
    prune(repo, "c", keep_last=2)
    before = repo.backend.count_objects()
    first = collect_garbage(repo, timedelta(0))
    assert first.deleted == 0 and first.pending == first.unreachable > 0
    assert repo.backend.count_objects() == before
    second = collect_garbage(repo, timedelta(0))
    after = repo.backend.count_objects()
    assert second.deleted == first.pending
    assert (second.bytes_freed, second.logical_bytes_freed) == (before[1] - after[1], before[2] - after[2])
    assert after[0] == before[0] - second.deleted == second.reachable
    assert second.pending == 0 and repo.backend.get_meta(PENDING_KEY) is not None
    assert repo.fsck().ok and verify(repo).ok
    assert repo.load("c").to_json() == state
    third = collect_garbage(repo, timedelta(0))
    assert third.deleted == 0 and third.unreachable == 0


def test_grace_period_keeps_young_candidates(repo):
    history(repo)
    prune(repo, "c", keep_last=1)
    first = collect_garbage(repo, HOUR)
    # Snapshots younger than the grace period are roots (the pruned ones are all recent),
    # but what no ref or reflog reaches is recorded all the same.
    assert first.deleted == 0 and first.unreachable == 0 and first.pending > 0
    again = collect_garbage(repo, HOUR)
    assert again.deleted == 0 and again.pending_since == first.pending_since  # the first sighting is kept
    time.sleep(1.1)
    last = collect_garbage(repo, timedelta(seconds=1))
    assert last.deleted == first.pending and last.pending == 0 and repo.fsck().ok


def test_dry_run_changes_nothing(repo):
    history(repo)
    prune(repo, "c", keep_last=1)
    collect_garbage(repo, timedelta(0))
    ids, meta = stored_ids(repo), repo.backend.list_meta()
    report = collect_garbage(repo, timedelta(0), dry_run=True)
    assert report.dry_run and report.deleted > 0 and report.bytes_freed > 0
    assert stored_ids(repo) == ids and repo.backend.list_meta() == meta


def test_refs_and_every_reflog_value_are_roots(repo):
    state = history(repo, n=3)
    staging = repo.stage("c")
    staging.workspace.update_fields("SB-4", {"status": "active"})
    replaced = repo.commit_staged(staging, event=Event("commit")).snapshot
    staging = repo.stage("c")
    staging.workspace.update_fields("SB-4", {"status": "merged"})
    repo.commit_staged(staging, event=Event("commit"), amend=True)  # `replaced` is now only in the reflog
    assert replaced not in [info.id for info in repo.log("c")]
    for _ in range(2):
        report = collect_garbage(repo, timedelta(0))
    assert report.unreachable == 0 and report.deleted == 0
    assert repo.snapshot(replaced).root and repo.fsck().ok
    assert repo.load("c").contexts[0] == state["contexts"][0]


def test_a_crashed_two_phase_commit_survives_the_grace_period(repo):
    history(repo, n=2)
    staging = repo.stage("c")
    staging.workspace.append_exchange("SB-3", exchange(500, "SB-3"))
    orphan = {}

    def crash(prepared):
        orphan["snapshot"] = prepared.snapshot
        raise KeyboardInterrupt  # the process dies after its objects are durable

    with pytest.raises(KeyboardInterrupt):
        repo.commit_staged(staging, event=Event("exchange", "SB-3"), before_ref=crash)
    snapshot = orphan["snapshot"]
    for _ in range(2):
        kept = collect_garbage(repo, HOUR)
        assert kept.deleted == 0 and kept.pending > 0  # recorded, kept while younger than the grace period
    assert repo.tree(snapshot).records["SB-3"].exchange_count() == 2  # still whole: roll-forward can use it
    report = collect_garbage(repo, timedelta(0))  # recorded long enough ago for a grace of 0
    assert report.deleted == kept.pending and not repo.backend.has_objects([snapshot])
    assert repo.fsck().ok


def test_reused_garbage_deleted_mid_commit_comes_back_with_the_ref(repo):
    """The reuse rule, interleaved by hand: gc deletes an object a commit has just found stored."""
    state = history(repo, n=4)
    paused = copy.deepcopy(state)
    paused["contexts"][3]["status"] = "paused"
    old = repo.commit("c", paused).snapshot
    garbage_node = repo.tree(old).records["SB-4"].node_id  # SB-4 "paused": about to become garbage
    repo.commit("c", state)
    state["contexts"][2]["local_memory"].append(exchange(600, "SB-3"))
    repo.commit("c", state)
    prune(repo, "c", keep_last=1)
    collect_garbage(repo, timedelta(0))  # records it as a candidate
    assert garbage_node in {oid for b in load_pending(repo)[0] for oid in b.ids}

    staging = repo.stage("c")
    staging.workspace.update_fields("SB-4", {"status": "paused"})  # rebuilds exactly that node

    def gc_between_phases(prepared):
        assert prepared.changed_nodes["SB-4"] == garbage_node  # the commit reuses the stored node...
        report = collect_garbage(repo, timedelta(0))  # ...which gc now deletes: no ref names it yet
        assert report.deleted > 0 and not repo.backend.has_objects([garbage_node])

    repo.commit_staged(staging, event=Event("context_pause", "SB-4"), before_ref=gc_between_phases)
    assert repo.backend.has_objects([garbage_node])  # carried by the transaction that moved the ref
    assert repo.fsck().ok
    assert repo.load("c").contexts[3]["status"] == "paused"
    assert repo.tree(repo.head("c")).records["SB-4"].node_id == garbage_node


def test_the_fence_refuses_when_any_ref_moved(repo):
    history(repo, n=2)
    backend = repo.backend
    write = backend.write
    chunk = next(o for o in backend.iter_objects("chunk"))
    head = repo.head("c")
    fence = {ref: (target, len(backend.reflog(ref))) for ref, target in backend.list_refs().items()}
    write(ref_updates=[RefUpdate("conversations/other", None, head, "branch")])
    with pytest.raises(RefConflict) as caught:
        backend.delete_objects([chunk.id], fence=fence)
    assert caught.value.ref == "conversations/other" and backend.has_objects([chunk.id])
    fence = {ref: (target, len(backend.reflog(ref))) for ref, target in backend.list_refs().items()}
    # Away and back: the target is the same, the reflog is longer.
    first = repo.log("c")[-1].id
    write(ref_updates=[RefUpdate("conversations/other", head, first, "away")])
    write(ref_updates=[RefUpdate("conversations/other", first, head, "back")])
    with pytest.raises(RefConflict):
        backend.delete_objects([chunk.id], fence=fence)
    assert backend.has_objects([chunk.id])
    fence = {ref: (target, len(backend.reflog(ref))) for ref, target in backend.list_refs().items()}
    assert backend.delete_objects([chunk.id], fence=fence) == 1


def test_gc_stops_on_a_damaged_store(repo):
    history(repo, n=3)
    prune(repo, "c", keep_last=1)
    collect_garbage(repo, timedelta(0))
    head_root = repo.snapshot(repo.head("c")).root
    repo.backend.delete_objects([head_root])
    ids = stored_ids(repo)
    with pytest.raises(ObjectNotFound, match=head_root):
        collect_garbage(repo, timedelta(0))
    assert stored_ids(repo) == ids


# Every durable backend; on S3 the sweep lock keeps a write's PUTs and commit
# apart from gc's deletions (snapstore/backends/s3.py, tests/test_gc_s3.py).
@pytest.fixture(params=[n for n in BACKEND_FACTORIES if n in ("sqlite", "postgres", "s3")])
def gc_safe_store(request, tmp_path):
    yield from BACKEND_FACTORIES[request.param](tmp_path)


def test_gc_is_safe_while_another_process_commits(gc_safe_store, tmp_path):
    """A real second process commits in a loop (re-creating garbage objects, half of it two-phase)
    while this one prunes and runs gc --grace 0 again and again."""
    durable_store = gc_safe_store
    repo = durable_store.init()
    out = tmp_path / "commits.txt"
    stop = tmp_path / "stop"
    hold = tmp_path / "hold"  # after 3 lost races in a row, the writer waits for one prune
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    writer = subprocess.Popen(
        # A prune takes longer than a commit (on S3 much longer): without a pause it would lose
        # nearly every race. The writer runs until this test has seen prunes, deletions and
        # several gc runs (the stop file), at most 60 s, at least 8 s.
        [sys.executable, "-m", "tests.gc_writer", durable_store.location, str(out), "60",
         "0.02" if durable_store.name == "s3" else "0.002", str(stop), str(hold)],
        cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True,
    )
    started = time.monotonic()
    prunes = deletions = runs = busy = lost = 0
    try:
        while writer.poll() is None:
            if prunes > 0 and deletions > 0 and runs > 2 and time.monotonic() - started > 8:
                stop.touch()
            if repo.head(CONVERSATION) is None:
                time.sleep(0.05)
                continue
            if lost >= 3:
                hold.touch()
                time.sleep(0.2)  # a commit already under way finishes
            try:
                prunes += prune(repo, CONVERSATION, keep_last=2).changed
                lost = 0
            except ConversationMoved:
                lost += 1
            finally:
                hold.unlink(missing_ok=True)
            try:
                deletions += collect_garbage(repo, timedelta(0)).deleted
                runs += 1
            except StoreBusy:
                busy += 1
    finally:
        stderr = writer.communicate(timeout=60)[1]
    assert writer.returncode == 0, stderr
    assert prunes > 0 and deletions > 0 and runs > 2, (prunes, deletions, runs, busy)

    for _ in range(2):
        collect_garbage(repo, timedelta(0))
    fsck = repo.fsck()
    assert fsck.ok, fsck.problems
    assert verify(repo).ok
    rewrites = Rewrites.load(repo.backend)
    commits = [line.split() for line in out.read_text().splitlines()]
    assert len(commits) > 20
    alive = 0
    for snapshot, expected in commits:
        if rewrites.alive(snapshot):  # squashed ones are gone by design
            current = rewrites.current(snapshot)
            assert digest(repo.load(current).to_json()) == expected, snapshot
            alive += 1
    assert alive >= 2
    assert digest(repo.load(CONVERSATION).to_json()) == commits[-1][1]


# -- the CLI -------------------------------------------------------------------------------


@pytest.fixture
def snap(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SNAPSTORE", raising=False)
    location = str(tmp_path / "store")
    repo = Repository.init(location)
    history(repo)
    prune(repo, "c", keep_last=1)
    repo.close()
    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(cli, ["--store", location, *args])

    run.location = location  # type: ignore[attr-defined]
    return run


def test_gc_cli_json_and_text(snap):
    first = snap("gc", "--grace", "0", "--json")
    assert first.exit_code == 0, first.output
    report = json.loads(first.stdout)
    assert set(report) == {"dry_run", "grace_seconds", "objects", "reachable", "unreachable", "deleted",
                           "bytes_freed", "logical_bytes_freed", "pending", "pending_since", "eligible_after",
                           "fence_retries", "unindexed_deleted", "unindexed_bytes_freed"}
    assert report["deleted"] == 0 and report["pending"] > 0
    dry = snap("gc", "--grace", "0", "--dry-run")
    assert dry.exit_code == 0 and f"would delete {report['pending']} objects" in dry.stdout
    text = snap("gc", "--grace=1d12h")
    assert text.exit_code == 0 and "deleted 0 objects" in text.stdout
    done = json.loads(snap("gc", "--grace", "0", "--json").stdout)
    assert done["deleted"] == report["pending"] and done["bytes_freed"] > 0
    assert json.loads(snap("fsck", "--json").stdout)["ok"]


def test_gc_cli_bad_duration_is_one_line(snap):
    result = snap("gc", "--grace", "2 weeks")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1
    assert "not a duration" in result.stderr


# -- SQLite compaction: the measurement behind `snap compact` ------------------------------


def test_sqlite_keeps_its_size_after_gc_until_compact(tmp_path):
    from snapstore.compact import compact, sqlite_space

    location = str(tmp_path / "store")
    repo = Repository.init(location)
    state = sample_state("big")
    for i in range(150):
        state["contexts"][1]["local_memory"].append(exchange(i, "SB-2", "x" * 400))
        state["contexts"][0]["status"] = f"step {i}"  # a new root node every time
        repo.commit("big", state)
    path = Path(location) / "store.sqlite"
    prune(repo, "big", keep_last=1)
    for _ in range(2):
        deleted = collect_garbage(repo, timedelta(0)).deleted
    assert deleted > 150
    after_gc = sqlite_space(path)
    assert after_gc.free_pages > 0  # the deleted objects' pages went to the freelist, not back to the disk
    report = compact(repo.backend)
    assert report.applicable and report.after is not None
    assert report.after.free_pages == 0 and report.after.wal_bytes == 0
    assert report.after.file_bytes < after_gc.file_bytes and report.reclaimed > 0
    assert repo.fsck().ok and repo.load("big").to_json() == state
    result = CliRunner().invoke(cli, ["--store", location, "compact", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["after"]["free_pages"] == 0


def test_compact_elsewhere_says_there_is_nothing_to_do(repo):
    from snapstore.compact import compact

    report = compact(repo.backend)
    assert report.applicable == (repo.backend.__class__.__name__ == "SqliteBackend")


@pytest.mark.parametrize("where", ["memory", "sqlite"])
def test_gc_with_a_trained_dictionary(tmp_path, where):
    """Refs other than conversations' (the dictionary ref) are fenced but name no object."""
    repo = Repository.init("memory:" if where == "memory" else str(tmp_path / "store"))
    state = history(repo, n=90)
    assert repo.train_dictionary() is not None
    assert set(repo.backend.list_refs()) > {"conversations/c"}
    history(repo, conv="d", n=5)
    prune(repo, "c", keep_last=1)
    for _ in range(2):
        report = collect_garbage(repo, timedelta(0))
    assert report.deleted > 0 and repo.fsck().ok and verify(repo).ok
    assert repo.load("c").to_json() == state


def test_progress_bars_go_to_stderr_only(snap, monkeypatch, tmp_path):
    from snapstore.cli import maintenance

    monkeypatch.setattr(maintenance, "PROGRESS_MIN_OBJECTS", 1)  # as if the store were large
    monkeypatch.setattr(maintenance, "PROGRESS_MIN", {})
    result = snap("gc", "--grace", "0", "--json")
    assert result.exit_code == 0 and "marking" in result.stderr
    assert json.loads(result.stdout)["objects"] > 0  # stdout is the JSON alone
    exported = snap("export", "c", "-o", str(tmp_path / "c.bundle"), "--json")
    assert "exporting objects" in exported.stderr and json.loads(exported.stdout)["objects"] > 0
    imported = snap("import", str(tmp_path / "c.bundle"), "--json")
    assert "checking bundle" in imported.stderr and not json.loads(imported.stdout)["changed"]
    assert "reading history" in snap("prune", "c", "--keep-last", "1", "--json").stderr
    assert "reading objects" in snap("stats", "--json").stderr

"""Retention: prune squashes old history, rewrites the rest, and fsck, gc and verify read it right."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest
from click.testing import CliRunner

from snapstore.audit import LinkedLog
from snapstore.backends.base import RefUpdate
from snapstore.cli.main import cli
from snapstore.errors import InvalidInput, UnknownRevision
from snapstore.gc import collect_garbage
from snapstore.objects import Event
from snapstore.orchestrator import ConversationOrchestrator
from snapstore.ozolith import OzolithLog
from snapstore.prune import ConversationMoved, prune
from snapstore.repository import Repository
from snapstore.rewrites import Rewrites
from snapstore.verify import verify

from .factories import exchange, sample_state


def history(repo: Repository, conv: str = "c", n: int = 8) -> list[dict]:
    """``n`` snapshots; returns the state of each, oldest first."""
    state = sample_state(conv)
    states = []
    for i in range(n):
        state["contexts"][0]["local_memory"].append(exchange(100 + i, "SB-1"))
        state["contexts"][1]["status"] = "paused" if i % 2 else "active"
        repo.commit(conv, state, event=Event("exchange", "SB-1", f"step {i}"))
        states.append(json.loads(json.dumps(state)))
    return states


def test_keep_last_squashes_the_rest_into_one_root(repo):
    states = history(repo)
    before = repo.log("c")
    report = prune(repo, "c", keep_last=3)
    after = repo.log("c")
    assert report.changed and report.squashed == 5 and len(report.replaced) == 3
    assert len(after) == 4 and report.new_head == after[0].id == repo.head("c")
    squash = after[-1]
    assert squash.id == report.squash and squash.snapshot.parents == ()
    assert squash.snapshot.event.type == "prune" and "replaces 5 snapshots" in squash.snapshot.event.message
    assert squash.snapshot.root == before[3].snapshot.root  # the state at the end of the pruned range
    assert squash.snapshot.time == before[3].snapshot.time
    for old, new in zip(before[:3], after[:3], strict=True):  # kept: same state, time, event and link; new parent
        assert report.replaced[old.id] == new.id != old.id
        assert (new.snapshot.root, new.snapshot.time, new.snapshot.event, new.snapshot.log) == (
            old.snapshot.root, old.snapshot.time, old.snapshot.event, old.snapshot.log)
    assert [repo.load(i.id).to_json() for i in after[:3]] == [states[7], states[6], states[5]]
    assert repo.load(squash.id).to_json() == states[4]
    assert repo.fsck().ok and verify(repo).ok
    reflog = repo.reflog("c")
    assert reflog[-1].old == before[0].id and reflog[-1].new == report.new_head
    assert reflog[-1].reason.startswith("prune: squashed 5 snapshots") and report.record in reflog[-1].reason


def test_prune_is_idempotent_and_chains(repo):
    history(repo)
    first = prune(repo, "c", keep_last=3)
    again = prune(repo, "c", keep_last=3)
    assert not again.changed and again.new_head == first.new_head
    second = prune(repo, "c", keep_last=1)
    assert second.changed and second.squashed == 3  # two kept rewrites and the old squash
    rewrites = Rewrites.load(repo.backend)
    assert len(rewrites.records) == 2
    assert rewrites.current(first.old_head) == repo.head("c") and rewrites.alive(first.old_head)  # rewritten twice
    squashed_later = [old for old, new in first.replaced.items() if new != first.new_head]
    assert squashed_later and not any(rewrites.alive(old) for old in squashed_later)
    for _ in range(2):
        collect_garbage(repo, timedelta(0))
    assert repo.fsck().ok and verify(repo).ok and len(repo.log("c")) == 2


def test_older_than_keeps_what_is_younger(repo):
    history(repo, n=3)
    time.sleep(1.2)
    state = repo.load("c").to_json()
    for i in range(2):
        state["contexts"][2]["local_memory"].append(exchange(300 + i, "SB-3"))
        repo.commit("c", state)
    report = prune(repo, "c", older_than=timedelta(seconds=1))
    assert report.squashed == 3 and len(report.replaced) == 2
    everything_old = prune(repo, "c", older_than=timedelta(0))  # even the head is old: it stays
    assert everything_old.changed and len(repo.log("c")) == 2
    assert repo.load("c").to_json() == state


def test_gc_frees_pruned_history_and_keeps_amended_heads_out(repo):
    states = history(repo)
    staging = repo.stage("c")
    staging.workspace.update_fields("SB-4", {"status": "active"})
    replaced = repo.commit_staged(staging).snapshot
    staging = repo.stage("c")
    staging.workspace.update_fields("SB-4", {"status": "merged"})
    repo.commit_staged(staging, amend=True)  # `replaced` lives on only in the reflog
    report = prune(repo, "c", keep_last=2)
    assert report.dropped == 1
    before = repo.backend.count_objects()[0]
    for _ in range(2):
        gc = collect_garbage(repo, timedelta(0))
    assert gc.deleted > 0 and repo.backend.count_objects()[0] == before - gc.deleted
    assert not repo.backend.has_objects([replaced])
    assert repo.fsck().ok and verify(repo).ok
    assert repo.load(repo.log("c")[-1].id).to_json() == states[-2]  # the squash holds the newest pruned state


def test_forks_keep_shared_history(repo):
    history(repo)
    fork_point = repo.resolve("c~5")
    repo.backend.write(ref_updates=[RefUpdate("conversations/fork", None, fork_point, "branch")])
    fork_state = repo.load("fork").to_json()
    report = prune(repo, "c", keep_last=2)
    assert report.shared_with == ("fork",)
    for _ in range(2):
        collect_garbage(repo, timedelta(0))
    assert repo.fsck().ok and verify(repo).ok
    assert repo.head("fork") == fork_point and repo.load("fork").to_json() == fork_state
    assert len(repo.log("fork")) == 3


def test_active_conversation_stays_active_and_a_concurrent_commit_wins(repo):
    history(repo)
    repo.set_active("c")
    head = repo.head("c")

    def commit_meanwhile(label, total):
        if label == "reading history":
            state = repo.load("c").to_json()
            state["contexts"][3]["status"] = "paused"
            repo.commit("c", state)
        from snapstore.progress import quiet
        return quiet(label, total)

    with pytest.raises(ConversationMoved, match="nothing was changed"):
        prune(repo, "c", keep_last=1, progress=commit_meanwhile)
    assert repo.log("c")[1].id == head and not Rewrites.load(repo.backend)
    prune(repo, "c", keep_last=1)
    assert repo.active_conversation == "c"


def test_dry_run_and_bad_arguments(repo):
    history(repo, n=4)
    head, meta = repo.head("c"), repo.backend.list_meta()
    report = prune(repo, "c", keep_last=1, dry_run=True)
    assert report.changed and report.dry_run and report.squashed == 3
    assert repo.head("c") == head and repo.backend.list_meta() == meta
    with pytest.raises(InvalidInput):
        prune(repo, "c")
    with pytest.raises(InvalidInput):
        prune(repo, "c", keep_last=1, older_than=timedelta(days=1))
    with pytest.raises(InvalidInput):
        prune(repo, "c", keep_last=0)
    with pytest.raises(UnknownRevision):
        prune(repo, "nope", keep_last=1)


def test_audit_links_stay_verifiable(tmp_path):
    """An audited conversation: kept snapshots keep their log links; entries of squashed ones are not errors."""
    repo = Repository.init(str(tmp_path / "store"))
    log = OzolithLog(tmp_path / "log.jsonl")
    orch = ConversationOrchestrator(repo, "c", audit=LinkedLog(log))
    root = orch.create_root_context("root")
    child = orch.spawn_sidebar(root, "dig", inherit_last_n=0)
    for i in range(4):
        orch.add_exchange(child, f"q{i}", f"a{i}")
        orch.pause_context(child)
        orch.resume_context(child)  # the node of an active child comes back: reuse
    assert verify(repo, log).ok
    head_link = repo.reflog("c")[-1]  # an orchestrator's entry names the snapshot: the link is in the reflog
    assert head_link.log_sequence is not None
    kept = repo.log("c")[:3]
    report = prune(repo, "c", keep_last=3)
    assert verify(repo, log).ok, verify(repo, log).problems
    assert [repo.snapshot(report.replaced[k.id]).log for k in kept] == [k.snapshot.log for k in kept]
    last = repo.reflog("c")[-1]
    assert (last.log_sequence, last.log_hash) == (head_link.log_sequence, head_link.log_hash)
    for _ in range(2):
        collect_garbage(repo, timedelta(0))
    assert verify(repo, log).ok, verify(repo, log).problems
    orch = ConversationOrchestrator(repo, "c", audit=LinkedLog(log))  # a restarted API goes on
    orch.add_exchange(child, "after", "prune")
    prune(repo, "c", keep_last=1)
    for _ in range(2):
        collect_garbage(repo, timedelta(0))
    final = verify(repo, log)
    assert final.ok, final.problems


def test_prune_cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    location = str(tmp_path / "store")
    repo = Repository.init(location)
    history(repo)
    repo.close()
    runner = CliRunner()

    def snap(*args):
        return runner.invoke(cli, ["--store", location, *args])

    dry = snap("prune", "c", "--keep-last", "2", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    report = json.loads(dry.stdout)
    assert set(report) == {"conversation", "dry_run", "changed", "old_head", "new_head", "squash", "squashed", "kept",
                           "dropped", "replaced", "shared_with", "pruned_range", "record"}
    assert report["dry_run"] and report["squashed"] == 6 and report["kept"] == 2
    text = snap("prune", "c", "--keep-last", "2")
    assert text.exit_code == 0 and "squashed 6 snapshots" in text.stdout
    assert "nothing to prune" in snap("prune", "c", "--keep-last", "2").stdout
    for args in (("prune", "c"), ("prune", "c", "--keep-last", "1", "--older-than", "1d"),
                 ("prune", "c", "--older-than", "soon")):
        bad = snap(*args)
        assert bad.exit_code != 0 and "Traceback" not in bad.output
        assert len([line for line in bad.stderr.splitlines() if line.strip()]) == 1, bad.stderr
    assert json.loads(snap("fsck", "--json").stdout)["ok"]
    assert snap("verify").exit_code == 0

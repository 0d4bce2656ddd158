"""Replay of a log the client wrote (reference §3): every event type, payloads snapstore's own writer
never makes, and entries naming contexts that do not exist.

The log is written by the independent reference writer (tests/ozolith_client_reference.py). Tests
marked "defect" failed before replay checked each entry against the forest replayed so far: it
crashed with a traceback or silently made a wrong tree; now the entry is left out and named by its
sequence in ``skipped`` (which ``snap replay`` prints).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from snapstore.cli.main import cli
from snapstore.ozolith import OzolithLog
from snapstore.replay import ReplayResult, replay
from snapstore.repository import Repository

from .ozolith_client_reference import ReferenceWriter

KEY = "5e" * 32
ROOT = ("context_created", "SB-1", "system", {"task_description": "root"})
SPAWN = ("sidebar_spawn", "SB-2", "system", {"spawn_reason": "look into it", "parent_context": "SB-1"})


def replayed(tmp_path: Path, *events: tuple[str, str, str, dict[str, Any]]) -> ReplayResult:
    path = tmp_path / "ozolith.jsonl"
    writer = ReferenceWriter(str(path), KEY)
    for event in events:
        writer.append(*event)
    return replay(OzolithLog(path, key=KEY))


def tree(result: ReplayResult) -> dict[str, tuple[Any, list[str], str]]:
    return {cid: (c["parent_context_id"], c["child_sidebar_ids"], c["status"]) for cid, c in result.contexts.items()}


def test_every_event_type_the_reference_names_is_replayed_or_carried(tmp_path):
    """Guard: the reference's event types and one it does not know; optional fields absent; a long
    Unicode summary; extra payload fields."""
    summary = "Zusammenfassung: ü 🙂 \\u0000 \"quoted\"\n" * 20_000
    result = replayed(
        tmp_path,
        ("session_start", "SYSTEM", "system", {"session_id": "S-1", "interface": "api"}),
        ROOT,
        SPAWN,  # no child_id, inherited_count, task_description, success_criteria
        ("exchange", "SB-2", "human", {"exchange_id": "EXCH-1", "user_hash": "a" * 64, "extra": [1, {"x": None}]}),
        ("tags_updated", "SB-2", "system", {"tags": ["t"]}),
        ("cross_ref_added", "SB-2", "assistant", {"target": "SB-1"}),
        ("cross_ref_updated", "SB-2", "assistant", {}),
        ("cross_ref_revoked", "SB-2", "assistant", {}),
        ("context_pause", "SB-2", "human", {}),
        ("context_resume", "SB-2", "human", {}),
        ("sidebar_merge", "SB-2", "system", {"merge_summary": summary}),  # no parent_context, count, hash
        ("anchor_created", "SYSTEM", "system", {"anchor_id": "ANCHOR-1"}),
        ("verification_run", "SYSTEM", "system", {}),
        ("correction", "SYSTEM", "human", {"note": "no target: voids nothing"}),
        ("error_logged", "SYSTEM", "system", {"error": "ü" * 10}),
        ("a_type_from_a_later_client", "SB-1", "system", {"anything": True}),
        ("session_end", "SYSTEM", "system", {"session_id": "S-1", "interface": "api"}),
    )
    assert result.skipped == []
    assert tree(result) == {"SB-1": (None, ["SB-2"], "active"), "SB-2": ("SB-1", [], "merged")}
    assert result.active_context_id == "SB-1"
    assert result.contexts["SB-1"]["local_memory"][0]["assistant"] == summary
    assert [e["exchange_id"] for e in result.contexts["SB-2"]["local_memory"]] == ["EXCH-1"]


@pytest.mark.parametrize("events, expected, skipped", [
    # an event naming a context that does not exist (the first two were already reported)
    ([SPAWN], {}, "#1: spawn of SB-2 under unknown SB-1"),
    ([ROOT, ("sidebar_merge", "SB-7", "system", {"merge_summary": "s"})], {"SB-1": (None, [], "active")},
     "#2: merge of unknown SB-7"),
    ([ROOT, ("context_deleted", "SB-5", "system", {})], {"SB-1": (None, [], "active")},
     "#2: delete of unknown SB-5"),
    ([ROOT, ("focus_switch", "SB-5", "system", {})], {"SB-1": (None, [], "active")},
     "#2: focus of unknown SB-5"),
    # a merge without a parent to merge into
    ([ROOT, ("sidebar_merge", "SB-1", "system", {"merge_summary": "s"})], {"SB-1": (None, [], "active")},
     "#2: merge of SB-1, a root: no parent to merge into"),
    ([ROOT, SPAWN, ("context_deleted", "SB-1", "system", {}), ("sidebar_merge", "SB-2", "system",
                                                                {"merge_summary": "s"})],
     {"SB-2": ("SB-1", [], "active")}, "#4: merge of SB-2 into unknown SB-1"),
    ([ROOT, SPAWN, ("context_created", "SB-8", "system", {}),
      ("sidebar_merge", "SB-2", "system", {"merge_summary": "s", "parent_context": "SB-8"})],
     {"SB-1": (None, ["SB-2"], "paused"), "SB-2": ("SB-1", [], "active"), "SB-8": (None, [], "active")},
     "#4: merge of SB-2 into SB-8, which is not its parent (SB-1)"),
    # a context made twice: it was wiped and listed twice under its parent
    ([ROOT, SPAWN, SPAWN], {"SB-1": (None, ["SB-2"], "paused"), "SB-2": ("SB-1", [], "active")},
     "#3: spawn of SB-2, which exists (made at #2)"),
    ([ROOT, SPAWN, ROOT], {"SB-1": (None, ["SB-2"], "paused"), "SB-2": ("SB-1", [], "active")},
     "#3: creation of SB-1, which exists (made at #1)"),
    ([ROOT, ("sidebar_spawn", "SB-1", "system", {"spawn_reason": "r", "parent_context": "SB-1"})],
     {"SB-1": (None, [], "active")}, "#2: spawn of SB-1, which exists (made at #1)"),
    # a reparent under nothing, or into its own subtree
    ([ROOT, SPAWN, ("context_reparent", "SB-2", "system", {"new_parent": "SB-9"})],
     {"SB-1": (None, ["SB-2"], "paused"), "SB-2": ("SB-1", [], "active")},
     "#3: reparent of SB-2 under unknown SB-9"),
    ([ROOT, SPAWN, ("context_reparent", "SB-1", "system", {"new_parent": "SB-2"})],
     {"SB-1": (None, ["SB-2"], "paused"), "SB-2": ("SB-1", [], "active")},
     "#3: reparent of SB-1 under SB-2, which is below it: a cycle"),
    ([ROOT, ("context_reparent", "SB-1", "system", {"new_parent": "SB-1"})], {"SB-1": (None, [], "active")},
     "#2: reparent of SB-1 under SB-1, which is itself: a cycle"),
    ([ROOT, SPAWN, ("context_reparent", "SB-2", "system", {})],
     {"SB-1": (None, ["SB-2"], "paused"), "SB-2": ("SB-1", [], "active")},
     "#3: reparent of SB-2 names no new_parent"),
    # a field naming a context that holds no id: these crashed with "unhashable type"
    ([ROOT, ("sidebar_spawn", "SB-2", "system", {"spawn_reason": "r", "parent_context": ["SB-1"]})],
     {"SB-1": (None, [], "active")}, "#2: spawn of SB-2: parent_context is list ['SB-1'], not a context id"),
    ([ROOT, ("sidebar_spawn", "SB-2", "system", {"spawn_reason": "r", "parent_context": "SB-1", "child_id": 3})],
     {"SB-1": (None, [], "active")}, "#2: spawn of SB-2: child_id is int 3, not a context id"),
    ([ROOT, SPAWN, ("context_reparent", "SB-2", "system", {"new_parent": {"id": "SB-1"}})],
     {"SB-1": (None, ["SB-2"], "paused"), "SB-2": ("SB-1", [], "active")},
     "#3: reparent of SB-2: new_parent is dict {'id': 'SB-1'}, not a context id"),
    ([ROOT, SPAWN, ("sidebar_merge", "SB-2", "system", {"merge_summary": "s", "parent_context": ["SB-1"]})],
     {"SB-1": (None, ["SB-2"], "paused"), "SB-2": ("SB-1", [], "active")},
     "#3: merge of SB-2: parent_context is list ['SB-1'], not a context id"),
])
def test_an_entry_that_cannot_apply_is_left_out_and_named_by_its_sequence(tmp_path, events, expected, skipped):
    """Defect (all but the first two): a wrong tree or a traceback; now the entry is skipped, named."""
    result = replayed(tmp_path, *events)
    assert result.skipped == [skipped]
    assert tree(result) == expected


def test_snap_replay_prints_what_it_skipped_and_commits_a_sound_tree(tmp_path):
    """Defect: ``snap replay`` of a log with a reparent into the context's own subtree committed a
    cycle without a word; a list where a context id belongs stopped it with a traceback."""
    path = tmp_path / "ozolith.jsonl"
    (tmp_path / "key").write_text(KEY)
    writer = ReferenceWriter(str(path), KEY)
    for event in (ROOT, SPAWN, ("context_reparent", "SB-1", "system", {"new_parent": "SB-2"}),
                  ("sidebar_spawn", "SB-3", "system", {"spawn_reason": "r", "parent_context": ["SB-2"]})):
        writer.append(*event)
    store = str(tmp_path / "store")
    result = CliRunner().invoke(cli, ["--store", store, "replay", "conv-1", "--ozolith", str(path),
                                      "--key-file", str(tmp_path / "key"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["skipped"] == ["#3: reparent of SB-1 under SB-2, which is below it: a cycle",
                                 "#4: spawn of SB-3: parent_context is list ['SB-2'], not a context id"]
    repo = Repository.open(store)
    contexts = {c["sidebar_id"]: c for c in repo.load("conv-1").contexts}
    repo.close()
    assert {cid: c["parent_context_id"] for cid, c in contexts.items()} == {"SB-1": None, "SB-2": "SB-1"}


def test_verify_names_a_linked_entry_the_replay_cannot_apply_even_where_the_trees_agree(tmp_path):
    """A second spawn of an existing sidebar, linked by snapstore to a conversation: the replay skips it and
    the replayed tree still equals the store's; before, verify said ok without a word about the entry."""
    from snapstore.audit import LinkedLog
    from snapstore.orchestrator import ConversationOrchestrator
    from snapstore.ozolith import OzolithLog
    from snapstore.repository import Repository
    from snapstore.verify import verify

    log = OzolithLog(tmp_path / "log.jsonl")
    repo = Repository.init(str(tmp_path / "store"))
    try:
        orch = ConversationOrchestrator(repo, "c", audit=LinkedLog(log))
        root = orch.create_root_context("root")
        child = orch.spawn_sidebar(root, "look into it")
        spawn = [e for e in log.entries() if e.event_type == "sidebar_spawn"][-1]
        again = log.append("sidebar_spawn", spawn.context_id, "system", dict(spawn.payload))
        report = verify(repo, log)
        assert [(p.kind, p.sequence) for p in report.problems] == [("replay-mismatch", again.sequence)], report
        assert f"log entry {again.sequence} cannot be replayed: spawn of {child}, which exists" in \
            report.problems[0].message
    finally:
        repo.close()

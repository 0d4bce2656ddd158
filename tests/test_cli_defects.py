"""CLI defects found by review: each test fails on the code before its fix.

Failed commands change nothing (checkout), --json survives lone surrogates
and deep trees, fsck reports what it cannot read, out-of-range input is a
one-line error, and the smaller ones (-o messages and modes, diff's top
level, a closed pipe, a mistyped memory: store, clone's leftovers).
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from snapstore.cli.main import cli

from .factories import context, sample_state

LONE = "\ud800"  # a lone surrogate: allowed in a stored string, not writable as UTF-8


@pytest.fixture
def snap(tmp_path, monkeypatch):
    """``snap --store <embedded store> ARGS`` through CliRunner, in a fresh store."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SNAPSTORE", raising=False)
    monkeypatch.delenv("SNAPSTORE_DEBUG", raising=False)
    runner = CliRunner()
    location = str(tmp_path / "store")
    assert runner.invoke(cli, ["--store", location, "init"]).exit_code == 0

    def run(*args: str):
        return runner.invoke(cli, ["--store", location, *args])

    run.location = location  # type: ignore[attr-defined]
    run.db = tmp_path / "store" / "store.sqlite"  # type: ignore[attr-defined]
    return run


def write_state(path: Path, state) -> str:
    path.write_text(json.dumps(state))
    return str(path)


def one_line_error(result) -> str:
    """The one stderr line of a failed command (no traceback, no internal error)."""
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "internal error" not in lines[0], lines[0]
    return lines[0]


def history(snap, conv: str) -> list[str]:
    return [e["snapshot"] for e in json.loads(snap("log", conv, "--json").stdout)]


def active(snap) -> list[str]:
    from snapstore import Repository

    with Repository.open(snap.location) as repo:
        return [repo.active_conversation]


def sql(snap, statement: str, *args) -> None:
    db = sqlite3.connect(snap.db)
    db.execute(statement, args)
    db.commit()
    db.close()


def object_ids(snap, rev: str) -> dict[str, str]:
    """Context id -> node id of the nodes a revision's state names at its top level and one below."""
    state = json.loads(snap("show", rev, "--json").stdout)["object"]["root"]
    roots = json.loads(snap("show", state, "--json").stdout)["object"]["roots"]
    out = {}
    for cid, nid in roots:
        out[cid] = nid
        node = json.loads(snap("show", nid, "--json").stdout)["object"]
        out.update({c: n for c, n in node.get("children", [])})
    return out


@contextmanager
def deep_recursion():
    """Room for the test's own json.loads of a deeply nested document."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(20000)
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


@pytest.fixture
def two_conversations(snap, tmp_path):
    """c with two snapshots, d with one, d active."""
    state = sample_state("c")
    snap("commit", "c", "--from", write_state(tmp_path / "s.json", state))
    state["contexts"][1]["status"] = "merged"
    snap("commit", "c", "--from", write_state(tmp_path / "s.json", state))
    snap("commit", "d", "--from", write_state(tmp_path / "d.json", sample_state("d")))
    assert snap("checkout", "d").exit_code == 0
    return snap


# -- D1: a failed checkout changes nothing ---------------------------------------


@pytest.mark.parametrize("args", [
    ["checkout", "c", "-o", "folder"],
    ["checkout", "c", "-o", "missing/out.json"],
    ["checkout", "c", "--at", "c~1", "-o", "folder"],
    ["checkout", "c", "--at", "c~1", "--json", "-o", "folder"],
])
def test_failed_checkout_output_changes_nothing(two_conversations, tmp_path, args):
    snap = two_conversations
    (tmp_path / "folder").mkdir()
    before = history(snap, "c")
    one_line_error(snap(*args))
    assert active(snap) == ["d"]
    assert history(snap, "c") == before
    assert not list((tmp_path / "folder").iterdir())
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_checkout_of_a_corrupt_tree_changes_nothing(two_conversations):
    snap = two_conversations
    victim = object_ids(snap, "c")["SB-2"]
    sql(snap, "UPDATE objects SET data = ? WHERE id = ?", b"\x00" * 20, bytes.fromhex(victim))
    before = history(snap, "c")
    for args in (["checkout", "c"], ["checkout", "c", "--json"], ["checkout", "d", "--at", "c"]):
        assert victim in one_line_error(snap(*args))
        assert active(snap) == ["d"]
        assert history(snap, "c") == before
    assert len(history(snap, "d")) == 1


def test_checkout_at_with_output_writes_the_new_head(two_conversations, tmp_path):
    snap = two_conversations
    result = snap("checkout", "c", "--at", "d", "-o", "out.json")
    assert result.exit_code == 0, result.output
    assert active(snap) == ["c"]
    written = json.loads((tmp_path / "out.json").read_text())
    assert written["conversation_id"] == "c"
    recommit = snap("commit", "c", "--from", "out.json")
    assert recommit.exit_code == 0 and "nothing to commit" in recommit.stderr


# -- D4: lone surrogates ------------------------------------------------------------


def surrogate_state() -> dict:
    state = sample_state("s")
    root = state["contexts"][0]
    root["status"] = f"paused{LONE}"
    root["task_description"] = f"task \udfff end"
    root["local_memory"][0]["user"] = f"question {LONE}"
    root[f"key{LONE}"] = [LONE]
    state["note"] = "\udc80"
    return state


def test_lone_surrogates_in_json_and_text_output(snap, tmp_path):
    snap("commit", "s", "--from", write_state(tmp_path / "plain.json", sample_state("s")))
    committed = snap("commit", "s", "--from", write_state(tmp_path / "s.json", surrogate_state()),
                     "--context", "SB-1")
    assert committed.exit_code == 0, committed.output
    node = object_ids(snap, "s")["SB-1"]
    outputs = {}
    for args in (["tree", "s"], ["log", "s"], ["show", "s"], ["show", node], ["checkout", "s"],
                 ["diff", "s~1", "s"]):
        for extra in ([], ["--json"]):
            result = snap(*args, *extra)
            assert result.exit_code == 0, (args, extra, result.output)
            if extra:
                outputs[args[0] + " " + args[1]] = json.loads(result.stdout)
            elif args[0] != "log" and args != ["show", "s"]:  # no surrogate in a snapshot
                assert "\\ud800" in result.stdout or "\\udfff" in result.stdout, (args, result.stdout)
    assert outputs["tree s"]["status"] == f"paused{LONE}"
    assert outputs["log s"][0]["event"]["context_id"] == "SB-1"
    assert outputs["show " + node]["object"]["fields"][f"key{LONE}"] == [LONE]
    assert outputs["checkout s"]["tree"]["status"] == f"paused{LONE}"
    changed = {c["id"]: c for c in outputs["diff s~1"]["changed"]}
    assert changed["SB-1"]["fields"]["status"]["new"] == f"paused{LONE}"
    assert outputs["diff s~1"]["extra"]["note"]["new"] == "\udc80"


def test_a_message_with_a_lone_surrogate_is_refused(snap, tmp_path):
    # Bytes that are not UTF-8 on a command line arrive as lone surrogates.
    result = snap("commit", "s", "--from", write_state(tmp_path / "s.json", sample_state("s")), "-m", "bad \udcff")
    assert "lone surrogate" in one_line_error(result)
    assert snap("log", "s").exit_code == 1


def test_checkout_output_round_trips_lone_surrogates(snap, tmp_path):
    snap("commit", "s", "--from", write_state(tmp_path / "s.json", surrogate_state()))
    root = json.loads(snap("log", "s", "--json").stdout)[0]["root"]
    assert snap("checkout", "s", "-o", "out.json").exit_code == 0
    again = snap("commit", "s", "--from", "out.json")
    assert again.exit_code == 0 and "nothing to commit" in again.stderr
    written = json.loads((tmp_path / "out.json").read_text())
    written["conversation_id"] = "t"
    snap("commit", "t", "--from", write_state(tmp_path / "t.json", written))
    assert json.loads(snap("log", "t", "--json").stdout)[0]["root"] == root


# -- D5: fsck reports what it cannot read -------------------------------------------


@pytest.mark.parametrize("bad", ["text that is not bytes", 5])
def test_fsck_reports_object_data_of_the_wrong_type(snap, tmp_path, bad):
    snap("commit", "c", "--from", write_state(tmp_path / "s.json", sample_state("c")))
    victim = object_ids(snap, "c")["SB-2"]
    sql(snap, "UPDATE objects SET data = ? WHERE id = ?", bad, bytes.fromhex(victim))
    result = snap("fsck", "--json")
    assert result.exit_code == 1, result.output
    problems = json.loads(result.stdout)["problems"]
    assert [(p["kind"], p["object"]) for p in problems] == [("corrupt", victim)]
    assert "not bytes" in problems[0]["message"]
    text = snap("fsck")
    assert text.exit_code == 1 and victim in text.stdout
    assert victim in one_line_error(snap("tree", "c"))


@pytest.mark.parametrize("record", ['"text"', "5", "[1, 2]",
                                    '{"version": 1, "conversation": "c", "time": "t", "old_head": 5, '
                                    '"new_head": "x", "squash": "y", "kept": {}, "squashed": 0, "dropped": 0}'])
def test_fsck_reports_an_unreadable_prune_record(snap, tmp_path, record):
    snap("commit", "c", "--from", write_state(tmp_path / "s.json", sample_state("c")))
    sql(snap, "INSERT INTO meta VALUES (?, ?)", "prune/c/2026-01-01T00:00:00.000000Z", record)
    result = snap("fsck", "--json")
    assert result.exit_code == 1, result.output
    problems = json.loads(result.stdout)["problems"]
    assert [(p["kind"], p["object"]) for p in problems] == [("corrupt", "prune/c/2026-01-01T00:00:00.000000Z")]
    assert "prune record" in problems[0]["message"]


def test_fsck_reports_a_ref_that_names_text(snap, tmp_path):
    snap("commit", "c", "--from", write_state(tmp_path / "s.json", sample_state("c")))
    sql(snap, "INSERT INTO refs VALUES (?, ?)", "conversations/zz", "not an id")
    result = snap("fsck", "--json")
    assert result.exit_code == 1, result.output
    problems = json.loads(result.stdout)["problems"]
    # The ref is named (and has no history); the rest of the store is still checked.
    assert sorted(p["kind"] for p in problems) == ["broken-reflog", "damaged-row"], problems
    assert "ref 'conversations/zz' holds a str ('not an id')" in problems[[p["kind"] for p in problems].index(
        "damaged-row")]["message"]
    text = snap("fsck")
    assert text.exit_code == 1 and "internal error" not in text.output


# -- D6: out-of-range input is a clear one-line error ----------------------------


HUGE = "9" * 5000


@pytest.mark.parametrize("args", [
    ["log", f"c~{HUGE}"],
    ["tree", f"c~{HUGE}"],
    ["log", "c@{9999-12-31T23:59:59-01:00}"],
    ["log", "c@{0001-01-01T00:00:00+01:00}"],
    ["log", "c", "-n", HUGE],
    ["pack", "--keep", HUGE],
    ["gc", "--dry-run", "--grace", "99999999999999999999d"],
    ["gc", "--dry-run", "--grace", HUGE + "d"],
    ["prune", "c", "--dry-run", "--older-than", "99999999999999999999w"],
    ["show", HUGE],
    ["diff", "c", f"c~{'9' * 300}"],
], ids=lambda args: " ".join(args)[:40])
def test_out_of_range_input_is_a_short_one_line_error(snap, tmp_path, args):
    snap("commit", "c", "--from", write_state(tmp_path / "s.json", sample_state("c")))
    line = one_line_error(snap(*args))
    assert len(line) < 400, line
    assert HUGE not in line


@pytest.mark.parametrize("args", [
    ["log", "c", "-n", "9" * 30],
    ["pack", "--keep", "9" * 30],
    ["prune", "c", "--dry-run", "--keep-last", "9" * 30],
])
def test_huge_counts_mean_everything(snap, tmp_path, args):
    snap("commit", "c", "--from", write_state(tmp_path / "s.json", sample_state("c")))
    result = snap(*args)
    assert result.exit_code == 0, result.output


# -- D3: deep trees -----------------------------------------------------------------


def chain_state(depth: int, status: str = "active") -> dict:
    contexts = [context(f"SB-{i}", parent=f"SB-{i - 1}" if i else None,
                        children=[f"SB-{i + 1}"] if i + 1 < depth else [], status=status)
                for i in range(depth)]
    return {"active_context_id": f"SB-{depth - 1}", "contexts": contexts}


def test_a_very_deep_chain_renders(snap, tmp_path):
    depth = 1200
    snap("commit", "deep", "--from", write_state(tmp_path / "a.json", chain_state(depth)))
    state = chain_state(depth)
    state["contexts"][-1]["status"] = "paused"
    snap("commit", "deep", "--from", write_state(tmp_path / "b.json", state))
    text = snap("tree", "deep")
    assert text.exit_code == 0, text.output[-300:]
    lines = text.stdout.splitlines()
    assert len(lines) == depth and lines[-1].strip().startswith(f"└── SB-{depth - 1}")
    assert lines[-1].endswith("<- focus")
    for args in (["tree", "deep", "--json"], ["checkout", "deep", "--json"]):
        result = snap(*args)
        assert result.exit_code == 0, result.output[-300:]
        with deep_recursion():
            node = json.loads(result.stdout)
        node = node.get("tree", node)
        seen = 0
        while node["children"]:
            node = node["children"][0]
            seen += 1
        assert seen == depth - 1 and node["focus"] is True and node["status"] == "paused"
    assert snap("checkout", "deep", "--at", "deep~1").exit_code == 0
    assert snap("checkout", "deep", "-o", "out.json").exit_code == 0
    assert "nothing to commit" in snap("commit", "deep", "--from", "out.json").stderr


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.tuples(inner),
                            st.dictionaries(st.one_of(st.text(max_size=4), st.integers(), st.booleans(), st.none()),
                                            inner, max_size=3)),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_the_iterative_json_writer_writes_what_json_dumps_writes(value):
    from snapstore.cli.render import _dump_json_iteratively

    assert _dump_json_iteratively(value) == json.dumps(value, indent=2, ensure_ascii=False)


def test_dump_json_handles_depth_beyond_the_recursion_limit():
    from snapstore.cli.render import dump_json

    value: list = []
    for _ in range(5000):
        value = [value, {"k": LONE}]
    text = dump_json(value)
    with deep_recursion():
        assert json.loads(text) == value


# -- D8: log --json and the audit-log link ---------------------------------------


def test_log_json_shows_the_audit_link_only_when_there_is_one(snap, tmp_path):
    from snapstore import Repository
    from snapstore.objects import Event, LogLink

    repo = Repository.open(snap.location)
    repo.commit("a", sample_state("a"), event=Event("commit"), log=LogLink(7, "9f" * 32))
    state = sample_state("a")
    state["contexts"][0]["status"] = "archived"
    repo.commit("a", state)
    repo.close()
    entries = json.loads(snap("log", "a", "--json").stdout)
    assert "log" not in entries[0]
    assert entries[1]["log"] == {"sequence": 7, "entry_hash": "9f" * 32}
    assert "[log #7]" in snap("log", "a").stdout


# -- D9: a failed clone takes away the store it made ----------------------------


def corrupt_source(snap, tmp_path) -> None:
    snap("commit", "c", "--from", write_state(tmp_path / "s.json", sample_state("c")))
    victim = object_ids(snap, "c")["SB-2"]
    sql(snap, "UPDATE objects SET data = ? WHERE id = ?", b"\x00" * 20, bytes.fromhex(victim))


def test_failed_clone_removes_the_store_it_created(snap, tmp_path):
    corrupt_source(snap, tmp_path)
    one_line_error(snap("clone", snap.location, str(tmp_path / "new" / "deeper" / "dst")))
    assert not (tmp_path / "new").exists()
    one_line_error(snap("push", str(tmp_path / "pushed")))
    assert not (tmp_path / "pushed").exists()
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "mine.txt").write_text("keep me")
    one_line_error(snap("clone", snap.location, str(tmp_path / "empty")))
    assert [p.name for p in (tmp_path / "empty").iterdir()] == ["mine.txt"]


def test_failed_clone_leaves_an_existing_store(snap, tmp_path):
    fine = tmp_path / "fine"
    assert snap("clone", snap.location, str(fine)).exit_code == 0  # an empty store
    one_line_error(snap("clone", snap.location, str(tmp_path / "other"), "nosuch"))
    assert not (tmp_path / "other").exists()
    corrupt_source(snap, tmp_path)
    one_line_error(snap("clone", snap.location, str(fine)))
    assert (fine / "store.sqlite").is_file()
    assert CliRunner().invoke(cli, ["--store", str(fine), "fsck"]).exit_code == 0


# -- D7: the smaller ones ---------------------------------------------------------


def test_output_errors_name_the_file_not_its_temporary(two_conversations, tmp_path):
    snap = two_conversations
    (tmp_path / "folder").mkdir()
    line = one_line_error(snap("checkout", "c", "-o", "folder"))
    assert line.endswith(": folder") and ".tmp" not in line
    line = one_line_error(snap("checkout", "c", "-o", "missing/out.json"))
    assert "missing/out.json" in line and ".tmp" not in line


def test_output_file_mode_follows_the_umask(two_conversations, tmp_path):
    snap = two_conversations
    old = os.umask(0o022)
    try:
        assert snap("checkout", "c", "-o", "new.json").exit_code == 0
        assert stat.S_IMODE((tmp_path / "new.json").stat().st_mode) == 0o644
        (tmp_path / "new.json").chmod(0o640)
        assert snap("checkout", "c", "-o", "new.json").exit_code == 0
        assert stat.S_IMODE((tmp_path / "new.json").stat().st_mode) == 0o640
    finally:
        os.umask(old)


def test_diff_names_the_top_level_not_none(snap, tmp_path):
    state = {"active_context_id": None, "contexts": [context("SB-1", children=["SB-2"]), context("SB-2", parent="SB-1")]}
    snap("commit", "c", "--from", write_state(tmp_path / "a.json", state))
    state["contexts"][1]["parent_context_id"] = None
    state["contexts"][0]["child_sidebar_ids"] = []
    snap("commit", "c", "--from", write_state(tmp_path / "b.json", state))
    out = snap("diff", "c~1", "c").stdout
    assert "> SB-2  moved from SB-1 to top level" in out and "None" not in out
    back = snap("diff", "c", "c~1").stdout
    assert "> SB-2  moved from top level to SB-1" in back and "None" not in back


def test_a_closed_pipe_ends_quietly(snap, tmp_path):
    for n in range(3):
        state = sample_state("c")
        state["contexts"][0]["status"] = f"s{n}"
        snap("commit", "c", "--from", write_state(tmp_path / "s.json", state))
    proc = subprocess.Popen(
        [sys.executable, "-c", "from snapstore.cli.main import main; main()", "--store", snap.location, "log", "c"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path,
    )
    proc.stdout.close()  # the reader is gone before the first line is written
    stderr = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=60) in (0, 141)
    assert stderr == b""


@pytest.mark.parametrize("location", ["memory: demo", "memory:demo", "MEMORY:x"])
def test_a_mistyped_memory_store_is_an_error(tmp_path, monkeypatch, location):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    assert "memory:" in one_line_error(runner.invoke(cli, ["--store", location, "init"]))
    assert "memory:" in one_line_error(runner.invoke(cli, ["init", location]))
    assert not list(tmp_path.iterdir())
    monkeypatch.setenv("SNAPSTORE", location)
    assert "memory:" in one_line_error(runner.invoke(cli, ["log"]))
    assert runner.invoke(cli, ["--store", "memory:", "init"]).exit_code == 0

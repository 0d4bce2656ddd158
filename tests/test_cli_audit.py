"""An adversarial audit of the snap CLI: hostile input and damaged stores.

Each defect test fails on the code before its fix: an empty --store or file
name that silently meant the default (or nothing), fsck without a report for a
damaged reflog pack, stats' KeyError, a dangling active conversation named as
an unknown revision, export naming its temporary file, export-log's "File
exists", push into a damaged store reported as "already exists", a folder given
as --ozolith. The guards check that bad revisions and damaged objects, refs and
audit-log rows give one named line, a non-zero exit and no change to the store.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from snapstore.cli.main import cli

from .demo_store import demo_template, snap, sql, store  # noqa: F401 (fixtures)
from .test_cli_defects import one_line_error

# The demo conversation's ids differ run to run: tests find them with `snap show`.
CONV = "demo"


def tables(db: Path) -> dict[str, list[tuple]]:
    """Every table's rows, sorted: what "the store did not change" compares."""
    con = sqlite3.connect(db)
    try:
        names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {name: sorted(con.execute(f'SELECT * FROM "{name}"').fetchall(), key=repr) for name in names}
    finally:
        con.close()





def show(snap, name: str) -> dict:
    result = snap("show", name, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def head_objects(snap) -> dict[str, str]:
    """The ids of the head snapshot, its state, its first root node and that node's newest exchange chunk."""
    head = show(snap, CONV)
    state = show(snap, head["object"]["root"])
    node_id = state["object"]["roots"][0][1]
    node = show(snap, node_id)
    return {"snapshot": head["id"], "state": state["id"], "node": node_id,
            "chunk": node["object"]["memory"]["local_memory"]["head"]}


# -- An empty store location or file name is an error, not the default or nothing ------------------


def test_an_empty_store_option_does_not_mean_the_default_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SNAPSTORE", raising=False)
    runner = CliRunner()
    assert runner.invoke(cli, ["init"]).exit_code == 0  # ./.snapstore, the default
    before = tables(tmp_path / ".snapstore" / "store.sqlite")
    # `snap --store "$UNSET" gc` must not collect the default store's garbage.
    for args in (["--store", "", "conversations"], ["--store", "", "gc"]):
        line = one_line_error(runner.invoke(cli, args))
        assert "--store" in line and "empty" in line, line
    assert tables(tmp_path / ".snapstore" / "store.sqlite") == before


def test_init_of_an_empty_path_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SNAPSTORE", raising=False)
    line = one_line_error(CliRunner().invoke(cli, ["init", ""]))
    assert "empty" in line, line
    assert not (tmp_path / ".snapstore").exists()


def test_clone_from_an_empty_source_does_not_copy_the_default_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SNAPSTORE", raising=False)
    runner = CliRunner()
    assert runner.invoke(cli, ["demo"]).exit_code == 0  # ./.snapstore holds a conversation
    line = one_line_error(runner.invoke(cli, ["clone", "", str(tmp_path / "copy")]))
    assert "empty store location" in line, line
    assert not (tmp_path / "copy").exists()


@pytest.mark.parametrize("args", [
    ["checkout", CONV, "-o", ""],             # was: exit 0, no file written
    ["verify", "--ozolith", ""],              # was: the option ignored, the store's own log verified
    ["status", "--ozolith", ""],
    ["verify", "--key-file", ""],
    ["export", CONV, "-o", ""],               # was: "Device or resource busy: ..xxxx.tmp"
    ["export-log", "-o", ""],                 # was: "is a directory"
    ["import", ""],                           # was: "Is a directory: ."
    ["commit", CONV, "--from", ""],           # was: ": not a file"
])
def test_an_empty_file_name_is_an_error(snap, args):
    before = tables(snap.db)
    line = one_line_error(snap(*args))
    assert "'' is empty" in line, line
    assert tables(snap.db) == before


# -- fsck reports a damaged reflog pack --------------------------------------------------------------


def test_fsck_reports_a_damaged_reflog_pack(snap):
    assert snap("pack", "--keep", "0").exit_code == 0
    con = sqlite3.connect(snap.db)
    first, data = con.execute("SELECT first, data FROM reflog_packs ORDER BY first LIMIT 1").fetchone()
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 1
    con.execute("UPDATE reflog_packs SET data = ? WHERE first = ?", (bytes(flipped), first))
    con.commit()
    con.close()
    before = tables(snap.db)
    result = snap("fsck", "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)  # was: no report at all, only an error line
    assert report["ok"] is False
    [problem] = report["problems"]  # the pack, named; no longer "unreadable" for the whole store
    assert problem["kind"] == "corrupt-pack"
    assert f"reflog pack of rows {first}-" in problem["message"], problem
    assert "'conversations/demo'" in problem["message"], problem
    text = snap("fsck")
    assert text.exit_code == 1 and "reflog pack" in text.stdout, text.output
    assert tables(snap.db) == before


# -- stats names the object it cannot find -----------------------------------------------------------


@pytest.mark.parametrize("kind", ["state", "node", "chunk"])
def test_stats_names_a_missing_object(snap, kind):
    oid = head_objects(snap)[kind]
    sql(snap.db, "DELETE FROM objects WHERE id = ?", bytes.fromhex(oid))
    before = tables(snap.db)
    line = one_line_error(snap("stats"))  # was: "internal error: KeyError: '<id>'"
    assert oid in line and ("not in the store" in line or "not found" in line) and "snap fsck" in line, line
    assert tables(snap.db) == before


# -- an active conversation the store records but does not hold -----------------------------------------


@pytest.mark.parametrize("recorded", ["ghost", "bad name/.."])
@pytest.mark.parametrize("command", ["log", "tree"])
def test_a_dangling_active_conversation_is_named(snap, recorded, command):
    sql(snap.db, "UPDATE meta SET value = ? WHERE key = 'active_conversation'", recorded)
    before = tables(snap.db)
    line = one_line_error(snap(command))  # was: "unknown revision 'ghost'", a name the user never gave
    assert "active conversation" in line and repr(recorded) in line, line
    assert tables(snap.db) == before


# -- output and input paths ------------------------------------------------------------------------------


def test_export_errors_name_the_bundle_not_its_temporary_file(snap, tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "plain.txt").write_text("x")
    # A name the file system takes, but not with the temporary file's prefix and suffix around it.
    long_name = "b" * 250
    line = one_line_error(snap("export", CONV, "-o", str(tmp_path / long_name)))
    assert "File name too long" in line and long_name[-50:] in line and ".tmp" not in line, line
    for output, words in ((tmp_path / "plain.txt" / "x.bundle", "plain.txt is a file, not a folder"),
                          (tmp_path / "folder", "is a directory")):
        line = one_line_error(snap("export", CONV, "-o", str(output)))
        assert str(output) in line and words in line, line
        assert ".tmp" not in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "plain.txt", "store"]
    assert list((tmp_path / "folder").iterdir()) == []


def test_export_log_under_a_file_says_so(snap, tmp_path):
    (tmp_path / "plain.txt").write_text("x")
    line = one_line_error(snap("export-log", "-o", str(tmp_path / "plain.txt" / "log.jsonl")))
    assert "plain.txt is a file, not a folder" in line, line  # was: "File exists: plain.txt"
    assert (tmp_path / "plain.txt").read_text() == "x"


def test_a_folder_given_as_the_audit_log_is_named_as_a_folder(snap, tmp_path):
    (tmp_path / "logs").mkdir()
    for args in (["verify", "--ozolith", "logs"], ["replay", CONV, "--as", "r", "--ozolith", "logs"]):
        before = tables(snap.db)
        line = one_line_error(snap(*args))
        assert "logs is a folder, not a log file" in line, line  # was: "logs: no such log file"
        assert tables(snap.db) == before


@pytest.mark.parametrize("command", ["push", "clone"])
def test_copy_into_a_damaged_store_names_the_damage(snap, tmp_path, command):
    target = tmp_path / "target"
    target.mkdir()
    (target / "store.sqlite").write_bytes(b"not a database at all, " * 100)
    args = ["push", str(target)] if command == "push" else ["clone", snap.location, str(target)]
    line = one_line_error(snap(*args))
    assert "not a snapstore database" in line, line  # was: "a store already exists at ..."
    assert (target / "store.sqlite").read_bytes() == b"not a database at all, " * 100
    assert sorted(p.name for p in target.iterdir()) == ["store.sqlite"]


# -- guards: bad revisions ----------------------------------------------------------------------------------


@pytest.mark.parametrize("rev, pattern", [
    ("nope", "unknown revision 'nope'"),
    (f"{CONV}@{{}}", "bad time ''"),
    (f"{CONV}@{{yesterday}}", "bad time 'yesterday'"),
    (f"{CONV}@{{-1}}", "bad time '-1'"),
    (f"{CONV}~-1", "cannot parse revision"),
    (f"{CONV}~99", "goes back 99 snapshots"),
    (f"{CONV}~" + "9" * 5000, "too many|digits"),
    (f"{CONV}~1@{{2026-01-01}}", "cannot parse revision"),
    (f"{CONV}^", "unknown revision"),
    ("0000", "unknown revision '0000'"),
    ("0" * 64, "unknown revision"),
    ("0" * 65, "unknown revision"),
    (" ", "empty revision"),
    ("a\x1b[2Jb", r"\\x1b"),
])
@pytest.mark.parametrize("command", [["log"], ["tree"], ["show"], ["diff", CONV], ["checkout", CONV, "--at"]])
def test_a_bad_revision_is_one_named_line_and_changes_nothing(snap, rev, pattern, command):
    import re

    before = tables(snap.db)
    line = one_line_error(snap(*command, rev))
    assert re.search(pattern, line), line
    assert "\x1b" not in line
    assert len(line) < 400, line
    assert tables(snap.db) == before


def test_an_ambiguous_prefix_is_named(snap):
    head = head_objects(snap)["snapshot"]
    # A second snapshot row whose id shares the head's first 6 hex digits.
    twin = bytes.fromhex(head[:6] + "00" * 29)
    sql(snap.db, "INSERT INTO objects (id, kind, size, data) SELECT ?, kind, size, data FROM objects WHERE id = ?",
        twin, bytes.fromhex(head))
    before = tables(snap.db)
    for command in (["log"], ["tree"], ["diff", CONV], ["checkout", CONV, "--at"]):
        line = one_line_error(snap(*command, head[:6]))
        assert "ambiguous" in line and head[:12] in line, line
    assert "ambiguous" in one_line_error(snap("show", head[:6]))
    assert tables(snap.db) == before


# -- guards: damaged stores are named by every read command -------------------------------------------------

READS = [["log", CONV], ["tree", CONV], ["show", f"{CONV}~0"], ["diff", f"{CONV}~1", CONV], ["checkout", CONV],
         ["checkout", CONV, "-o", "out.json"], ["conversations"], ["status"], ["stats"], ["gc", "--dry-run"],
         ["export", "--all", "-o", "out.bundle"]]


def _damage(snap, how: str) -> str:
    """Damage the head's objects or ref; return the object id every read must name."""
    ids = head_objects(snap)
    head = bytes.fromhex(ids["snapshot"])
    if how == "flipped byte":
        data = bytearray(sqlite3.connect(snap.db).execute("SELECT data FROM objects WHERE id = ?", (head,)).fetchone()[0])
        data[len(data) // 2] ^= 1
        sql(snap.db, "UPDATE objects SET data = ? WHERE id = ?", bytes(data), head)
        return ids["snapshot"]
    if how == "truncated row":
        sql(snap.db, "UPDATE objects SET data = substr(data, 1, 3) WHERE id = ?", head)
        return ids["snapshot"]
    if how == "wrong kind":
        sql(snap.db, "UPDATE objects SET kind = 'node' WHERE id = ?", head)
        return ids["snapshot"]
    if how == "other content":
        sql(snap.db, "UPDATE objects SET data = (SELECT data FROM objects WHERE kind = 'snapshot' AND id != ? LIMIT 1)"
            " WHERE id = ?", head, head)
        return ids["snapshot"]
    if how == "ref to a missing object":
        missing = "ab" * 32
        sql(snap.db, "UPDATE refs SET target = ?", bytes.fromhex(missing))
        return missing
    if how == "missing state":
        sql(snap.db, "DELETE FROM objects WHERE id = ?", bytes.fromhex(ids["state"]))
        return ids["state"]
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["flipped byte", "truncated row", "wrong kind", "other content",
                                 "ref to a missing object", "missing state"])
def test_every_read_names_the_damaged_object(snap, how):
    oid = _damage(snap, how)
    before = tables(snap.db)
    # log and show read snapshots only: a missing state is not theirs to meet.
    for args in [a for a in READS if how != "missing state" or a[0] not in ("log", "show")]:
        result = snap(*args)
        line = one_line_error(result)
        assert oid[:12] in line, (args, line)  # stats names a missing head by its first 12 digits
        assert result.stdout == "" or args[0] == "status", (args, result.stdout)
    for args in (["fsck"], ["verify"]):
        result = snap(*args)
        assert result.exit_code == 1, (args, result.output)
        assert oid in result.stdout, (args, result.stdout)
    assert tables(snap.db) == before
    assert not Path("out.json").exists() and not Path("out.bundle").exists()


@pytest.mark.parametrize("statement, pattern", [
    ("DELETE FROM ozolith WHERE sequence = 5", r"gap.*sequence=5|\[sequence=5\]"),
    ("UPDATE ozolith SET line = replace(line, '\"actor\": \"system\"', '\"actor\": \"evil\"') WHERE sequence = 5",
     r"\[sequence=5\]"),
    ("UPDATE ozolith SET line = '{not json' WHERE sequence = 5", r"\[sequence=5\]"),
    ("DELETE FROM ozolith WHERE sequence = (SELECT max(sequence) FROM ozolith)", r"log entry \d+, which the log does not hold"),
])
def test_verify_names_the_damaged_log_entry(snap, statement, pattern):
    import re

    sql(snap.db, statement)
    before = tables(snap.db)
    result = snap("verify")
    assert result.exit_code == 1, result.output
    assert re.search(pattern, result.stdout), result.stdout
    report = json.loads(snap("verify", "--json").stdout)
    assert report["ok"] is False
    assert tables(snap.db) == before


@pytest.mark.parametrize("statement, pattern", [
    ("UPDATE refs SET target = 'hello'", "ref 'conversations/demo' holds a str"),
    ("UPDATE reflog SET new = 'xyz' WHERE seq = 5", "a reflog row of 'conversations/demo' holds a str"),
    ("UPDATE reflog SET new = randomblob(32) WHERE seq = 5", "is missing"),
])
def test_fsck_names_a_damaged_ref_or_reflog_row(snap, statement, pattern):
    sql(snap.db, statement)
    before = tables(snap.db)
    result = snap("fsck")
    assert result.exit_code == 1, result.output
    assert pattern in result.stdout, result.stdout
    assert json.loads(snap("fsck", "--json").stdout)["ok"] is False
    assert tables(snap.db) == before


@pytest.mark.parametrize("location, pattern", [
    ("missing/store", "no store at"),
    ("plain.txt", "is not a snapstore store"),
    ("empty", "is not a snapstore store"),
    ("garbage", "is not a snapstore database"),
    ("foreign", "is not a snapstore database"),
    ("memory:x", "unknown store location"),
    ("ftp://host/x", "unknown store URL scheme"),
])
@pytest.mark.parametrize("command", [["log", CONV], ["fsck"], ["status"], ["verify"], ["stats"], ["upgrade"],
                                     ["gc"], ["pack"], ["compact"]])
def test_a_location_that_is_not_a_store_is_one_line(tmp_path, monkeypatch, location, pattern, command):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SNAPSTORE", raising=False)
    (tmp_path / "plain.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "store.sqlite").write_bytes(b"garbage " * 512)
    (tmp_path / "foreign").mkdir()
    con = sqlite3.connect(tmp_path / "foreign" / "store.sqlite")
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    listing = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    line = one_line_error(CliRunner().invoke(cli, ["--store", location, *command]))
    assert pattern in line, line
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == listing
    assert (tmp_path / "garbage" / "store.sqlite").read_bytes() == b"garbage " * 512


@pytest.mark.parametrize("table, key, pattern, sequence", [
    ("ozolith_packs", "first", "log entries 1-11 are damaged", 1),
    ("refs", None, "ref 'conversations/demo' holds a str", None),
])
def test_verify_reports_what_stops_it(snap, table, key, pattern, sequence):
    if key is not None:
        assert snap("pack", "--keep", "0").exit_code == 0
        con = sqlite3.connect(snap.db)
        first, data = con.execute(f"SELECT {key}, data FROM {table} ORDER BY {key} LIMIT 1").fetchone()
        flipped = bytearray(data)
        flipped[len(flipped) // 2] ^= 1
        con.execute(f"UPDATE {table} SET data = ? WHERE {key} = ?", (bytes(flipped), first))
        con.commit()
        con.close()
    else:
        sql(snap.db, "UPDATE refs SET target = 'hello'")
    before = tables(snap.db)
    result = snap("verify", "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)  # was: no report, only an error line
    assert report["ok"] is False
    [problem] = report["problems"]
    assert pattern in problem["message"], problem
    assert problem.get("sequence") == sequence, problem
    text = snap("verify")
    assert text.exit_code == 1 and pattern in text.stdout, text.output
    assert tables(snap.db) == before


def test_status_names_an_impossible_active_conversation(snap):
    sql(snap.db, "UPDATE meta SET value = 'bad name/..' WHERE key = 'active_conversation'")
    before = tables(snap.db)
    line = one_line_error(snap("status"))  # was: "invalid conversation id 'bad name/..'", never typed by the user
    assert "active conversation" in line and "--conversation" in line, line
    assert snap("status", "--conversation", CONV).exit_code == 0
    assert tables(snap.db) == before


# -- the focus, ambiguous short ids, export folders ----------------------------------------------------------


class TestFocusShortIdsAndExportFolders:
    """A focus naming no context is refused; an ambiguous short id lists its candidates; the export commands
    treat missing folders alike and a failed export leaves nothing behind. Each test failed before its fix."""

    def test_commit_of_a_focus_naming_no_context_is_one_line_and_changes_nothing(self, snap, tmp_path):
        assert snap("checkout", CONV, "-o", str(tmp_path / "state.json")).exit_code == 0
        state = json.loads((tmp_path / "state.json").read_text())
        state["active_context_id"] = "SB-99"
        (tmp_path / "ghost.json").write_text(json.dumps(state))
        before = tables(snap.db)
        line = one_line_error(snap("commit", CONV, "--from", str(tmp_path / "ghost.json")))
        assert "active_context_id 'SB-99' names no context in the state" in line, line  # was: committed
        assert tables(snap.db) == before

    def _twins(self, snap, source: str, count: int) -> list[str]:
        """Copies of object ``source`` under ids sharing its first 6 hex digits: short ids matching several."""
        twins = [source[:6] + f"{i:02x}" + "00" * 28 for i in range(count)]
        for twin in twins:
            sql(snap.db, "INSERT INTO objects (id, kind, size, data) SELECT ?, kind, size, data FROM objects"
                " WHERE id = ?", bytes.fromhex(twin), bytes.fromhex(source))
        return twins

    def test_an_ambiguous_short_id_lists_its_candidates_in_every_command(self, snap):
        ids = head_objects(snap)
        head = ids["snapshot"]
        [snapshot_twin] = self._twins(snap, head, 1)
        # A node under the same 6 digits: any kind for `snap show`, only snapshots for a revision.
        node_twin = head[:6] + "ff" + "00" * 28
        sql(snap.db, "INSERT INTO objects (id, kind, size, data) SELECT ?, kind, size, data FROM objects WHERE id = ?",
            bytes.fromhex(node_twin), bytes.fromhex(ids["node"]))
        before = tables(snap.db)
        line = one_line_error(snap("show", head[:6]))  # was: "object prefix '...' is ambiguous", nothing listed
        assert line.startswith(f"snap: error: short id '{head[:6]}' is ambiguous: "), line
        for candidate in (f"{head[:12]} (snapshot)", f"{snapshot_twin[:12]} (snapshot)", f"{node_twin[:12]} (node)"):
            assert candidate in line, line
        for command in (["log"], ["tree"], ["diff", CONV], ["checkout", CONV, "--at"]):
            line = one_line_error(snap(*command, head[:6]))
            assert f"short id '{head[:6]}' is ambiguous: " in line, (command, line)
            assert f"{head[:12]} (snapshot)" in line and f"{snapshot_twin[:12]} (snapshot)" in line, (command, line)
            assert node_twin[:12] not in line, (command, line)
        assert tables(snap.db) == before

    def test_an_ambiguous_short_id_lists_five_and_counts_the_rest(self, snap):
        head = head_objects(snap)["snapshot"]
        twins = self._twins(snap, head, 7)
        for command in (["show"], ["log"]):
            line = one_line_error(snap(*command, head[:6]))
            assert line.endswith("and 3 more"), line
            assert line.count("(snapshot)") == 5, line
            # The first five ids in order: the head shares the prefix, and sorts among its twins by its own digits.
            listed = ", ".join(f"{oid[:12]} (snapshot)" for oid in sorted([head, *twins])[:5])
            assert f"is ambiguous: {listed} and 3 more" in line, line
            assert len(line) < 400, line

    def test_both_exports_make_missing_folders(self, snap, tmp_path):
        bundle = tmp_path / "new" / "deeper" / "demo.bundle"
        result = snap("export", CONV, "-o", str(bundle))  # was: "No such file or directory"
        assert result.exit_code == 0, result.output
        assert snap("export-log", "-o", str(tmp_path / "logs" / "deeper" / "ozolith.jsonl")).exit_code == 0
        copy = tmp_path / "copy"
        assert CliRunner().invoke(cli, ["init", str(copy)]).exit_code == 0
        imported = CliRunner().invoke(cli, ["--store", str(copy), "import", str(bundle)])
        assert imported.exit_code == 0, imported.output
        assert (tmp_path / "logs" / "deeper" / ".ozolith_key").is_file()

    def test_both_exports_refuse_a_bad_file_name_alike(self, snap, tmp_path):
        (tmp_path / "plain.txt").write_text("x")
        (tmp_path / "folder").mkdir()
        for output, words in ((tmp_path / "plain.txt" / "x", "plain.txt is a file, not a folder"),
                              (tmp_path / "folder", "folder is a directory: give the export a file name")):
            lines = [one_line_error(snap(*command, "-o", str(output)))
                     for command in (["export", CONV], ["export-log"])]
            assert all(words in line for line in lines), lines  # export said "Not a directory", export-log no hint
            assert lines[0] == lines[1], lines
        assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "plain.txt", "store"]
        assert list((tmp_path / "folder").iterdir()) == []

    def test_a_failed_export_leaves_no_file_and_no_folder_it_made(self, snap, tmp_path):
        oid = _damage(snap, "flipped byte")
        line = one_line_error(snap("export", "--all", "-o", str(tmp_path / "new" / "sub" / "out.bundle")))
        assert oid[:12] in line, line  # was: "No such file or directory", before any object was read
        sql(snap.db, "UPDATE ozolith SET line = x'00ff' WHERE sequence = 5")  # a row that holds no text
        line = one_line_error(snap("export-log", "-o", str(tmp_path / "logs" / "sub" / "ozolith.jsonl")))
        assert "entry 5" in line or "row 5" in line, line
        assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


# -- docs/cli.md against the real CLI, command by command ----------------------------------------------------


class TestDocumentedBehaviour:
    """What docs/cli.md promises and the CLI did not do: a failed replay left the store it made, control
    characters from a log or an argument reached the terminal, import misnamed a missing --ozolith LOG and
    took a --key-file it never read, the text output printed Python values (None, False, {'x': 1}) and
    "1 problems". Each test failed before its fix."""

    ESC = "\x1b[2J"  # clears the screen when written raw to a terminal

    def _exported_log(self, snap, tmp_path) -> Path:
        """The demo store's own audit log as a file (12 linked entries, the signing key beside it)."""
        path = tmp_path / "logs" / "ozolith.jsonl"
        result = snap("export-log", "-o", str(path))
        assert result.exit_code == 0, result.output
        return path

    @pytest.mark.parametrize("args", [["ghost"], [CONV, "--as", "bad name"]])
    def test_a_failed_replay_leaves_no_store_it_created(self, snap, tmp_path, args):
        log = self._exported_log(snap, tmp_path)
        (tmp_path / "empty").mkdir()
        for location in (tmp_path / "new" / "store", tmp_path / "empty"):
            result = snap.runner.invoke(cli, ["--store", str(location), "replay", *args, "--ozolith", str(log)])
            line = one_line_error(result)
            assert "structural entries" in line or "invalid conversation id" in line, line
        # was: new/store/store.sqlite and empty/store.sqlite, made before the replay failed
        assert not (tmp_path / "new").exists()
        assert list((tmp_path / "empty").iterdir()) == []
        made = snap.runner.invoke(cli, ["--store", str(tmp_path / "new" / "store"), "replay", CONV,
                                        "--ozolith", str(log)])
        assert made.exit_code == 0, made.output  # the same location still takes a replay that works
        assert (tmp_path / "new" / "store" / "store.sqlite").is_file()

    def test_replay_escapes_a_context_id_from_the_log(self, snap, tmp_path):
        from snapstore.ozolith import OzolithLog

        log = OzolithLog(tmp_path / "client.jsonl")
        log.append("context_created", "SB-1", "system", {"task_description": "root"})
        log.append("exchange", f"{self.ESC}EVIL", "system", {"exchange_id": "EXCH-1"})
        result = snap.runner.invoke(cli, ["--store", snap.location, "replay", "client", "--ozolith",
                                          str(tmp_path / "client.jsonl")], color=True)
        assert result.exit_code == 0, result.output
        assert "exchange in unknown context \\x1b[2JEVIL" in result.stderr, result.stderr
        assert self.ESC not in result.output  # was: written raw, clearing the screen

    def test_verify_escapes_a_context_id_from_the_log(self, snap, tmp_path):
        from snapstore.ozolith import OzolithLog

        path = self._exported_log(snap, tmp_path)
        head = show(snap, CONV)["id"]
        link = {"conversation": CONV, "snapshot": head, "nodes": {f"{self.ESC}X": "ab" * 32}}
        OzolithLog(path).append("exchange", "SB-1", "system", {"snapstore": link})
        result = snap.runner.invoke(cli, ["--store", snap.location, "verify", "--ozolith", str(path)], color=True)
        assert result.exit_code == 1, result.output
        assert "context=\\x1b[2JX" in result.stdout, result.stdout
        assert self.ESC not in result.output  # was: the [key=value] suffix wrote it raw

    @pytest.mark.parametrize("args", [
        ["--store", "zz\x1b[2J", "log"],
        ["import", "a\x1b[2Jb.bundle"],
        ["verify", "--ozolith", "a\x1b[2Jb.jsonl"],
    ])
    def test_an_error_line_escapes_control_characters(self, snap, args):
        if args[0] != "--store":
            args = ["--store", snap.location, *args]
        result = snap.runner.invoke(cli, args, color=True)
        line = one_line_error(result)
        assert "\\x1b[2J" in line, line
        assert self.ESC not in result.output, line  # was: echoed raw

    def test_import_names_a_missing_or_folder_log_and_takes_no_key_file(self, snap, tmp_path):
        bundle = tmp_path / "demo.bundle"
        assert snap("export", CONV, "-o", str(bundle)).exit_code == 0
        log = self._exported_log(snap, tmp_path)
        (tmp_path / "folder").mkdir()
        before = tables(snap.db)
        line = one_line_error(snap("import", str(bundle), "--ozolith", "nowhere.jsonl"))
        assert line == "snap: error: nowhere.jsonl: no such log file", line  # was: "does not hold log entry 1"
        line = one_line_error(snap("import", str(bundle), "--ozolith", str(tmp_path / "folder")))
        assert "folder is a folder, not a log file" in line, line  # was: "Is a directory: ..."
        # was: taken and never read, as if the log's signatures had been checked with it
        result = snap("import", str(bundle), "--ozolith", str(log), "--key-file", "no-such-key")
        assert result.exit_code == 2 and "No such option '--key-file'" in result.stderr, result.output
        assert tables(snap.db) == before
        assert snap("import", str(bundle), "--ozolith", str(log)).exit_code == 0

    def test_tree_and_diff_print_statuses_and_focus_as_json(self, snap, tmp_path):
        states = [{"contexts": []},
                  {"contexts": [{"sidebar_id": "A"}]},
                  {"active_context_id": "A",
                   "contexts": [{"sidebar_id": "A", "status": {"x": 1}}, {"sidebar_id": "B", "status": False}]}]
        for n, state in enumerate(states):
            (tmp_path / f"s{n}.json").write_text(json.dumps(state))
            assert snap("commit", "t", "--from", str(tmp_path / f"s{n}.json")).exit_code == 0
        tree = snap("tree", "t")
        assert tree.stdout.splitlines() == ['A  {"x": 1}  0 exchanges  <- focus', "B  false  0 exchanges"], tree.stdout
        added = snap("diff", "t~2", "t~1")
        assert added.stdout.splitlines() == ["+ A  (under top level, -, 0 exchanges)"], added.stdout  # was: None
        changed = snap("diff", "t~1", "t").stdout.splitlines()
        assert "+ B  (under top level, false, 0 exchanges)" in changed, changed  # was: False
        assert "* focus (none) -> A" in changed, changed  # was: "* focus None -> A"
        assert "* focus A -> (none)" in snap("diff", "t", "t~1").stdout.splitlines()

    def test_verify_counts_one_problem_in_the_singular(self, snap):
        sql(snap.db, "UPDATE refs SET target = 'hello'")
        result = snap("verify")
        assert result.exit_code == 1, result.output
        assert result.stdout.splitlines()[-1].endswith(": 1 problem"), result.stdout  # was: "1 problems"


# -- usage errors, echoed paths in notes, None in messages, a focus naming no context ------------------------


def _forge_dangling_focus(location: str, conv: str, focus: str) -> str:
    """Move ``conv``'s head to a snapshot whose focus names no context, as stores written before commits
    checked the focus could hold (a commit now refuses to make one): the state object and snapshot are
    written directly, on top of the head. Returns the new head."""
    from snapstore.backends.base import RefUpdate
    from snapstore.objects import Event, Snapshot, State, encode
    from snapstore.refs import ref_name
    from snapstore.repository import Repository
    from snapstore.timeutil import utc_now

    repo = Repository.open(location)
    try:
        head = repo.head(conv)
        state = repo.snapshot_state(head)
        kind, body, state_id = encode(State(state.roots, focus, state.extra))
        snap_kind, snap_body, snap_id = encode(Snapshot(conv, state_id, (head,), utc_now(), Event("focus_switch")))
        repo.backend.write(objects=repo._store({state_id: (kind, body), snap_id: (snap_kind, snap_body)}),
                           ref_updates=[RefUpdate(ref_name(conv), head, snap_id, "a focus from an older store")])
        return snap_id
    finally:
        repo.close()


class TestUsageErrorsEscapedNotesAndAbsentValues:
    """A required choice of options not made was a runtime error (exit 1, no pointer to --help); notes
    echoed the paths and names the user typed raw; messages printed Python's None for an absent value;
    `snap status` and `Session` resumed onto a stored focus naming no context. Each test failed before
    its fix."""

    ESC = "\x1b[2J"  # clears the screen when written raw to a terminal

    @staticmethod
    def usage_error(result, command: str) -> str:
        """The one line of a usage error: exit 2 and the pointer to the command's help."""
        line = one_line_error(result)
        assert result.exit_code == 2, result.output
        assert line.endswith(f"(see 'snap {command} --help')"), line
        return line

    @pytest.mark.parametrize("options", [[], ["--keep-last", "1", "--older-than", "1d"]])
    def test_prune_without_one_choice_of_history_is_a_usage_error(self, snap, options):
        before = tables(snap.db)
        line = self.usage_error(snap("prune", CONV, *options), "prune")  # was: exit 1, no pointer
        assert "exactly one of --keep-last N and --older-than DURATION" in line, line
        assert tables(snap.db) == before

    def test_export_naming_nothing_is_a_usage_error(self, snap, tmp_path):
        line = self.usage_error(snap("export", "-o", str(tmp_path / "x.bundle")), "export")  # was: exit 1
        assert "name the conversations to export (or --all)" in line, line
        assert not (tmp_path / "x.bundle").exists()

    def test_an_event_of_two_words_is_a_usage_error(self, snap, tmp_path):
        (tmp_path / "s.json").write_text(json.dumps({"contexts": []}))
        before = tables(snap.db)
        line = self.usage_error(snap("commit", "c", "--from", str(tmp_path / "s.json"), "--event", "two words"),
                                "commit")  # was: exit 1, no pointer
        assert "'two words' is not one printable word" in line, line
        assert tables(snap.db) == before

    @pytest.mark.parametrize("command", ["checkout", "export", "push", "init"])
    def test_a_note_escapes_the_path_it_echoes(self, snap, tmp_path, command):
        target = tmp_path / f"out{self.ESC}put"
        args = {"checkout": [CONV, "-o", str(target)], "export": [CONV, "-o", str(target)],
                "push": [str(target)], "init": [str(target)]}[command]
        result = snap.runner.invoke(cli, ["--store", snap.location, command, *args], color=True)
        assert result.exit_code == 0, result.output
        assert self.ESC not in result.output, result.output  # was: "wrote ...", "pushed to ..." raw
        assert "out\\x1b[2Jput" in result.output, result.output
        if command == "export":  # export-log escaped its note already: it stays so
            log = snap.runner.invoke(cli, ["--store", snap.location, "export-log", "-o", f"{target}.jsonl"])
            assert log.exit_code == 0 and self.ESC not in log.output and "\\x1b[2J" in log.output, log.output

    def test_replay_and_a_diff_summary_say_what_an_absent_value_means(self, snap, tmp_path):
        from snapstore.ozolith import OzolithLog
        from snapstore.repository import Repository

        log = OzolithLog(tmp_path / "client.jsonl")
        log.append("context_created", "SB-1", "system", {"task_description": "root"})
        log.append("sidebar_spawn", "SB-1", "system", {"child_id": "SB-2"})  # no parent_context
        result = snap("replay", "client", "--ozolith", str(tmp_path / "client.jsonl"))
        assert result.exit_code == 0, result.output
        assert "skipped #2: spawn of SB-2 under no parent_context" in result.stderr, result.stderr  # was: "unknown None"
        for n, state in enumerate([{"contexts": [{"sidebar_id": "A"}]},
                                   {"active_context_id": "A", "contexts": [{"sidebar_id": "A"}]}]):
            (tmp_path / f"s{n}.json").write_text(json.dumps(state))
            assert snap("commit", "t", "--from", str(tmp_path / f"s{n}.json")).exit_code == 0
        repo = Repository.open(snap.location)
        try:
            assert repo.diff("t~1", "t").summary().endswith("focus (none) -> A")  # was: "focus None -> A"
        finally:
            repo.close()

    def test_verify_says_what_an_absent_root_parent_or_focus_means(self, snap, tmp_path):
        from snapstore.ozolith import OzolithLog

        path = tmp_path / "ozolith.jsonl"
        assert snap("export-log", "-o", str(path)).exit_code == 0
        head = show(snap, CONV)["id"]
        # A link naming the head but no root and no parent: the log holds what anyone wrote.
        OzolithLog(path).append("exchange", "SB-1", "system", {"snapstore": {"conversation": CONV, "snapshot": head}})
        result = snap("verify", "--ozolith", str(path))
        assert result.exit_code == 1, result.output
        assert "says no root, snapshot" in result.stdout, result.stdout  # was: "says root None"
        assert "says no parent, snapshot" in result.stdout, result.stdout  # was: "says parent None"
        assert "None" not in result.stdout, result.stdout

    def test_a_focus_naming_no_context_is_no_focus(self, snap):
        from snapstore.startup import Session

        _forge_dangling_focus(snap.location, CONV, "SB-99")
        status = snap("status", "--json")
        assert status.exit_code == 0, status.output
        report = json.loads(status.stdout)
        assert report["conversation"] == CONV and report["focus"] is None, report  # was: "SB-99"
        assert any("'SB-99', names no context" in c for c in report["checks"]), report["checks"]
        text = snap("status").stdout.splitlines()
        assert f"resume: {CONV}" in text and not any("focus SB-99" in line for line in text), text
        verify = snap("verify")
        assert "the store has (none)" in verify.stdout and "None" not in verify.stdout, verify.stdout
        session = Session(snap.location, log_in_store=True)
        try:
            assert session.report.focus is None
            resumed = session.continue_last()
            assert resumed is not None and resumed.active_context_id is None  # was: "SB-99", a context not there
            again = session.resume(CONV)
            assert again.active_context_id is None
            resumed.switch_focus("SB-1")  # and the conversation goes on
            assert resumed.active_context_id == "SB-1"
        finally:
            session.close()
        assert snap("fsck").exit_code == 0

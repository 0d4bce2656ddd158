"""fsck and reflog readers against a tampered SQLite store: each damage is found and named.

Each defect test fails on the code before its fix: a deleted or renamed reflog
row that fsck called ok, a garbage reflog time that fsck passed and
``CONV@{TIME}`` skipped, a text log_sequence that crashed ``snap status``, an
objects row with a text or short id that nothing saw, a dangling active
conversation that fsck passed, a damaged reflog pack raised as a plain
BackendError, and "53 objects, 54 reachable" for a ref naming a missing
object. The guards check that legitimate histories (renames, prune, gc,
import --force, packed reflogs, forks) stay ok.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from snapstore.bundle import export_bundle, import_bundle
from snapstore.cli.main import cli
from snapstore.errors import CorruptObject, DamagedRecord
from snapstore.gc import collect_garbage
from snapstore.objects import Event
from snapstore import packing
from snapstore.packing import pack
from snapstore.packs import prefix_key
from snapstore.prune import prune
from snapstore.repository import Repository

from .demo_store import demo_template, snap, sql, store  # noqa: F401 (fixtures)
from .factories import exchange, sample_state
from .test_cli_defects import one_line_error

CONV = "demo"





def fsck_fails(snap, *patterns: str) -> list[dict]:
    """fsck exits 1, its text names every pattern (regex), --json agrees; returns the problems."""
    result = snap("fsck")
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output, result.output
    for pattern in patterns:
        assert re.search(pattern, result.stdout), (pattern, result.stdout)
    report = json.loads(snap("fsck", "--json").stdout)
    assert report["ok"] is False
    return report["problems"]


def test_the_demo_store_is_ok(snap):
    result = snap("fsck")
    assert result.exit_code == 0 and result.stdout.strip().endswith(": ok"), result.output


# -- 1. reflog rows that do not chain -------------------------------------------------------------


def test_a_deleted_reflog_row_is_found(snap):
    sql(snap.db, "DELETE FROM reflog WHERE seq = 5")
    problems = fsck_fails(snap, r"reflog row seq 6 of 'conversations/demo'", r"missing or altered")
    assert [p["kind"] for p in problems] == ["broken-reflog"]


def test_a_reflog_row_moved_to_a_name_without_ref_is_found(snap):
    sql(snap.db, "UPDATE reflog SET name = 'conversations/zzz' WHERE seq = 5")
    fsck_fails(snap, r"reflog row seq 6 of 'conversations/demo'",
               r"no ref 'conversations/zzz'.*seq 5", r"'conversations/zzz'.*no row before it")


@pytest.mark.parametrize("which, pattern", [
    ("(SELECT max(seq) FROM reflog)", r"ref 'conversations/demo' points at \w+, but its last reflog row seq 11"),
    ("1", r"reflog row seq 2 of 'conversations/demo' .*no row before it"),
])
def test_a_deleted_first_or_last_reflog_row_is_found(snap, which, pattern):
    sql(snap.db, f"DELETE FROM reflog WHERE seq = {which}")
    fsck_fails(snap, pattern)


def test_a_ref_without_reflog_rows_is_found(snap):
    sql(snap.db, "DELETE FROM reflog WHERE name = 'conversations/demo'")
    fsck_fails(snap, r"ref 'conversations/demo' \(pointing at \w+\) has no reflog rows")


# -- 2. a reflog time that is no time -------------------------------------------------------------


@pytest.mark.parametrize("value", ["notatime", 5])
def test_a_garbage_reflog_time_is_found(snap, value):
    sql(snap.db, "UPDATE reflog SET time = ? WHERE seq = 5", value)
    fsck_fails(snap, rf"reflog row seq 5 of 'conversations/demo' .*its time is '{value}', not a time")


def test_at_time_does_not_skip_a_row_with_a_garbage_time(snap):
    con = sqlite3.connect(snap.db)
    (moment,) = con.execute("SELECT time FROM reflog WHERE seq = 8").fetchone()
    con.close()
    before = snap("show", f"{CONV}@{{{moment}}}", "--json")
    assert before.exit_code == 0, before.output
    sql(snap.db, "UPDATE reflog SET time = 'notatime' WHERE seq = 5")
    line = one_line_error(snap("show", f"{CONV}@{{{moment}}}", "--json"))
    assert "'notatime'" in line and "conversations/demo" in line, line


# -- 3. a log_sequence that is no number ----------------------------------------------------------


def test_a_text_log_sequence_is_named_by_status_and_fsck(snap):
    sql(snap.db, "UPDATE reflog SET log_sequence = 'x' WHERE seq = 5")
    line = one_line_error(snap("status"))
    assert "seq 5" in line and "log_sequence" in line, line
    fsck_fails(snap, r"reflog row seq 5 of 'conversations/demo' .*its log_sequence is 'x'")


def test_newest_log_sequences_raises_damaged_record(snap):
    sql(snap.db, "UPDATE reflog SET log_sequence = 'x' WHERE seq = 5")
    repo = Repository.open(snap.location)
    try:
        with pytest.raises(DamagedRecord, match=r"seq 5"):
            repo.backend.newest_log_sequences(["conversations/demo"])
    finally:
        repo.close()


@pytest.mark.parametrize("command", [["log", CONV], ["pack"]])
def test_a_text_log_sequence_is_named_not_ignored_or_packed(snap, command):
    sql(snap.db, "UPDATE reflog SET log_sequence = 'x' WHERE seq = 5")
    line = one_line_error(snap(*command))  # was: log dropped the row's link silently; pack: internal error
    assert "(seq 5)" in line and "log_sequence is 'x'" in line, line


# -- 4. objects rows whose id is no id ------------------------------------------------------------


@pytest.mark.parametrize("expression, held", [
    ("x'ecfc60' || randomblob(29)", "a text"),  # || makes text
    ("CAST(x'ecfc60' || randomblob(26) AS BLOB)", "29 bytes"),
])
def test_an_objects_row_with_a_malformed_id_is_found(snap, expression, held):
    sql(snap.db, f"INSERT INTO objects SELECT {expression}, kind, size, data FROM objects LIMIT 1")
    problems = fsck_fails(snap, r"objects row with id x'ECFC60\w*' holds " + held)
    assert [p["kind"] for p in problems] == ["malformed-id"]
    report = json.loads(snap("fsck", "--json").stdout)
    assert report["objects"] == report["reachable"] + 1  # counted, like count_objects counts it


# -- 5. a dangling active conversation ------------------------------------------------------------


@pytest.mark.parametrize("value", ["ghost", "bad name/.."])
def test_a_dangling_active_conversation_is_found(snap, value):
    sql(snap.db, "UPDATE meta SET value = ? WHERE key = 'active_conversation'", value)
    problems = fsck_fails(snap, re.escape(repr(value)))
    assert [p["kind"] for p in problems] == ["dangling-active"]


# -- 6. a damaged reflog pack is a DamagedRecord --------------------------------------------------


def test_a_damaged_reflog_pack_raises_damaged_record_naming_its_rows(snap):
    assert snap("pack", "--keep", "0").exit_code == 0
    con = sqlite3.connect(snap.db)
    first, last, data = con.execute("SELECT first, last, data FROM reflog_packs ORDER BY first LIMIT 1").fetchone()
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 1
    con.execute("UPDATE reflog_packs SET data = ? WHERE first = ?", (bytes(flipped), first))
    con.commit()
    con.close()
    repo = Repository.open(snap.location)
    try:
        with pytest.raises(DamagedRecord, match=rf"reflog pack of rows {first}-{last}"):
            repo.backend.reflog("conversations/demo")
    finally:
        repo.close()


# -- 7. a ref naming a missing object -------------------------------------------------------------


def test_a_missing_head_is_not_counted_as_reachable(snap):
    sql(snap.db, "UPDATE refs SET target = randomblob(32)")
    result = snap("fsck")
    assert result.exit_code == 1
    counts = re.search(r"(\d+) objects, (\d+) reachable, 1 missing:", result.stdout)
    assert counts, result.stdout
    assert int(counts[2]) <= int(counts[1])
    assert re.search(r"missing: snapshot \w+ is missing \(named by conversations/demo\)", result.stdout)
    report = json.loads(snap("fsck", "--json").stdout)
    assert report["missing"] == 1 and report["reachable"] <= report["objects"]


# -- nearby: a loose reflog row inside a pack's range ---------------------------------------------


def test_a_loose_reflog_row_duplicating_a_packed_seq_is_found(snap):
    assert snap("pack", "--keep", "0").exit_code == 0
    sql(snap.db, "INSERT INTO reflog (seq, name, old, new, time, reason) SELECT 3, name, new, new, time, reason "
                 "FROM reflog ORDER BY seq DESC LIMIT 1")
    fsck_fails(snap, r"seq 3 is also a row of the reflog pack of rows 1-\d+")


# -- guards: legitimate histories stay ok ---------------------------------------------------------


def commit_steps(repo: Repository, conv: str, n: int, start: int = 0) -> None:
    state = sample_state(conv)
    for i in range(start, start + n):
        state["contexts"][0]["local_memory"].append(exchange(100 + i, "SB-1"))
        repo.commit(conv, state, event=Event("exchange", "SB-1", f"step {i}"))


def assert_ok(repo: Repository) -> None:
    report = repo.fsck()
    assert report.ok, report.problems
    assert report.reachable <= report.objects and getattr(report, "missing", 0) == 0


def test_renames_prune_gc_pack_and_forced_import_keep_fsck_ok(tmp_path):
    repo = Repository.init(str(tmp_path / "store"))
    try:
        commit_steps(repo, "a", 6)
        repo.set_active("a")
        repo.rename_conversation("a", "b")
        assert repo.active_conversation == "b"
        commit_steps(repo, "b", 2, start=10)
        repo.rename_conversation("b", "a")  # a name used before, again
        assert_ok(repo)
        commit_steps(repo, "c", 3)
        prune(repo, "a", keep_last=2)
        assert_ok(repo)
        collect_garbage(repo, timedelta(0))
        assert_ok(repo)
        pack(repo, keep=0, keep_log=0)
        commit_steps(repo, "c", 2, start=50)
        pack(repo, keep=0, keep_log=0)
        assert_ok(repo)
        bundle = tmp_path / "c.bundle"
        export_bundle(repo, ["c"], bundle)
        other = Repository.init(str(tmp_path / "other"))
        try:
            commit_steps(other, "c", 2, start=200)  # a diverged head: replaced with --force
            import_bundle(other, bundle, force=True)
            assert_ok(other)
        finally:
            other.close()
        assert_ok(repo)
    finally:
        repo.close()


# -- 8. text that is not UTF-8, and refs rows that name no snapshot -----------------------------------
#
# One such row made fsck report "unreadable: fsck could not read the store" for the whole store (SQLite
# fails the whole query: "Could not decode to UTF-8 column ..."), or stopped it (a ref whose target is
# no id), and verify stopped the same way: each is now one finding naming the row, and the rest is checked.

NOT_UTF8 = "CAST(x'ff41' AS TEXT)"


def all_reachable(snap) -> dict:
    """fsck's --json report, after checking every object was still reached (the walk went on)."""
    report = json.loads(snap("fsck", "--json").stdout)
    assert report["reachable"] == report["objects"] and report["missing"] == 0, report
    return report


@pytest.mark.parametrize("column, seq", [("reason", 5), ("reason", 1), ("time", 5), ("log_hash", 5)])
def test_a_reflog_column_that_is_not_utf8_names_the_row(snap, column, seq):
    sql(snap.db, f"UPDATE reflog SET {column} = {NOT_UTF8} WHERE seq = {seq}")
    problems = fsck_fails(snap, rf"damaged-row: reflog row seq {seq} of 'conversations/demo' .*"
                                rf"its {column} is b'\\xffA'")
    assert [p["kind"] for p in problems] == ["damaged-row"], problems
    all_reachable(snap)


def test_a_reflog_name_that_is_not_utf8_names_the_row(snap):
    sql(snap.db, f"UPDATE reflog SET name = {NOT_UTF8} WHERE seq = 5")
    problems = fsck_fails(snap, r"damaged-row: its name is b'\\xffA', not text \(seq 5,",
                          r"broken-reflog: reflog row seq 6 of 'conversations/demo'")
    assert sorted(p["kind"] for p in problems) == ["broken-reflog", "damaged-row"], problems
    all_reachable(snap)


def test_reading_a_reflog_row_that_is_not_utf8_names_it(snap):
    sql(snap.db, f"UPDATE reflog SET reason = {NOT_UTF8} WHERE seq = 5")
    line = one_line_error(snap("log", CONV))  # was: "Could not decode to UTF-8 column 'reason'", no row
    assert "'conversations/demo' (seq 5)" in line and "its reason is" in line, line


def add_conversation(snap, conv: str = "other") -> None:
    """A second conversation beside the demo's, two snapshots long."""
    repo = Repository.open(snap.location)
    try:
        commit_steps(repo, conv, 2)
    finally:
        repo.close()


@pytest.mark.parametrize("target, held", [
    ("'abc'", r"a str \('abc'\)"),
    ("x'00'", "1 bytes"),
    (NOT_UTF8, "2 bytes"),
])
def test_a_damaged_ref_target_is_named_and_the_rest_checked(snap, target, held):
    add_conversation(snap)
    sql(snap.db, f"UPDATE refs SET target = {target} WHERE name = 'conversations/demo'")
    problems = fsck_fails(snap, rf"damaged-row: .*ref 'conversations/demo' holds {held}, not a 32-byte object id")
    assert [p["kind"] for p in problems] == ["damaged-row"], problems
    all_reachable(snap)  # the demo's reflog and the other conversation were still walked


def test_a_damaged_ref_target_is_found_beside_other_damage(snap):
    add_conversation(snap)
    sql(snap.db, "UPDATE refs SET target = 'abc' WHERE name = 'conversations/demo'")
    sql(snap.db, "UPDATE refs SET target = randomblob(32) WHERE name = 'conversations/other'")
    problems = fsck_fails(snap, r"ref 'conversations/demo' holds",
                          r"missing: snapshot \w+ is missing \(named by conversations/other\)")
    assert sorted(p["kind"] for p in problems) == ["broken-reflog", "damaged-row", "missing"], problems


def test_a_ref_name_that_is_not_utf8_names_the_row(snap):
    sql(snap.db, f"UPDATE refs SET name = {NOT_UTF8}")
    problems = fsck_fails(snap, r"damaged-row: .*a refs row's name is b'\\xffA', not text",
                          r"there is no ref 'conversations/demo'")
    assert sorted(p["kind"] for p in problems) == ["broken-reflog", "damaged-row", "dangling-active"], problems


@pytest.mark.parametrize("damage, named", [
    (f"UPDATE meta SET value = {NOT_UTF8} WHERE key = 'created'", r"the meta row 'created' holds b'\\xffA'"),
    (f"UPDATE meta SET value = {NOT_UTF8} WHERE key = 'active_conversation'",
     r"the meta row 'active_conversation' holds b'\\xffA'"),
    (f"INSERT INTO meta VALUES ({NOT_UTF8}, 'x')", r"a meta row's key is b'\\xffA', not text"),
])
def test_a_meta_row_that_is_not_utf8_is_named(snap, damage, named):
    sql(snap.db, damage)  # was: every command, fsck too, failed to open the store ("Could not decode")
    problems = fsck_fails(snap, "damaged-row: .*" + named)
    assert [p["kind"] for p in problems] == ["damaged-row"], problems
    all_reachable(snap)


@pytest.mark.parametrize("kind", [NOT_UTF8, "'é'"])
def test_an_object_kind_that_is_no_kind_names_the_object(snap, kind):
    con = sqlite3.connect(snap.db)
    (victim,) = con.execute("SELECT hex(id) FROM objects WHERE kind = 'node' LIMIT 1").fetchone()
    con.close()
    sql(snap.db, f"UPDATE objects SET kind = {kind} WHERE hex(id) = ?", victim)
    problems = fsck_fails(snap, rf"corrupt: corrupt object {victim.lower()}: its stored kind is ")
    assert [(p["kind"], p["object"]) for p in problems] == [("corrupt", victim.lower())], problems


@pytest.mark.parametrize("damage", [
    f"UPDATE reflog SET reason = {NOT_UTF8} WHERE seq = 5",
    "UPDATE refs SET target = 'abc'",
])
@pytest.mark.parametrize("args", [[], ["--sample", "3"], [CONV]])
def test_verify_names_a_damaged_ref_or_reflog_row_and_goes_on(snap, damage, args):
    sql(snap.db, damage)
    result = snap("verify", "--json", *args)
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert [p["kind"] for p in report["problems"]] == ["damaged-row"], report  # was: "verify stopped"
    assert report["snapshots_checked"] == 12 and report["entries_checked"] > 0, report


# -- 9. a damaged reflog pack, a damaged prune record, verify with no log ---------------------------
#
# A reflog pack that could not be read made fsck (and verify) report one "unreadable" finding for the
# whole store; a prune record that could not be read stopped fsck with one "corrupt" finding (verify with
# an internal error, or a bare error line); verify with no audit log stopped at a damaged ref target with
# an error line. Each is now a finding naming the pack, record or row, and the rest is checked.


def pack_reflog_in_fours(snap) -> None:
    """The demo's 12 reflog rows as packs of rows 1-4 and 5-8, rows 9-12 loose."""
    repo = Repository.open(snap.location)
    try:
        while repo.backend.pack_reflog(keep=4, rows=4, partial=True):
            pass
    finally:
        repo.close()
    con = sqlite3.connect(snap.db)
    try:
        assert con.execute("SELECT first, last FROM reflog_packs ORDER BY first").fetchall() == [(1, 4), (5, 8)]
    finally:
        con.close()


def damage_reflog_pack(snap, first: int) -> None:
    """One bit of the reflog pack starting at row ``first`` flipped."""
    con = sqlite3.connect(snap.db)
    (data,) = con.execute("SELECT data FROM reflog_packs WHERE first = ?", (first,)).fetchone()
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 1
    con.execute("UPDATE reflog_packs SET data = ? WHERE first = ?", (bytes(flipped), first))
    con.commit()
    con.close()


def test_a_damaged_reflog_pack_is_named_with_its_refs_and_the_rest_checked(snap):
    assert snap("pack", "--keep", "0").exit_code == 0
    add_conversation(snap)  # rows of its own, loose, none in the pack
    damage_reflog_pack(snap, 1)
    sql(snap.db, "DELETE FROM reflog WHERE seq = (SELECT max(seq) FROM reflog)")  # damage elsewhere, found too
    problems = fsck_fails(snap, r"corrupt-pack: .*the reflog pack of rows 1-11 is damaged: .*"
                                r"it held reflog rows of 'conversations/demo'",
                          r"broken-reflog: ref 'conversations/other' points at")
    assert sorted(p["kind"] for p in problems) == ["broken-reflog", "corrupt-pack"], problems
    assert "conversations/other" not in next(p["message"] for p in problems if p["kind"] == "corrupt-pack")
    all_reachable(snap)  # the demo's head and the other conversation were still walked


@pytest.mark.parametrize("first", [1, 5])
def test_a_reflog_chain_is_judged_up_to_and_after_a_damaged_pack(snap, first):
    pack_reflog_in_fours(snap)
    damage_reflog_pack(snap, first)
    problems = fsck_fails(snap, rf"the reflog pack of rows {first}-{first + 3} is damaged")
    assert [p["kind"] for p in problems] == ["corrupt-pack"], problems  # no broken chain at the gap itself
    sql(snap.db, "DELETE FROM reflog WHERE seq = 10")  # after the gap: still judged
    problems = fsck_fails(snap, r"broken-reflog: reflog row seq 11 of 'conversations/demo'")
    assert sorted(p["kind"] for p in problems) == ["broken-reflog", "corrupt-pack"], problems


def test_verify_names_a_damaged_reflog_pack_and_goes_on(snap):
    assert snap("pack", "--keep", "0").exit_code == 0
    damage_reflog_pack(snap, 1)
    result = snap("verify", "--json")
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert [p["kind"] for p in report["problems"]] == ["corrupt-pack"], report  # was: "verify stopped"
    assert report["snapshots_checked"] == 12 and report["entries_checked"] == 12, report


def prune_and_collect(snap) -> str:
    """The demo pruned to its last 3 snapshots and its old ones collected; returns the prune record's key."""
    repo = Repository.open(snap.location)
    try:
        key = prune(repo, CONV, keep_last=3).record
        for _ in range(2):  # gc deletes what stayed unreachable since its previous run
            collect_garbage(repo, timedelta(0))
    finally:
        repo.close()
    assert snap("fsck").exit_code == 0
    return key


@pytest.mark.parametrize("damage, named", [
    ("UPDATE meta SET value = '{not json' WHERE key = ?", "corrupt"),
    (f"UPDATE meta SET value = {NOT_UTF8} WHERE key = ?", "damaged-row"),
    ("DELETE FROM meta WHERE key = ? || '/squashed/000000'", "corrupt"),
])
def test_a_damaged_prune_record_is_named_and_what_it_excused_is_checked(snap, damage, named):
    key = prune_and_collect(snap)
    sql(snap.db, damage, key)
    problems = fsck_fails(snap, re.escape(key))
    first, *rest = problems
    assert first["kind"] == named and key in first["message"], problems  # was: this finding alone, fsck stopped
    # Nothing excuses the snapshots the prune took out of the demo's history any more: gc deleted them.
    assert rest and {p["kind"] for p in rest} == {"missing"}, problems
    assert all("named by reflog of conversations/demo" in p["message"] for p in rest), rest
    report = json.loads(snap("fsck", "--json").stdout)
    assert report["missing"] == len(rest) and report["reachable"] == report["objects"], report


@pytest.mark.parametrize("args", [[], ["--sample", "3"]])
def test_verify_names_a_damaged_prune_record_and_goes_on(snap, args):
    key = prune_and_collect(snap)
    sql(snap.db, "UPDATE meta SET value = '{not json' WHERE key = ?", key)
    result = snap("verify", "--json", *args)
    assert result.exit_code == 1, result.output  # was: an error line, no report
    report = json.loads(result.stdout)
    named = [p for p in report["problems"] if p.get("object") == key]
    assert [p["kind"] for p in named] == ["corrupt"], report  # once, with or without fsck's check
    assert report["snapshots_checked"] > 0 and report["entries_checked"] > 0, report


@pytest.mark.parametrize("args", [[], ["--sample", "3"], [CONV]])
def test_verify_with_no_log_names_a_damaged_ref_target_and_goes_on(snap, args):
    sql(snap.db, "DELETE FROM ozolith")  # the store keeps no audit log now, and none is given
    assert snap("verify").exit_code == 0
    sql(snap.db, "UPDATE refs SET target = 'abc'")
    result = snap("verify", "--json", *args)
    assert result.exit_code == 1, result.output  # was: a one-line error naming the ref, no report
    report = json.loads(result.stdout)
    assert [p["kind"] for p in report["problems"]] == ["damaged-row"], report
    assert "ref 'conversations/demo' holds a str ('abc')" in report["problems"][0]["message"], report
    assert report["snapshots_checked"] == 12, report  # its reflog was still walked


# -- 10. pack index rows checked against the packs --------------------------------------------------
#
# A deleted reflog_packed row made every reader take the ref to have no packed history (`snap log`
# showed its last row alone, newest_log_sequences its loose rows' link) and fsck said ok; an altered
# count went unseen; a deleted `packed` row (an object's index row) was at most a "missing" object with
# no word of the index. fsck now names each such row, and the readers refuse a history they cannot trust.

REF = f"conversations/{CONV}"


def test_a_deleted_reflog_packed_row_is_found_and_readers_refuse_the_history(snap):
    assert snap("pack", "--keep", "0").exit_code == 0  # rows 1-11 packed, row 12 loose
    sql(snap.db, "DELETE FROM reflog_packed WHERE name = ?", REF)
    problems = fsck_fails(snap, rf"index-mismatch: .*the reflog packs hold 11 rows of '{REF}', but reflog_packed "
                                "has no row for it")
    assert [p["kind"] for p in problems] == ["index-mismatch"], problems
    line = one_line_error(snap("log", CONV))  # was: the newest row alone, exit 0
    assert "reflog_packed" in line and REF in line, line
    _readers_refuse(snap.location, rf"{REF}.*reflog_packed", lambda b: b.reflog(REF),
                    lambda b: b.reflog_newest(REF, 5), lambda b: b.newest_log_sequences([REF]))


def _readers_refuse(location: str, pattern: str, *reads) -> None:
    """Each of ``reads`` (a function of the store's backend) raises DamagedRecord matching ``pattern``."""
    repo = Repository.open(location)
    try:
        for read in reads:
            with pytest.raises(DamagedRecord, match=pattern):
                read(repo.backend)
    finally:
        repo.close()


def test_an_altered_reflog_packed_count_is_found_and_readers_refuse_the_history(snap):
    assert snap("pack", "--keep", "0").exit_code == 0
    sql(snap.db, "UPDATE reflog_packed SET count = 12 WHERE name = ?", REF)
    problems = fsck_fails(snap, rf"the reflog packs hold 11 rows of '{REF}', but its reflog_packed row counts 12")
    assert [p["kind"] for p in problems] == ["index-mismatch"], problems
    repo = Repository.open(snap.location)
    try:
        assert len(repo.backend.reflog_newest(REF, 3)) == 3  # the newest rows are read correctly
    finally:
        repo.close()
    _readers_refuse(snap.location, rf"hold 11 rows of '{REF}', but its reflog_packed row counts 12",
                    lambda b: b.reflog(REF), lambda b: b.reflog_newest(REF, 50))


def test_an_altered_reflog_packed_log_sequence_is_found(snap):
    assert snap("pack", "--keep", "0").exit_code == 0
    sql(snap.db, "UPDATE reflog_packed SET max_log_sequence = 3 WHERE name = ?", REF)
    problems = fsck_fails(snap, r"highest log_sequence among them 11, but its reflog_packed row says 3")
    assert [p["kind"] for p in problems] == ["index-mismatch"], problems


def test_a_deleted_object_index_row_is_found_naming_its_pack(snap):
    assert snap("pack", "--keep", "0").exit_code == 0
    con = sqlite3.connect(snap.db)
    pack_id, live = con.execute("SELECT id, live FROM packs ORDER BY id LIMIT 1").fetchone()
    con.close()
    sql(snap.db, "DELETE FROM packed WHERE prefix = (SELECT min(prefix) FROM packed WHERE pack = ?)", pack_id)
    problems = fsck_fails(snap, rf"index-mismatch: .*pack {pack_id} counts {live} live members, but {live - 1} "
                                "packed rows name it")
    assert "index-mismatch" in [p["kind"] for p in problems], problems


def test_object_index_rows_naming_no_pack_are_found(snap):
    assert snap("pack", "--keep", "0").exit_code == 0
    sql(snap.db, "UPDATE packed SET pack = 999 WHERE prefix = (SELECT min(prefix) FROM packed)")
    fsck_fails(snap, r"index-mismatch: .*1 packed rows name pack 999, which does not exist")


def test_a_loose_log_row_inside_a_log_pack_is_found(snap):
    assert snap("pack", "--keep", "0").exit_code == 0
    sql(snap.db, "INSERT INTO ozolith (sequence, line, entry_hash) SELECT 3, line, entry_hash FROM ozolith "
                 "ORDER BY sequence DESC LIMIT 1")
    fsck_fails(snap, r"index-mismatch: .*1 loose log rows \(from 3\) lie inside the log pack of 1-11")


# A `packed` row altered to name a pack that holds no member with its prefix (two rows swapped between
# packs keep every live count), or added with its pack's live count, passed fsck's count check: the swap
# showed only as "missing" objects, with no word of the index, and reads said "not found" of objects the
# store holds; an added row (or one for an object nothing reaches) left fsck ok. fsck names each such
# row, and a read through it raises naming the pack.


def _member_ids(location: str) -> dict[int, list[str]]:
    """Each pack's indexed members' ids, ordered by their index key."""
    con = sqlite3.connect(Path(location) / "store.sqlite")
    packs = [row[0] for row in con.execute("SELECT id FROM packs ORDER BY id")]
    con.close()
    repo = Repository.open(location)
    try:
        return {p: sorted((oid for oid, _, _ in repo.backend.live_members(p)), key=prefix_key) for p in packs}
    finally:
        repo.close()


def _read_fails(location: str, oid: str, pattern: str) -> None:
    repo = Repository.open(location)
    try:
        with pytest.raises(CorruptObject, match=pattern):
            repo.read(oid)
    finally:
        repo.close()


def test_object_index_rows_swapped_between_packs_are_found_and_reads_name_the_pack(snap, monkeypatch):
    monkeypatch.setattr(packing, "MAX_MEMBERS", 30)
    assert snap("pack", "--keep", "0").exit_code == 0
    members = _member_ids(snap.location)
    assert sorted(members) == [1, 2], members
    first, second = members[1][0], members[2][0]
    sql(snap.db, "UPDATE packed SET pack = 3 - pack WHERE prefix IN (?, ?)", prefix_key(first), prefix_key(second))
    problems = fsck_fails(snap, rf"index-mismatch: .*the packed row of id prefix {first[:16]} names pack 2, which "
                                "holds no member with that prefix",
                          rf"index-mismatch: .*the packed row of id prefix {second[:16]} names pack 1")
    assert len([p for p in problems if p["kind"] == "index-mismatch"]) == 2, problems
    assert {p["kind"] for p in problems} <= {"index-mismatch", "missing"}, problems  # the objects cannot be read
    _read_fails(snap.location, first, rf"{first}: indexed in pack 2, which holds no member with its id prefix "
                                      rf"{first[:16]}: the pack index is damaged")  # was: "not found"


def test_an_object_index_row_added_with_its_live_count_is_found(snap):
    assert snap("pack", "--keep", "0").exit_code == 0
    stray = "ab" * 32
    assert stray not in _member_ids(snap.location)[1]
    sql(snap.db, "INSERT INTO packed (prefix, pack) VALUES (?, 1)", prefix_key(stray))
    sql(snap.db, "UPDATE packs SET live = live + 1 WHERE id = 1")
    problems = fsck_fails(snap, rf"index-mismatch: .*the packed row of id prefix {stray[:16]} names pack 1, which "
                                "holds no member with that prefix")  # was: ok
    assert [p["kind"] for p in problems] == ["index-mismatch"], problems
    _read_fails(snap.location, stray, rf"{stray}: indexed in pack 1, which holds no member")

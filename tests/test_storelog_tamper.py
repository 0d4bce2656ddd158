"""The audit log kept in an SQLite store (and, where it applies, a PostgreSQL one), damaged behind the store's back.

Each defect test fails on the code before its fix: a blob (or non-UTF-8
text) in ``ozolith.line`` gave an internal AttributeError (or an error naming
no row); a renumbered row, a row holding another entry's line and an edited
``entry_hash`` column went undetected, and an append chained onto a
renumbered row or died on a UNIQUE constraint; a deleted key was reported as
"no entry was ever appended"; a damaged log pack stopped the library's
``verify()`` with an exception (or a TypeError for a pack holding text); with
the loose rows gone an append started a second chain at sequence 1; a row
holding two lines was exported as two; packing met a row holding a blob with
a TypeError; on PostgreSQL, verify never compared a row's ``entry_hash``
column with its line (an edited column, or a line re-sealed under the store's
key, was not found at its row). Guards: a line that is JSON but no
entry, a row with no line (NULL, on a backend without the constraint), an
edited column does not fork the chain.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from snapstore.backends.memory import MemoryBackend
from snapstore.cli.main import cli
from snapstore.errors import LogError
from snapstore.ozolith import FindingKind
from snapstore.ozolith.entry import make_entry
from snapstore.repository import Repository
from snapstore.storelog import StoreLog
from snapstore.verify import verify

from .demo_store import demo_template, store  # noqa: F401 (fixtures)
from .shared_backends import SHARED_FACTORIES

CONV = "demo"


def _sql(store: Path, *statements: str) -> None:
    con = sqlite3.connect(store / "store.sqlite")
    for statement in statements:
        con.execute(statement)
    con.commit()
    con.close()


def _log_rows(store: Path) -> list[tuple]:
    con = sqlite3.connect(store / "store.sqlite")
    try:
        return con.execute("SELECT sequence, entry_hash FROM ozolith ORDER BY sequence").fetchall() + \
            con.execute("SELECT key, value FROM meta WHERE key = 'ozolith/key'").fetchall()
    finally:
        con.close()


def _snap(store: Path, *args: str):
    return CliRunner().invoke(cli, ["--store", str(store), *args])


def _verify_json(store: Path) -> list[dict]:
    result = _snap(store, "verify", "--json")
    assert result.exit_code == 1, result.output
    return json.loads(result.stdout)["problems"]


def _append(store: Path) -> None:
    repo = Repository.open(str(store))
    try:
        StoreLog(repo.backend).append("exchange", "SB-1", "system", {"n": 1})
    finally:
        repo.close()


def _chain(store: Path):
    repo = Repository.open(str(store))
    try:
        return StoreLog(repo.backend).verify()
    finally:
        repo.close()


# -- 1. a line that is not text ---------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["x'00ff'", "CAST(x'7b22ff' AS TEXT)"], ids=["blob", "not-utf8"])
def test_a_row_that_holds_no_text_is_named_by_every_command(store, damage):
    _sql(store, f"UPDATE ozolith SET line = {damage} WHERE sequence = 5")
    problems = _verify_json(store)
    assert {"kind": "unparsable_line", "sequence": 5} in [
        {"kind": p["kind"], "sequence": p.get("sequence")} for p in problems], problems
    for args in (["verify"], ["status"], ["export-log", "-o", "out.jsonl"], ["replay", CONV, "--as", "r"]):
        result = _snap(store, *args)
        assert "internal error" not in result.output, (args, result.output)
        assert "5" in result.output and ("entry 5" in result.output or "row 5" in result.output), (args, result.output)
    assert _snap(store, "export-log", "-o", "out.jsonl").exit_code != 0
    report = _chain(store)
    assert not report.ok
    [finding] = report.findings  # the row's own finding, not also the walk's for its stand-in
    assert (finding.kind, finding.sequence, finding.line) == (FindingKind.UNPARSABLE_LINE, 5, 5)


def test_an_append_onto_a_row_that_holds_no_text_is_refused_naming_it(store):
    _sql(store, "UPDATE ozolith SET line = x'00ff' WHERE sequence = 12")
    before = _log_rows(store)
    with pytest.raises(LogError, match="entry 12, holds no line of text"):
        _append(store)
    assert _log_rows(store) == before


def test_a_row_holding_two_lines_is_found_and_not_exported(store):
    con = sqlite3.connect(store / "store.sqlite")
    five, six = (con.execute("SELECT line FROM ozolith WHERE sequence = ?", (n,)).fetchone()[0] for n in (5, 6))
    con.execute("UPDATE ozolith SET line = ? WHERE sequence = 5", (five + "\n" + six,))
    con.commit()
    con.close()
    report = _chain(store)
    assert [(f.kind, f.sequence) for f in report.findings] == [(FindingKind.UNPARSABLE_LINE, 5)], report.findings
    assert "more than one line" in report.findings[0].message
    result = _snap(store, "export-log", "-o", "out.jsonl")
    assert result.exit_code != 0 and "entry 5" in result.output, result.output


# -- 2. a row whose key is not its line's sequence --------------------------------------------------


def test_a_renumbered_row_is_found_naming_both_numbers(store):
    _sql(store, "UPDATE ozolith SET sequence = 100 WHERE sequence = 12")
    problems = [p for p in _verify_json(store) if p["kind"] == "row_mismatch"]
    assert len(problems) == 1 and "row 100" in problems[0]["message"] and "entry 12" in problems[0]["message"]
    status = _snap(store, "status")
    assert "row 100 holds entry 12" in status.output, status.output


def test_an_append_after_a_renumbered_row_is_refused(store):
    _sql(store, "UPDATE ozolith SET sequence = 100 WHERE sequence = 12")
    before = _log_rows(store)
    with pytest.raises(LogError, match="keyed 100 but holds entry 12"):
        _append(store)  # was: entry 13 written, chained onto the line of row 100
    assert _log_rows(store) == before


def test_a_row_holding_another_entrys_line_is_found_and_refused_as_a_base(store):
    _sql(store, "UPDATE ozolith SET line = (SELECT line FROM ozolith WHERE sequence = 11) WHERE sequence = 12")
    report = _chain(store)
    assert any(f.kind == FindingKind.ROW_MISMATCH and f.sequence == 12 and "holds entry 11" in f.message
               for f in report.findings), report.findings
    before = _log_rows(store)
    with pytest.raises(LogError, match="keyed 12 but holds entry 11"):
        _append(store)  # was: "UNIQUE constraint failed"
    assert _log_rows(store) == before


# -- 3. the entry_hash column (on SQLite and PostgreSQL) -------------------------------------------


@dataclass(frozen=True)
class Logged:
    """The demo store (12 log entries) on one backend: its location, its log table, and SQL run on it."""

    location: str
    table: str
    sql: Callable[[str], None]
    rows: Callable[[], list[tuple]]


def _pg_sql(url: str, statement: str) -> list[tuple]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(statement)
        return cur.fetchall() if cur.description else []


@pytest.fixture(params=["sqlite", "postgres"])
def logged(request, store, tmp_path):
    """The demo store's log on SQLite (a copy of the template) or on PostgreSQL (`snap demo` on a fresh database)."""
    if request.param == "sqlite":
        yield Logged(str(store), "ozolith", lambda statement: _sql(store, statement), lambda: _log_rows(store))
        return
    for factory in SHARED_FACTORIES["postgres"](tmp_path):
        url = factory.location
        result = _snap(url, "demo")
        assert result.exit_code == 0, result.output
        yield Logged(url, "snapstore_ozolith", lambda statement: _pg_sql(url, statement), lambda: _pg_sql(
            url, "SELECT sequence, entry_hash, line FROM snapstore_ozolith ORDER BY sequence"))


def test_an_edited_entry_hash_column_is_found(logged):
    """On PostgreSQL the column was never read: verify found nothing."""
    logged.sql(f"UPDATE {logged.table} SET entry_hash = '00' WHERE sequence = 7")
    problems = _verify_json(logged.location)
    assert [(p["kind"], p.get("sequence")) for p in problems] == [("row_mismatch", 7)], problems
    assert "entry_hash column" in problems[0]["message"]


def test_an_edited_column_of_the_last_row_does_not_fork_the_chain(logged):
    logged.sql(f"UPDATE {logged.table} SET entry_hash = '00' WHERE sequence = 12")
    _append(logged.location)  # appends chain onto the line, never the column
    report = _chain(logged.location)
    assert [(f.kind, f.sequence) for f in report.findings] == [(FindingKind.ROW_MISMATCH, 12)], report.findings
    assert report.last_sequence == 13


def test_a_resealed_line_is_found_at_its_own_row(logged):
    """A line replaced by another entry 7 sealed with the store's key: its hash is no longer its row's column.

    The chain only shows the break at entry 8 (its previous_hash); the column names row 7 itself
    (on PostgreSQL it was never compared: only entry 8 was reported).
    """
    repo = Repository.open(logged.location)
    try:
        key = StoreLog(repo.backend).key()
        old = StoreLog(repo.backend).get(7)
    finally:
        repo.close()
    assert old is not None
    forged = make_entry(key, sequence=7, previous_hash=old.previous_hash, event_type=old.event_type,
                        context_id=old.context_id, actor=old.actor, payload={"forged": True})
    quoted = forged.to_line().replace("'", "''")
    logged.sql(f"UPDATE {logged.table} SET line = '{quoted}' WHERE sequence = 7")
    before = logged.rows()
    report = _chain(logged.location)
    assert (FindingKind.ROW_MISMATCH, 7) in [(f.kind, f.sequence) for f in report.findings], report.findings
    [mismatch] = [f for f in report.findings if f.kind == FindingKind.ROW_MISMATCH]
    assert f"its line's entry_hash is {forged.entry_hash[:12]}" in mismatch.message
    assert any(f.kind == FindingKind.BROKEN_LINK and f.sequence == 8 for f in report.findings), report.findings
    problems = _verify_json(logged.location)
    assert ("row_mismatch", 7) in [(p["kind"], p.get("sequence")) for p in problems], problems
    assert logged.rows() == before  # verify changes nothing


# -- 4. the key ------------------------------------------------------------------------------------


def test_a_deleted_key_is_named_missing_and_appends_are_refused(store):
    _sql(store, "DELETE FROM meta WHERE key = 'ozolith/key'")
    repo = Repository.open(str(store))
    try:
        with pytest.raises(LogError, match="is missing though the log holds 12 entries"):
            StoreLog(repo.backend).key()
        report = verify(repo, StoreLog(repo.backend))
    finally:
        repo.close()
    assert [(p.kind, p.sequence) for p in report.problems] == [("unreadable", 12)], report.problems
    before = _log_rows(store)
    with pytest.raises(LogError, match="signing key .* is missing"):
        _append(store)  # never a new key signing new entries
    assert _log_rows(store) == before


# -- 5. log packs ----------------------------------------------------------------------------------


def _packed(store: Path) -> tuple[int, int]:
    assert _snap(store, "pack").exit_code == 0
    con = sqlite3.connect(store / "store.sqlite")
    try:
        return con.execute("SELECT first, last FROM ozolith_packs").fetchone()
    finally:
        con.close()


@pytest.mark.parametrize("data", ["x'00112233445566778899'", "'text, not bytes'"], ids=["bytes", "text"])
def test_library_verify_reports_a_damaged_log_pack(store, data):
    first, last = _packed(store)
    _sql(store, f"UPDATE ozolith_packs SET data = {data}")
    repo = Repository.open(str(store))
    try:
        report = verify(repo, StoreLog(repo.backend), CONV)  # was: LogError (or TypeError) raised
    finally:
        repo.close()
    unreadable = [p for p in report.problems if p.kind == "unreadable"]
    assert len(unreadable) == 1 and unreadable[0].sequence == first, report.problems
    assert f"{first}-{last}" in unreadable[0].message
    assert not [p for p in report.problems if p.kind in ("entry-missing", "log-unreadable")]
    for args in (["verify"], ["status"], ["export-log", "-o", "out.jsonl"]):
        result = _snap(store, *args)
        assert "internal error" not in result.output and f"{first}-{last}" in result.output, (args, result.output)


def test_packing_leaves_a_row_that_holds_no_text_loose(store):
    _sql(store, "UPDATE ozolith SET line = x'00ff' WHERE sequence = 5")
    result = _snap(store, "pack")
    assert result.exit_code == 0, result.output  # was: internal error (TypeError)
    assert _packed_rows(store) == (1, 4)
    assert [(f.kind, f.sequence) for f in _chain(store).findings] == [(FindingKind.UNPARSABLE_LINE, 5)]


def _packed_rows(store: Path) -> tuple[int, int]:
    con = sqlite3.connect(store / "store.sqlite")
    try:
        return con.execute("SELECT min(first), max(last) FROM ozolith_packs").fetchone()
    finally:
        con.close()


def test_an_append_with_the_loose_rows_gone_is_refused(store):
    _, last = _packed(store)
    _sql(store, "DELETE FROM ozolith")
    before = _log_rows(store)
    with pytest.raises(LogError, match=f"packs end at entry {last}"):
        _append(store)  # was: entry 1 again, a second chain
    assert _log_rows(store) == before


def test_a_shifted_pack_is_found(store):
    first, last = _packed(store)
    _sql(store, "UPDATE ozolith SET sequence = sequence + 1",
         f"UPDATE ozolith_packs SET first = {first + 1}, last = {last + 1}")
    report = _chain(store)
    assert report.findings and all(f.kind == FindingKind.ROW_MISMATCH for f in report.findings), report.findings
    assert f"row {first + 1} holds entry {first}" in report.findings[0].message


# -- guards ----------------------------------------------------------------------------------------


def test_a_line_that_is_json_but_no_entry_is_named(store):
    _sql(store, "UPDATE ozolith SET line = '[1, 2]' WHERE sequence = 5")
    problems = _verify_json(store)
    assert ("unparsable_line", 5) in [(p["kind"], p.get("sequence")) for p in problems]
    result = _snap(store, "replay", CONV, "--as", "r")
    assert result.exit_code != 0 and "entry 5" in result.output and "internal error" not in result.output


def test_a_row_with_no_line_is_named():
    backend = MemoryBackend()
    log = StoreLog(backend)
    for n in range(3):
        log.append("exchange", "SB-1", "system", {"n": n})
    backend._log[1] = (2, None)  # type: ignore[attr-defined]  # no NOT NULL constraint to stop it here
    report = log.verify()
    assert [(f.kind, f.sequence) for f in report.findings] == [(FindingKind.UNPARSABLE_LINE, 2)]
    with pytest.raises(LogError, match="entry 2 .*NULL"):
        list(log.entries())
    with pytest.raises(LogError, match="entry 2"):
        log.data()


def test_packing_onto_a_log_pack_that_holds_text_names_the_pack(store):
    """`snap pack` carries the newest pack's lines over: a pack whose data is text was an internal TypeError."""
    from snapstore.errors import DamagedRecord
    from snapstore.packing import pack

    repo = Repository.open(str(store))
    pack(repo, keep_log=1)
    repo.close()
    _sql(store, "UPDATE ozolith_packs SET data = 'not a pack' WHERE first = (SELECT max(first) FROM ozolith_packs)")
    repo = Repository.open(str(store))
    with pytest.raises(DamagedRecord, match="pack of 1-"):
        repo.backend.pack_log(1, 1000)
    repo.close()


# -- 6. export-log never writes a log that does not verify -----------------------------------------
#
# A row holding a line that is no entry of the chain was copied byte for byte into the exported file,
# which then failed `snap verify --ozolith FILE`: the export is now refused, naming the row, and writes
# nothing (no file, no folder, an older file left as it was).


def _tampered_line(store: Path) -> str:
    """Row 5's line with one field changed, so its entry_hash no longer matches it."""
    con = sqlite3.connect(store / "store.sqlite")
    try:
        (line,) = con.execute("SELECT line FROM ozolith WHERE sequence = 5").fetchone()
    finally:
        con.close()
    entry = json.loads(line)
    entry["actor"] = entry["actor"] + "x"
    return json.dumps(entry)


@pytest.mark.parametrize("line", ["{not json", "[1, 2]", "tampered"])
def test_export_log_refuses_a_row_that_would_not_verify(store, tmp_path, line):
    from .test_cli_defects import one_line_error

    if line == "tampered":
        line = _tampered_line(store)
    con = sqlite3.connect(store / "store.sqlite")
    con.execute("UPDATE ozolith SET line = ? WHERE sequence = 5", (line,))
    con.commit()
    con.close()
    older = tmp_path / "older.jsonl"
    older.write_text("an older export\n")
    for target in (tmp_path / "new" / "out.jsonl", older):
        error = one_line_error(_snap(store, "export-log", "-o", str(target)))  # was: written, exit 0
        assert "row 5" in error and "not exported" in error, error
    assert not (tmp_path / "new").exists() and older.read_text() == "an older export\n"
    assert not (tmp_path / ".ozolith_key").exists()


def test_export_log_refuses_a_log_whose_key_is_missing(store, tmp_path):
    """The file could not be verified without the key that signed it (it was written, with no key file)."""
    _sql(store, "DELETE FROM meta WHERE key = 'ozolith/key'")
    result = _snap(store, "export-log", "-o", str(tmp_path / "out.jsonl"))
    assert result.exit_code != 0 and "signing key" in result.output, result.output
    assert not (tmp_path / "out.jsonl").exists()



# -- 8. the log past a damaged log pack ---------------------------------------------------------------
#
# A damaged ozolith_packs row was one finding naming the pack, and nothing after it was checked: the chain
# walk, the row checks and verify's comparison of the store with the log's entries all stopped there.
# The walk now restarts after the pack (the entry after it cannot be linked to one before it; every later
# one is linked as usual), so damage further on is still found.


def _log_in_fours(store: Path) -> None:
    """The demo's 12 log entries as packs of 1-4 and 5-8, entries 9-12 loose; the pack of 5-8 damaged."""
    repo = Repository.open(str(store))
    try:
        while repo.backend.pack_log(4, 4, partial=True):
            pass
    finally:
        repo.close()
    con = sqlite3.connect(store / "store.sqlite")
    try:
        assert con.execute("SELECT first, last FROM ozolith_packs ORDER BY first").fetchall() == [(1, 4), (5, 8)]
    finally:
        con.close()
    _sql(store, "UPDATE ozolith_packs SET data = x'00112233445566778899' WHERE first = 5")


def _verify_store(store: Path):
    repo = Repository.open(str(store))
    try:
        return verify(repo, StoreLog(repo.backend))
    finally:
        repo.close()


def test_the_chain_is_walked_past_a_damaged_log_pack(store):
    _log_in_fours(store)
    report = _verify_store(store)
    # The pack alone: entry 9, the first after it, is not judged against entry 8 (which cannot be read).
    assert [(p.kind, p.sequence) for p in report.problems] == [("unreadable", 5)], report.problems
    assert "5-8" in report.problems[0].message
    assert report.entries == 8, report  # 1-4 and 9-12
    _sql(store, "DELETE FROM ozolith WHERE sequence = 11")  # past the pack: still found (was: not looked at)
    report = _verify_store(store)
    assert [(p.kind, p.sequence) for p in report.problems][:2] == [("unreadable", 5), ("gap", 11)], report.problems


def test_a_row_past_a_damaged_log_pack_is_still_checked(store):
    _log_in_fours(store)
    _sql(store, "UPDATE ozolith SET line = replace(line, '\"actor\": \"', '\"actor\": \"x') WHERE sequence = 10",
         "UPDATE ozolith SET entry_hash = '00' WHERE sequence = 12")
    problems = _verify_json(store)
    kinds = [(p["kind"], p.get("sequence")) for p in problems]
    assert ("unreadable", 5) in kinds and ("bad_hash", 10) in kinds and ("row_mismatch", 12) in kinds, problems


def test_verify_compares_the_store_with_the_entries_past_a_damaged_log_pack(store):
    """The entries after the pack are read for the cross-check too: a ref change naming one is checked."""
    _log_in_fours(store)
    _sql(store, "UPDATE reflog SET log_hash = 'ab' || substr(log_hash, 3) WHERE log_sequence = 10")
    problems = _verify_json(store)
    kinds = [p["kind"] for p in problems]
    assert "unreadable" in kinds and "entry-mismatch" in kinds, problems  # was: the pack alone
    assert "entry-missing" not in kinds, problems  # the pack's own entries are named once, not as missing

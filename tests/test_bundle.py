"""Bundles: export, check, import; round trips between backends; bad bundles change nothing.

The helpers here read and write the format from its description in
snapstore/bundle.py (and docs/maintenance.md), not from the module's code.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
from blake3 import blake3
from click.testing import CliRunner

from snapstore.audit import LinkedLog
from snapstore.bundle import BadBundle, export_bundle, import_bundle, read_bundle
from snapstore.cli.main import cli
from snapstore.errors import InvalidInput
from snapstore.objects import Event
from snapstore.orchestrator import ConversationOrchestrator
from snapstore.ozolith import OzolithLog
from snapstore.prune import prune
from snapstore.repository import Repository
from snapstore.verify import verify

from .factories import exchange, sample_state

MAGIC = b"SNAPSTORE-BUNDLE 1\n"
FRAME = struct.Struct(">cI")


def records(path: Path) -> list[tuple[bytes, bytes]]:
    data = path.read_bytes()
    assert data.startswith(MAGIC)
    out, offset = [], len(MAGIC)
    while offset < len(data):
        tag, length = FRAME.unpack_from(data, offset)
        out.append((tag, data[offset + FRAME.size : offset + FRAME.size + length]))
        offset += FRAME.size + length
    return out


def write_records(path: Path, items: list[tuple[bytes, bytes]]) -> None:
    """A bundle of these records (any trailer among them dropped) with a correct trailer."""
    body = MAGIC + b"".join(FRAME.pack(t, len(p)) + p for t, p in items if t != b"T")
    count = sum(1 for t, _ in items if t != b"T")
    trailer = json.dumps({"records": count, "blake3": blake3(body).hexdigest()}).encode()
    path.write_bytes(body + FRAME.pack(b"T", len(trailer)) + trailer)


def fill(repo: Repository, conv: str = "c", n: int = 5) -> None:
    state = sample_state(conv)
    for i in range(n):
        state["contexts"][1]["local_memory"].append(exchange(200 + i, "SB-2"))
        repo.commit(conv, state, event=Event("exchange", "SB-2", f"step {i}"))
    staging = repo.stage(conv)
    staging.workspace.update_fields("SB-4", {"status": "active"})
    repo.commit_staged(staging, event=Event("commit"), amend=True)


def snapshot_of(repo: Repository) -> dict:
    """Everything import must reproduce: heads, histories, states, reflog heads and links."""
    out = {}
    for conv in sorted(repo.conversation_ids()):
        out[conv] = {
            "log": [(i.id, i.snapshot.root) for i in repo.log(conv)],
            "state": repo.load(conv).to_json(),
            "reflog": [(e.new, e.log_sequence, e.log_hash) for e in repo.reflog(conv)],
        }
    return out


def unchanged(repo: Repository):
    return (repo.backend.list_refs(), sorted(repo.backend.find_ids("", limit=1 << 40)), repo.backend.list_meta(),
            {c: len(repo.reflog(c)) for c in repo.conversation_ids()})


def test_round_trip_from_every_backend_to_sqlite(repo, tmp_path):
    fill(repo, "c")
    fill(repo, "d", n=2)
    prune(repo, "d", keep_last=1)
    path = tmp_path / "out.bundle"
    exported = export_bundle(repo, ["c", "d"], path)
    assert exported.objects == len(read_bundle(path).objects)
    target = Repository.init(str(tmp_path / "target"))
    report = import_bundle(target, path)
    assert [a.action for a in report.actions] == ["create", "create"] and report.new_objects == report.objects
    _same_history(repo, target)
    assert target.fsck().ok and verify(target).ok
    before = unchanged(target)
    again = import_bundle(target, path)  # idempotent
    assert not again.changed and [a.action for a in again.actions] == ["up-to-date"] * 2
    assert unchanged(target) == before
    back = tmp_path / "back.bundle"
    export_bundle(target, ["c", "d"], back)
    assert not import_bundle(repo, back).changed  # and back: the source is up to date


def _same_history(source: Repository, target: Repository) -> None:
    for conv in ("c", "d"):
        a, b = snapshot_of(source)[conv], snapshot_of(target)[conv]
        assert a["log"] == b["log"] and a["state"] == b["state"]
        # The target's reflog passes through the source's heads, in order, prune-superseded ones aside.
        heads_a = [new for new, _, _ in a["reflog"]]
        heads_b = [new for new, _, _ in b["reflog"]]
        assert heads_b[-1] == a["log"][0][0] and heads_b == [h for h in heads_a if h in heads_b]


def test_round_trip_from_memory_into_every_backend(repo, tmp_path):
    source = Repository.init("memory:")
    fill(source)
    path = tmp_path / "in.bundle"
    export_bundle(source, ["c"], path)
    before = unchanged(repo)
    dry = import_bundle(repo, path, dry_run=True)
    assert dry.changed and unchanged(repo) == before
    import_bundle(repo, path)
    assert snapshot_of(repo)["c"]["log"] == snapshot_of(source)["c"]["log"]
    assert repo.load("c").to_json() == source.load("c").to_json()
    # Same heads in the same order, amended one included; reasons say where they came from.
    assert [e.new for e in repo.reflog("c")] == [e.new for e in source.reflog("c")]
    assert all(e.reason.startswith("import: ") for e in repo.reflog("c"))
    assert repo.fsck().ok
    after = unchanged(repo)
    assert not import_bundle(repo, path).changed and unchanged(repo) == after


def test_fast_forward_conflict_and_force(repo, tmp_path):
    fill(repo, "c", n=2)
    first = tmp_path / "first.bundle"
    export_bundle(repo, ["c"], first)
    state = repo.load("c").to_json()
    state["contexts"][0]["status"] = "archived"
    repo.commit("c", state)
    second = tmp_path / "second.bundle"
    export_bundle(repo, ["c"], second)

    other = Repository.init("memory:")
    import_bundle(other, first)
    assert [a.action for a in import_bundle(other, second).actions] == ["fast-forward"]
    assert other.head("c") == repo.head("c")

    diverged = Repository.init("memory:")
    import_bundle(diverged, first)
    mine = diverged.load("c").to_json()
    mine["contexts"][0]["status"] = "failed"
    local_head = diverged.commit("c", mine).snapshot
    before = unchanged(diverged)
    with pytest.raises(InvalidInput, match="does not descend from it.*--force"):
        import_bundle(diverged, second)
    assert unchanged(diverged) == before
    report = import_bundle(diverged, second, force=True)
    assert [a.action for a in report.actions] == ["replace"] and diverged.head("c") == repo.head("c")
    assert local_head in [e.old for e in diverged.reflog("c")] and diverged.fsck().ok


def test_a_bad_object_is_named_and_nothing_changes(repo, tmp_path):
    fill(repo)
    path = tmp_path / "b.bundle"
    export_bundle(repo, ["c"], path)
    items = records(path)
    index = next(i for i, (t, p) in enumerate(items) if t == b"O" and p.startswith(b"node "))
    tag, payload = items[index]
    bad_id = payload.split(b"\n", 1)[0].split(b" ")[1].decode()
    items[index] = (tag, payload[:-10] + b"X" + payload[-9:])
    write_records(path, items)
    target = Repository.init("memory:")
    before = unchanged(target)
    with pytest.raises(BadBundle, match=f"bundle object {bad_id} is corrupt"):
        import_bundle(target, path)
    assert unchanged(target) == before and target.head("c") is None


def test_a_missing_object_is_named(tmp_path):
    source = Repository.init("memory:")
    fill(source)
    path = tmp_path / "b.bundle"
    export_bundle(source, ["c"], path)
    items = records(path)
    index = next(i for i, (t, p) in enumerate(items) if t == b"O" and p.startswith(b"chunk "))
    missing = items.pop(index)[1].split(b"\n", 1)[0].split(b" ")[1].decode()
    write_records(path, items)
    with pytest.raises(BadBundle, match=f"bundle is missing chunk {missing}"):
        import_bundle(Repository.init("memory:"), path)


@pytest.mark.parametrize("damage", ["truncate", "flip", "trailing", "no-trailer"])
def test_damaged_bundles_are_refused(tmp_path, damage):
    source = Repository.init("memory:")
    fill(source)
    path = tmp_path / "b.bundle"
    export_bundle(source, ["c"], path)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        header = data.index(b'"created":"') + len(b'"created":"')
        data[header] = ord("3") if data[header] != ord("3") else ord("4")  # still valid JSON, wrong checksum
    elif damage == "trailing":
        data += FRAME.pack(b"R", 2) + b"{}"
    else:
        items = records(path)
        data = bytearray(MAGIC + b"".join(FRAME.pack(t, len(p)) + p for t, p in items if t != b"T"))
    path.write_bytes(bytes(data))
    target = Repository.init("memory:")
    with pytest.raises(BadBundle):
        import_bundle(target, path)
    assert target.head("c") is None and not target.backend.count_objects()[0]


def test_log_entries_travel_and_are_checked(tmp_path):
    repo = Repository.init(str(tmp_path / "store"))
    log = OzolithLog(tmp_path / "log.jsonl")
    orch = ConversationOrchestrator(repo, "c", audit=LinkedLog(log))
    root = orch.create_root_context("root")
    orch.add_exchange(root, "q", "a")
    orch.pause_context(root)
    path = tmp_path / "b.bundle"
    report = export_bundle(repo, ["c"], path, log=log)
    assert report.log_entries == 3 and len(read_bundle(path).log_entries) == 3
    target = Repository.init(str(tmp_path / "target"))
    import_bundle(target, path, log=log)  # the same log: every entry matches
    assert verify(target, log).ok
    # A bundle whose reflog names an entry it does not carry is refused.
    items = [(t, p) for t, p in records(path) if not (t == b"E" and b'"sequence": 2,' in p)]
    write_records(path, items)
    with pytest.raises(BadBundle, match="does not hold log entry 2"):
        read_bundle(path)


def test_cli_export_import_and_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    source, target = str(tmp_path / "source"), str(tmp_path / "target")
    repo = Repository.init(source)
    fill(repo)
    fill(repo, "d", n=1)
    repo.close()
    Repository.init(target).close()
    out = runner.invoke(cli, ["--store", source, "export", "--all", "-o", "all.bundle", "--json"])
    assert out.exit_code == 0, out.output
    exported = json.loads(out.stdout)
    assert set(exported) == {"path", "conversations", "objects", "reflog_entries", "log_entries", "bytes"}
    assert exported["conversations"] == ["c", "d"]
    result = runner.invoke(cli, ["--store", target, "import", "all.bundle", "--json"])
    assert result.exit_code == 0, result.output
    imported = json.loads(result.stdout)
    assert set(imported) == {"path", "dry_run", "changed", "objects", "new_objects", "log_entries", "conversations"}
    assert [c["action"] for c in imported["conversations"]] == ["create", "create"]
    again = runner.invoke(cli, ["--store", target, "import", "all.bundle"])
    assert again.exit_code == 0 and "nothing to import" in again.stdout
    Path("bad.bundle").write_bytes(Path("all.bundle").read_bytes()[:-7])
    # Naming no conversation (and no --all) is a usage error: exit 2.
    for args, code in ((["import", "bad.bundle"], 1), (["import", "nowhere.bundle"], 1),
                       (["export", "-o", "x.bundle"], 2), (["export", "ghost", "-o", "x.bundle"], 1)):
        bad = runner.invoke(cli, ["--store", target, *args])
        assert bad.exit_code == code and "Traceback" not in bad.output, bad.output
        assert len([line for line in bad.stderr.splitlines() if line.strip()]) == 1, bad.stderr
    assert not Path("x.bundle").exists()


def test_bundle_between_postgres_and_sqlite(tmp_path):
    """Export from PostgreSQL, import into SQLite and back into a second PostgreSQL store."""
    from tests.servers import drop_pg_database, fresh_pg_database, require_pg

    server = require_pg()
    urls = [fresh_pg_database(server), fresh_pg_database(server)]
    try:
        pg = Repository.init(urls[0])
        fill(pg)
        export_bundle(pg, ["c"], tmp_path / "pg.bundle")
        lite = Repository.init(str(tmp_path / "lite"))
        import_bundle(lite, tmp_path / "pg.bundle")
        export_bundle(lite, ["c"], tmp_path / "lite.bundle")
        pg2 = Repository.init(urls[1])
        import_bundle(pg2, tmp_path / "lite.bundle")
        assert snapshot_of(pg2)["c"]["log"] == snapshot_of(pg)["c"]["log"]
        assert pg2.load("c").to_json() == pg.load("c").to_json() and pg2.fsck().ok
        for r in (pg, lite, pg2):
            r.close()
    finally:
        for url in urls:
            drop_pg_database(url)


def test_bundle_and_log_export_get_an_ordinary_files_mode(tmp_path, monkeypatch):
    """Files snapstore writes for people get 0666 less the umask (the key file stays 0600)."""
    import stat

    repo = Repository.init(str(tmp_path / "s"))
    fill(repo, "c")
    old = os.umask(0o027)
    try:
        export_bundle(repo, ["c"], tmp_path / "b.bundle")
        assert stat.S_IMODE((tmp_path / "b.bundle").stat().st_mode) == 0o640
        (tmp_path / "b.bundle").chmod(0o604)  # a bundle replaced keeps its mode
        export_bundle(repo, ["c"], tmp_path / "b.bundle")
        assert stat.S_IMODE((tmp_path / "b.bundle").stat().st_mode) == 0o604
    finally:
        os.umask(old)
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_file_that_is_no_bundle_is_refused_from_its_first_bytes_and_a_folder_is_one_line(tmp_path):
    """Before, the whole file was read before its magic line was looked at (`snap import /dev/zero` never
    ended), and a folder was an internal error. Here the file is a pipe whose writer keeps it open until the
    read is over: a reader that waits for the end of the file only returns once the writer gives up."""
    import threading

    fifo = tmp_path / "not-a-bundle"
    os.mkfifo(fifo)
    done, gave_up = threading.Event(), []

    def writer() -> None:
        with open(fifo, "wb") as pipe:
            pipe.write(b"garbage, and more to come\n")
            pipe.flush()
            gave_up.append(not done.wait(10))

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        with pytest.raises(BadBundle, match="is not a snapstore bundle"):
            read_bundle(fifo)
    finally:
        done.set()
        thread.join()
    assert gave_up == [False]  # refused while the pipe was still open: not read to its end
    with pytest.raises(InvalidInput, match="cannot read the bundle"):
        read_bundle(tmp_path)

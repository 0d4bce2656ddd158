"""Hostile or damaged input from outside: zstd frames that say they hold more than the store records
(decompression bombs), bodies a bucket should not hold, bundles whose records are not what the format says.

Each is refused with an error naming the object, pack or record, without allocating what the input
claims, and leaves stored data as it was. A frame of 2 GiB of zeros takes 65 KB and 0.4 s to make; the
tests that decode one run it in a child process whose address space is capped well below that
(``RLIMIT_AS``), so that a decoder that believes the frame fails there instead of eating the machine.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import re
import sqlite3
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest
import zstandard
from click.testing import CliRunner

from snapstore import packs
from snapstore.backends.base import StoredObject
from snapstore.bundle import BadBundle, export_bundle, import_bundle
from snapstore.cli.main import cli
from snapstore.errors import CorruptObject
from snapstore.objects import Event, hash_object
from snapstore.repository import Repository

from .factories import sample_state
from .test_bundle import fill, records, unchanged, write_records

TWO_GIB = 2 << 30
# The child's whole address space: Python, snapstore and SQLite fit in a fraction of it, 2 GiB does not.
CHILD_LIMIT = 768 << 20


def sealed(frame: bytes) -> bytes:
    """``frame`` as snapstore stores it: the zstd frame, then its CRC-32."""
    return frame + zlib.crc32(frame).to_bytes(4, "little")


@functools.lru_cache(maxsize=None)
def zeros_frame(total: int, prefix: bytes = b"", declare: bool = True) -> bytes:
    """A zstd frame of ``prefix`` then zeros, ``total`` bytes in all, streamed (never held whole)."""
    out = zstandard.ZstdCompressor(level=1, write_content_size=declare).compressobj(size=total if declare else -1)
    parts, left, chunk = [out.compress(prefix)], total - len(prefix), bytes(16 << 20)
    while left:
        parts.append(out.compress(chunk[: min(left, len(chunk))]))
        left -= min(left, len(chunk))
    parts.append(out.flush())
    return b"".join(parts)


def claiming(size: int) -> bytes:
    """A 17-byte zstd frame whose header says it holds ``size`` bytes (it holds one)."""
    rle_block = (1 | 1 << 1 | 1 << 3).to_bytes(3, "little") + b"\0"  # last block, RLE, one byte
    return b"\x28\xb5\x2f\xfd" + bytes([0xE0]) + struct.pack("<Q", size) + rle_block


def in_bounded_child(code: str) -> str:
    """What ``code`` prints, run in a child process that cannot map more than :data:`CHILD_LIMIT` bytes."""
    prelude = f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({CHILD_LIMIT}, {CHILD_LIMIT}))\n"
    done = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


# -- loose objects ------------------------------------------------------------------


def test_a_frame_saying_it_holds_more_than_the_recorded_size_is_refused_before_allocating(store):
    """On every backend (the S3 body, a PostgreSQL or SQLite row): a frame's declared size is checked
    against the object's recorded size before zstd allocates it (this one says 2^60 bytes)."""
    repo = store.init()
    repo.commit("c", sample_state("c"))
    victim = repo.head("c")
    stored = repo.backend.get_objects([victim])[victim]
    repo.backend.replace_objects([StoredObject(victim, stored.kind, stored.size, sealed(claiming(1 << 60)))])
    fresh = store.open()  # nothing cached
    with pytest.raises(CorruptObject, match=f"{victim}.*its zstd frame holds {1 << 60} bytes, "
                                            f"its recorded size is {stored.size}"):
        fresh.read_many([victim])
    assert [p.kind for p in fresh.fsck().problems] == ["corrupt"]


@pytest.mark.parametrize("declare", [True, False], ids=["declared", "undeclared"])
def test_a_two_gib_bomb_in_a_store_row_is_named_within_bounded_memory(tmp_path, declare):
    """A tampered row whose 65 KB frame expands to 2 GiB of zeros: an error naming the object, in a
    process that could not hold 2 GiB (a frame without a content size is decoded into at most the
    recorded size)."""
    location = tmp_path / "store"
    repo = Repository.init(str(location))
    repo.commit("c", sample_state("c"))
    victim = repo.head("c")
    repo.close()
    db = sqlite3.connect(location / "store.sqlite")
    db.execute("UPDATE objects SET data = ? WHERE id = ?",
               (sealed(zeros_frame(TWO_GIB, declare=declare)), bytes.fromhex(victim)))
    db.commit()
    db.close()
    said = in_bounded_child(f"""
        from snapstore.repository import Repository
        from snapstore.errors import CorruptObject
        repo = Repository.open({str(location)!r})
        try:
            repo.read_many([{victim!r}])
        except CorruptObject as exc:
            print(exc)
    """)
    assert said.startswith(f"corrupt object {victim}:"), said
    assert ("holds 2147483648 bytes" if declare else "cannot decompress") in said, said


# -- packs ----------------------------------------------------------------------------


def _pack_head(*members: tuple[str, str, int]) -> bytes:
    """An object pack's header and index (docs/format.md) for ``(id, kind, size)`` members."""
    out = struct.pack("<4sBI", b"SNPK", 1, len(members))
    for oid, kind, size in members:
        out += bytes.fromhex(oid[:16]) + bytes([len(kind)]) + kind.encode() + struct.pack("<I", size)
    return out


def test_a_pack_frame_saying_it_holds_more_than_its_index_is_refused_within_bounded_memory(tmp_path):
    body = b'{"x":1}'
    oid = hash_object("chunk", body)
    frames = {
        # 2 GiB of zeros: no pack header at all.
        "zeros": zeros_frame(TWO_GIB),
        # A sound header and index for one 7-byte member, then zeros up to 2 GiB.
        "indexed": zeros_frame(TWO_GIB, prefix=_pack_head((oid, "chunk", len(body))) + body),
        # A header that says 2^60 bytes.
        "claim": claiming(1 << 60),
    }
    for name, frame in frames.items():
        (tmp_path / name).write_bytes(sealed(frame))
    said = in_bounded_child(f"""
        from pathlib import Path
        from snapstore.packs import decode_objects
        from snapstore.errors import CorruptObject
        for name in {list(frames)!r}:
            try:
                decode_objects((Path({str(tmp_path)!r}) / name).read_bytes(), 7, {oid!r})
            except CorruptObject as exc:
                print(name, "|", exc)
    """).splitlines()
    assert len(said) == 3, said
    for line in said:
        assert f"object {oid}" in line and "stored in a damaged pack: pack 7" in line, line
    assert "pack 7 has an unknown header" in said[0]
    assert "pack 7's zstd frame says it holds 2147483648 bytes, its index 34" in said[1]
    assert "pack 7 cannot be decompressed" in said[2]


def test_a_pack_holding_one_big_object_is_read_through_the_checked_path():
    """A pack holds one object bigger than MAX_BYTES alone; its frame declares more than an ordinary
    pack, so it is believed only after its index adds up, which an honest pack's does."""
    body = json.dumps({"text": "".join(f"{i:x}" for i in range(600_000))}).encode()
    assert len(body) > 2 * packs.MAX_BYTES  # more than a pack of small objects and its index can be
    member = packs.Member(hash_object("chunk", body), "chunk", body)
    assert packs.decode_objects(packs.encode_objects([member]), 3).get(member.id) == ("chunk", body)


def test_a_pack_header_listing_more_members_than_a_pack_holds_is_named():
    stored = sealed(zstandard.ZstdCompressor().compress(struct.pack("<4sBI", b"SNPK", 1, 0xFFFFFFFF)))
    with pytest.raises(CorruptObject, match="pack 9 lists 4294967295 members, more than a pack holds"):
        packs.decode_objects(stored, 9, "x")


def _packed_demo_store(tmp_path) -> Path:
    """`snap demo`'s store (its log kept in the store), its log lines and reflog rows packed."""
    location = tmp_path / "store"
    for args in (["demo"], ["pack"]):
        result = CliRunner().invoke(cli, ["--store", str(location), *args])
        assert result.exit_code == 0, result.output
    return location


def test_a_two_gib_bomb_in_a_log_or_reflog_pack_is_named_within_bounded_memory(tmp_path):
    """A pack of log lines or reflog rows records no size its frame could be checked against: a tampered
    row whose 65 KB frame says (and holds) 2 GiB was decompressed whole, in a process that could not hold
    it ("cannot allocate" here, a 2 GiB allocation elsewhere). Refused from the frame's length, naming
    the log entries, the reflog pack's rows and the ref whose reflog was read."""
    location = _packed_demo_store(tmp_path)
    db = sqlite3.connect(location / "store.sqlite")
    log_pack = db.execute("SELECT first, last FROM ozolith_packs ORDER BY first").fetchone()
    reflog_pack = db.execute("SELECT first, last FROM reflog_packs ORDER BY first").fetchone()
    assert log_pack is not None and reflog_pack is not None
    bomb = sealed(zeros_frame(TWO_GIB))
    db.execute("UPDATE ozolith_packs SET data = ? WHERE first = ?", (bomb, log_pack[0]))
    db.execute("UPDATE reflog_packs SET data = ? WHERE first = ?", (bomb, reflog_pack[0]))
    db.commit()
    (ref,) = [name for (name,) in db.execute("SELECT name FROM refs")]
    db.close()
    said = in_bounded_child(f"""
        from snapstore.repository import Repository
        from snapstore.errors import DamagedRecord, LogError
        repo = Repository.open({str(location)!r})
        for read in (repo.backend.log_lines, lambda: repo.backend.reflog({ref!r}),
                     lambda: repo.backend.reflog_newest({ref!r}, 10 ** 6)):
            try:
                read()
            except (DamagedRecord, LogError) as exc:
                print(exc)
    """).splitlines()
    assert len(said) == 3, said
    claim = f"its zstd frame of {len(bomb) - 4} bytes says it holds {TWO_GIB} bytes, more than an honest pack"
    assert f"log entries {log_pack[0]}-{log_pack[1]} are damaged: {claim}" in said[0], said[0]
    for line in said[1:]:
        assert (f"the reflog pack of rows {reflog_pack[0]}-{reflog_pack[1]} (reading the reflog of {ref!r}) "
                f"is damaged: {claim}") in line, line


def test_an_honest_pack_of_lines_far_above_the_floor_is_still_read(monkeypatch):
    """The bound is the frame's length times LINES_RATIO: a big pack of lines carrying hashes (as every log
    line and reflog row does) and text compresses far less than that, and is read as written (the floor
    lowered to 1 MiB, so that a pack of a few MB is far above it)."""
    monkeypatch.setattr(packs, "LINES_FLOOR", 1 << 20)
    rng = random.Random(61)
    words = ["exchange", "sidebar", "merge", "the", "a", "context", "question", "answer", "\u00fc", "\U0001f600"]
    lines = [json.dumps({"sequence": i, "hash": hashlib.sha256(bytes(i)).hexdigest(),
                         "payload": " ".join(rng.choice(words) for _ in range(2_000))}) for i in range(1, 201)]
    stored = packs.encode_lines(lines)
    assert zstandard.frame_content_size(stored[:-4]) > packs.LINES_FLOOR
    assert packs.decode_lines(stored, 1, 200) == lines



def test_lines_a_pack_could_not_be_read_back_from_stay_loose(tmp_path, monkeypatch):
    """What reading refuses is never written: reflog rows whose pack would say it holds more than the
    bound (here lowered to 1 MiB; messages of 2 MB repeating one letter) are left loose, readable, and
    `snap pack` says which rows and why, instead of packing them out of reach."""
    monkeypatch.setattr(packs, "LINES_FLOOR", 1 << 20)
    location = tmp_path / "store"
    repo = Repository.init(str(location))
    state = sample_state("c")
    for i in range(3):
        state["active_context_id"] = ("SB-1", "SB-2", "SB-3")[i]
        assert repo.commit("c", state, event=Event("note", message="a" * (2 << 20))).created
    before = [entry.reason for entry in repo.reflog("c")]
    result = CliRunner().invoke(cli, ["--store", str(location), "pack"])
    assert result.exit_code != 0
    assert re.search(r"cannot pack the reflog rows 1-2: \d+ bytes of lines compress to \d+, more than a pack "
                     r"of lines may say it holds \(1048576\); they stay loose", result.output), result.output
    with sqlite3.connect(location / "store.sqlite") as db:
        assert db.execute("SELECT count(*) FROM reflog").fetchone()[0] == 3
    assert [entry.reason for entry in Repository.open(str(location)).reflog("c")] == before


# -- S3 bodies ------------------------------------------------------------------------


@pytest.mark.parametrize("store", ["s3"], indirect=True)
def test_a_bucket_body_longer_than_its_object_can_take_is_not_downloaded(store):
    """The index (PostgreSQL) says how big an object is; a bucket body far longer than a frame of that
    size can be is refused after reading no more than that bound, naming the object and its key."""
    from tests.servers import require_s3, s3_client
    from tests.shared_backends import object_key

    repo = store.init()
    repo.commit("c", sample_state("c"))
    victim = repo.head("c")
    stored = repo.backend.get_objects([victim])[victim]
    client = s3_client(require_s3())
    bucket = repo.backend.s3.bucket  # type: ignore[attr-defined]
    body = client.get_object(Bucket=bucket, Key=object_key(victim))["Body"].read()
    header = body.partition(b"\n")[0]
    hostile = header + b"\n" + stored.data + bytes(8 << 20)
    client.put_object(Bucket=bucket, Key=object_key(victim), Body=hostile)
    with pytest.raises(CorruptObject, match=f"{victim}: .*{victim[2:]} holds {len(hostile)} bytes, "
                                            f"more than the \\d+ an object of {stored.size} bytes can take"):
        store.open().read_many([victim])


# -- bundles from elsewhere -------------------------------------------------------------


def _edit(kind: bytes, change, which: int = 0):
    """A damage: the ``which``-th record of ``kind`` replaced by ``change(its parsed JSON)``, as JSON."""
    def damage(items: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        found = [i for i, (t, _) in enumerate(items) if t == kind][which]
        items[found] = (kind, json.dumps(change(json.loads(items[found][1]))).encode())
        return items
    return damage


def _without(key: str):
    return lambda value: {k: v for k, v in value.items() if k != key}


def _with(key: str, new: object):
    return lambda value: {**value, key: new}


def _ref_twice(items: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    refs = [json.loads(p) for t, p in items if t == b"R"]
    return items + [(b"R", json.dumps({"ref": refs[0]["ref"], "target": refs[1]["target"]}).encode())]


BAD_RECORDS = {
    # Records that are JSON but not objects: each stopped import with an AttributeError or TypeError.
    "ref-is-a-list": (_edit(b"R", lambda v: [v]), "bundle ref record \\d+ is a JSON list, not an object"),
    "reflog-entry-is-text": (_edit(b"G", lambda v: "x"), "bundle reflog record \\d+ is a JSON str, not an object"),
    "log-entry-is-a-number": (lambda items: items + [(b"E", b"5")],
                              "bundle log entry record \\d+ is a JSON int, not an object"),
    # Reflog fields import writes into the store: each was stored as a damaged row (fsck: damaged-row),
    # stopped import with a KeyError, or (too big for a 64-bit column) stopped it halfway.
    "reflog-without-reason": (_edit(b"G", _without("reason")), "its reason is None, not text"),
    "reflog-reason-a-number": (_edit(b"G", _with("reason", 5), which=-1), "its reason is 5, not text"),
    "reflog-sequence-text": (_edit(b"G", _with("log_sequence", "abc")), "its log_sequence is 'abc', not a non"),
    "reflog-sequence-too-big": (_edit(b"G", _with("log_sequence", 1 << 64), which=-1),
                                "its log_sequence is 18446744073709551616, more than a 64-bit integer holds"),
    "reflog-hash-a-number": (_edit(b"G", _with("log_hash", 7)), "its log_hash is 7, not text"),
    "reflog-new-a-list": (_edit(b"G", _with("new", [1])), "its new is \\[1\\], not an object id"),
    "ref-target-not-an-id": (_edit(b"R", _with("target", 12)), "ref record \\d+ does not name a ref and a snapshot"),
    # Two heads for one ref: the last one used to win silently.
    "ref-twice": (_ref_twice, "bundle names ref 'conversations/c' twice \\(again in record \\d+\\)"),
}


@pytest.fixture
def two_conversations(tmp_path) -> Path:
    source = Repository.init("memory:")
    fill(source)
    fill(source, "d", n=2)
    path = tmp_path / "good.bundle"
    export_bundle(source, ["c", "d"], path)
    return path


@pytest.mark.parametrize("damage", BAD_RECORDS)
def test_a_bundle_record_that_is_not_what_the_format_says_is_named_and_changes_nothing(
        tmp_path, two_conversations, damage):
    change, message = BAD_RECORDS[damage]
    path = tmp_path / "bad.bundle"
    write_records(path, change(records(two_conversations)))
    target = Repository.init(str(tmp_path / "target"))
    target.commit("other", sample_state("other"))
    before = unchanged(target)
    with pytest.raises(BadBundle, match=message):
        import_bundle(target, path)
    assert unchanged(target) == before and target.fsck().ok


def test_a_trailer_that_is_not_an_object_is_named(tmp_path, two_conversations):
    items = [(t, p) for t, p in records(two_conversations) if t != b"T"]
    path = tmp_path / "bad.bundle"
    path.write_bytes(b"SNAPSTORE-BUNDLE 1\n" + b"".join(struct.pack(">cI", t, len(p)) + p for t, p in items)
                     + struct.pack(">cI", b"T", 2) + b"[]")
    with pytest.raises(BadBundle, match="bundle trailer is a JSON list, not an object"):
        import_bundle(Repository.init("memory:"), path)


def test_snap_import_of_a_mistyped_record_is_one_line_and_exit_1(tmp_path, two_conversations, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_records(Path("bad.bundle"), _edit(b"G", lambda v: "x")(records(two_conversations)))
    Repository.init("target").close()
    result = CliRunner().invoke(cli, ["--store", "target", "import", "bad.bundle"])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "is a JSON str, not an object" in lines[0], result.stderr

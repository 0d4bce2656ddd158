"""OZOLITH log: byte compatibility with the client, keys, anchors, reading, queries, refusals."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import stat
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from snapstore.errors import InvalidInput, LogError
from snapstore.ozolith import (
    KEY_FILE_NAME,
    CorruptEntry,
    EventType,
    FindingKind,
    LogEntry,
    OzolithLog,
    TornLine,
    UnparsableLine,
    WrongKey,
    anchors_path_for,
    utc_timestamp,
    verify_chain,
)
from snapstore.ozolith.anchors import AnchorFileError, read_anchors, serialize_anchors

from .ozolith_client_reference import (
    ReferenceWriter,
    read_lines,
    reference_anchor_problems,
    reference_verify,
)

KEY = "5f" * 32  # a key string as the client stores it: 64 hex characters

TRICKY_PAYLOADS: list[dict] = [
    {
        "text": "naïve café — Grüße, данные, 日本語の会話",
        "emoji": "🙂🚀 and a family 👩‍👩‍👧 and a flag 🇫🇷",
        "quotes": 'he said "hi" and \'bye\'',
        "backslash": "C:\\path\\to\\file and \\n that is not a newline",
        "nul": "a\u0000b",
        "controls": "\t\r\n\x1f\x7f",
        "lone_surrogate": "\ud800",
    },
    {"nested": {"list": [1, 2.5, -0.0, 1e-07, 10**30, True, False, None, {"deep": [[{"x": "é"}]]}],
                "empty": {}, "empty_list": []}},
    {"z": 1, "a": 2, "M": {"b": 1, "a": 2}, "é": "keys out of order and non-ASCII"},
    {"looks_like_a_line": '{"sequence": 1, "timestamp": "2025-01-01T00:00:00Z"}',
     '"timestamp":': "a key that looks like where the signature is spliced in"},
    {},
    {"query_hash": hashlib.sha256(b"q").hexdigest(), "response_hash": hashlib.sha256(b"r").hexdigest(),
     "confidence": 0.85, "uncertainty_flags": ["ambiguous_request"], "token_count": 812},
]
EVENTS = [
    ("session_start", "SYSTEM", "system", {"session_id": "S-1", "interface": "cli"}),
    ("sidebar_spawn", "SB-2", "system", {"spawn_reason": "dig into «bug»", "parent_context": "SB-1",
                                         "child_id": "SB-2", "inherited_count": 3}),
    ("a_type_the_client_does_not_know", "SB-2", "assistant", {"anything": ["goes", {"here": 1}]}),
    ("sidebar_merge", "SB-1", "assistant", {"merge_summary": "found it ✅", "parent_context": "SB-1",
                                            "summary_hash": hashlib.sha256("found it ✅".encode()).hexdigest()}),
]


def fill(log: OzolithLog) -> None:
    """Tricky exchanges, known and unknown events, and two anchors."""
    for payload in TRICKY_PAYLOADS:
        log.append("exchange", "SB-1", "human", payload)
    log.create_anchor("manual")
    for event in EVENTS:
        log.append(*event)
    log.create_anchor("event:sidebar_merge")
    log.append(EventType.SESSION_END, "SYSTEM", "system", {"session_id": "S-1", "interface": "cli"})


def raw_lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


# -- byte compatibility ---------------------------------------------------------


def test_snapstore_log_verifies_under_the_reference(tmp_path: Path) -> None:
    log = OzolithLog(tmp_path / "ozolith.jsonl", key=KEY)
    fill(log)
    assert reference_verify(str(log.path), KEY) == (True, None)
    assert reference_anchor_problems(str(log.path), KEY) == []
    written = read_lines(str(log.path))
    assert [entry.to_dict() for entry in log.entries()] == written
    assert len(written) == len(TRICKY_PAYLOADS) + len(EVENTS) + 3


def test_reference_log_verifies_under_snapstore_entry_for_entry(tmp_path: Path) -> None:
    path = tmp_path / "ozolith.jsonl"
    writer = ReferenceWriter(str(path), KEY)
    expected = [writer.append("exchange", f"SB-{n}", "assistant", payload) for n, payload in enumerate(TRICKY_PAYLOADS)]
    writer.create_anchor("count_threshold")
    expected += [writer.append(*event) for event in EVENTS]
    expected = read_lines(str(path))

    report = verify_chain(path, KEY)
    assert report.ok, report.findings
    assert report.last_sequence == len(expected)
    assert report.root_hash == expected[-1]["entry_hash"]
    entries = list(OzolithLog(path, key=KEY).entries())
    assert [entry.to_dict() for entry in entries] == expected
    assert all(entry.verify(KEY.encode()) for entry in entries)
    # Re-serialising gives every line back byte for byte, and the anchors file too.
    assert [(entry.to_line() + "\n").encode() for entry in entries] == raw_lines(path)
    anchors_file = anchors_path_for(path)
    assert serialize_anchors(read_anchors(anchors_file)) == anchors_file.read_bytes()


def test_files_are_byte_identical_to_the_reference_writer(tmp_path: Path) -> None:
    ours = OzolithLog(tmp_path / "a" / "ozolith.jsonl")
    fill(ours)
    key = (tmp_path / "a" / KEY_FILE_NAME).read_text()
    entries = list(ours.entries())
    anchors = ours.anchors()

    theirs = tmp_path / "b" / "ozolith.jsonl"
    theirs.parent.mkdir()
    writer = ReferenceWriter(str(theirs), key)
    pending_anchors = iter(anchors)
    for entry in entries:  # replay with the same timestamps
        if entry.event_type == "anchor_created":
            anchor = next(pending_anchors)
            writer.create_anchor(anchor.trigger_reason, anchor.timestamp, entry.timestamp)
        else:
            writer.append(entry.event_type, entry.context_id, entry.actor, entry.payload, entry.timestamp)
    assert theirs.read_bytes() == ours.path.read_bytes()
    assert anchors_path_for(theirs).read_bytes() == ours.anchors_path.read_bytes()


def test_each_side_continues_the_others_log(tmp_path: Path) -> None:
    path = tmp_path / "ozolith.jsonl"
    writer = ReferenceWriter(str(path), KEY)
    log = OzolithLog(path, key=KEY)
    for round_ in range(3):
        writer.append("exchange", "SB-1", "human", {"round": round_, "by": "reference"})
        log.append("exchange", "SB-1", "assistant", {"round": round_, "by": "snapstore ✓"})
        writer.create_anchor(f"round {round_}")
        log.create_anchor(f"round {round_} again")
    assert reference_verify(str(path), KEY) == (True, None)
    assert reference_anchor_problems(str(path), KEY) == []
    assert verify_chain(path, KEY).ok
    assert [a.anchor_id for a in log.anchors()] == [f"ANCHOR-{n}" for n in range(1, 7)]


def test_signature_and_hash_follow_the_contract(tmp_path: Path) -> None:
    entry = OzolithLog(tmp_path / "ozolith.jsonl", key=KEY).append("exchange", "SB-1", "human", TRICKY_PAYLOADS[0])
    content = {name: getattr(entry, name) for name in
               ("sequence", "timestamp", "previous_hash", "event_type", "context_id", "actor", "payload")}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":")).encode()
    assert entry.signature == hmac.new(KEY.encode(), canonical, hashlib.sha256).hexdigest()
    # The key string's own bytes, as the client does, not its hex decoding.
    assert entry.signature != hmac.new(bytes.fromhex(KEY), canonical, hashlib.sha256).hexdigest()
    hashed = json.dumps(dict(content, signature=entry.signature), sort_keys=True, separators=(",", ":"))
    assert entry.entry_hash == hashlib.sha256(hashed.encode()).hexdigest()
    assert entry.previous_hash == "" and entry.sequence == 1


def test_timestamps_use_the_clients_format() -> None:
    assert utc_timestamp(datetime(2025, 12, 5, 9, 30, 1, 123456, tzinfo=UTC)) == "2025-12-05T09:30:01.123456Z"
    # isoformat() drops a zero fraction; so does the client.
    assert utc_timestamp(datetime(2025, 12, 5, 9, 30, 1, tzinfo=UTC)) == "2025-12-05T09:30:01Z"
    east = timezone(timedelta(hours=2))
    assert utc_timestamp(datetime(2025, 12, 5, 11, 0, 0, 5, tzinfo=east)) == "2025-12-05T09:00:00.000005Z"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z", utc_timestamp())


def test_unknown_top_level_keys_are_carried_in_place(tmp_path: Path) -> None:
    path = tmp_path / "ozolith.jsonl"
    writer = ReferenceWriter(str(path), KEY)
    first = writer.append("exchange", "SB-1", "human", {"n": 1})
    second = writer.append("exchange", "SB-1", "human", {"n": 2})
    # A newer writer added keys: one at the end, one in the middle of a line.
    at_end = dict(first, annotation={"by": "tool", "note": "ünïcode"})
    in_middle = {k: second[k] for k in ("sequence", "timestamp")} | {"x_tag": [1, 2]} | second
    path.write_text(json.dumps(at_end) + "\n" + json.dumps(in_middle) + "\n")
    entries = list(OzolithLog(path, key=KEY).entries())
    assert entries[0].unknown_fields == {"annotation": {"by": "tool", "note": "ünïcode"}}
    assert entries[1].unknown_fields == {"x_tag": [1, 2]}
    assert [(e.to_line() + "\n").encode() for e in entries] == raw_lines(path)
    assert verify_chain(path, KEY).ok  # not covered by the signature: the client's rules
    OzolithLog(path, key=KEY).append("exchange", "SB-1", "human", {"n": 3})
    assert verify_chain(path, KEY).ok


def test_payload_is_normalised_to_what_a_reader_sees(tmp_path: Path) -> None:
    # The client would sign {2: .., 10: ..} sorted as ints, then fail to verify
    # after reload, when the keys are strings sorted as text.
    log = OzolithLog(tmp_path / "ozolith.jsonl", key=KEY)
    entry = log.append("exchange", "SB-1", "human", {"by_id": {2: "b", 10: "a"}, "pair": (1, 2)})
    assert entry.payload == {"by_id": {"2": "b", "10": "a"}, "pair": [1, 2]}
    assert verify_chain(log.path, KEY).ok
    assert reference_verify(str(log.path), KEY) == (True, None)


@pytest.mark.parametrize(("event_type", "context_id", "actor", "payload"), [
    ("exchange", "SB-1", "robot", {}),
    ("", "SB-1", "human", {}),
    ("exchange", 3, "human", {}),
    ("exchange", "SB-1", "human", {"f": object()}),
    ("exchange", "SB-1", "human", ["not", "an", "object"]),
])
def test_append_rejects_what_cannot_be_logged(tmp_path: Path, event_type, context_id, actor, payload) -> None:
    log = OzolithLog(tmp_path / "ozolith.jsonl", key=KEY)
    with pytest.raises(InvalidInput):
        log.append(event_type, context_id, actor, payload)
    assert not log.path.exists() or log.path.read_bytes() == b""


# -- keys -------------------------------------------------------------------------


def test_key_file_is_created_on_first_append_private_and_reused(tmp_path: Path) -> None:
    log = OzolithLog(tmp_path / "ozolith.jsonl")
    key_file = tmp_path / KEY_FILE_NAME
    assert not key_file.exists()
    list(log.entries())
    assert log.last() is None
    assert not key_file.exists(), "reading must not create a key"
    log.append("exchange", "SB-1", "human", {})
    key = key_file.read_text()
    assert re.fullmatch(r"[0-9a-f]{64}", key)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    OzolithLog(log.path).append("exchange", "SB-1", "human", {})  # a new instance reads the same key
    assert key_file.read_text() == key
    assert reference_verify(str(log.path), key) == (True, None)
    assert verify_chain(log.path).ok  # key found beside the log


def test_the_first_append_makes_its_folders_durably(tmp_path: Path, fsynced: list[Path]) -> None:
    log = OzolithLog(tmp_path / "var" / "logs" / "ozolith.jsonl")
    log.append("exchange", "SB-1", "human", {"n": 1})
    # Each new folder, the key file and the log are named in a folder fsynced after they appeared.
    assert {tmp_path, tmp_path / "var", tmp_path / "var" / "logs"} <= set(fsynced)


def test_explicit_key_and_key_file(tmp_path: Path) -> None:
    OzolithLog(tmp_path / "a.jsonl", key=KEY).append("exchange", "SB-1", "human", {})
    assert not (tmp_path / KEY_FILE_NAME).exists()
    elsewhere = tmp_path / "keys" / "ozolith.key"
    elsewhere.parent.mkdir()
    elsewhere.write_text(KEY + "\n")  # surrounding whitespace is stripped, as the client does
    OzolithLog(tmp_path / "a.jsonl", key_file=elsewhere).append("exchange", "SB-1", "human", {})
    assert verify_chain(tmp_path / "a.jsonl", KEY).ok
    assert verify_chain(tmp_path / "a.jsonl", key_file=elsewhere).ok


def test_verify_without_any_key_is_an_error_not_a_new_key(tmp_path: Path) -> None:
    OzolithLog(tmp_path / "a.jsonl", key=KEY).append("exchange", "SB-1", "human", {})
    with pytest.raises(LogError, match="key"):
        verify_chain(tmp_path / "a.jsonl")
    assert not (tmp_path / KEY_FILE_NAME).exists()


def test_append_with_another_key_is_refused(tmp_path: Path) -> None:
    OzolithLog(tmp_path / "a.jsonl", key=KEY).append("exchange", "SB-1", "human", {})
    with pytest.raises(WrongKey) as caught:
        OzolithLog(tmp_path / "a.jsonl", key="00" * 32).append("exchange", "SB-1", "human", {})
    assert caught.value.sequence == 1 and caught.value.line == 1


# -- anchors ----------------------------------------------------------------------


def test_anchor_records_the_chain_and_is_logged(tmp_path: Path) -> None:
    log = OzolithLog(tmp_path / "ozolith.jsonl", key=KEY)
    empty = log.create_anchor()
    assert (empty.sequence_range, empty.root_hash, empty.entry_count) == ((0, 0), "", 0)
    for n in range(3):
        log.append("exchange", "SB-1", "human", {"n": n})
    last = log.last()
    anchor = log.create_anchor("count_threshold")
    assert anchor.anchor_id == "ANCHOR-2"
    assert anchor.sequence_range == (1, last.sequence) and anchor.entry_count == last.sequence
    assert anchor.root_hash == last.entry_hash
    logged = log.last()
    assert (logged.event_type, logged.context_id, logged.actor) == ("anchor_created", "SYSTEM", "system")
    assert logged.payload == {"anchor_id": "ANCHOR-2", "root_hash": last.entry_hash, "entry_count": 4}
    stored = json.loads(log.anchors_path.read_text())
    assert list(stored[1]) == ["anchor_id", "timestamp", "sequence_range", "root_hash", "entry_count",
                               "signature", "trigger_reason", "extra"]
    assert reference_anchor_problems(str(log.path), KEY) == []
    assert verify_chain(log.path, KEY).ok


def test_anchors_path_follows_the_client() -> None:
    assert anchors_path_for(Path("/x/ozolith.jsonl")) == Path("/x/ozolith_anchors.json")
    assert anchors_path_for(Path("/x/audit.log")) == Path("/x/audit.log_anchors.json")


def test_a_corrupt_anchors_file_is_reported_and_never_overwritten(tmp_path: Path) -> None:
    log = OzolithLog(tmp_path / "ozolith.jsonl", key=KEY)
    log.append("exchange", "SB-1", "human", {})
    log.anchors_path.write_text("[{not json")
    with pytest.raises(AnchorFileError):
        log.create_anchor()
    assert log.anchors_path.read_text() == "[{not json"
    report = verify_chain(log.path, KEY)
    assert [f.kind for f in report.findings] == [FindingKind.ANCHORS_UNREADABLE]


def test_a_deleted_anchors_file_is_noticed(tmp_path: Path) -> None:
    log = OzolithLog(tmp_path / "ozolith.jsonl", key=KEY)
    log.append("exchange", "SB-1", "human", {})
    log.create_anchor()
    log.anchors_path.unlink()
    report = verify_chain(log.path, KEY)
    assert [(f.kind, f.sequence) for f in report.findings] == [(FindingKind.ANCHOR_MISMATCH, 2)]


# -- reading and queries --------------------------------------------------------------


def test_queries(tmp_path: Path) -> None:
    log = OzolithLog(tmp_path / "ozolith.jsonl", key=KEY)
    fill(log)
    entries = list(log.entries())
    assert log.get(3) == entries[2]
    assert log.get(10_000) is None
    assert log.last() == entries[-1]
    assert [e.sequence for e in log.by_context("SB-2")] == [e.sequence for e in entries if e.context_id == "SB-2"]
    assert len(log.by_type("a_type_the_client_does_not_know")) == 1
    assert [e.sequence for e in log.by_type(EventType.ANCHOR_CREATED)] == [7, 12]
    middle = entries[5].time
    assert [e.sequence for e in log.between(since=middle)] == [e.sequence for e in entries if e.time >= middle]
    assert [e.sequence for e in log.between(until=middle)] == [e.sequence for e in entries if e.time <= middle]
    naive = middle.replace(tzinfo=None)  # naive datetimes are UTC
    assert log.between(since=naive, until=naive) == [entries[5]]
    paris = middle.astimezone(timezone(timedelta(hours=1)))
    assert log.between(since=paris, until=paris) == [entries[5]]


def test_empty_and_missing_logs(tmp_path: Path) -> None:
    log = OzolithLog(tmp_path / "ozolith.jsonl", key=KEY)
    assert list(log.entries()) == [] and log.last() is None and log.get(1) is None
    with pytest.raises(LogError):
        verify_chain(log.path, KEY)
    log.path.touch()
    assert verify_chain(log.path, KEY).ok


def test_last_reads_only_the_tail(tmp_path: Path) -> None:
    log = OzolithLog(tmp_path / "ozolith.jsonl", key=KEY)
    for n in range(3):
        log.append("exchange", "SB-1", "human", {"n": n, "pad": "x" * 70_000})  # lines longer than a read chunk
    expected = log.last()
    assert expected.sequence == 3 and expected.payload["n"] == 2
    # Wreck the first line: a reader of the whole file would trip over it.
    data = bytearray(log.path.read_bytes())
    data[0:1] = b"#"
    log.path.write_bytes(bytes(data))
    assert log.last() == expected
    with pytest.raises(UnparsableLine):
        list(log.entries())


def test_bad_lines_are_reported_with_line_and_sequence(tmp_path: Path) -> None:
    log = OzolithLog(tmp_path / "ozolith.jsonl", key=KEY)
    for n in range(4):
        log.append("exchange", "SB-1", "human", {"n": n})
    lines = raw_lines(log.path)
    lines[1] = b'{"sequence": 2, "timestamp": \n'
    log.path.write_bytes(b"".join(lines) + b'{"sequence": 5, "tim')
    with pytest.raises(UnparsableLine) as caught:
        list(log.entries())
    assert (caught.value.line, caught.value.sequence) == (2, 2)
    loaded = log.load()
    assert not loaded
    assert [e.sequence for e in loaded.entries] == [1, 3, 4]
    assert [(f.kind, f.line, f.sequence) for f in loaded.findings] == [
        (FindingKind.UNPARSABLE_LINE, 2, 2), (FindingKind.TORN_LINE, 5, 5)]


# -- refusals -----------------------------------------------------------------------


def test_append_after_a_torn_line_is_refused(tmp_path: Path) -> None:
    log = OzolithLog(tmp_path / "ozolith.jsonl", key=KEY)
    for n in range(3):
        log.append("exchange", "SB-1", "human", {"n": n})
    with log.path.open("ab") as handle:
        handle.write(raw_lines(log.path)[0][:40])  # a write cut short
    before = log.path.read_bytes()
    with pytest.raises(TornLine) as caught:
        log.append("exchange", "SB-1", "human", {"n": 4})
    assert caught.value.line == 4
    assert "torn line 4" in str(caught.value)
    assert log.path.read_bytes() == before
    with pytest.raises(TornLine):
        log.create_anchor()
    with pytest.raises(TornLine):
        log.last()


@pytest.mark.parametrize("entries, torn_size", [(0, 10), (3, 40), (3, 200_000), (0, 200_000)])
def test_cut_torn_tail_keeps_the_bytes_and_leaves_the_complete_lines(tmp_path: Path, entries: int,
                                                                     torn_size: int) -> None:
    log = OzolithLog(tmp_path / "ozolith.jsonl", key=KEY)
    for n in range(entries):
        log.append("exchange", "SB-1", "human", {"n": n})
    whole = log.path.read_bytes() if entries else b""
    torn = (b'{"sequence": 9, "payload": "' + "\u00e9x".encode() * torn_size)[:torn_size]  # longer than a read-back chunk
    with log.path.open("ab") as handle:
        handle.write(torn)
    cut = log.cut_torn_tail()
    assert cut is not None and (cut.line, cut.size) == (entries + 1, torn_size)
    assert cut.saved.parent == tmp_path and cut.saved.read_bytes() == torn
    assert log.path.read_bytes() == whole
    assert log.cut_torn_tail() is None  # nothing torn now: nothing cut, nothing kept
    assert len(list(tmp_path.glob("ozolith.jsonl.torn-*"))) == 1
    log.append("exchange", "SB-1", "human", {"n": entries})
    assert [e.sequence for e in log.entries()] == list(range(1, entries + 2))
    assert log.verify().ok


def test_cut_torn_tail_leaves_a_whole_log_and_a_missing_one_alone(tmp_path: Path) -> None:
    log = OzolithLog(tmp_path / "ozolith.jsonl", key=KEY)
    assert log.cut_torn_tail() is None and not log.path.exists()
    log.append("exchange", "SB-1", "human", {"n": 1})
    with log.path.open("ab") as handle:
        handle.write(b"not an entry\n")  # complete, unparsable: damage for a human, not cut
    before = log.path.read_bytes()
    assert log.cut_torn_tail() is None
    assert log.path.read_bytes() == before and not list(tmp_path.glob("ozolith.jsonl.torn-*"))


def test_append_after_an_unparsable_or_corrupt_last_line_is_refused(tmp_path: Path) -> None:
    log = OzolithLog(tmp_path / "ozolith.jsonl", key=KEY)
    for n in range(2):
        log.append("exchange", "SB-1", "human", {"n": n})
    good = log.path.read_bytes()
    log.path.write_bytes(good + b"garbage\n")
    with pytest.raises(UnparsableLine) as caught:
        log.append("exchange", "SB-1", "human", {})
    assert caught.value.line == 3
    log.path.write_bytes(good.replace(b'"n": 1', b'"n": 7'))
    with pytest.raises(CorruptEntry) as corrupt:
        log.append("exchange", "SB-1", "human", {})
    assert (corrupt.value.sequence, corrupt.value.line) == (2, 2)


def test_log_entry_round_trip_and_validation() -> None:
    data = {"sequence": 1, "timestamp": "2025-01-01T00:00:00Z", "previous_hash": "", "event_type": "x",
            "context_id": "SB-1", "actor": "human", "payload": {"b": 1, "a": 2}, "signature": "s",
            "entry_hash": "h"}
    entry = LogEntry.from_dict(data)
    assert entry.to_line() == json.dumps(data)
    for name, bad in [("sequence", True), ("sequence", "1"), ("payload", []), ("signature", None)]:
        with pytest.raises(InvalidInput):
            LogEntry.from_dict(dict(data, **{name: bad}))
    with pytest.raises(InvalidInput):
        LogEntry.from_dict({k: v for k, v in data.items() if k != "actor"})

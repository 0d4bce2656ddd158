"""Tampering and damage: every fault is found, and found at the right sequence and line."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path

import pytest

from snapstore.ozolith import (
    KEY_FILE_NAME,
    FindingKind,
    OzolithLog,
    anchors_path_for,
    verify_chain,
)
from snapstore.ozolith.entry import Sealer, make_entry
from snapstore.ozolith.findings import Findings
from snapstore.ozolith.parallel import MIN_LINES, walk_in_halves
from snapstore.ozolith.walk import split_lines, walk

from .ozolith_client_reference import CONTENT, canon

ENTRIES = 240  # including the anchor_created entries
ANCHOR_AFTER = (80, 160, 230)  # appends after which an anchor is taken


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A log with varied payloads and three anchors, built once with a key file beside it."""
    path = tmp_path_factory.mktemp("pristine") / "ozolith.jsonl"
    log = OzolithLog(path)
    rng = random.Random(7)
    appended = 0
    while log.last() is None or log.last().sequence < ENTRIES:
        appended += 1
        payload = {
            "n": appended,
            "text": rng.choice(["plain", "café ☕", "日本語", "quote \" and \\ back", "nul \u0000", "🙂" * 3]),
            "score": rng.random(),
            "tiny": 1e-07 * appended,
            "neg_zero": -0.0,
            "nested": {"ids": [rng.randrange(100) for _ in range(3)], "ok": rng.random() < 0.5, "none": None},
        }
        log.append(rng.choice(["exchange", "sidebar_spawn", "tags_updated", "x_unknown"]),
                   f"SB-{rng.randrange(5)}", rng.choice(["human", "assistant", "system"]), payload)
        if appended in ANCHOR_AFTER:
            log.create_anchor(f"after {appended}")
    assert verify_chain(path).ok
    return path


def copy_of(pristine: Path, target: Path, data: bytes) -> Path:
    """A copy of the pristine log (key and anchors too) whose log bytes are ``data``."""
    target.mkdir(exist_ok=True)
    shutil.copy(pristine.parent / KEY_FILE_NAME, target / KEY_FILE_NAME)
    shutil.copy(anchors_path_for(pristine), anchors_path_for(target / pristine.name))
    path = target / pristine.name
    path.write_bytes(data)
    return path


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def first_fault(path: Path, **kwargs):
    report = verify_chain(path, **kwargs)
    assert not report.ok
    return report.first


def test_every_one_byte_change_is_found_at_its_line(pristine: Path, tmp_path: Path) -> None:
    lines = lines_of(pristine)
    rng = random.Random(2024)
    kinds: dict[str, int] = {}
    for trial, index in enumerate(rng.sample(range(len(lines)), 200)):
        line = bytearray(lines[index])
        position = rng.randrange(len(line))  # the newline too
        line[position] = rng.choice([b for b in range(256) if b != line[position]])
        mutated = lines[:index] + [bytes(line)] + lines[index + 1:]
        path = copy_of(pristine, tmp_path / str(trial), b"".join(mutated))
        first = first_fault(path)
        where = f"trial {trial}: line {index + 1} byte {position} -> {first}"
        assert (first.line, first.sequence) == (index + 1, index + 1), where
        kinds[first.kind] = kinds.get(first.kind, 0) + 1
    # The sweep exercised the different ways a byte can go wrong.
    assert {FindingKind.UNPARSABLE_LINE, FindingKind.BAD_HASH} <= set(kinds), kinds


@pytest.mark.parametrize(("old", "new"), [
    (b', "timestamp"', b',\t"timestamp"'),  # another whitespace byte between tokens
    (b"e-0", b"E-0"),                          # same number, other spelling
    (b"\\u00e9", b"\\u00E9"),                 # same character, other escape
    (b"\n", b"\r\n"),                          # a CRLF line ending
])
def test_edits_that_keep_the_content_are_found(pristine: Path, tmp_path: Path, old: bytes, new: bytes) -> None:
    lines = lines_of(pristine)
    index = next(i for i, line in enumerate(lines) if old in line and i > 10)
    lines[index] = lines[index].replace(old, new, 1)
    path = copy_of(pristine, tmp_path, b"".join(lines))
    first = first_fault(path)
    assert (first.kind, first.line, first.sequence) == (FindingKind.NONCANONICAL_LINE, index + 1, index + 1)
    assert verify_chain(path, strict=False).ok  # the chain itself is intact


@pytest.mark.parametrize("index", [0, 1, 57, 120, 238])
def test_a_deleted_line_is_a_gap_at_its_sequence(pristine: Path, tmp_path: Path, index: int) -> None:
    lines = lines_of(pristine)
    path = copy_of(pristine, tmp_path, b"".join(lines[:index] + lines[index + 1:]))
    first = first_fault(path)
    assert (first.kind, first.sequence, first.line) == (FindingKind.GAP, index + 1, index + 1)


@pytest.mark.parametrize("index", [0, 41, 160, 237])
def test_swapped_lines_are_reordered_at_the_first(pristine: Path, tmp_path: Path, index: int) -> None:
    lines = lines_of(pristine)
    lines[index], lines[index + 1] = lines[index + 1], lines[index]
    path = copy_of(pristine, tmp_path, b"".join(lines))
    first = first_fault(path)
    assert (first.kind, first.sequence, first.line) == (FindingKind.REORDERED, index + 1, index + 1)


def test_a_duplicated_line_is_reordered(pristine: Path, tmp_path: Path) -> None:
    lines = lines_of(pristine)
    path = copy_of(pristine, tmp_path, b"".join(lines[:100] + [lines[99]] + lines[100:]))
    first = first_fault(path)
    assert (first.kind, first.sequence, first.line) == (FindingKind.REORDERED, 100, 101)


@pytest.mark.parametrize("index", [0, 99, 239])
def test_an_entry_rehashed_without_the_key_fails_its_signature(pristine: Path, tmp_path: Path, index: int) -> None:
    lines = lines_of(pristine)
    entry = json.loads(lines[index])
    entry["payload"] = {"rewritten": "by someone without the key"}
    content = {name: entry[name] for name in CONTENT}
    entry["entry_hash"] = hashlib.sha256(canon(dict(content, signature=entry["signature"]))).hexdigest()
    lines[index] = (json.dumps(entry) + "\n").encode()
    path = copy_of(pristine, tmp_path, b"".join(lines))
    first = first_fault(path)
    assert (first.kind, first.sequence, first.line) == (FindingKind.BAD_SIGNATURE, index + 1, index + 1)


def last_anchored(pristine: Path) -> int:
    return json.loads(anchors_path_for(pristine).read_text())[-1]["sequence_range"][1]


@pytest.mark.parametrize("keep", [0, 1, 150, -1])
def test_a_tail_cut_before_the_last_anchor_is_truncation(pristine: Path, tmp_path: Path, keep: int) -> None:
    lines = lines_of(pristine)
    if keep < 0:
        keep = last_anchored(pristine) + keep  # just one entry short
    path = copy_of(pristine, tmp_path, b"".join(lines[:keep]))
    report = verify_chain(path)
    assert not report.ok
    truncated = [f for f in report.findings if f.kind is FindingKind.TRUNCATED]
    assert len(truncated) == 1 and truncated[0].sequence == keep + 1
    assert all(f.kind in (FindingKind.TRUNCATED, FindingKind.ANCHOR_MISMATCH) for f in report.findings)
    # Caught by the cheap check too: it reads the anchors and counts lines.
    assert FindingKind.TRUNCATED in {f.kind for f in verify_chain(path, sample=5, seed=1).findings}


def test_a_tail_cut_mid_line_is_torn_and_truncated(pristine: Path, tmp_path: Path) -> None:
    anchored = last_anchored(pristine)
    lines = lines_of(pristine)
    path = copy_of(pristine, tmp_path, b"".join(lines[:anchored - 1]) + lines[anchored - 1][:-30])
    report = verify_chain(path)
    assert [(f.kind, f.line, f.sequence) for f in report.findings if f.kind is FindingKind.TORN_LINE] == [
        (FindingKind.TORN_LINE, anchored, anchored)]
    assert report.first.kind is FindingKind.TORN_LINE
    assert FindingKind.TRUNCATED in {f.kind for f in report.findings}


def test_a_torn_last_line_is_found(pristine: Path, tmp_path: Path) -> None:
    data = pristine.read_bytes()
    path = copy_of(pristine, tmp_path, data + lines_of(pristine)[5][:50])
    first = first_fault(path)
    assert (first.kind, first.line, first.sequence) == (FindingKind.TORN_LINE, ENTRIES + 1, ENTRIES + 1)


def test_a_wrong_key_is_one_finding_not_one_per_entry(pristine: Path, tmp_path: Path) -> None:
    report = verify_chain(pristine, "ab" * 32)
    assert [(f.kind, f.sequence, f.line) for f in report.findings] == [(FindingKind.WRONG_KEY, 1, 1)]
    sampled = verify_chain(pristine, "ab" * 32, sample=10, seed=3)
    assert [f.kind for f in sampled.findings] == [FindingKind.WRONG_KEY]


def test_a_forged_anchor_is_found(pristine: Path, tmp_path: Path) -> None:
    path = copy_of(pristine, tmp_path, pristine.read_bytes())
    anchors_file = anchors_path_for(path)
    anchors = json.loads(anchors_file.read_text())
    anchors[1]["entry_count"] += 1
    anchors_file.write_text(json.dumps(anchors, indent=2))
    report = verify_chain(path)
    kinds = {(f.kind, f.sequence) for f in report.findings}
    assert (FindingKind.ANCHOR_MISMATCH, anchors[1]["sequence_range"][1]) in kinds


def test_the_sample_check_locates_what_it_samples(pristine: Path, tmp_path: Path) -> None:
    lines = lines_of(pristine)
    lines[150] = lines[150].replace(b'"n": ', b'"n": 9', 1)
    path = copy_of(pristine, tmp_path, b"".join(lines))
    everything = verify_chain(path, sample=len(lines), seed=0)
    assert (everything.first.kind, everything.first.sequence) == (FindingKind.BAD_HASH, 151)
    assert everything.sampled and everything.entries_checked == len(lines)
    assert verify_chain(pristine, sample=20, seed=0).ok


def test_the_two_core_walk_agrees_with_the_sequential_one(pristine: Path) -> None:
    lines, _, _ = split_lines(pristine.read_bytes())
    key = (pristine.parent / KEY_FILE_NAME).read_text().encode()
    anchored = {a["sequence_range"][1] for a in json.loads(anchors_path_for(pristine).read_text())}
    alone = walk(lines, Sealer(key), anchored, True, Findings(), 100)
    halves = walk_in_halves(lines, key, anchored, True, 100, min_lines=0)
    assert halves == alone
    # Any fault, on either side of the joint or at it, sends the caller back to the sequential walk.
    for index in (5, len(lines) // 2 - 1, len(lines) // 2, len(lines) - 3):
        damaged = list(lines)
        damaged[index] = (damaged[index][0], damaged[index][1].replace(b'"n": ', b'"n": 1', 1))
        assert walk_in_halves(damaged, key, anchored, True, 100, min_lines=0) is None
    swapped = list(lines)
    middle = len(lines) // 2
    swapped[middle - 1], swapped[middle] = swapped[middle], swapped[middle - 1]
    assert walk_in_halves(swapped, key, anchored, True, 100, min_lines=0) is None
    assert walk_in_halves(lines, b"another key", anchored, True, 100, min_lines=0) is None


def test_a_large_log_gets_the_same_report_on_one_core_and_two(tmp_path: Path) -> None:
    path = tmp_path / "ozolith.jsonl"
    key = "d4" * 32
    previous, lines = "", []
    for n in range(1, MIN_LINES + 1001):
        entry = make_entry(key.encode(), sequence=n, previous_hash=previous, event_type="exchange",
                           context_id=f"SB-{n % 9}", actor="assistant", payload={"n": n, "text": "é" * (n % 5)})
        previous = entry.entry_hash
        lines.append((entry.to_line() + "\n").encode())
    path.write_bytes(b"".join(lines))
    OzolithLog(path, key=key).create_anchor()
    assert verify_chain(path, key) == verify_chain(path, key, parallel=False)
    assert verify_chain(path, key).ok
    lines[MIN_LINES - 7] = lines[MIN_LINES - 7].replace(b'"n": ', b'"n": 3', 1)  # in the second half
    path.write_bytes(b"".join(lines))
    report = verify_chain(path, key)
    assert report == verify_chain(path, key, parallel=False)
    assert (report.first.kind, report.first.sequence) == (FindingKind.BAD_HASH, MIN_LINES - 6)

"""Chain verification: walk a log and report what is wrong, and where.

The full check (the default) parses every line once and checks, per line,
in this order, keeping at most one finding per line (the most basic fault):

1. the line parses and has the nine fields         -> ``unparsable_line``
2. ``entry_hash`` re-derives from the content       -> ``bad_hash``
3. the sequence is the next one                     -> ``gap`` / ``reordered``
4. ``previous_hash`` is the previous entry's hash   -> ``broken_link``
5. the signature holds under the key                -> ``bad_signature``
6. the line is byte for byte what the client writes -> ``noncanonical_line``
   (``json.dumps`` of its own object; catches edits that keep the content,
   such as a tab for a space or ``\\u00E9`` for ``\\u00e9``; ``strict=False``
   turns this off for logs written by other tools)

then a torn last line (``torn_line``), whether the first entries' signatures
all fail while their hashes hold (one ``wrong_key`` instead of a finding per
entry), and every anchor (``truncated`` if the log ends before it,
``anchor_mismatch`` if its root hash, entry count or signature disagree, or if
an ``anchor_created`` entry names an anchor the anchors file lacks).

A finding's ``sequence`` is the sequence that belongs at that position of the
chain (the line's own claim may be the tampered part); ``line`` is the 1-based
line number in the file. Findings come in file order, so ``findings[0]`` is
the first fault; past ``max_findings`` they are only counted, in ``omitted``.

``sample=N`` is a cheap spot check instead: N random entries plus the first,
the last and each anchor's entry are checked (hash, signature, position,
bytes) with the links into and out of each. It finds a single altered entry
with probability about N / entries: a health probe, not a proof.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from snapstore.errors import LogError

from .anchors import Anchor, AnchorFileError, anchors_path_for, parse_anchors
from .canonical import canonical_text
from .entry import Sealer
from .files import locked, read_all
from .findings import ChainReport, Finding, FindingKind, Findings
from .keys import resolve_key
from .parallel import walk_in_halves
from .walk import Walked, parse_entry, split_lines, unparsable, walk

# Findings a report lists at most (both verifiers' default); past it they are only counted (``omitted``).
MAX_FINDINGS = 100

__all__ = ["ChainReport", "Finding", "FindingKind", "verify_chain", "verify_data"]


def _check_anchor_entries(walked: Walked, anchors: Sequence[Anchor], out: Findings) -> None:
    """Every ``anchor_created`` entry must name an anchor the anchors file still holds, unchanged."""
    by_id = {anchor.anchor_id: anchor for anchor in anchors}
    for sequence, line, payload in walked.anchor_entries:
        anchor_id = payload.get("anchor_id")
        if not isinstance(anchor_id, str):
            continue
        anchor = by_id.get(anchor_id)
        if anchor is None:
            out.add(FindingKind.ANCHOR_MISMATCH, f"the log records {anchor_id} but the anchors file lacks it",
                    sequence, line)
        elif (anchor.root_hash, anchor.entry_count) != (payload.get("root_hash"), payload.get("entry_count")):
            out.add(FindingKind.ANCHOR_MISMATCH,
                    f"{anchor_id} in the anchors file differs from the one the log records", sequence, line)


def _check_anchors(
    anchors: Sequence[Anchor], sealer: Sealer, last_sequence: int, stored_hash: dict[int, str],
    count_upto: Callable[[int], int], out: Findings,
) -> None:
    """Check the chain against every anchor; a log ending before one is ``truncated``."""
    beyond = [a for a in anchors if a.last_sequence > last_sequence]
    if beyond:
        newest = max(beyond, key=lambda a: a.last_sequence)
        others = f" ({len(beyond) - 1} more anchors also reach past it)" if len(beyond) > 1 else ""
        out.add(FindingKind.TRUNCATED,
                f"{newest.anchor_id} covers up to sequence {newest.last_sequence} "
                f"({newest.entry_count} entries) but the log ends at {last_sequence}{others}",
                last_sequence + 1, None)
    for anchor in anchors:
        problems = []
        if not out.wrong_key and sealer.sign(canonical_text(anchor.signed_content())) != anchor.signature:
            problems.append("its signature does not hold")
        if anchor.last_sequence <= last_sequence:
            actual = stored_hash.get(anchor.last_sequence, "") if anchor.last_sequence else ""
            if actual != anchor.root_hash:
                problems.append(f"root hash differs from entry_hash at sequence {anchor.last_sequence}")
            counted = count_upto(anchor.last_sequence)
            if counted != anchor.entry_count:
                problems.append(f"entry count {anchor.entry_count} but the log has {counted} up to it")
        if problems:
            out.add(FindingKind.ANCHOR_MISMATCH, f"{anchor.anchor_id}: " + "; ".join(problems),
                    anchor.last_sequence or None, None)


def _report(out: Findings, max_findings: int, checked: int, last: int, root: str, sampled: bool) -> ChainReport:
    findings, omitted = out.finish(max_findings)
    return ChainReport(not findings, findings, checked, last, root, sampled, omitted)


def verify_data(
    data: bytes,
    anchors: Sequence[Anchor],
    key: bytes,
    *,
    sample: int | None = None,
    seed: int | None = None,
    strict: bool = True,
    parallel: bool = True,
    max_findings: int = MAX_FINDINGS,
) -> ChainReport:
    """Verify the bytes of a log against its anchors (see the module docstring)."""
    lines, torn, blank = split_lines(data)
    sealer = Sealer(key)
    out = Findings()
    if strict:
        for number in blank:
            out.add(FindingKind.NONCANONICAL_LINE, "blank line (the client never writes one)", None, number)
    if sample is not None:
        return _verify_sample(lines, torn, anchors, sealer, sample, seed, strict, max_findings, out)
    anchored = {a.last_sequence for a in anchors}
    walked = walk_in_halves(lines, key, anchored, strict, max_findings) if parallel else None
    if walked is None:  # a small log, one with faults, or no second core: walk it here
        walked = walk(lines, sealer, anchored, strict, out, max_findings)
    if torn is not None:
        out.add(FindingKind.TORN_LINE, f"the last line has no newline ({len(torn[1])} bytes): an interrupted write",
                walked.last_sequence + 1, torn[0])
    _check_anchor_entries(walked, anchors, out)
    sequences = walked.sequences
    _check_anchors(anchors, sealer, walked.last_sequence, walked.stored_hash,
                   lambda s: bisect_right(sequences, s), out)
    return _report(out, max_findings, len(lines), walked.last_sequence, walked.root_hash, False)


def _verify_sample(
    lines: list[tuple[int, bytes]], torn: tuple[int, bytes] | None, anchors: Sequence[Anchor], sealer: Sealer,
    sample: int, seed: int | None, strict: bool, max_findings: int, out: Findings,
) -> ChainReport:
    """Spot-check ``sample`` random entries, both ends and each anchor's entry, with their links."""
    count = len(lines)
    cache: dict[int, tuple[dict[str, Any] | None, str]] = {}

    def at(index: int) -> tuple[dict[str, Any] | None, str]:
        if index not in cache:
            cache[index] = parse_entry(lines[index][1])
        return cache[index]

    picks = set(random.Random(seed).sample(range(count), min(max(sample, 0), count)))
    picks.update(i for i in (0, count - 1) if i >= 0)
    picks.update(a.last_sequence - 1 for a in anchors if 0 < a.last_sequence <= count)
    reported: set[int] = set()
    for index in sorted(picks):
        for position in (index, index + 1):  # the entry, and the link out of it
            if position >= count or position in reported:
                continue
            if _check_position(lines, position, at, sealer, out, strict=strict, whole=position == index):
                reported.add(position)
    if torn is not None:
        out.add(FindingKind.TORN_LINE, f"the last line has no newline ({len(torn[1])} bytes)", count + 1, torn[0])
    stored = {i + 1: fields["entry_hash"] for i, (fields, _) in cache.items() if fields is not None}
    _check_anchors(anchors, sealer, count, stored, lambda s: s, out)
    last_fields = at(count - 1)[0] if count else None
    root = last_fields["entry_hash"] if last_fields else ""
    return _report(out, max_findings, len(cache), count, root, True)


def _check_position(
    lines: list[tuple[int, bytes]], index: int, at: Callable[[int], tuple[dict[str, Any] | None, str]],
    sealer: Sealer, out: Findings, *, strict: bool, whole: bool,
) -> bool:
    """Check the entry at ``index`` (sequence ``index + 1`` belongs there); True if a finding was added.

    ``whole`` checks the entry itself; otherwise only its position and its link.
    """
    number, raw = lines[index]
    sequence = index + 1
    fields, text = at(index)
    if fields is None:
        unparsable(out, raw, text, sequence, number)
        return True
    signature_ok = canonical_line = True
    if whole:
        hash_ok, signature_ok, _, canonical_line = sealer.check(fields, text if strict else None)
        if not hash_ok:
            out.add(FindingKind.BAD_HASH, "entry_hash does not match the entry's content", sequence, number)
            return True
        out.signature(signature_ok)
    if fields["sequence"] != sequence:
        kind = FindingKind.GAP if fields["sequence"] > sequence else FindingKind.REORDERED
        out.add(kind, f"the line holds sequence {fields['sequence']} where {sequence} belongs", sequence, number)
        return True
    previous = at(index - 1)[0] if index else {"entry_hash": ""}
    if previous is not None and fields["previous_hash"] != previous["entry_hash"]:
        out.add(FindingKind.BROKEN_LINK, "previous_hash is not the previous entry's entry_hash", sequence, number)
        return True
    if not signature_ok:
        out.add(FindingKind.BAD_SIGNATURE, "signature does not match the content under this key", sequence, number)
        return True
    if not canonical_line:
        out.add(FindingKind.NONCANONICAL_LINE, "the line's bytes differ from how its content is written",
                sequence, number)
        return True
    return False


def verify_chain(
    path: str | Path,
    key: str | bytes | None = None,
    *,
    key_file: str | Path | None = None,
    sample: int | None = None,
    seed: int | None = None,
    strict: bool = True,
    parallel: bool = True,
    max_findings: int = MAX_FINDINGS,
) -> ChainReport:
    """Verify the log at ``path`` and its anchors file: the full check unless ``sample`` is given.

    The key is ``key`` if given, else ``key_file``, else ``.ozolith_key``
    beside the log (never created here). Raises LogError only when there is
    nothing to verify (no log and no anchors) or no key; every fault in the
    log itself is a finding.
    """
    path = Path(path)
    key_bytes = resolve_key(path, key, key_file, create=False)
    anchors_file = anchors_path_for(path)
    with locked(path, exclusive=False) as fd:  # the log and its anchors, read as one consistent pair
        data = read_all(fd) if fd is not None else None
        try:
            anchors_data: bytes | None = anchors_file.read_bytes()
        except FileNotFoundError:
            anchors_data = None
    if data is None and anchors_data is None:
        raise LogError(f"no log at {path}")
    anchors: list[Anchor] = []
    problem = None
    if anchors_data is not None:
        try:
            anchors = parse_anchors(anchors_data, anchors_file)
        except AnchorFileError as exc:
            problem = Finding(FindingKind.ANCHORS_UNREADABLE, str(exc))
    report = verify_data(data or b"", anchors, key_bytes, sample=sample, seed=seed, strict=strict,
                         parallel=parallel, max_findings=max_findings)
    if problem is None:
        return report
    return replace(report, ok=False, findings=report.findings + (problem,))

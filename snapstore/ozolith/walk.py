"""The sequential walk: every line parsed once and checked, each fault located.

See :mod:`snapstore.ozolith.verify` for the order of checks and what each
finding means. This module is shared by the verifier and the helper process
of :mod:`snapstore.ozolith.parallel`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .canonical import parse_line
from .canonical import scan_value as _scan
from .entry import FIELD_TYPES, Sealer
from .findings import WRONG_KEY_PROBE, FindingKind, Findings

_SEQUENCE_HINT = re.compile(rb'"sequence"\s*:\s*(-?\d+)')


def parse_entry(raw: bytes) -> tuple[dict[str, Any] | None, str]:
    """The line's object if it is a well-formed entry, and its text; else None and why not."""
    try:
        text = raw.decode()
        fields = parse_line(text)
    except (ValueError, RecursionError) as exc:
        return None, f"not JSON ({exc})"
    if type(fields) is not dict:
        return None, "not a JSON object"
    if tuple(map(type, map(fields.get, _NAMES))) == _TYPES:
        return fields, text
    for name, kind in FIELD_TYPES.items():
        if type(fields.get(name)) is not kind:
            problem = "missing" if name not in fields else f"a {type(fields[name]).__name__}, not {kind.__name__}"
            return None, f"field {name!r} is {problem}"
    raise AssertionError("unreachable")


_NAMES = tuple(FIELD_TYPES)
_TYPES = tuple(FIELD_TYPES.values())  # exact types: a bool is not a sequence number


def unparsable(out: Findings, raw: bytes, why: str, sequence: int, line: int) -> None:
    """Record an ``unparsable_line`` finding, quoting the sequence the line seems to claim."""
    hint = _SEQUENCE_HINT.search(raw)
    claim = f" (it claims sequence {int(hint.group(1))})" if hint else ""
    out.add(FindingKind.UNPARSABLE_LINE, why + claim, sequence, line)


def split_lines(data: bytes) -> tuple[list[tuple[int, bytes]], tuple[int, bytes] | None, list[int]]:
    """Non-blank complete lines with their numbers, the torn tail if any, and blank line numbers."""
    lines = data.split(b"\n")
    tail = lines.pop()
    torn = (len(lines) + 1, tail) if tail else None
    if all(lines):  # the usual case: no empty line, numbers are positions
        return list(enumerate(lines, 1)), torn, []
    numbered = list(enumerate(lines, 1))
    return [(n, raw) for n, raw in numbered if raw.strip()], torn, [n for n, raw in numbered if not raw.strip()]


def _held_later(lines: list[tuple[int, bytes]], index: int, sequence: int) -> bool:
    """Whether a line after ``index`` holds ``sequence`` (tells a move from a loss)."""
    prefix = b'{"sequence": %d,' % sequence
    for _, raw in lines[index + 1:]:
        if raw.startswith(prefix):
            return True
        if not raw.startswith(b'{"sequence": '):
            hint = _SEQUENCE_HINT.search(raw)
            if hint and int(hint.group(1)) == sequence:
                return True
    return False


@dataclass
class Walked:
    """What a walk over lines learned, besides its findings."""

    last_sequence: int = 0
    root_hash: str = ""
    first: tuple[int, str] | None = None   # the first entry's (sequence, previous_hash)
    stored_hash: dict[int, str] = field(default_factory=dict)  # entry_hash of anchored sequences
    sequences: list[int] = field(default_factory=list)         # every parsed entry's, for anchor counts
    anchor_entries: list[tuple[int, int, dict[str, Any]]] = field(default_factory=list)  # (sequence, line, payload)


def walk(
    lines: list[tuple[int, bytes]], sealer: Sealer, anchored: set[int], strict: bool,
    out: Findings, max_findings: int, *, start: int | None = 1,
) -> Walked:
    """The full check of every line, in one pass; see the module docstring for the order of checks.

    ``start`` is the sequence the first line must hold; None takes the first
    line's word for it and leaves its link unchecked (a walk over a later
    part of the log, whose joint the caller checks).

    This is the verifier's hot loop: a sound entry takes the first branch
    after one parse and one :meth:`Sealer.check`; everything else is the
    slow path that works out what is wrong.
    """
    expected = start if start is not None else 0
    link = ""                    # the entry_hash the next previous_hash must name...
    alternative = ""             # ...or this one (the recomputed hash of a bad-hash entry)
    link_known = start is not None  # False after an unparsable line
    walked = Walked()
    remember_sequence = walked.sequences.append
    check = sealer.check
    add = out.add
    for index, (number, raw) in enumerate(lines):
        try:  # the common case inline: one JSON value, every field of its proper type
            text = raw.decode()
            fields, end = _scan(text, 0)
            well_formed = (end == len(text) and type(fields) is dict
                           and tuple(map(type, map(fields.get, _NAMES))) == _TYPES)
        except (StopIteration, ValueError, RecursionError):
            well_formed = False
        if not well_formed:
            fields, text = parse_entry(raw)  # again, slowly, to say what is wrong
            if fields is None:
                unparsable(out, raw, text, expected, number)
                expected += 1
                link_known = False
                continue
        sequence = fields["sequence"]
        stored = fields["entry_hash"]
        if walked.first is None:
            walked.first = (sequence, fields["previous_hash"])
            expected = expected or sequence
        remember_sequence(sequence)
        if sequence in anchored:
            walked.stored_hash.setdefault(sequence, stored)
        if fields["event_type"] == "anchor_created":
            walked.anchor_entries.append((sequence, number, fields["payload"]))
        hash_ok, signature_ok, recomputed, canonical_line = check(fields, text if strict else None)
        previous_hash = fields["previous_hash"]
        linked = not link_known or previous_hash == link or (alternative and previous_hash == alternative)
        if hash_ok and signature_ok and canonical_line and linked and sequence == expected:
            if len(out.signature_probe) < WRONG_KEY_PROBE:
                out.signature(True)
            expected += 1
            link, alternative, link_known = stored, "", True
            walked.root_hash = stored
            continue
        if not hash_ok:
            claim = f" (it claims sequence {sequence})" if sequence != expected else ""
            add(FindingKind.BAD_HASH, f"entry_hash does not match the entry's content{claim}", expected, number)
            expected += 1
            link, alternative, link_known = stored, recomputed, True  # the next link may name either
            continue
        out.signature(signature_ok)
        if sequence != expected:
            lookahead = sequence > expected and len(out.items) < max_findings
            if sequence > expected and not (lookahead and _held_later(lines, index, expected)):
                missing = f"{expected}" if sequence == expected + 1 else f"{expected}..{sequence - 1}"
                add(FindingKind.GAP, f"sequence {missing} missing: the line holds {sequence}", expected, number)
            else:
                lower = min(sequence, expected)
                how = "appears later" if sequence > expected else "came before"
                add(FindingKind.REORDERED,
                    f"expected sequence {expected}, the line holds {sequence} ({lower} {how})", lower, number)
        elif not linked:
            add(FindingKind.BROKEN_LINK, "previous_hash is not the previous entry's entry_hash", sequence, number)
        elif not signature_ok:
            add(FindingKind.BAD_SIGNATURE, "signature does not match the content under this key", sequence, number)
        else:
            add(FindingKind.NONCANONICAL_LINE,
                "the line's bytes differ from how its content is written (content intact: edited bytes)",
                sequence, number)
        expected = max(expected, sequence + 1)
        link, alternative, link_known = stored, "", True
        walked.root_hash = stored
    walked.last_sequence = expected - 1
    walked.sequences.sort()
    return walked

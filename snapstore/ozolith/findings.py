"""Verification results: what can be wrong with a log (``Finding``) and the verdict (``ChainReport``)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

#: How many leading signature checks must all fail for ``wrong_key``.
WRONG_KEY_PROBE = 16


class FindingKind(StrEnum):
    """What a verification finding is about."""

    TORN_LINE = "torn_line"
    UNPARSABLE_LINE = "unparsable_line"
    GAP = "gap"
    REORDERED = "reordered"
    BROKEN_LINK = "broken_link"
    BAD_HASH = "bad_hash"
    BAD_SIGNATURE = "bad_signature"
    NONCANONICAL_LINE = "noncanonical_line"
    WRONG_KEY = "wrong_key"
    TRUNCATED = "truncated"
    ANCHOR_MISMATCH = "anchor_mismatch"
    ANCHORS_UNREADABLE = "anchors_unreadable"
    #: A row of the log kept in a store disagrees with its line (its key, its entry_hash column).
    ROW_MISMATCH = "row_mismatch"


@dataclass(frozen=True)
class Finding:
    """One fault found in a log."""

    kind: FindingKind
    message: str
    sequence: int | None = None
    line: int | None = None

    def __str__(self) -> str:
        where = [f"line {self.line}"] if self.line is not None else []
        if self.sequence is not None:
            where.append(f"sequence {self.sequence}")
        return f"{self.kind}{' at ' + ', '.join(where) if where else ''}: {self.message}"


@dataclass(frozen=True)
class ChainReport:
    """The outcome of a verification; true when the chain is sound."""

    ok: bool
    findings: tuple[Finding, ...]
    entries_checked: int
    last_sequence: int
    root_hash: str
    sampled: bool = False
    omitted: int = 0

    def __bool__(self) -> bool:
        return self.ok

    @property
    def first(self) -> Finding | None:
        """The first fault in file order, or None."""
        return self.findings[0] if self.findings else None

    def summary(self) -> str:
        """One line for humans."""
        mode = "sampled" if self.sampled else "full"
        if self.ok:
            return f"ok: {self.entries_checked} entries checked ({mode}), last sequence {self.last_sequence}"
        more = f" (+{self.omitted} more)" if self.omitted else ""
        return f"{len(self.findings)}{more} finding(s) ({mode}); first: {self.first}"


class Findings:
    """Collects findings and the signature outcomes that decide ``wrong_key``."""

    def __init__(self) -> None:
        self.items: list[Finding] = []
        self.signature_probe: list[bool] = []  # outcomes for the first hash-valid entries

    def add(self, kind: FindingKind, message: str, sequence: int | None, line: int | None) -> None:
        self.items.append(Finding(kind, message, sequence, line))

    def signature(self, ok: bool) -> None:
        if len(self.signature_probe) < WRONG_KEY_PROBE:
            self.signature_probe.append(ok)

    @property
    def wrong_key(self) -> bool:
        return bool(self.signature_probe) and not any(self.signature_probe)

    def finish(self, max_findings: int) -> tuple[tuple[Finding, ...], int]:
        items = self.items
        if self.wrong_key:
            bad = [f for f in items if f.kind is FindingKind.BAD_SIGNATURE]
            items = [f for f in items if f.kind is not FindingKind.BAD_SIGNATURE]
            first = bad[0] if bad else None
            items.append(Finding(
                FindingKind.WRONG_KEY,
                f"signatures fail from the first entry on ({len(bad)} entries) while their hashes hold: "
                "the key is wrong (or every entry was re-signed)",
                first.sequence if first else None, first.line if first else None,
            ))
        items.sort(key=lambda f: (f.line is None, f.line or 0))
        return tuple(items[:max_findings]), max(0, len(items) - max_findings)

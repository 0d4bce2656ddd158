"""Revision syntax: how a user names a snapshot.

- a full snapshot id, or a unique prefix of at least 4 hex digits;
- ``CONV``: the head of a conversation;
- ``CONV@{TIME}``: what the conversation's ref pointed at, as of an
  ISO-8601 time (a time without offset is UTC);
- any of these followed by ``~N`` (or ``~``, meaning ``~1``): the N-th
  first-parent ancestor.

This module only parses; :class:`snapstore.repository.Repository` resolves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from .errors import UnknownRevision
from .timeutil import parse_time

MIN_PREFIX = 4
_ANCESTRY = re.compile(r"~(\d*)$")
_AT_TIME = re.compile(r"@\{([^{}]*)\}$")
_HEX = re.compile(r"[0-9a-f]+")


@dataclass(frozen=True)
class Revision:
    """A parsed revision: a base name, an optional time and an ancestor count."""

    text: str
    base: str
    at: datetime | None = None
    ancestors: int = 0

    @property
    def may_be_id(self) -> bool:
        """Whether the base could be a snapshot id or id prefix."""
        return self.at is None and len(self.base) >= MIN_PREFIX and bool(_HEX.fullmatch(self.base))


def parse_revision(text: str) -> Revision:
    """Parse ``text``; :class:`UnknownRevision` on bad syntax."""
    if not isinstance(text, str) or not text.strip():
        raise UnknownRevision("empty revision")
    rest = text.strip()
    ancestors = 0
    while (match := _ANCESTRY.search(rest)) is not None:
        digits = match.group(1)
        try:
            ancestors += int(digits) if digits else 1
        except ValueError:  # more digits than int() takes (4,300)
            raise UnknownRevision(
                f"the ~N of revision {text[:60]!r}... has {len(digits)} digits: too many"
            ) from None
        rest = rest[: match.start()]
    at = None
    if (match := _AT_TIME.search(rest)) is not None:
        try:
            at = parse_time(match.group(1))
        except (ValueError, OverflowError):  # OverflowError: out of range in UTC (9999-12-31T23:59-01:00)
            raise UnknownRevision(
                f"bad time {match.group(1)!r} in revision {text!r} (use ISO-8601, e.g. 2026-01-05T10:00:00Z)"
            ) from None
        rest = rest[: match.start()]
    if not rest or any(c in rest for c in "~@{}"):
        raise UnknownRevision(f"cannot parse revision {text!r}")
    return Revision(text=text, base=rest, at=at, ancestors=ancestors)

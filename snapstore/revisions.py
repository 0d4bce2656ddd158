"""Revision syntax: how a user names a snapshot.

- a full snapshot id, or a unique prefix of at least 4 hex digits;
- ``CONV``: the head of a conversation;
- ``CONV@{TIME}``: what the conversation's ref pointed at, as of an
  ISO-8601 time (a time without offset is UTC);
- any of these followed by ``~N`` (or ``~``, meaning ``~1``): the N-th
  first-parent ancestor.

This module parses, and words the error for a short id that matches several
objects (:func:`ambiguous_short_id`); :class:`snapstore.repository.Repository`
resolves.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from .errors import AmbiguousRevision, UnknownRevision
from .timeutil import parse_time

MIN_PREFIX = 4
# An ambiguous short id's error lists this many of the objects it matches, then "and N more".
AMBIGUOUS_SHOWN = 5
# Digits each listed candidate is shown with, at least (more when needed to tell them apart).
SHORT_ID_DIGITS = 12
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


def ambiguous_short_id(prefix: str, matches: Sequence[str], kinds: Mapping[str, str],
                       complete: bool = True) -> AmbiguousRevision:
    """The one-line error for a short id matching several objects, naming them as git does.

    ``short id 'ab12' is ambiguous: ab12c0ffee01 (snapshot), ab12d00dfeed (node) and 3 more``:
    the first :data:`AMBIGUOUS_SHOWN` of ``matches`` (sorted), each with its
    kind from ``kinds``, by enough digits to tell every match apart, so the
    user can copy one. ``complete`` False means the lookup stopped at a limit:
    there may be more than it counts.
    """
    ids = sorted(matches)
    width = max(SHORT_ID_DIGITS, len(prefix))
    while width < len(ids[0]) and len({m[:width] for m in ids}) < len(ids):
        width += 1
    listed = ", ".join(f"{m[:width]} ({kinds.get(m, 'object')})" for m in ids[:AMBIGUOUS_SHOWN])
    rest = len(ids) - AMBIGUOUS_SHOWN
    if rest > 0:
        listed += f" and {rest} more" if complete else f" and at least {rest} more"
    return AmbiguousRevision(f"short id {prefix!r} is ambiguous: {listed}")

"""Anchors: signed checkpoints of the chain, kept in ``<log name>_anchors.json``.

Format (the client's ``Ozolith._save_anchors``): one JSON array written with
``json.dump(anchors, f, indent=2)`` (ASCII escaping, no trailing newline),
each anchor an object with keys in this order::

    anchor_id       "ANCHOR-<n>", n counting from 1
    timestamp       creation time, same format as entry timestamps
    sequence_range  [first, last]: [1, last sequence] or [0, 0] for an empty log
    root_hash       entry_hash of the entry at ``last`` ("" for an empty log)
    entry_count     number of entries in the log when anchored
    signature       HMAC-SHA256 hex (the log's key) over the canonical form of
                    {anchor_id, timestamp, sequence_range, root_hash,
                    entry_count, trigger_reason} (not ``extra``, not itself)
    trigger_reason  "manual", "count_threshold", "event:<type>", ...
    extra           {} (an extension dict)

The client names the file ``storage_path.replace(".jsonl", "_anchors.json")``;
here only a final ``.jsonl`` suffix is replaced (the same for every ordinary
name), and a log without that suffix gets ``<name>_anchors.json``.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from snapstore.errors import LogError

from .canonical import canonical_text
from .entry import utc_timestamp
from .files import write_atomic

_ANCHOR_ID = re.compile(r"ANCHOR-(\d+)\Z")
_FIELDS = ("anchor_id", "timestamp", "sequence_range", "root_hash", "entry_count",
           "signature", "trigger_reason", "extra")


class AnchorFileError(LogError):
    """The anchors file cannot be read or holds something that is not an anchor list."""


def anchors_path_for(log_path: Path) -> Path:
    """The anchors file that belongs to ``log_path``."""
    name = log_path.name
    stem = name.removesuffix(".jsonl")
    return log_path.with_name(stem + "_anchors.json")


@dataclass(frozen=True)
class Anchor:
    """One checkpoint: the chain had ``entry_count`` entries ending in ``root_hash``."""

    anchor_id: str
    timestamp: str
    sequence_range: tuple[int, int]
    root_hash: str
    entry_count: int
    signature: str = ""
    trigger_reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    unknown_fields: dict[str, Any] = field(default_factory=dict)

    @property
    def last_sequence(self) -> int:
        """The newest sequence the anchor covers (0 for an anchor of an empty log)."""
        return self.sequence_range[1]

    def signed_content(self) -> dict[str, Any]:
        """The fields the signature covers."""
        return {
            "anchor_id": self.anchor_id,
            "timestamp": self.timestamp,
            "sequence_range": list(self.sequence_range),
            "root_hash": self.root_hash,
            "entry_count": self.entry_count,
            "trigger_reason": self.trigger_reason,
        }

    def signature_ok(self, key: bytes) -> bool:
        """True when ``signature`` is the key's HMAC of the signed fields."""
        return sign_anchor(key, self.signed_content()) == self.signature

    def to_dict(self) -> dict[str, Any]:
        """The anchor as the client stores it, unknown keys last."""
        data: dict[str, Any] = {
            "anchor_id": self.anchor_id,
            "timestamp": self.timestamp,
            "sequence_range": list(self.sequence_range),
            "root_hash": self.root_hash,
            "entry_count": self.entry_count,
            "signature": self.signature,
            "trigger_reason": self.trigger_reason,
            "extra": self.extra,
        }
        for name, value in self.unknown_fields.items():
            data.setdefault(name, value)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Anchor:
        """Build an anchor from a parsed object; raise AnchorFileError when it is malformed."""
        try:
            first, last = data["sequence_range"]
            anchor = cls(
                anchor_id=data["anchor_id"],
                timestamp=data["timestamp"],
                sequence_range=(first, last),
                root_hash=data["root_hash"],
                entry_count=data["entry_count"],
                signature=data.get("signature", ""),
                trigger_reason=data.get("trigger_reason", ""),
                extra=data.get("extra", {}),
                unknown_fields={k: v for k, v in data.items() if k not in _FIELDS},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise AnchorFileError(f"malformed anchor {dict(data)!r:.200}: {exc!r}") from exc
        ints = (first, last, anchor.entry_count)
        if not all(isinstance(n, int) and not isinstance(n, bool) for n in ints):
            raise AnchorFileError(f"anchor {anchor.anchor_id!r}: sequence_range and entry_count must be integers")
        if not all(isinstance(s, str) for s in (anchor.anchor_id, anchor.root_hash, anchor.signature)):
            raise AnchorFileError(f"anchor {anchor.anchor_id!r}: id, root_hash and signature must be strings")
        return anchor


def sign_anchor(key: bytes, content: Mapping[str, Any]) -> str:
    """HMAC-SHA256 hex of the canonical form of an anchor's signed fields."""
    return hmac.digest(key, canonical_text(dict(content)).encode(), "sha256").hex()


def parse_anchors(data: bytes, where: Path | str = "anchors file") -> list[Anchor]:
    """Parse the bytes of an anchors file."""
    try:
        items = json.loads(data)
    except ValueError as exc:
        raise AnchorFileError(f"{where} is not valid JSON: {exc}") from exc
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise AnchorFileError(f"{where} must hold a JSON array of anchor objects")
    return [Anchor.from_dict(item) for item in items]


def read_anchors(path: Path) -> list[Anchor]:
    """The anchors stored at ``path``; an absent file means no anchors."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise AnchorFileError(f"cannot read {path}: {exc}") from exc
    return parse_anchors(data, path)


def serialize_anchors(anchors: list[Anchor]) -> bytes:
    """The bytes the client writes for this anchor list."""
    return json.dumps([anchor.to_dict() for anchor in anchors], indent=2).encode()


def write_anchors(path: Path, anchors: list[Anchor]) -> None:
    """Atomically replace the anchors file."""
    write_atomic(path, serialize_anchors(anchors))


def next_anchor_id(anchors: list[Anchor]) -> str:
    """``ANCHOR-<n+1>`` where n is the highest number used so far."""
    numbers = [int(m.group(1)) for a in anchors if (m := _ANCHOR_ID.match(a.anchor_id))]
    return f"ANCHOR-{max(numbers, default=len(anchors)) + 1}"


def make_anchor(
    key: bytes,
    anchors: list[Anchor],
    *,
    last_sequence: int,
    root_hash: str,
    entry_count: int,
    trigger_reason: str,
    timestamp: str | None = None,
) -> Anchor:
    """A new signed anchor following ``anchors``."""
    unsigned = Anchor(
        anchor_id=next_anchor_id(anchors),
        timestamp=timestamp if timestamp is not None else utc_timestamp(),
        sequence_range=(1 if last_sequence else 0, last_sequence),
        root_hash=root_hash,
        entry_count=entry_count,
        trigger_reason=trigger_reason,
    )
    return replace(unsigned, signature=sign_anchor(key, unsigned.signed_content()))


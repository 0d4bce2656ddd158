"""Log entries: the canonical form, signing and hashing, and :class:`LogEntry`.

This module knows nothing of files. Everything here is a pure function of the
entry's fields and the key, so a verifier and a writer share one definition.

Canonical form (the client's): ``json.dumps(obj, sort_keys=True,
separators=(',', ':'))`` with ASCII escaping, encoded UTF-8.

- ``signature`` = HMAC-SHA256 hex over the canonical form of the seven content
  fields; the key bytes are the key *string* encoded UTF-8 (the client does
  ``signing_key.encode()``: the hex text itself, not ``bytes.fromhex``).
- ``entry_hash`` = SHA-256 hex over the canonical form of the seven fields plus
  ``signature``.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any, NewType

from snapstore.errors import InvalidInput

from .canonical import (
    canonical_text,
    encode_string,
    entry_head_tail,
    json_round_trip,
    line_text,
)

EntryHash = NewType("EntryHash", str)

#: The seven fields the signature covers, in the client's field order.
CONTENT_FIELDS: tuple[str, ...] = (
    "sequence",
    "timestamp",
    "previous_hash",
    "event_type",
    "context_id",
    "actor",
    "payload",
)
#: Every field of a line, in the order the client writes them.
LINE_FIELDS: tuple[str, ...] = CONTENT_FIELDS + ("signature", "entry_hash")

ACTORS: frozenset[str] = frozenset({"human", "assistant", "system"})


class EventType(str, Enum):
    """Event types the client knows. Others are carried as plain strings."""

    EXCHANGE = "exchange"
    SIDEBAR_SPAWN = "sidebar_spawn"
    SIDEBAR_MERGE = "sidebar_merge"
    CONTEXT_PAUSE = "context_pause"
    CONTEXT_RESUME = "context_resume"
    CONTEXT_DELETED = "context_deleted"
    CONTEXT_REPARENT = "context_reparent"
    CROSS_REF_ADDED = "cross_ref_added"
    CROSS_REF_REVOKED = "cross_ref_revoked"
    CROSS_REF_UPDATED = "cross_ref_updated"
    CROSS_REF_VALIDATED = "cross_ref_validated"
    TAGS_UPDATED = "tags_updated"
    BATCH_OPERATION = "batch_operation"
    SESSION_START = "session_start"
    SESSION_END = "session_end"
    CORRECTION = "correction"
    ANCHOR_CREATED = "anchor_created"
    VERIFICATION_RUN = "verification_run"
    ERROR_LOGGED = "error_logged"


def canonical_bytes(obj: Any) -> bytes:
    """The canonical form of ``obj``, as bytes (``json.dumps`` itself: it also rejects circular values)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def key_bytes(key: str | bytes) -> bytes:
    """HMAC key bytes as the client derives them: a str key is encoded, not hex-decoded."""
    return key.encode() if isinstance(key, str) else bytes(key)


def utc_timestamp(now: datetime | None = None) -> str:
    """A timestamp in the client's format: naive-UTC ``isoformat()`` plus ``Z``.

    Like the client's ``datetime.utcnow().isoformat() + "Z"``, the fraction is
    left out when the microseconds are zero.
    """
    if now is None:
        return datetime.now(UTC).isoformat()[:-6] + "Z"  # an aware UTC isoformat() ends in "+00:00"
    moment = now
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment.isoformat() + "Z"


def parse_timestamp(text: str) -> datetime:
    """Parse an entry timestamp into an aware UTC datetime."""
    text = text.removesuffix("Z")
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


_IPAD = bytes(byte ^ 0x36 for byte in range(256))
_OPAD = bytes(byte ^ 0x5C for byte in range(256))


class Sealer:
    """Signs and checks entries under one key.

    HMAC-SHA256 is computed as RFC 2104 defines it, from two SHA-256 states
    keyed once (``key XOR ipad``, ``key XOR opad``) and copied per message:
    the same digest as ``hmac.new(key, msg, "sha256")`` (tested) without
    redoing the key schedule for every entry.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) > 64:  # SHA-256's block size
            key = hashlib.sha256(key).digest()
        key = key.ljust(64, b"\0")
        self._inner = hashlib.sha256(key.translate(_IPAD))
        self._outer = hashlib.sha256(key.translate(_OPAD))

    def sign(self, text: str) -> str:
        """HMAC-SHA256 hex of canonical text."""
        inner = self._inner.copy()
        inner.update(text.encode())
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()

    def seal(self, content: Mapping[str, Any]) -> tuple[str, str]:
        """Return ``(signature, entry_hash)`` for the seven content fields."""
        head, tail = entry_head_tail(content)
        signature = self.sign(head + tail)
        return signature, hashlib.sha256(f"{head}\"signature\":{encode_string(signature)},{tail}".encode()).hexdigest()

    def check(self, fields: Mapping[str, Any], line: str | None = None) -> tuple[bool, bool, str, bool]:
        """Check a well-typed entry: ``(hash_ok, signature_ok, recomputed_hash, line_ok)``.

        ``line_ok`` says whether ``line`` (if given) is exactly how the client
        writes these fields. This is the verifier's inner loop, so it builds
        the canonical text (as :func:`entry_head_tail`) and the line text (as
        ``json.dumps``) from one set of encoded values, in one call.
        """
        actor = encode_string(fields["actor"])
        context_id = encode_string(fields["context_id"])
        event_type = encode_string(fields["event_type"])
        previous_hash = encode_string(fields["previous_hash"])
        timestamp = encode_string(fields["timestamp"])
        signature = encode_string(fields["signature"])
        sequence = int.__repr__(fields["sequence"])
        payload = fields["payload"]
        head = (f'{{"actor":{actor},"context_id":{context_id},"event_type":{event_type},'
                f'"payload":{canonical_text(payload)},"previous_hash":{previous_hash},"sequence":{sequence},')
        tail = f'"timestamp":{timestamp}}}'
        recomputed = hashlib.sha256(f'{head}"signature":{signature},{tail}'.encode()).hexdigest()
        signature_ok = self.sign(head + tail) == fields["signature"]
        line_ok = True
        if line is not None:
            if tuple(fields) == LINE_FIELDS:
                line_ok = line == (
                    f'{{"sequence": {sequence}, "timestamp": {timestamp}, "previous_hash": {previous_hash}, '
                    f'"event_type": {event_type}, "context_id": {context_id}, "actor": {actor}, '
                    f'"payload": {line_text(payload)}, "signature": {signature}, '
                    f'"entry_hash": {encode_string(fields["entry_hash"])}}}')
            else:
                line_ok = line == line_text(fields)
        return recomputed == fields["entry_hash"], signature_ok, recomputed, line_ok


@functools.lru_cache(maxsize=8)
def _sealer(key: bytes) -> Sealer:
    """A :class:`Sealer` for ``key``, kept for the next entry under the same key."""
    return Sealer(key)


def seal(key: bytes, content: Mapping[str, Any]) -> tuple[str, str]:
    """Return ``(signature, entry_hash)`` for the seven content fields."""
    return (_sealer(key) if type(key) is bytes else Sealer(key)).seal(content)


def check_sealed(key: bytes, fields: Mapping[str, Any]) -> tuple[bool, bool, str]:
    """Check the nine fields of a well-typed entry: ``(hash_ok, signature_ok, recomputed_hash)``."""
    return (_sealer(key) if type(key) is bytes else Sealer(key)).check(fields)[:3]


def _check_type(name: str, value: Any, kind: type) -> None:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidInput(f"entry field {name!r} must be {kind.__name__}, got {type(value).__name__}")


FIELD_TYPES: dict[str, type] = {
    "sequence": int,
    "timestamp": str,
    "previous_hash": str,
    "event_type": str,
    "context_id": str,
    "actor": str,
    "payload": dict,
    "signature": str,
    "entry_hash": str,
}


@dataclass(frozen=True)
class LogEntry:
    """One entry of an OZOLITH log, exactly as stored.

    ``payload`` and ``unknown_fields`` are plain dicts (JSON values); treat
    them as read-only. ``unknown_fields`` holds top-level keys this version
    does not know; they are written back unchanged and in their place. They
    are not covered by the signature or the hash (the client's rules cover
    only the nine named fields).
    """

    sequence: int
    timestamp: str
    previous_hash: str
    event_type: str
    context_id: str
    actor: str
    payload: dict[str, Any]
    signature: str
    entry_hash: EntryHash
    unknown_fields: dict[str, Any] = field(default_factory=dict)
    key_order: tuple[str, ...] = field(default=(), compare=False, repr=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LogEntry:
        """Build an entry from a parsed line; raise InvalidInput if a field is missing or mistyped."""
        for name, kind in FIELD_TYPES.items():
            if name not in data:
                raise InvalidInput(f"entry has no field {name!r}")
            _check_type(name, data[name], kind)
        unknown = {k: v for k, v in data.items() if k not in FIELD_TYPES}
        order = tuple(data)
        if order == LINE_FIELDS + tuple(unknown):
            order = ()  # the usual layout: no need to remember it
        return cls(
            sequence=data["sequence"], timestamp=data["timestamp"], previous_hash=data["previous_hash"],
            event_type=data["event_type"], context_id=data["context_id"], actor=data["actor"],
            payload=data["payload"], signature=data["signature"], entry_hash=EntryHash(data["entry_hash"]),
            unknown_fields=unknown, key_order=order,
        )

    def to_dict(self) -> dict[str, Any]:
        """The line's object: the nine fields in client order, then unknown fields.

        An entry read from a line whose keys came in another order keeps that
        order, so re-serialising gives the line back byte for byte.
        """
        data = {name: getattr(self, name) for name in LINE_FIELDS}
        for name, value in self.unknown_fields.items():
            data.setdefault(name, value)
        if self.key_order:
            data = {name: data[name] for name in self.key_order}
        return data

    def to_line(self) -> str:
        """The line as the client writes it (``json.dumps`` defaults), without the newline."""
        return line_text(self.to_dict())

    def content(self) -> dict[str, Any]:
        """The seven signed fields."""
        return {name: getattr(self, name) for name in CONTENT_FIELDS}

    @property
    def time(self) -> datetime:
        """The timestamp as an aware UTC datetime."""
        return parse_timestamp(self.timestamp)

    def verify(self, key: bytes) -> bool:
        """True when the entry re-hashes to ``entry_hash`` and its signature holds under ``key``."""
        hash_ok, signature_ok, _ = check_sealed(key, self.to_dict())
        return hash_ok and signature_ok


def make_entry(
    key: bytes,
    *,
    sequence: int,
    previous_hash: str,
    event_type: str,
    context_id: str,
    actor: str,
    payload: Mapping[str, Any],
    timestamp: str | None = None,
) -> LogEntry:
    """Build and seal a new entry. Rejects what the client's readers could not read back.

    Every value goes through a JSON round trip first (tuples become lists,
    non-string keys strings, a pair of lone surrogates one astral character)
    so the entry returned, and the bytes signed, are exactly what a reader
    will get back from the stored line.
    """
    if isinstance(event_type, Enum):
        event_type = event_type.value
    _check_type("sequence", sequence, int)
    for name, value in (("previous_hash", previous_hash), ("event_type", event_type),
                        ("context_id", context_id), ("actor", actor)):
        _check_type(name, value, str)
    if not event_type:
        raise InvalidInput("event_type must not be empty")
    if actor not in ACTORS:
        raise InvalidInput(f"actor must be one of {sorted(ACTORS)}, got {actor!r}")
    if not isinstance(payload, Mapping):
        raise InvalidInput(f"payload must be a JSON object, got {type(payload).__name__}")
    content = {
        "sequence": int(sequence),
        "timestamp": timestamp if timestamp is not None else utc_timestamp(),
        "previous_hash": previous_hash,
        "event_type": event_type,
        "context_id": context_id,
        "actor": actor,
        "payload": dict(payload),
    }
    try:
        content = json_round_trip(content)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidInput(f"payload is not JSON-serialisable: {exc}") from exc
    signature, entry_hash = seal(key, content)
    return LogEntry(**content, signature=signature, entry_hash=EntryHash(entry_hash))

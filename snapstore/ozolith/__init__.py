"""OZOLITH: the client's hash-chained, append-only audit log, byte-compatible.

A log is a JSON Lines file, one signed entry per line, each naming the hash of
the one before; anchors (signed checkpoints) live in ``<log>_anchors.json``
and the key in ``.ozolith_key`` beside the log. See ``docs/ozolith.md``.

Layers, each using only those before it:

- :mod:`.canonical` the client's JSON encodings; :mod:`.entry` entries,
  signing and hashing (no I/O);
- :mod:`.files` locks, tail reads, durable writes; :mod:`.keys` the key;
  :mod:`.anchors` the anchors file;
- :mod:`.findings`, :mod:`.walk`, :mod:`.parallel`, :mod:`.verify` checking a log;
- :mod:`.log` ``OzolithLog``, appending, reading and querying.
"""

from .anchors import Anchor, AnchorFileError, anchors_path_for
from .entry import (
    ACTORS,
    EntryHash,
    EventType,
    LogEntry,
    canonical_bytes,
    utc_timestamp,
)
from .keys import KEY_FILE_NAME, KeyFileError
from .log import (
    CorruptEntry,
    LoadResult,
    OzolithLog,
    TornLine,
    TornTail,
    UnparsableLine,
    WrongKey,
)
from .verify import ChainReport, Finding, FindingKind, verify_chain

__all__ = [
    "ACTORS",
    "KEY_FILE_NAME",
    "Anchor",
    "AnchorFileError",
    "ChainReport",
    "CorruptEntry",
    "EntryHash",
    "EventType",
    "Finding",
    "FindingKind",
    "KeyFileError",
    "LoadResult",
    "LogEntry",
    "OzolithLog",
    "TornLine",
    "TornTail",
    "UnparsableLine",
    "WrongKey",
    "anchors_path_for",
    "canonical_bytes",
    "utc_timestamp",
    "verify_chain",
]

"""The client's OZOLITH log as its orchestrator writes it per operation (reference §3), for benchmarking.

The client system appends one signed, hash-chained JSON line per operation
(the planning document: "Already logs SIDEBAR_SPAWN, SIDEBAR_MERGE ... all
exchanges"), fsynced per append, in a file of its own beside its SQLite
database. snapstore's orchestrator makes the same entry and commits it with
the snapshot in one write; the client's per-operation persistence is its
``save_context`` calls *and* this append, so a like-for-like comparison
times both.

Entries are built by :func:`snapstore.ozolith.entry.make_entry`, the same
code (and CPU) snapstore's own entries take, so neither side is favoured by
its JSON or HMAC work. The writer keeps the last sequence and hash in memory
(no tail read per append): the cheapest way the client could write its log.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from snapstore.ozolith.entry import key_bytes, make_entry
from snapstore.ozolith.keys import KEY_FILE_NAME


class ClientOzolith:
    """Append-only: one line per entry, ``flush`` + ``os.fsync`` per append, as the client does."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        key_path = self.path.parent / KEY_FILE_NAME
        if key_path.exists():
            key = key_path.read_text().strip()
        else:
            key = secrets.token_hex(32)
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(key)
        self._key = key_bytes(key)
        self.sequence, self.last_hash = 0, ""
        if self.path.exists():  # continue the chain of an existing log
            with self.path.open("rb") as existing:
                lines = existing.read().splitlines()
            if lines:
                import json

                last = json.loads(lines[-1])
                self.sequence, self.last_hash = last["sequence"], last["entry_hash"]
        self._file = self.path.open("ab")

    def append(self, event_type: str, context_id: str, actor: str, payload: dict[str, Any]) -> int:
        entry = make_entry(self._key, sequence=self.sequence + 1, previous_hash=self.last_hash,
                           event_type=event_type, context_id=context_id, actor=actor, payload=payload)
        self._file.write(entry.to_line().encode("utf-8") + b"\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.sequence, self.last_hash = entry.sequence, entry.entry_hash
        return entry.sequence

    def close(self) -> None:
        self._file.close()

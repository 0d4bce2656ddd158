"""An independent, minimal implementation of the client's OZOLITH rules, for tests only.

Written from the contract (``/work/shared/reference/client-system.md`` §3)
and the client's published behaviour, sharing no code with snapstore, so
that each side checks the other:

- a line is ``json.dumps(entry) + "\\n"`` with the fields in the order
  sequence, timestamp, previous_hash, event_type, context_id, actor,
  payload, signature, entry_hash;
- canonical form: ``json.dumps(x, sort_keys=True, separators=(",", ":"))``
  encoded UTF-8;
- signature: HMAC-SHA256 over the seven content fields with the key
  string's own bytes (``key.encode()``);
- entry_hash: SHA-256 over the seven fields plus signature;
- anchors: ``json.dump(list, f, indent=2)`` into ``<name>_anchors.json``,
  each signed over anchor_id, timestamp, sequence_range, root_hash,
  entry_count, trigger_reason; creating one also logs ``anchor_created``.

Deliberately naive: it rereads the whole file, uses ``hmac.new`` and
``json.dumps`` at every step, and never optimises.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from datetime import UTC, datetime
from typing import Any

CONTENT = ("sequence", "timestamp", "previous_hash", "event_type", "context_id", "actor", "payload")
ANCHOR_SIGNED = ("anchor_id", "timestamp", "sequence_range", "root_hash", "entry_count", "trigger_reason")


def canon(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode("utf-8")


def now_stamp() -> str:
    return datetime.now(UTC).replace(tzinfo=None).isoformat() + "Z"


def anchors_file(log_path: str) -> str:
    return log_path.replace(".jsonl", "_anchors.json")


def sign(key: str, value: Any) -> str:
    return hmac.new(key.encode(), canon(value), hashlib.sha256).hexdigest()


def read_lines(log_path: str) -> list[dict[str, Any]]:
    if not os.path.exists(log_path):
        return []
    with open(log_path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def read_anchor_list(path: str) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


class ReferenceWriter:
    """Appends entries and anchors the way the client does."""

    def __init__(self, log_path: str, key: str) -> None:
        self.log_path = log_path
        self.key = key

    def append(self, event_type: str, context_id: str, actor: str, payload: dict[str, Any],
               timestamp: str | None = None) -> dict[str, Any]:
        entries = read_lines(self.log_path)
        entry: dict[str, Any] = {
            "sequence": len(entries) + 1,
            "timestamp": timestamp or now_stamp(),
            "previous_hash": entries[-1]["entry_hash"] if entries else "",
            "event_type": event_type,
            "context_id": context_id,
            "actor": actor,
            "payload": payload,
        }
        entry["signature"] = sign(self.key, {name: entry[name] for name in CONTENT})
        hashed = {name: entry[name] for name in CONTENT}
        hashed["signature"] = entry["signature"]
        entry["entry_hash"] = hashlib.sha256(canon(hashed)).hexdigest()
        with open(self.log_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")
        return entry

    def create_anchor(self, reason: str = "manual", timestamp: str | None = None,
                      entry_timestamp: str | None = None) -> dict[str, Any]:
        entries = read_lines(self.log_path)
        path = anchors_file(self.log_path)
        anchors = read_anchor_list(path)
        number = int(anchors[-1]["anchor_id"].split("-")[1]) + 1 if anchors else 1
        anchor: dict[str, Any] = {
            "anchor_id": f"ANCHOR-{number}",
            "timestamp": timestamp or now_stamp(),
            "sequence_range": [1 if entries else 0, entries[-1]["sequence"] if entries else 0],
            "root_hash": entries[-1]["entry_hash"] if entries else "",
            "entry_count": len(entries),
            "signature": "",
            "trigger_reason": reason,
            "extra": {},
        }
        anchor["signature"] = sign(self.key, {name: anchor[name] for name in ANCHOR_SIGNED})
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(anchors + [anchor], handle, indent=2)
        self.append("anchor_created", "SYSTEM", "system",
                    {"anchor_id": anchor["anchor_id"], "root_hash": anchor["root_hash"],
                     "entry_count": anchor["entry_count"]}, timestamp=entry_timestamp)
        return anchor


def reference_verify(log_path: str, key: str) -> tuple[bool, int | None]:
    """The client's walk: ``(True, None)`` or ``(False, first bad sequence)``."""
    previous = ""
    for entry in read_lines(log_path):
        content = {name: entry[name] for name in CONTENT}
        hashed = dict(content, signature=entry["signature"])
        if (entry["previous_hash"] != previous
                or hashlib.sha256(canon(hashed)).hexdigest() != entry["entry_hash"]
                or sign(key, content) != entry["signature"]):
            return False, entry["sequence"]
        previous = entry["entry_hash"]
    return True, None


def reference_anchor_problems(log_path: str, key: str) -> list[str]:
    """Anchors whose signature, count or root hash disagree with the log."""
    path = anchors_file(log_path)
    if not os.path.exists(path):
        return []
    entries = read_lines(log_path)
    problems = []
    for anchor in read_anchor_list(path):
        if sign(key, {name: anchor[name] for name in ANCHOR_SIGNED}) != anchor["signature"]:
            problems.append(f"{anchor['anchor_id']}: signature")
        last = anchor["sequence_range"][1]
        covered = [e for e in entries if e["sequence"] <= last]
        if len(covered) != anchor["entry_count"]:
            problems.append(f"{anchor['anchor_id']}: count")
        elif (covered[-1]["entry_hash"] if covered else "") != anchor["root_hash"]:
            problems.append(f"{anchor['anchor_id']}: root")
    return problems

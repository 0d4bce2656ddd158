"""The floor of one exchange commit in Python on the embedded store: only the work that cannot be skipped.

    python benchmarks/bench_floor.py [--exchanges 1000] [--ops 250] [--no-drain]

What-if for docs/benchmarks.md ("Where (a)'s 0.9 ms goes"): how fast could
snapstore's orchestrator append an exchange to the main thread if it did
nothing but the essential work, in Python, on the same SQLite schema and
durability? Two stores are built by the same workload (bench_persistence's)
to N exchanges. Then, alternating operation by operation in one process:

- **orchestrator**: ``ConversationOrchestrator.add_exchange`` on the root
  context, as in production (store-kept log);
- **floor**: the same exchange written straight to the second store's
  tables: the chunk (canonical JSON), the root node spliced from its last
  body (new list head and count, new ``last_activity``), the state and the
  snapshot, each hashed with BLAKE3 and compressed with the store's zstd
  dictionary; one log entry (canonical JSON, HMAC-SHA256, SHA-256, the
  line); one transaction of six statements (``BEGIN IMMEDIATE``, the log
  tail, the log row, the four objects, the ref moved by a conditional
  ``UPDATE``, the reflog row) committed with ``synchronous=FULL``.

The floor leaves out what the orchestrator must also do: check its input
(types, nesting), keep the in-memory tree and its caches, the retries of a
lost compare-and-swap, chain hints and auto-packing. So no implementation in
Python on this engine can be faster than the floor; the ratio says how much
of an operation is left to win in snapstore's own code.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import hmac
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import zstandard
from blake3 import blake3

import bench_persistence as bp
from _common import machine, ms, ratio, table
from snapstore.compression import _for_compression
from snapstore.objects import canonical_json
from snapstore.orchestrator import now_text
from snapstore.ozolith.canonical import canonical_text, line_text
from snapstore.repository import Repository
from snapstore.timeutil import utc_now

ROOT = "SB-1"


def object_id(kind: str, body: bytes) -> str:
    hasher = blake3(b"%s %d\0" % (kind.encode("ascii"), len(body)))
    hasher.update(body)
    return hasher.hexdigest()


class Floor:
    """Appends exchanges to the root context of a closed store, by hand."""

    def __init__(self, store: str, conversation: str) -> None:
        repo = Repository.open(store)
        self.ref = "conversations/" + conversation
        head = repo.head(conversation)
        assert head is not None
        tree = repo.tree(head)
        record = tree.records[ROOT]
        found = repo.backend.get_objects([record.node_id, tree.state_id])
        self.node = repo.verified_body(found[record.node_id])
        self.node_id = record.node_id
        self.state = repo.verified_body(found[tree.state_id])
        chain = record.memory["local_memory"]
        self.count, self.chunk_head = chain.n, chain.head
        self.list_json = canonical_json({"head": chain.head, "count": chain.n})
        self.activity = canonical_json(record.fields["last_activity"])
        dict_id = repo.codec.current
        assert dict_id is not None
        self.compressor = zstandard.ZstdCompressor(dict_data=_for_compression(repo.codec._dicts[dict_id]))
        self.key = repo.backend.get_meta("ozolith/key").encode()
        repo.close()
        self.db = sqlite3.connect(str(Path(store) / "store.sqlite"), isolation_level=None)
        self.db.execute("PRAGMA synchronous = FULL")
        self.head = bytes.fromhex(head)
        self.number = 10**9

    def _stored(self, kind: str, body: bytes) -> tuple[bytes, str, int, bytes]:
        frame = self.compressor.compress(body)
        return bytes.fromhex(object_id(kind, body)), kind, len(body), frame + zlib.crc32(frame).to_bytes(4, "little")

    def add_exchange(self, user: str, assistant: str) -> None:
        stamp, now = now_text(), utc_now()
        self.number += 1
        exchange_id = f"EXCH-{self.number}"
        item = {"assistant": assistant, "context_id": ROOT, "exchange_id": exchange_id, "timestamp": stamp,
                "user": user}
        chunk = canonical_json({"v": 1, "prev": self.chunk_head, "index": self.count, "item": item})
        chunk_id = object_id("chunk", chunk)
        list_json = canonical_json({"head": chunk_id, "count": self.count + 1})
        activity = canonical_json(stamp)
        node = self.node.replace(self.list_json, list_json).replace(self.activity, activity)
        node_id = object_id("node", node)
        state = self.state.replace(self.node_id.encode(), node_id.encode())
        state_id = object_id("state", state)
        snapshot = canonical_json({
            "v": 1, "conversation": self.ref[len("conversations/"):], "root": state_id,
            "parents": [self.head.hex()], "time": now,
            "event": {"type": "exchange", "context_id": ROOT, "message": exchange_id}, "log": None,
        })
        objects = [self._stored("chunk", chunk), self._stored("node", node), self._stored("state", state),
                   self._stored("snapshot", snapshot)]
        payload = {
            "exchange_id": exchange_id, "user_hash": hashlib.sha256(user.encode("utf-8", "surrogatepass")).hexdigest(),
            "assistant_hash": hashlib.sha256(assistant.encode("utf-8", "surrogatepass")).hexdigest(),
            "user_chars": len(user), "assistant_chars": len(assistant),
            "snapstore": {"conversation": self.ref[len("conversations/"):], "snapshot": objects[3][0].hex(),
                          "parent": self.head.hex(), "root": state_id, "nodes": {ROOT: node_id}},
        }
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            last = db.execute("SELECT sequence, entry_hash FROM ozolith ORDER BY sequence DESC LIMIT 1").fetchone()
            sequence, previous = (last[0] + 1, last[1]) if last else (1, "")
            content = {"actor": "system", "context_id": ROOT, "event_type": "exchange", "payload": payload,
                       "previous_hash": previous, "sequence": sequence, "timestamp": now}
            signed = canonical_text(content)
            signature = hmac.new(self.key, signed.encode(), "sha256").hexdigest()
            entry_hash = hashlib.sha256(f'{signed[:-1]},"signature":"{signature}"}}'.encode()).hexdigest()
            line = line_text({**content, "signature": signature, "entry_hash": entry_hash})
            db.execute("INSERT INTO ozolith (sequence, entry_hash, line) VALUES (?, ?, ?)", (sequence, entry_hash, line))
            db.execute("INSERT OR IGNORE INTO objects (id, kind, size, data) VALUES "
                       + ",".join(["(?, ?, ?, ?)"] * len(objects)) + " RETURNING id",
                       [value for o in objects for value in o]).fetchall()
            moved = db.execute("UPDATE refs SET target = ? WHERE name = ? AND target = ?",
                               (objects[3][0], self.ref, self.head)).rowcount
            assert moved == 1
            db.execute("INSERT INTO reflog (name, old, new, time, reason, log_sequence, log_hash)"
                       " VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (self.ref, self.head, objects[3][0], now, f"exchange: {exchange_id}", sequence, entry_hash))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.node, self.node_id, self.state, self.head = node, node_id, state, objects[3][0]
        self.count, self.chunk_head, self.list_json, self.activity = self.count + 1, chunk_id, list_json, activity


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--exchanges", type=int, default=1000)
    parser.add_argument("--ops", type=int, default=250)
    parser.add_argument("--no-drain", action="store_true", help="no os.sync() before each timed operation")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="bench-floor-"))
    ops = bp.workload(args.exchanges)
    systems = [bp.Snapstore(root / "orchestrator"), bp.Snapstore(root / "floor")]
    for op in ops:
        for system in systems:
            system.apply(op)
    systems[1].close()
    floor = Floor(systems[1].store, bp.CONVERSATION)
    orchestrator = systems[0].orchestrator
    texts = [(op.user, op.assistant) for op in bp.workload(args.exchanges + args.ops)[len(ops):] if op.kind == "exchange"]
    texts = (texts * (args.ops // max(len(texts), 1) + 1))[: args.ops]
    samples: dict[str, list[float]] = {"orchestrator": [], "floor": []}
    gc.collect()
    gc.disable()
    try:
        for i, (user, assistant) in enumerate(texts):
            order = [("orchestrator", lambda: orchestrator.add_exchange(ROOT, user, assistant)),
                     ("floor", lambda: floor.add_exchange(user, assistant))]
            for name, run in order if i % 2 == 0 else reversed(order):
                if not args.no_drain:
                    os.sync()
                start = time.perf_counter()
                run()
                samples[name].append(time.perf_counter() - start)
    finally:
        gc.enable()
    systems[0].close()
    floor.db.close()
    shutil.rmtree(root, ignore_errors=True)
    print(f"## The floor of an exchange commit ({args.exchanges:,} exchanges, {args.ops} exchanges on the root "
          f"context each, alternating)\n\n{machine(str(root))}\n")
    a, f = samples["orchestrator"], samples["floor"]
    rows = [[name, ms(statistics.median(s)), ms(statistics.fmean(s)), ms(sorted(s)[int(len(s) * 0.99) - 1])]
            for name, s in samples.items()]
    print(table(["", "median ms", "mean ms", "p99 ms"], rows))
    print(f"\nfloor / orchestrator: {ratio(statistics.median(f), statistics.median(a))} by median, "
          f"{ratio(statistics.fmean(f), statistics.fmean(a))} by mean")
    return 0


if __name__ == "__main__":
    sys.exit(main())

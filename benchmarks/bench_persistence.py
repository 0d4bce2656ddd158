"""Persistence per operation: snapstore vs the client's layer vs LangGraph, one workload.

    python benchmarks/bench_persistence.py [--quick] [--dir DIR] [--sizes 100,1000,10000]
                                           [--window N] [--only a,c] [--no-drain] [--keep]
                                           [--against REV]

Results and their reading: docs/benchmarks.md (section "Persistence per operation"). Four systems run
the same scripted conversation (a root, sidebars spawned from the focus,
exchanges of ~1.3 KB of mixed ASCII/Unicode text, pauses, focus switches,
merges), interleaved operation by operation in one process (the order
rotating every operation, so that machine drift hits all alike):

a. snapstore's ConversationOrchestrator on the embedded store with a linked
   OZOLITH log, as in production (``Session(store, ozolith=log).start_new``);
   timed: the whole operation (workspace change, objects, snapshot, log entry,
   ref swap, each durable);
b. the client-style orchestrator (``client_orchestrator.py``) on snapstore's
   drop-in adapter; timed: the ``save_context`` / ``set_session_state`` calls;
c. the same orchestrator on the client's own layer (``client_sqlite_layer.py``),
   SQLite's default ``synchronous`` for WAL (FULL in this build); c' is the
   same with ``synchronous=NORMAL`` (no fsync per commit), for reference;
d. the same orchestrator with LangGraph's ``SqliteSaver``: after every
   operation one ``put`` of a checkpoint whose channel values are the whole
   state (the ``SidebarContext`` objects and the focus); timed: building the
   checkpoint and ``put``.

Before each timed operation an untimed ``os.sync()`` flushes what the others
wrote (``--no-drain`` skips it), and a bare "append 100 B + fsync" runs in the
same rotation to show the disk's sync latency at the time.

Per size N (exchanges), the timed window is the last ``--window`` operations
before the conversation reaches N exchanges. Below SIZES_SEEDED every system
is built from an empty store by the same operations. From there on (10,000),
(a) and (b) are still built operation by operation from empty (their history
and size are real), while (c) and (d) are brought to the window's start
without history: (c) saves every context once (its table is history-less
anyway), (d) puts one checkpoint of the state; (d)'s database size at N is
then projected from the checkpoint sizes every operation would have written
(serialized for real every SEED_SAMPLE operations, interpolated between),
scaled by the page overhead measured at the largest fully built size. The
report marks projected numbers.

Sizes are every file of a system's folder (database, WAL, shm, log, anchors,
key) while open, and again after a clean close. Restart is open + load the
whole tree into an orchestrator, the median of three, OS cache warm; every
restart is checked against the state the workload gives in memory (contexts,
statuses, focus, every exchange's text). The cyclic GC is off while
operations are timed.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import random
import shutil
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import client_sqlite_layer
from _common import SEED, Summary, machine, ms, ratio, snapstore_at, table, text, verdict, work_folder
from client_orchestrator import ClientOrchestrator
from client_ozolith import ClientOzolith

from snapstore.adapters import sidebar_persistence as snap_adapter
from snapstore.startup import Session
from tests.client.model import SidebarContext

SIZES = (100, 1_000, 10_000)
QUICK_SIZES = (100, 400)
SIZES_SEEDED = 5_000  # sizes from here on: (c) and (d) start at the window, see the module doc
WINDOW = 250
SEED_SAMPLE = 25  # (d) at seeded sizes: serialize the checkpoint every this many operations
METADATA_BYTES = 40  # (d)'s metadata JSON per checkpoint, about
INHERIT = 5
CONVERSATION = "bench"
THREAD = {"configurable": {"thread_id": CONVERSATION, "checkpoint_ns": ""}}
MODEL_MODULE = SidebarContext.__module__
ALLOWED = [(MODEL_MODULE, n) for n in ("SidebarContext", "SidebarStatus", "SidebarPriority")]


# -- the workload ----------------------------------------------------------------


class Op(NamedTuple):
    kind: str  # root exchange spawn merge pause resume focus
    context: str
    text: str = ""
    user: str = ""
    assistant: str = ""
    exchanges: int = 0  # exchanges in the conversation after this operation
    main: bool = False  # changes the root context (the main thread, the biggest context)


def workload(n_exchanges: int, seed: int = SEED) -> list[Op]:
    """The operations of a conversation up to ``n_exchanges`` exchanges (a prefix of any longer one).

    The focus mostly exchanges. The root is the main thread; sidebars are
    short excursions from the focus (spawned at depth < 3, merged back with a
    summary after a handful of exchanges); sometimes the focus pauses (then
    resumes, or looks elsewhere) or switches to another unmerged context,
    the main thread more often than not.
    """
    rng = random.Random(seed)
    ops = [Op("root", "SB-1", text(rng, 40, 160), main=True)]
    parent: dict[str, str | None] = {"SB-1": None}
    status = {"SB-1": "active"}
    own = {"SB-1": 0}
    depth = {"SB-1": 0}
    focus, count = "SB-1", 0

    def other_open() -> str | None:
        """Somewhere else to look: the main thread more often than not, else any unmerged context."""
        if focus != "SB-1" and rng.random() < 0.6:
            return "SB-1"
        candidates = [c for c, s in status.items() if s != "merged" and c != focus]
        return rng.choice(candidates) if candidates else None

    while count < n_exchanges:
        if status[focus] == "paused":
            status[focus] = "active"
            ops.append(Op("resume", focus, exchanges=count, main=focus == "SB-1"))
            continue
        roll = rng.random()
        spawn = 0.05 if depth[focus] < 3 else 0.0
        merge = 0.12 if depth[focus] > 0 and own[focus] >= 2 else 0.0
        if roll < spawn:
            cid = f"SB-{len(status) + 1}"
            parent[cid], status[cid], own[cid], depth[cid] = focus, "active", 0, depth[focus] + 1
            status[focus] = "paused"
            ops.append(Op("spawn", focus, text(rng, 40, 160), exchanges=count, main=focus == "SB-1"))
            focus = cid
            continue
        roll -= spawn
        if roll < merge:
            up = parent[focus]
            assert up is not None
            status[focus], status[up] = "merged", "active"
            ops.append(Op("merge", focus, text(rng, 200, 800), exchanges=count, main=up == "SB-1"))
            focus = up
            continue
        roll -= merge
        if roll < 0.03:
            status[focus] = "paused"
            ops.append(Op("pause", focus, exchanges=count, main=focus == "SB-1"))
            if rng.random() < 0.5 and (target := other_open()) is not None:
                focus = target
                ops.append(Op("focus", focus, exchanges=count))
            continue
        if roll < 0.05 and (target := other_open()) is not None:
            focus = target
            ops.append(Op("focus", focus, exchanges=count))
            continue
        count += 1
        own[focus] += 1
        ops.append(Op("exchange", focus, user=text(rng, 100, 700), assistant=text(rng, 300, 1500),
                      exchanges=count, main=focus == "SB-1"))
    return ops


def drive(orchestrator: Any, op: Op) -> None:
    """One operation on either orchestrator (they share the client's method names)."""
    kind = op.kind
    if kind == "exchange":
        orchestrator.add_exchange(op.context, op.user, op.assistant)
    elif kind == "spawn":
        orchestrator.spawn_sidebar(op.context, op.text, INHERIT, task_description=op.text)
    elif kind == "merge":
        orchestrator.merge_sidebar(op.context, op.text)
    elif kind == "pause":
        orchestrator.pause_context(op.context)
    elif kind == "resume":
        orchestrator.resume_context(op.context)
    elif kind == "focus":
        orchestrator.switch_focus(op.context)
    elif kind == "root":
        orchestrator.create_root_context(op.text)
    else:
        raise ValueError(kind)


# -- what must survive a restart -------------------------------------------------


def fingerprint(contexts: dict[str, dict[str, Any]], focus: str | None) -> tuple:
    """What a restart must give back: every context's status, parent, exchanges' text, and the focus."""
    out = []
    for cid in sorted(contexts):
        c = contexts[cid]
        out.append((cid, c["parent_context_id"], c["status"],
                    tuple((e["exchange_id"], e["user"], e["assistant"]) for e in c["local_memory"]),
                    tuple(e["exchange_id"] for e in c["inherited_memory"])))
    return tuple(out), focus


def client_fingerprint(orchestrator: ClientOrchestrator) -> tuple:
    contexts = {
        cid: {"parent_context_id": c.parent_context_id, "status": c.status.value,
              "local_memory": c.local_memory, "inherited_memory": c.inherited_memory}
        for cid, c in orchestrator.contexts.items()
    }
    return fingerprint(contexts, orchestrator.active_context_id)


def messages_json_bytes(orchestrator: ClientOrchestrator) -> tuple[int, int, int]:
    """(raw JSON of every message once, their user+assistant text, JSON of the whole state) in UTF-8 bytes."""
    raw = texts = 0
    for context in orchestrator.contexts.values():
        for item in context.local_memory:
            raw += len(json.dumps(item, ensure_ascii=False).encode())
            texts += len(item["user"].encode()) + len(item["assistant"].encode())
    whole = len(json.dumps(snap_adapter.typed.encode_value(list(orchestrator.contexts.values())),
                           ensure_ascii=False).encode())
    return raw, texts, whole


# -- the systems ------------------------------------------------------------------


class Timed:
    """A persistence object whose write calls, and the audit-log appends of ``log``, add their duration to
    ``spent``."""

    def __init__(self, inner: Any, log: ClientOzolith | None = None) -> None:
        self.inner = inner
        self.log = log
        self.spent = 0.0

    def audit(self, event_type: str, context_id: str, actor: str, payload: dict[str, Any]) -> None:
        start = time.perf_counter()
        try:
            assert self.log is not None
            self.log.append(event_type, context_id, actor, payload)
        finally:
            self.spent += time.perf_counter() - start

    def save_context(self, context: Any) -> bool:
        start = time.perf_counter()
        try:
            return self.inner.save_context(context)
        finally:
            self.spent += time.perf_counter() - start

    def set_session_state(self, key: str, value: Any) -> bool:
        start = time.perf_counter()
        try:
            return self.inner.set_session_state(key, value)
        finally:
            self.spent += time.perf_counter() - start


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


class System:
    key = "?"
    label = "?"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True)
        self.samples: list[float] = []

    def apply(self, op: Op) -> float:
        raise NotImplementedError

    def seed(self, ops: Sequence[Op]) -> None:
        """Reach the state after ``ops`` (untimed); by default by running them."""
        for op in ops:
            self.apply(op)

    def fingerprint(self) -> tuple:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def restart(self) -> tuple[float, tuple]:
        """Seconds to open and load the whole tree, and the fingerprint of what was loaded."""
        raise NotImplementedError

    def size(self) -> int:
        return folder_bytes(self.folder)

    projected_size: int | None = None


class Snapstore(System):
    key, label = "a", "(a) snapstore orchestrator + OZOLITH in the store"
    # The log kept in the store: each operation's entry commits with its objects and ref
    # (one transaction, one fsync). SnapstoreFileLog is the same with the client's log file.
    log_in_store = True

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.store, self.log = str(folder / "store"), str(folder / "ozolith.jsonl")
        self.session = self._session()
        self.orchestrator: Any = None

    def _session(self) -> Session:
        if self.log_in_store:
            return Session(self.store, log_in_store=True)
        return Session(self.store, ozolith=self.log)

    def apply(self, op: Op) -> float:
        start = time.perf_counter()
        if op.kind == "root":
            self.orchestrator = self.session.start_new(CONVERSATION, op.text)
        else:
            drive(self.orchestrator, op)
        return time.perf_counter() - start

    def fingerprint(self) -> tuple:
        return snap_fingerprint(self.orchestrator)

    def close(self) -> None:
        self.session.close()

    def breakdown(self) -> dict[str, Any]:
        """Where the closed store's bytes go: objects by kind, SQLite pages by table, the log."""
        db = sqlite3.connect(f"file:{self.store}/store.sqlite?mode=ro", uri=True)
        try:
            kinds = {k: (n, raw, stored) for k, n, raw, stored in db.execute(
                "SELECT kind, count(*), sum(size), sum(length(data)) FROM objects GROUP BY kind")}
            pages = {name: (size, payload, unused) for name, size, payload, unused in db.execute(
                "SELECT name, sum(pgsize), sum(payload), sum(unused) FROM dbstat GROUP BY name")}
            reflog = db.execute("SELECT count(*), sum(length(name) + length(old) + length(new) + length(time)"
                                " + length(reason) + length(log_hash) + 8) FROM reflog").fetchone()
            meta = db.execute("SELECT sum(length(key) + length(value)) FROM meta").fetchone()[0]
            page_size = db.execute("PRAGMA page_size").fetchone()[0]
            free = db.execute("PRAGMA freelist_count").fetchone()[0] * page_size
        finally:
            db.close()
        tables = set(pages)
        packed = None
        if "packs" in tables:  # packing (snapstore/packing.py): objects, log lines and reflog rows in packs
            db = sqlite3.connect(f"file:{self.store}/store.sqlite?mode=ro", uri=True)
            try:
                packed = db.execute("SELECT count(*), coalesce(sum(live), 0), coalesce(sum(live_size), 0),"
                                    " coalesce(sum(length(data)), 0) FROM packs").fetchone()
                reflog_packed = db.execute("SELECT coalesce(sum(count), 0) FROM reflog_packed").fetchone()[0]
                reflog_pack_bytes = db.execute("SELECT coalesce(sum(length(data)), 0) FROM reflog_packs").fetchone()[0]
                reflog = (reflog[0] + reflog_packed, (reflog[1] or 0) + reflog_pack_bytes)
            finally:
                db.close()
        if self.log_in_store:
            db = sqlite3.connect(f"file:{self.store}/store.sqlite?mode=ro", uri=True)
            try:
                entries, log_bytes = db.execute("SELECT count(*), sum(length(line) + 1) FROM ozolith").fetchone()
                log_bytes = (pages.get("ozolith") or (log_bytes,))[0]  # the pages the table takes
                if "ozolith_packs" in tables:
                    entries += db.execute("SELECT coalesce(sum(last - first + 1), 0) FROM ozolith_packs").fetchone()[0]
                    log_bytes += pages["ozolith_packs"][0]
            finally:
                db.close()
        else:
            log = Path(self.log)
            entries, log_bytes = sum(1 for _ in log.open("rb")), log.stat().st_size
        return {"kinds": kinds, "pages": pages, "reflog": reflog, "meta": meta, "free": free,
                "log": (entries, log_bytes), "packed": packed}

    def restart(self) -> tuple[float, tuple]:
        start = time.perf_counter()
        session = self._session()
        orchestrator = session.continue_last()
        elapsed = time.perf_counter() - start
        found = snap_fingerprint(orchestrator)
        session.close()
        return elapsed, found


def snap_fingerprint(orchestrator: Any) -> tuple:
    contexts = {}
    for cid, record in orchestrator.tree.records.items():
        contexts[cid] = {"parent_context_id": record.fields.get("parent_context_id"),
                         "status": record.fields.get("status"),
                         "local_memory": record.memory["local_memory"].items,
                         "inherited_memory": record.memory["inherited_memory"].items}
    return fingerprint(contexts, orchestrator.active_context_id)


class ClientOn(System):
    """The client-style orchestrator on a SidebarPersistence implementation.

    With ``with_log`` (the default) it also appends its OZOLITH entry per operation to a log file of its own
    (``client_ozolith.py``), as the client's system does, and that append counts as persistence time. The
    log lives beside the system's folder, not in it: sizes are of the database alone (the target compares
    with the client's history-less database); the log's size is reported apart.
    """

    with_log = True

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.persistence = self.open()
        self.log_path = folder.parent / f"{folder.name}-ozolith" / "ozolith.jsonl"
        self.log = ClientOzolith(self.log_path) if self.with_log else None
        self.timed = Timed(self.persistence, self.log)
        self.audit = self.timed.audit if self.log is not None else None
        self.orchestrator = ClientOrchestrator(self.timed, audit=self.audit)

    def open(self) -> Any:
        raise NotImplementedError

    def apply(self, op: Op) -> float:
        self.timed.spent = 0.0
        drive(self.orchestrator, op)
        return self.timed.spent

    def seed(self, ops: Sequence[Op]) -> None:
        """Run the operations in memory, then save every context once: the same rows, no history."""
        self.orchestrator.persistence, self.orchestrator.audit = None, None
        for op in ops:
            drive(self.orchestrator, op)
        for context in self.orchestrator.contexts.values():
            self.persistence.save_context(context)
        self.persistence.set_session_state("active_context_id", self.orchestrator.active_context_id)
        self.orchestrator.persistence, self.orchestrator.audit = self.timed, self.audit

    def fingerprint(self) -> tuple:
        return client_fingerprint(self.orchestrator)

    def close(self) -> None:
        self.persistence.close()
        if self.log is not None:
            self.log.close()

    def log_size(self) -> int | None:
        return self.log_path.stat().st_size if self.log is not None and self.log_path.exists() else None

    def restart(self) -> tuple[float, tuple]:
        start = time.perf_counter()
        persistence = self.open()
        orchestrator = ClientOrchestrator.restore(persistence)
        elapsed = time.perf_counter() - start
        found = client_fingerprint(orchestrator)
        persistence.close()
        return elapsed, found


class Adapter(ClientOn):
    key, label = "b", "(b) client orchestrator on snapstore's adapter, + its OZOLITH log file"

    def open(self) -> Any:
        return snap_adapter.SidebarPersistence(str(self.folder / "store"), context_class=SidebarContext)

    def seed(self, ops: Sequence[Op]) -> None:  # its history is part of what is measured
        System.seed(self, ops)


class ClientLayer(ClientOn):
    key, label = "c", "(c) client orchestrator on the client's SQLite layer, + its OZOLITH log file"
    synchronous: str | None = None  # the build's WAL default (FULL here)

    def open(self) -> Any:
        return client_sqlite_layer.SidebarPersistence(str(self.folder / "sidebar_state.db"),
                                                      context_class=SidebarContext,
                                                      synchronous=self.synchronous)


class ClientLayerNormal(ClientLayer):
    key, label = "c'", "(c') same, synchronous=NORMAL (no fsync per SQLite commit)"
    synchronous = "NORMAL"


class ClientLayerAlone(ClientLayer):
    key, label = "c0", "(c0) (c) without its OZOLITH log: the SQLite layer alone"
    with_log = False


class LangGraph(System):
    key, label = "d", "(d) client orchestrator + LangGraph SqliteSaver"

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        from langgraph.checkpoint.base import empty_checkpoint
        from langgraph.checkpoint.base.id import uuid6
        from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

        self._empty, self._uuid6 = empty_checkpoint, uuid6
        self.serde = JsonPlusSerializer(allowed_msgpack_modules=ALLOWED)
        self.path = str(folder / "checkpoints.sqlite")
        self.saver = self.open()
        self.orchestrator = ClientOrchestrator(None)
        self.config: dict[str, Any] = THREAD
        self.step = -1
        self.blob_bytes = 0  # checkpoint bytes put so far (or that would have been)

    def open(self) -> Any:
        from langgraph.checkpoint.sqlite import SqliteSaver

        saver = SqliteSaver(sqlite3.connect(self.path, check_same_thread=False), serde=self.serde)
        saver.setup()
        return saver

    def checkpoint(self) -> dict[str, Any]:
        self.step += 1
        checkpoint = self._empty()
        checkpoint["id"] = str(self._uuid6(clock_seq=self.step))
        checkpoint["channel_values"] = {"contexts": self.orchestrator.contexts,
                                        "active_context_id": self.orchestrator.active_context_id}
        checkpoint["channel_versions"] = {"contexts": self.step, "active_context_id": self.step}
        return checkpoint

    def put(self) -> None:
        checkpoint = self.checkpoint()
        self.config = self.saver.put(self.config, checkpoint, {"source": "loop", "step": self.step},
                                     checkpoint["channel_versions"])

    def apply(self, op: Op) -> float:
        drive(self.orchestrator, op)
        start = time.perf_counter()
        self.put()
        elapsed = time.perf_counter() - start
        self.blob_bytes += self.last_blob()
        return elapsed

    def last_blob(self) -> int:
        row = self.saver.conn.execute("SELECT length(checkpoint) + length(metadata) FROM checkpoints "
                                      "WHERE checkpoint_id = ?", (self.config["configurable"]["checkpoint_id"],))
        return row.fetchone()[0]

    def seed(self, ops: Sequence[Op]) -> None:
        """Run in memory, then put one checkpoint of the state.

        ``blob_bytes`` gets what the skipped puts would have written: the
        checkpoint is serialized for real every SEED_SAMPLE operations and
        after the last one, linearly interpolated between (the state only
        grows, by about one exchange per operation).
        """
        sampled: list[tuple[int, int]] = [(-1, 0)]
        for i, op in enumerate(ops):
            drive(self.orchestrator, op)
            self.step += 1
            if i % SEED_SAMPLE == SEED_SAMPLE - 1 or i == len(ops) - 1:
                checkpoint = self.checkpoint()
                self.step -= 1
                sampled.append((i, len(self.serde.dumps_typed(checkpoint)[1]) + METADATA_BYTES))
        for (i0, b0), (i1, b1) in itertools.pairwise(sampled):
            self.blob_bytes += sum(b0 + (b1 - b0) * (i - i0) // (i1 - i0) for i in range(i0 + 1, i1 + 1))
        self.step -= 1
        self.put()

    def fingerprint(self) -> tuple:
        return client_fingerprint(self.orchestrator)

    def close(self) -> None:
        self.saver.conn.close()

    def restart(self) -> tuple[float, tuple]:
        start = time.perf_counter()
        saver = self.open()
        values = saver.get_tuple(THREAD).checkpoint["channel_values"]
        orchestrator = ClientOrchestrator(None)
        orchestrator.contexts = values["contexts"]
        orchestrator.active_context_id = values["active_context_id"]
        elapsed = time.perf_counter() - start
        saver.conn.close()
        return elapsed, client_fingerprint(orchestrator)


class BareFsync:
    """Not a system: append 100 B to a file and fsync it, in the same rotation (the disk's sync latency now)."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.samples: list[float] = []

    def apply(self, op: Op) -> float:
        start = time.perf_counter()
        os.write(self.fd, b"x" * 100)
        os.fsync(self.fd)
        return time.perf_counter() - start

    def close(self) -> None:
        os.close(self.fd)


class SnapstoreFileLog(Snapstore):
    key, label = "a'", "(a') the same with the client's OZOLITH log file"
    log_in_store = False


SYSTEMS: tuple[type[System], ...] = (
    Snapstore, SnapstoreFileLog, Adapter, ClientLayer, ClientLayerAlone, ClientLayerNormal, LangGraph,
)


def snapstore_against(revision: str, folder: Path) -> type[System]:
    """(a) run by snapstore as of a git revision (``--against``): the same operations, in the same rotation."""
    session_class = snapstore_at(revision, folder, "startup").Session

    class SnapstoreAgainst(Snapstore):
        key, label = "a@", f"(a) by snapstore at {revision}"

        def _session(self) -> Any:
            return session_class(self.store, log_in_store=True)

    return SnapstoreAgainst


# -- running -----------------------------------------------------------------------


def rotated(items: Sequence[Any], i: int) -> list[Any]:
    k = i % len(items)
    return list(items[k:]) + list(items[:k])


def run_size(root: Path, n: int, window: int, seeded: bool, log: Callable[[str], None],
             only: Sequence[str] = (), drain: bool = True, extra: Sequence[type[System]] = ()) -> dict[str, Any]:
    """Build every system to N exchanges, timing the last ``window`` operations interleaved."""
    ops = workload(n)
    window = min(window, len(ops))
    prefix, timed_ops = ops[: len(ops) - window], ops[len(ops) - window:]
    systems = [cls(root / f"{n}-{cls.__name__}") for cls in (*SYSTEMS, *extra) if not only or cls.key in only]
    # What every system must hold afterwards: the client orchestrator run in memory.
    reference = ClientOrchestrator(None)
    for op in ops:
        drive(reference, op)
    build: dict[str, float] = {}
    gc.collect()
    gc.disable()
    try:
        if seeded:
            for system in systems:
                start = time.perf_counter()
                system.seed(prefix)
                build[system.key] = time.perf_counter() - start
                log(f"  N={n:,}: {system.key} at the window start in {build[system.key]:.0f} s")
        else:
            for i, op in enumerate(prefix):
                for system in rotated(systems, i):
                    system.apply(op)
        bare = BareFsync(root / f"{n}-fsync")
        for i, op in enumerate(timed_ops):
            for system in rotated([*systems, bare], i):
                if drain:
                    os.sync()
                system.samples.append(system.apply(op))
        bare.close()
    finally:
        gc.enable()
    gc.collect()
    raw, texts, whole = messages_json_bytes(reference)
    expected = client_fingerprint(reference)
    result: dict[str, Any] = {"n": n, "ops": len(ops), "window": window, "seeded": seeded, "build": build,
                              "raw_json": raw, "text_bytes": texts, "state_json": whole,
                              "contexts": len(reference.contexts), "main": [op.main for op in timed_ops],
                              "root_exchanges": len(reference.contexts["SB-1"].local_memory),
                              "kinds": {k: sum(1 for o in timed_ops if o.kind == k) for k in
                                        ("exchange", "spawn", "merge", "pause", "resume", "focus")},
                              "fsync": Summary.of(bare.samples), "systems": {}}
    for system in systems:
        assert system.fingerprint() == expected, f"{system.label} diverged from the workload"
        live = system.size()
        system.close()
        closed = system.size()
        if type(system) is Snapstore:
            result["breakdown"] = system.breakdown()
        restarts = []
        for _ in range(3):
            gc.collect()
            elapsed, found = system.restart()
            if found != expected:
                raise AssertionError(f"{system.label}: the restart lost or changed something")
            restarts.append(elapsed)
        result["systems"][system.key] = {
            "label": system.label, "stats": Summary.of(system.samples), "mean": statistics.fmean(system.samples),
            "samples": list(system.samples),
            "live": live, "closed": closed, "restart": statistics.median(restarts),
            "blob_bytes": getattr(system, "blob_bytes", None),
            "log_bytes": system.log_size() if isinstance(system, ClientOn) else None,
        }
        log(f"  N={n:,}: {system.key} median {ms(Summary.of(system.samples).median)} ms, "
            f"live {live / 1e6:,.1f} MB, restart {statistics.median(restarts) * 1e3:,.0f} ms")
    shutil.rmtree(root / f"{n}-{LangGraph.__name__}", ignore_errors=True)
    return result


def project_langgraph(results: list[dict[str, Any]]) -> None:
    """Seeded sizes: (d)'s database from the checkpoint bytes, at the overhead of the largest full build."""
    full = [r for r in results if not r["seeded"] and "d" in r["systems"]]
    if not full:
        return
    d = full[-1]["systems"]["d"]
    live_factor, closed_factor = d["live"] / d["blob_bytes"], d["closed"] / d["blob_bytes"]
    for r in results:
        if r["seeded"] and "d" in r["systems"]:
            s = r["systems"]["d"]
            s["live"], s["closed"] = int(s["blob_bytes"] * live_factor), int(s["blob_bytes"] * closed_factor)
            s["projected"] = True


# -- reporting ---------------------------------------------------------------------


def mb(n: int) -> str:
    return f"{n / 1e6:,.2f}"


def report(results: list[dict[str, Any]], where: str) -> None:
    print("\n## Persistence per operation: snapstore vs the client's layer vs LangGraph\n")
    print(f"Machine: {machine(where)}\n")
    for r in results:
        how = ("(c), (c') and (d) seeded at the window start (see the method); (a) and (b) built from empty"
               if r["seeded"] else "every system built from empty by the same operations")
        kinds = ", ".join(f"{v} {k}" for k, v in r["kinds"].items() if v)
        print(f"\n### {r['n']:,} exchanges ({r['ops']:,} operations, {r['contexts']} contexts; {how})\n")
        print(f"Timed window: the last {r['window']} operations ({kinds}).\n")
        a = next(iter(r["systems"].values()))["stats"]
        rows = []
        for s in r["systems"].values():
            st = s["stats"]
            rows.append([s["label"], ms(st.median), ms(st.p99), ms(s["mean"]),
                         ratio(st.median, a.median), ratio(st.p99, a.p99)])
        f = r["fsync"]
        rows.append(["(bare) append 100 B + fsync, same rotation", ms(f.median), ms(f.p99), "", "", ""])
        print(table(["system", "median ms/op", "p99 ms/op", "mean ms/op", "median vs (a)", "p99 vs (a)"], rows))
        main = r["main"]
        n_main = sum(main)
        if 0 < n_main < len(main):
            print(f"\nThe same window split by whether the operation changes the root context (the main thread, "
                  f"{r['root_exchanges']:,} exchanges at the end: {n_main} operations) or only sidebars "
                  f"({len(main) - n_main} operations):\n")
            rows = []
            for s in r["systems"].values():
                on = [t for t, m in zip(s["samples"], main) if m]
                off = [t for t, m in zip(s["samples"], main) if not m]
                rows.append([s["label"], ms(statistics.median(on)), ms(statistics.fmean(on)),
                             ms(statistics.median(off)), ms(statistics.fmean(off))])
            print(table(["system", "root: median ms", "root: mean ms", "sidebars: median ms",
                         "sidebars: mean ms"], rows))
        print()
        rows = []
        for s in r["systems"].values():
            mark = " (projected)" if s.get("projected") else ""
            rows.append([s["label"], mb(s["live"]) + mark, mb(s["closed"]) + mark,
                         ratio(s["live"], r["raw_json"]), f"{s['restart'] * 1e3:,.1f}"])
        print(table(["system", "on disk, open (MB)", "after clean close (MB)", "open / raw JSON",
                     "restart: open + load (ms)"], rows))
        logs = [f"{s['label'].split(' ')[0]} {mb(s['log_bytes'])} MB" for s in r["systems"].values() if s.get("log_bytes")]
        if logs:
            print(f"\nThe client's OZOLITH log files, not counted above: {', '.join(logs)}.")
        print(f"\nRaw JSON of the messages (each exchange once, UTF-8): {mb(r['raw_json'])} MB; "
              f"their user+assistant text: {mb(r['text_bytes'])} MB; "
              f"JSON of the whole state (with inherited copies): {mb(r['state_json'])} MB.")
    for r in results:
        b = r.get("breakdown")
        if b is None:
            continue
        ops = r["ops"]
        print(f"\n### Where (a)'s bytes go at {r['n']:,} exchanges ({ops:,} operations), store closed\n")
        rows = []
        for kind, (n, raw, stored) in sorted(b["kinds"].items()):
            rows.append([f"objects: {kind}", f"{n:,}", f"{raw / n:,.0f}", f"{stored / n:,.0f}",
                         f"{stored / ops:,.0f}", mb(stored)])
        if b.get("packed"):
            packs, live, raw, stored = b["packed"]
            rows.append([f"objects in {packs:,} packs", f"{live:,}", f"{raw / max(live, 1):,.0f}",
                         f"{stored / max(live, 1):,.0f}", f"{stored / ops:,.0f}", mb(stored)])
        entries, log_bytes = b["log"]
        rows.append(["reflog rows (loose and packed)", f"{b['reflog'][0]:,}", "", f"{(b['reflog'][1] or 0) / max(b['reflog'][0], 1):,.0f}",
                     f"{(b['reflog'][1] or 0) / ops:,.0f}", mb(b["reflog"][1] or 0)])
        rows.append(["OZOLITH log entries (loose and packed)", f"{entries:,}", "", f"{log_bytes / entries:,.0f}",
                     f"{log_bytes / ops:,.0f}", mb(log_bytes)])
        print(table(["what", "count", "raw B each", "stored B each", "stored B per op", "MB"], rows))
        rows = []
        for name, (size, payload, unused) in sorted(b["pages"].items(), key=lambda x: -x[1][0]):
            rows.append([name, mb(size), mb(payload), f"{1 - payload / size:.0%}" if size else "—"])
        rows.append(["(free pages)", mb(b["free"]), "0", "100%"])
        print()
        print(table(["SQLite b-tree", "pages MB", "payload MB", "overhead"], rows))
    print("\n### Targets (at 1,000+ exchanges)\n")
    if not any(r["n"] >= 1_000 for r in results):
        print("No size of 1,000 exchanges or more in this run.")
        return
    print("Persistence time: how many times more (c) and (d) spend per operation than (a), by statistic; "
          "the target is >= 5x against both. (c) is the client's persistence per operation, its SQLite saves "
          "and its OZOLITH append, as (a) commits its state and its entry; (c0), the SQLite layer alone, "
          "is shown beside it.\n")
    rows = []
    for r in results:
        if r["n"] < 1_000 or not {"a", "c", "d"} <= r["systems"].keys():
            continue
        sy = r["systems"]
        a, c, d, c0 = sy["a"], sy["c"], sy["d"], sy.get("c0")
        by = {"median": lambda s: s["stats"].median, "p99": lambda s: s["stats"].p99, "mean": lambda s: s["mean"]}
        for name, get in by.items():
            fc, fd = get(c) / get(a), get(d) / get(a)
            rows.append([f"{r['n']:,}", name, f"{fc:.1f}x", f"{get(c0) / get(a):.1f}x" if c0 else "",
                         f"{fd:.1f}x", verdict(fc >= 5 and fd >= 5)])
    print(table(["exchanges", "statistic", "(c)/(a)", "(c0)/(a)", "(d)/(a)", "(c) and (d) >= 5x"], rows))
    print("\nStore size: (a) with full history (and its log) against (c)'s history-less database and the raw "
          "JSON of the messages; the target is (a) <= both.\n")
    rows = []
    for r in results:
        if r["n"] < 1_000 or not {"a", "c"} <= r["systems"].keys():
            continue
        a, c = r["systems"]["a"], r["systems"]["c"]
        log_bytes = r["breakdown"]["log"][1] if "breakdown" in r else 0
        for when in ("live", "closed"):
            ok = a[when] <= c[when] and a[when] <= r["raw_json"]
            rows.append([f"{r['n']:,}", "open" if when == "live" else "closed", mb(a[when]),
                         mb(a[when] - log_bytes), mb(c[when]), mb(r["raw_json"]), verdict(ok)])
    print(table(["exchanges", "when", "(a) MB", "(a) without its log MB", "(c) MB", "raw JSON MB", "(a) <= both"],
                rows))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 100 and 400 exchanges, window 100")
    parser.add_argument("--dir", help="where the stores go (default: the system temp dir)")
    parser.add_argument("--sizes", help="comma-separated exchange counts (default 100,1000,10000)")
    parser.add_argument("--window", type=int, help=f"timed operations per size (default {WINDOW})")
    parser.add_argument("--no-drain", action="store_true",
                        help="do not os.sync() (untimed) before each timed operation")
    parser.add_argument("--keep", action="store_true", help="keep the stores (except (d)'s, which are huge)")
    parser.add_argument("--only", help="comma-separated system keys to run alone, e.g. a or a,c "
                                       "(a control for interference between systems)")
    parser.add_argument("--against", metavar="REV",
                        help="also run (a) by snapstore as of git revision REV, key a@, in the same rotation "
                             "(e.g. --against HEAD~1 --only a,a@: a change measured beside what it changes)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else list(QUICK_SIZES if args.quick else SIZES)
    window = args.window or (100 if args.quick else WINDOW)
    root = work_folder(args.dir, "bench-persistence-")
    extra = [snapstore_against(args.against, root)] if args.against else []

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        results = []
        for n in sizes:
            start = time.perf_counter()
            only = [k.strip() for k in args.only.split(",")] if args.only else []
            results.append(run_size(root, n, window, n >= SIZES_SEEDED, log, only, not args.no_drain, extra))
            log(f"N={n:,} done in {time.perf_counter() - start:.0f} s")
        project_langgraph(results)
        report(results, str(root))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the benchmarks share: realistic conversations, statistics, tables, the machine.

Conversations follow the client's data model (``/work/shared/reference``,
§1): contexts ("sidebars") with the client's fields, spawned from the
current focus, each child inheriting a copy of its parent's last exchanges.
Exchanges carry a few hundred bytes to 2 KB of text, some of it non-ASCII
(accents, Cyrillic, CJK, emoji) and some of it code. Everything is drawn
from a seeded :class:`random.Random`, so every run measures the same data.
"""

from __future__ import annotations

import importlib
import io
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import tarfile
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from datetime import datetime, timedelta
from typing import Any

SEED = 20240601

_WORDS = (
    "the store keeps every snapshot of the conversation tree so a crash never loses "
    "an exchange and any earlier state can be restored diff shows what changed between "
    "two states sidebar context parent child focus merge archive branch commit hash "
    "object chunk node state snapshot reflog audit entry sequence anchor verify "
    "latency throughput fsync durable transaction write ahead log checkpoint page"
).split()
_FOREIGN = (
    "café", "naïve", "Grüße", "señor", "über", "façade", "déjà vu", "Ångström",
    "данные", "снимок", "разговор", "日本語", "会話の履歴", "快照", "树结构",
    "🙂", "🚀", "✅", "→", "≤", "λ", "Ω", "µs",
)
_CODE = (
    "def commit(self, state):\n    tree = self.build(state)\n    return self.write(tree)\n",
    "for ctx in contexts:\n    if ctx['status'] == 'active':\n        yield ctx\n",
    "SELECT id, kind FROM objects WHERE id IN (?, ?, ?);\n",
    "$ snap diff main~1 main\n  1 changed: SB-12 (+1 exchange)\n",
)
STATUSES = ("active", "paused", "waiting", "reviewing", "merged", "archived")


def work_folder(parent: str | Path | None, prefix: str) -> Path:
    """A new temporary folder for a run, inside ``parent`` (made if missing; the system's temp folder if None)."""
    if parent is not None:
        Path(parent).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))


def text(rng: random.Random, low: int, high: int) -> str:
    """Prose of ``low`` to ``high`` characters: mostly English, ~5% non-ASCII words, sometimes code."""
    target = rng.randint(low, high)
    parts: list[str] = []
    size = 0
    while size < target:
        roll = rng.random()
        if roll < 0.05:
            word = rng.choice(_FOREIGN)
        elif roll < 0.06:
            word = "\n" + rng.choice(_CODE)
        else:
            word = rng.choice(_WORDS)
        parts.append(word)
        size += len(word) + 1
    return " ".join(parts)[:target]


class Clock:
    """Naive ISO timestamps a few seconds apart, as the client writes them."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.now = datetime(2024, 6, 1, 9, 0, 0)

    def tick(self) -> str:
        self.now += timedelta(seconds=self.rng.randint(5, 90), microseconds=self.rng.randint(0, 999999))
        return self.now.isoformat()


class ConversationModel:
    """A conversation driven the way the orchestrator drives it.

    ``spawn`` makes a child of the focus (focus moves to it, the parent is
    paused), ``add_exchange`` appends to a context, ``merge`` returns focus to
    the parent. Depth stays about logarithmic: after work in a sidebar the
    focus returns to the parent more often than not.
    """

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.clock = Clock(rng)
        self.contexts: dict[str, dict[str, Any]] = {}
        self.depth: dict[str, int] = {}
        self.exchange_counter = 0
        self.active: str | None = None
        self._new_context(None)

    def _new_context(self, parent: str | None) -> str:
        rng = self.rng
        sid = f"SB-{len(self.contexts) + 1}"
        now = self.clock.tick()
        inherited = []
        if parent is not None:
            for exchange in self.contexts[parent]["local_memory"][-2:]:
                inherited.append(dict(exchange, _inherited=True, _inherited_from=parent))
        context = {
            "sidebar_id": sid,
            "uuid": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "parent_context_id": parent,
            "child_sidebar_ids": [],
            "forked_from": None,
            "participants": ["AGENT-operator", rng.choice(["AGENT-claude", "AGENT-researcher"])],
            "coordinator_agent": "AGENT-operator",
            "inherited_memory": inherited,
            "local_memory": [],
            "data_refs": {},
            "cross_sidebar_refs": {},
            "scratchpad": None,
            "yarn_board_layout": {},
            "relevance_scores": {},
            "active_focus": [],
            "status": "active",
            "priority": rng.choice(["high", "normal", "normal", "low"]),
            "created_at": now,
            "last_activity": now,
            "task_description": text(rng, 40, 160),
            "success_criteria": None,
            "failure_reason": None,
            "tags": rng.sample(["research", "debug", "design", "review", "ops", "data"], 2),
            "display_names": {},
        }
        self.contexts[sid] = context
        self.depth[sid] = 0 if parent is None else self.depth[parent] + 1
        if parent is not None:
            self.contexts[parent]["child_sidebar_ids"].append(sid)
            self.contexts[parent]["status"] = "paused"
        self.active = sid
        return sid

    def exchange(self, context_id: str) -> dict[str, Any]:
        """A new exchange for ``context_id`` (not yet appended)."""
        self.exchange_counter += 1
        return {
            "exchange_id": f"EXCH-{self.exchange_counter}",
            "user": text(self.rng, 80, 600),
            "assistant": text(self.rng, 200, 1400),
            "timestamp": self.clock.tick(),
            "context_id": context_id,
        }

    def add_exchange(self, context_id: str | None = None) -> tuple[str, dict[str, Any]]:
        cid = context_id or self.active
        assert cid is not None
        exchange = self.exchange(cid)
        context = self.contexts[cid]
        context["local_memory"].append(exchange)
        context["relevance_scores"][exchange["exchange_id"]] = round(self.rng.random(), 4)
        context["last_activity"] = exchange["timestamp"]
        return cid, exchange

    def spawn(self) -> str:
        assert self.active is not None
        return self._new_context(self.active)

    def merge(self) -> str | None:
        """Return focus from the active sidebar to its parent (None at a root)."""
        assert self.active is not None
        parent = self.contexts[self.active]["parent_context_id"]
        if parent is None:
            return None
        self.contexts[self.active]["status"] = "merged"
        self.contexts[parent]["status"] = "active"
        self.active = parent
        return parent

    def grow(self, n_contexts: int, exchanges: tuple[int, int] = (1, 4), max_children: int | None = None) -> None:
        """Spawn until there are ``n_contexts`` contexts, a few exchanges in each.

        Focus returns towards the root often, so contexts near it collect
        many children; ``max_children`` caps that (focus moves down into a
        random child of a full context before spawning).
        """
        limit = max(3, 2 * math.ceil(math.log2(max(n_contexts, 2))))
        for _ in range(self.rng.randint(*exchanges)):
            self.add_exchange()
        while len(self.contexts) < n_contexts:
            assert self.active is not None
            while self.depth[self.active] >= limit or (
                self.depth[self.active] > 0 and self.rng.random() < 0.55
            ):
                self.merge()
            while max_children is not None and len(self.contexts[self.active]["child_sidebar_ids"]) >= max_children:
                self.active = self.rng.choice(self.contexts[self.active]["child_sidebar_ids"])
            self.spawn()
            for _ in range(self.rng.randint(*exchanges)):
                self.add_exchange()

    def event(self) -> list[str]:
        """One orchestrator step on the focus; the ids of the contexts it changed.

        Mostly exchanges, sometimes a spawn (child and parent change), a merge
        (child merged, a summary exchange appended to the parent) or a status
        change. Merges outnumber spawns away from the root, so depth stays small.
        """
        assert self.active is not None
        roll = self.rng.random()
        if roll < 0.72:
            return [self.add_exchange()[0]]
        if roll < 0.82 or self.depth[self.active] == 0:
            parent = self.active
            return [self.spawn(), parent]
        if roll < 0.96:
            child = self.active
            parent = self.merge()
            assert parent is not None
            summary = self.exchange(parent)
            summary.update(_merge_from=child, _merge_type="summary", _exchanges_merged=len(
                self.contexts[child]["local_memory"]))
            self.contexts[parent]["local_memory"].append(summary)
            return [child, parent]
        self.contexts[self.active]["status"] = self.rng.choice(STATUSES[:4])
        self.contexts[self.active]["last_activity"] = self.clock.tick()
        return [self.active]

    def state(self) -> dict[str, Any]:
        """The materialized state, as ``Repository.commit`` takes it."""
        return {"active_context_id": self.active, "contexts": list(self.contexts.values())}

    def depth_summary(self) -> tuple[float, int]:
        depths = list(self.depth.values())
        return statistics.fmean(depths), max(depths)


# -- statistics and tables --------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """Median and 99th percentile of samples in seconds."""

    n: int
    median: float
    p99: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Summary:
        ordered = sorted(samples)
        rank = max(0, math.ceil(0.99 * len(ordered)) - 1)
        return cls(len(ordered), statistics.median(ordered), ordered[rank])


def us(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f}"


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.2f}"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


# -- the machine --------------------------------------------------------------


def filesystem_of(path: str) -> str:
    """``<type> on <device>`` for the filesystem holding ``path`` (from ``df -T``)."""
    try:
        out = subprocess.run(
            ["df", "-T", path], capture_output=True, text=True, check=True
        ).stdout.splitlines()
        device, fstype = out[1].split()[:2]
        return f"{fstype} on {device}"
    except (OSError, subprocess.CalledProcessError, IndexError, ValueError):
        return "unknown"


def machine(path: str) -> str:
    """One line naming what the numbers were measured on."""
    return (
        f"{os.cpu_count()} CPUs, Python {platform.python_version()} ({sys.implementation.name}), "
        f"SQLite {__import__('sqlite3').sqlite_version}, store in {path} ({filesystem_of(path)})"
    )


def bare_sync(fd: int, payload: bytes, sync: Any) -> float:
    """Seconds to append ``payload`` to ``fd`` and ``sync`` it (os.fdatasync or os.fsync)."""
    from time import perf_counter

    start = perf_counter()
    os.write(fd, payload)
    sync(fd)
    return perf_counter() - start


def snapstore_at(revision: str, folder: Path, module: str) -> Any:
    """A module of snapstore as of a git revision, to time it beside the working tree in one process.

    The package is exported from git into ``folder`` and imported as
    ``snapstore_against`` (snapstore's modules import each other relatively);
    returns ``snapstore_against.<module>``.
    """
    root = Path(__file__).resolve().parent.parent
    target = folder / "against"
    if not (target / "snapstore_against").is_dir():
        archive = subprocess.run(["git", "-C", str(root), "archive", revision, "snapstore"],
                                 capture_output=True, check=True).stdout
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(target)
        (target / "snapstore").rename(target / "snapstore_against")
        sys.path.insert(0, str(target))
    return importlib.import_module(f"snapstore_against.{module}")

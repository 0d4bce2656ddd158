"""A minimal orchestrator that persists the way the client's does (reference §1-2).

It keeps ``SidebarContext`` dataclass objects in memory and mutates them in
place; after every operation it calls ``persistence.save_context(ctx)`` once
for every context the operation changed (a spawn saves the child, then the
parent) and ``persistence.set_session_state("active_context_id", ...)`` when
the focus moves. Nothing else: no batching, no history, no audit log. The
persistence object is any ``SidebarPersistence`` (the client's own SQLite
layer or snapstore's adapter); ``None`` keeps everything in memory only (the
LangGraph runner persists the whole state itself after each operation).
"""

from __future__ import annotations

import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.client.model import SidebarContext, SidebarStatus

FOCUS_KEY = "active_context_id"


def uuid7() -> str:
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | (rand >> 68 & 0xFFF) << 64
    value |= 0b10 << 62 | (rand & ((1 << 62) - 1))
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


class ClientOrchestrator:
    """The client's life-cycle methods over in-memory dataclasses, saving whole contexts."""

    def __init__(self, persistence: Any | None) -> None:
        self.persistence = persistence
        self.contexts: dict[str, SidebarContext] = {}
        self.active_context_id: str | None = None
        self._next_sidebar = 1
        self._next_exchange = 1

    @classmethod
    def restore(cls, persistence: Any) -> ClientOrchestrator:
        """What the client does at startup: load every context and the focus."""
        orchestrator = cls(persistence)
        for context in persistence.load_all_contexts(include_archived=True):
            orchestrator.contexts[context.sidebar_id] = context
        orchestrator.active_context_id = persistence.get_session_state(FOCUS_KEY)
        numbers = [int(c[3:]) for c in orchestrator.contexts if c[3:].isdigit()]
        orchestrator._next_sidebar = max(numbers, default=0) + 1
        highest = 0
        for context in orchestrator.contexts.values():
            for item in context.local_memory[-1:]:
                highest = max(highest, int(str(item.get("exchange_id", "EXCH-0"))[5:] or 0))
        orchestrator._next_exchange = highest + 1
        return orchestrator

    # -- persisting, as the client does ---------------------------------------

    def _save(self, *contexts: SidebarContext) -> None:
        if self.persistence is not None:
            for context in contexts:
                self.persistence.save_context(context)

    def _focus(self, context_id: str) -> None:
        self.active_context_id = context_id
        if self.persistence is not None:
            self.persistence.set_session_state(FOCUS_KEY, context_id)

    # -- life cycle --------------------------------------------------------------

    def create_root_context(self, task_description: str | None = None, creator: str = "AGENT-operator") -> str:
        cid = f"SB-{self._next_sidebar}"
        self._next_sidebar += 1
        root = SidebarContext(sidebar_id=cid, uuid=uuid7(), parent_context_id=None, participants=[creator],
                              task_description=task_description)
        self.contexts[cid] = root
        self._save(root)
        self._focus(cid)
        return cid

    def spawn_sidebar(self, parent_id: str, reason: str, inherit_last_n: int = 5, *,
                      task_description: str | None = None, creator: str = "AGENT-operator") -> str:
        parent = self.contexts[parent_id]
        cid = f"SB-{self._next_sidebar}"
        self._next_sidebar += 1
        inherited = [dict(item, _inherited=True, _inherited_from=parent_id)
                     for item in parent.local_memory[-inherit_last_n:]] if inherit_last_n > 0 else []
        child = SidebarContext(sidebar_id=cid, uuid=uuid7(), parent_context_id=parent_id,
                               participants=[creator], inherited_memory=inherited,
                               task_description=task_description or reason)
        self.contexts[cid] = child
        parent.child_sidebar_ids.append(cid)
        parent.status = SidebarStatus.PAUSED
        parent.last_activity = datetime.now()
        self._save(child, parent)
        self._focus(cid)
        return cid

    def add_exchange(self, context_id: str, user: str, assistant: str, **metadata: Any) -> str:
        context = self.contexts[context_id]
        exchange_id = f"EXCH-{self._next_exchange}"
        self._next_exchange += 1
        now = datetime.now()
        context.local_memory.append({"exchange_id": exchange_id, "user": user, "assistant": assistant,
                                     "timestamp": now.isoformat(), "context_id": context_id, **metadata})
        context.last_activity = now
        self._save(context)
        return exchange_id

    def _set_status(self, context_id: str, status: SidebarStatus) -> None:
        context = self.contexts[context_id]
        context.status = status
        context.last_activity = datetime.now()
        self._save(context)

    def pause_context(self, context_id: str, reason: str = "paused") -> None:
        self._set_status(context_id, SidebarStatus.PAUSED)

    def resume_context(self, context_id: str, reason: str = "resumed") -> None:
        self._set_status(context_id, SidebarStatus.ACTIVE)

    def archive_context(self, context_id: str, reason: str = "archived") -> None:
        self._set_status(context_id, SidebarStatus.ARCHIVED)

    def merge_sidebar(self, context_id: str, summary: str, merge_type: str = "summary") -> str:
        child = self.contexts[context_id]
        parent = self.contexts[child.parent_context_id]
        now = datetime.now()
        exchange_id = f"EXCH-{self._next_exchange}"
        self._next_exchange += 1
        child.status = SidebarStatus.MERGED
        child.last_activity = now
        parent.local_memory.append({
            "exchange_id": exchange_id, "user": f"[merge from {context_id}]", "assistant": summary,
            "timestamp": now.isoformat(), "context_id": parent.sidebar_id, "_merge_from": context_id,
            "_merge_type": merge_type, "_exchanges_merged": len(child.local_memory),
        })
        parent.status = SidebarStatus.ACTIVE
        parent.last_activity = now
        self._save(child, parent)
        self._focus(parent.sidebar_id)
        return exchange_id

    def switch_focus(self, context_id: str) -> None:
        if context_id not in self.contexts:
            raise KeyError(context_id)
        self._focus(context_id)

    def state(self) -> dict[str, Any]:
        """The whole conversation state, as the LangGraph runner checkpoints it."""
        return {"contexts": self.contexts, "active_context_id": self.active_context_id}

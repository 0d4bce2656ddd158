"""A minimal orchestrator that persists the way the client's does (reference §1-2).

It keeps ``SidebarContext`` dataclass objects in memory and mutates them in
place; after every operation it calls ``persistence.save_context(ctx)`` once
for every context the operation changed (a spawn saves the child, then the
parent) and ``persistence.set_session_state("active_context_id", ...)`` when
the focus moves. Nothing else: no batching, no history. The persistence
object is any ``SidebarPersistence`` (the client's own SQLite layer or
snapstore's adapter); ``None`` keeps everything in memory only (the
LangGraph runner persists the whole state itself after each operation).

With ``audit`` (a callable ``(event_type, context_id, actor, payload)``, for
example :meth:`client_ozolith.ClientOzolith.append`), each operation first
appends its OZOLITH entry, as the client's system does (reference §3: an
exchange entry holds hashes of the text, not the text): for the event types
the reference names (``exchange``, ``sidebar_spawn``, ``sidebar_merge``,
``context_pause``, ``context_resume``, ``session_start`` for a new root).
A focus switch and an archive have no type there and append nothing.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable
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


def _text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class ClientOrchestrator:
    """The client's life-cycle methods over in-memory dataclasses, saving whole contexts."""

    def __init__(self, persistence: Any | None,
                 audit: Callable[[str, str, str, dict[str, Any]], Any] | None = None) -> None:
        self.persistence = persistence
        self.audit = audit
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

    def _log(self, event_type: str, context_id: str, actor: str, payload: dict[str, Any]) -> None:
        if self.audit is not None:
            self.audit(event_type, context_id, actor, payload)

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
        self._log("session_start", cid, "system", {"session_id": root.uuid, "interface": "api",
                                                   "task_description": task_description})
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
        self._log("sidebar_spawn", cid, "system", {
            "spawn_reason": reason, "parent_context": parent_id, "child_id": cid,
            "inherited_count": len(inherited), "task_description": child.task_description,
        })
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
        self._log("exchange", context_id, "assistant", {
            "exchange_id": exchange_id, "user_hash": _text_hash(user), "assistant_hash": _text_hash(assistant),
            "user_chars": len(user), "assistant_chars": len(assistant),
        })
        self._save(context)
        return exchange_id

    def _set_status(self, context_id: str, status: SidebarStatus, event_type: str | None, reason: str) -> None:
        context = self.contexts[context_id]
        old = context.status
        context.status = status
        context.last_activity = datetime.now()
        if event_type is not None:
            self._log(event_type, context_id, "system",
                      {"reason": reason, "old_status": old.value, "new_status": status.value})
        self._save(context)

    def pause_context(self, context_id: str, reason: str = "paused") -> None:
        self._set_status(context_id, SidebarStatus.PAUSED, "context_pause", reason)

    def resume_context(self, context_id: str, reason: str = "resumed") -> None:
        self._set_status(context_id, SidebarStatus.ACTIVE, "context_resume", reason)

    def archive_context(self, context_id: str, reason: str = "archived") -> None:
        self._set_status(context_id, SidebarStatus.ARCHIVED, None, reason)

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
        self._log("sidebar_merge", context_id, "system", {
            "merge_summary": summary, "parent_context": parent.sidebar_id,
            "exchange_count": len(child.local_memory), "summary_hash": _text_hash(summary),
            "summary_exchange_id": exchange_id,
        })
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

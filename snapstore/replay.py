"""Replay: rebuild a conversation's structure from the OZOLITH log alone.

The seed's Option A, which the client never built. Each structural event is
applied in sequence order to an empty forest:

=====================  ====================================================
``context_created``    a new root context (focus moves to it)
``sidebar_spawn``      a child under ``parent_context`` (listed last), the
                       parent paused, focus to the child; spawn metadata kept
``exchange``           an exchange id appended to the context's memory
``sidebar_merge``      child merged, parent active with the summary
                       appended as an exchange, focus to the parent
``context_pause`` /    status paused / active / archived
``context_resume`` /
``context_archive``
``context_reparent``   the context (and its subtree) under ``new_parent``
``focus_switch``       focus
``context_deleted``    the context removed (a focus on it cleared)
=====================  ====================================================

What the log does not hold, replay cannot bring back: the texts of
exchanges (the log keeps their ids and SHA-256 hashes only), fields changed
without a log entry, and inherited exchanges. Replayed exchanges are
placeholders marked ``"_replayed": true`` with the hashes the log holds; the
report says how many.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .audit import LINK_KEY, voided_sequences
from .errors import InvalidInput
from .objects import Event
from .ozolith import LogEntry, OzolithLog
from .refs import validate_conversation_id
from .repository import CommitResult, Repository

STRUCTURAL_EVENTS = {
    "context_created", "sidebar_spawn", "sidebar_merge", "context_pause", "context_resume",
    "context_archive", "context_reparent", "focus_switch", "context_deleted",
}


@dataclass
class ReplayResult:
    """The replayed state and what the log could not give back."""

    contexts: dict[str, dict[str, Any]] = field(default_factory=dict)
    active_context_id: str | None = None
    entries: int = 0
    placeholders: int = 0
    skipped: list[str] = field(default_factory=list)

    def state(self, conversation: str) -> dict[str, Any]:
        return {"conversation_id": conversation, "active_context_id": self.active_context_id,
                "contexts": list(self.contexts.values())}

    def missing(self) -> str:
        return (f"replayed {self.entries} log entries into {len(self.contexts)} contexts; the log does not "
                f"hold exchange texts: {self.placeholders} exchanges are placeholders with their ids and hashes")


def _context(cid: str, parent: str | None, stamp: str) -> dict[str, Any]:
    return {"sidebar_id": cid, "parent_context_id": parent, "child_sidebar_ids": [], "status": "active",
            "created_at": stamp, "last_activity": stamp, "task_description": None,
            "success_criteria": None, "local_memory": [], "inherited_memory": []}


def entries_for(log: OzolithLog, conversation: str | None) -> list[LogEntry]:
    """The entries of one conversation: those snapstore linked to it, else (a client log) all of them."""
    entries = list(log.entries())
    linked = [e for e in entries if isinstance(e.payload.get(LINK_KEY), dict)]
    if conversation is None or not linked:
        return entries
    return [e for e in entries if isinstance(e.payload.get(LINK_KEY), dict)
            and e.payload[LINK_KEY].get("conversation") == conversation]


def replay_entries(entries: list[LogEntry]) -> ReplayResult:
    """Apply structural events in order; returns the rebuilt structure."""
    out = ReplayResult()
    ctx = out.contexts
    voided = voided_sequences(entries)

    def touch(cid: str, stamp: str) -> dict[str, Any] | None:
        c = ctx.get(cid)
        if c is not None:
            c["last_activity"] = stamp
        return c

    for entry in sorted(entries, key=lambda e: e.sequence):
        if entry.sequence in voided:
            continue
        p, cid, kind = entry.payload, entry.context_id, entry.event_type
        stamp = entry.timestamp.rstrip("Z")
        out.entries += 1
        if kind == "context_created":
            ctx[cid] = _context(cid, None, stamp)
            ctx[cid]["task_description"] = p.get("task_description")
            out.active_context_id = cid
        elif kind == "sidebar_spawn":
            child = p.get("child_id") or cid
            parent = p.get("parent_context")
            if parent not in ctx:
                under = "no parent_context" if parent is None else f"unknown {parent}"
                out.skipped.append(f"#{entry.sequence}: spawn of {child} under {under}")
                continue
            ctx[child] = _context(child, parent, stamp)
            ctx[child]["task_description"] = p.get("task_description", p.get("spawn_reason"))
            ctx[child]["success_criteria"] = p.get("success_criteria")
            ctx[parent]["child_sidebar_ids"].append(child)
            ctx[parent]["status"] = "paused"
            touch(parent, stamp)
            out.active_context_id = child
        elif kind == "exchange":
            c = touch(cid, stamp)
            if c is None:
                out.skipped.append(f"#{entry.sequence}: exchange in unknown context {cid}")
                continue
            c["local_memory"].append({"exchange_id": p.get("exchange_id"), "_replayed": True,
                                      "user_hash": p.get("user_hash"), "assistant_hash": p.get("assistant_hash")})
            out.placeholders += 1
        elif kind == "sidebar_merge":
            c = touch(cid, stamp)
            parent = p.get("parent_context") or (c or {}).get("parent_context_id")
            if c is None or parent not in ctx:
                out.skipped.append(f"#{entry.sequence}: merge of unknown {cid}")
                continue
            c["status"] = "merged"
            ctx[parent]["status"] = "active"
            ctx[parent]["local_memory"].append({
                "exchange_id": p.get("summary_exchange_id"), "assistant": p.get("merge_summary"),
                "_merge_from": cid, "_exchanges_merged": p.get("exchange_count"), "_replayed": True,
            })
            touch(parent, stamp)
            out.active_context_id = parent
        elif kind in ("context_pause", "context_resume", "context_archive"):
            c = touch(cid, stamp)
            if c is None:
                out.skipped.append(f"#{entry.sequence}: {kind} of unknown {cid}")
                continue
            c["status"] = {"context_pause": "paused", "context_resume": "active",
                           "context_archive": "archived"}[kind]
        elif kind == "context_reparent":
            c = touch(cid, stamp)
            if c is None:
                out.skipped.append(f"#{entry.sequence}: reparent of unknown {cid}")
                continue
            old, new = c.get("parent_context_id"), p.get("new_parent")
            if old == new and (new is None or cid in ctx.get(new, {}).get("child_sidebar_ids", [])):
                continue  # under the parent it has: its place among its siblings is kept
            if old in ctx:
                ctx[old]["child_sidebar_ids"] = [k for k in ctx[old]["child_sidebar_ids"] if k != cid]
            if new in ctx:
                ctx[new]["child_sidebar_ids"].append(cid)
            c["parent_context_id"] = new
        elif kind == "focus_switch":
            if cid in ctx:
                out.active_context_id = cid
        elif kind == "context_deleted":
            c = ctx.pop(cid, None)
            if out.active_context_id == cid:  # as the store does: no focus on a context that is gone
                out.active_context_id = None
            if c is not None and c.get("parent_context_id") in ctx:
                parent = ctx[c["parent_context_id"]]
                parent["child_sidebar_ids"] = [k for k in parent["child_sidebar_ids"] if k != cid]
        else:
            out.entries -= 1
    return out


def replay(log: OzolithLog, conversation: str | None = None) -> ReplayResult:
    return replay_entries(entries_for(log, conversation))


def structure(state: dict[str, Any]) -> dict[str, Any]:
    """What replay can reproduce of a state: ids, parents, order, statuses, focus, exchange ids.

    A focus naming no context of the state counts as none: stores written
    before deletes cleared the focus keep a deleted context's id there.
    """
    focus = state.get("active_context_id")
    if focus not in {c.get("sidebar_id") for c in state["contexts"]}:
        focus = None
    out: dict[str, Any] = {"focus": focus, "contexts": {}}
    for c in state["contexts"]:
        out["contexts"][c["sidebar_id"]] = {
            "parent": c.get("parent_context_id"),
            "children": list(c.get("child_sidebar_ids") or []),
            "status": c.get("status"),
            "task_description": c.get("task_description"),
            "exchanges": [e.get("exchange_id") if isinstance(e, dict) else None
                          for e in (c.get("local_memory") or [])],
        }
    return out


def commit_replay(repo: Repository, log: OzolithLog, conversation: str,
                  as_conversation: str | None = None, force: bool = False) -> tuple[CommitResult, ReplayResult]:
    """Replay a conversation from the log and commit it (to ``as_conversation`` if given).

    Committing over an existing conversation would replace its exchange texts
    with placeholders, so it needs ``force``.
    """
    target = validate_conversation_id(as_conversation or conversation)
    if repo.head(target) is not None and not force:
        raise InvalidInput(
            f"conversation {target!r} exists: replaying over it would replace exchange texts with "
            "placeholders; use --as NEWCONV (or --force)"
        )
    result = replay(log, validate_conversation_id(conversation))
    if not result.contexts:
        raise InvalidInput(f"the log holds no structural entries for conversation {conversation!r}")
    commit = repo.commit(target, result.state(target),
                         event=Event("replay", None, f"rebuilt from {result.entries} log entries"))
    return commit, result

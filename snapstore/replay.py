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
REPLAYED_EVENTS = STRUCTURAL_EVENTS | {"exchange"}


@dataclass
class ReplayResult:
    """The replayed state and what the log could not give back."""

    contexts: dict[str, dict[str, Any]] = field(default_factory=dict)
    active_context_id: str | None = None
    entries: int = 0
    placeholders: int = 0
    skips: list[tuple[int, str]] = field(default_factory=list)  # (sequence, why) of each entry left out

    @property
    def skipped(self) -> list[str]:
        """Each entry left out, as ``#SEQ: why``."""
        return [f"#{sequence}: {why}" for sequence, why in self.skips]

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


class _Skip(Exception):
    """An entry replay cannot apply: the message names what is wrong (the caller adds its sequence)."""


def _named(payload: dict[str, Any], name: str, kind: str, cid: str, *, required: bool = False) -> str | None:
    """The context id a payload field names: a string, or None when the field is absent or null.

    Anything else (a list, a number) is damage to name, not a value to index
    the forest with (a list crashed replay with "unhashable type").
    """
    if name not in payload:
        if required:
            raise _Skip(f"{kind} of {cid} names no {name}")
        return None
    value = payload[name]
    if value is None or isinstance(value, str):
        return value
    raise _Skip(f"{kind} of {cid}: {name} is {type(value).__name__} {repr(value)[:40]}, not a context id")


def replay_entries(entries: list[LogEntry]) -> ReplayResult:
    """Apply structural events in order; returns the rebuilt structure.

    An entry that cannot apply to the forest as replayed so far is left out
    and named in ``skipped`` by its sequence, never applied half or guessed
    at: a spawn or creation of a context that exists (it would wipe it and
    list it twice under its parent), a spawn under, merge into or reparent
    under a context that does not exist, a merge into a context that is not
    the merged one's parent, a reparent that would make a cycle, an event
    of any kind naming an unknown context, a field naming a context that
    holds no id (a list, a number).
    """
    out = ReplayResult()
    ctx = out.contexts
    voided = voided_sequences(entries)
    made: dict[str, int] = {}  # context -> the sequence of the entry that made it

    def touch(cid: str, stamp: str) -> dict[str, Any] | None:
        c = ctx.get(cid)
        if c is not None:
            c["last_activity"] = stamp
        return c

    def known(cid: str, kind: str) -> dict[str, Any]:
        c = ctx.get(cid)
        if c is None:
            raise _Skip(f"exchange in unknown context {cid}" if kind == "exchange" else f"{kind} of unknown {cid}")
        return c

    def new(cid: str, kind: str) -> None:
        if cid in ctx:
            raise _Skip(f"{kind} of {cid}, which exists (made at #{made[cid]})")

    for entry in sorted(entries, key=lambda e: e.sequence):
        if entry.sequence in voided:
            continue
        if entry.event_type not in REPLAYED_EVENTS:
            continue  # carried, not replayed: sessions, tags, cross-references, anchors, unknown types
        out.entries += 1
        try:
            _apply(entry, out, touch, known, new, made)
        except _Skip as skip:
            out.skips.append((entry.sequence, str(skip)))
    return out


def _apply(entry: LogEntry, out: ReplayResult, touch, known, new, made: dict[str, int]) -> None:
    """Apply one structural entry, or raise :class:`_Skip` before changing anything."""
    ctx = out.contexts
    p, cid, kind = entry.payload, entry.context_id, entry.event_type
    stamp = entry.timestamp.rstrip("Z")
    if kind == "context_created":
        new(cid, "creation")
        ctx[cid] = _context(cid, None, stamp)
        ctx[cid]["task_description"] = p.get("task_description")
        made[cid] = entry.sequence
        out.active_context_id = cid
    elif kind == "sidebar_spawn":
        child = _named(p, "child_id", "spawn", cid) or cid
        parent = _named(p, "parent_context", "spawn", child)
        if parent not in ctx:
            under = "no parent_context" if parent is None else f"unknown {parent}"
            raise _Skip(f"spawn of {child} under {under}")
        new(child, "spawn")
        ctx[child] = _context(child, parent, stamp)
        ctx[child]["task_description"] = p.get("task_description", p.get("spawn_reason"))
        ctx[child]["success_criteria"] = p.get("success_criteria")
        made[child] = entry.sequence
        ctx[parent]["child_sidebar_ids"].append(child)
        ctx[parent]["status"] = "paused"
        touch(parent, stamp)
        out.active_context_id = child
    elif kind == "exchange":
        c = known(cid, "exchange")
        touch(cid, stamp)
        c["local_memory"].append({"exchange_id": p.get("exchange_id"), "_replayed": True,
                                  "user_hash": p.get("user_hash"), "assistant_hash": p.get("assistant_hash")})
        out.placeholders += 1
    elif kind == "sidebar_merge":
        c = known(cid, "merge")
        own = c.get("parent_context_id")
        parent = _named(p, "parent_context", "merge", cid) or own
        if parent is None:
            raise _Skip(f"merge of {cid}, a root: no parent to merge into")
        if parent != own:
            raise _Skip(f"merge of {cid} into {parent}, which is not its parent ({own or 'it is a root'})")
        if parent not in ctx:
            raise _Skip(f"merge of {cid} into unknown {parent}")
        touch(cid, stamp)
        c["status"] = "merged"
        ctx[parent]["status"] = "active"
        ctx[parent]["local_memory"].append({
            "exchange_id": p.get("summary_exchange_id"), "assistant": p.get("merge_summary"),
            "_merge_from": cid, "_exchanges_merged": p.get("exchange_count"), "_replayed": True,
        })
        touch(parent, stamp)
        out.active_context_id = parent
    elif kind in ("context_pause", "context_resume", "context_archive"):
        c = known(cid, kind)
        touch(cid, stamp)
        c["status"] = {"context_pause": "paused", "context_resume": "active",
                       "context_archive": "archived"}[kind]
    elif kind == "context_reparent":
        c = known(cid, "reparent")
        old, target = c.get("parent_context_id"), _named(p, "new_parent", "reparent", cid, required=True)
        if target is not None and target not in ctx:
            raise _Skip(f"reparent of {cid} under unknown {target}")
        above: str | None = target
        while above is not None and above in ctx:
            if above == cid:
                raise _Skip(f"reparent of {cid} under {target}, which is "
                            f"{'itself' if target == cid else 'below it'}: a cycle")
            above = ctx[above].get("parent_context_id")
        touch(cid, stamp)
        if old == target and (target is None or cid in ctx[target]["child_sidebar_ids"]):
            return  # under the parent it has: its place among its siblings is kept
        if old in ctx:
            ctx[old]["child_sidebar_ids"] = [k for k in ctx[old]["child_sidebar_ids"] if k != cid]
        if target is not None:
            ctx[target]["child_sidebar_ids"].append(cid)
        c["parent_context_id"] = target
    elif kind == "focus_switch":
        known(cid, "focus")
        out.active_context_id = cid
    elif kind == "context_deleted":
        c = known(cid, "delete")
        del ctx[cid]
        made.pop(cid, None)
        if out.active_context_id == cid:  # as the store does: no focus on a context that is gone
            out.active_context_id = None
        if c.get("parent_context_id") in ctx:
            parent = ctx[c["parent_context_id"]]
            parent["child_sidebar_ids"] = [k for k in parent["child_sidebar_ids"] if k != cid]


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

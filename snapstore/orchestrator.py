"""A reference conversation orchestrator that persists every operation.

It offers the client's life-cycle methods (reference §1) for users who start
fresh. Each user operation becomes exactly one snapshot holding every context
it touched (a spawn: the child, the paused parent and the focus together) and,
when an audit log is attached, exactly one OZOLITH entry linked both ways: the
entry's payload names the snapshot, root and changed node ids, and the ref
change records the entry's sequence and hash.

An operation is durable when its method returns. If persisting fails (full
disk, I/O error) the method raises and the in-memory tree stays at the
previous state, or at the store's head if the operation had read it (after
another writer moved it); the next operation works on that state. One that
conflicts with another writer's change (:class:`~snapstore.merge.MergeConflict`)
leaves the tree at the store's head it conflicted with.

Known defects of the client's orchestrator avoided here: inherited memory is
a deep copy (never shares dicts with the parent), and one process never has
two writers on one log (the log is locked while an entry is appended).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from .errors import CommitOutcomeUnknown, InvalidInput, RefConflict
from .merge import MergeConflict
from .objects import Event, LogLink
from .ozolith.entry import ACTORS
from .refs import ref_name
from .repository import AuditEntry, CommitResult, PreparedCommit, Repository, Staging
from .tree import Tree, Workspace

# Lost compare-and-swaps in a row before an operation gives up, and the
# longest random pause between two attempts (seconds).
MAX_ATTEMPTS = 200
MAX_BACKOFF = 0.1

ROOT_EVENT = "context_created"
STATUS_ACTIVE = "active"
STATUS_PAUSED = "paused"
STATUS_MERGED = "merged"
STATUS_ARCHIVED = "archived"

# The keys of an exchange the orchestrator sets (add_exchange's metadata may not).
EXCHANGE_KEYS = frozenset({"exchange_id", "user", "assistant", "timestamp", "context_id"})

# (event_type, context_id, actor, payload) -> (sequence, entry_hash)
AuditAppend = Callable[[str, str, str, dict[str, Any]], tuple[int, str]]


def uuid7() -> str:
    """A UUIDv7 string: 48-bit millisecond time, version 7, random bits."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | (rand >> 68 & 0xFFF) << 64
    value |= 0b10 << 62 | (rand & ((1 << 62) - 1))
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def now_text() -> str:
    """The client's timestamps: naive local time, ISO-8601."""
    return datetime.now().isoformat()


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def new_context(sidebar_id: str, parent: str | None, *, task: str | None = None,
                criteria: str | None = None, creator: str = "AGENT-operator") -> dict[str, Any]:
    """A context with every field of the client's ``SidebarContext``, as JSON."""
    stamp = now_text()
    return {
        "sidebar_id": sidebar_id,
        "uuid": uuid7(),
        "parent_context_id": parent,
        "child_sidebar_ids": [],
        "forked_from": None,
        "participants": [creator],
        "coordinator_agent": "AGENT-operator",
        "inherited_memory": [],
        "local_memory": [],
        "data_refs": {},
        "cross_sidebar_refs": {},
        "scratchpad": None,
        "yarn_board_layout": {},
        "relevance_scores": {},
        "active_focus": [],
        "status": STATUS_ACTIVE,
        "priority": "normal",
        "created_at": stamp,
        "last_activity": stamp,
        "task_description": task,
        "success_criteria": criteria,
        "failure_reason": None,
        "tags": [],
        "display_names": {},
    }


class ConversationOrchestrator:
    """One conversation's tree in memory, persisted to a snapstore repository."""

    def __init__(self, repo: Repository, conversation: str, *,
                 audit: AuditAppend | None = None, actor: str = "system") -> None:
        if audit is not None and actor not in ACTORS:
            # Checked here, not at the first operation's log append (after its objects are written).
            raise InvalidInput(f"actor must be one of {sorted(ACTORS)}, not {actor!r}")
        self.repo = repo
        self.conversation = conversation
        self.actor = actor
        self._audit = audit
        self._lock = threading.RLock()
        staging = repo.stage(conversation)
        self._head = staging.head
        self._tree: Tree = staging.workspace.base
        self._next_exchange = self._highest_exchange_number() + 1
        # Log entries of operations that failed after their entry was written.
        self._pending_voids: list[tuple[int, str, str]] = []
        # Whether the next operation may skip reading the ref (see _operate): off once another
        # writer is seen moving it, back on once a fresh read finds it where this one left it.
        self._optimistic = True

    # -- state -----------------------------------------------------------------

    @property
    def head(self) -> str | None:
        return self._head

    @property
    def tree(self) -> Tree:
        """The committed tree (read-only)."""
        return self._tree

    @property
    def active_context_id(self) -> str | None:
        """The focused context; None when there is none, or when the stored focus names no context
        (a store written before commits checked it could hold a deleted context's id)."""
        focus = self._tree.active_context_id
        return focus if focus in self._tree.records else None

    def _highest_exchange_number(self) -> int:
        """The highest ``EXCH-<n>`` in the tree, reading only the last item of each chain.

        Bounded cost however long the chains are, and exact: every id is made
        here (metadata cannot set one, see :data:`EXCHANGE_KEYS`), a merge
        summary takes the next id too, and an inherited chain copies older ids,
        so ids increase along every chain.
        """
        highest = 0
        for record in self._tree.records.values():
            for chain in record.memory.values():
                for item in chain.items[-1:]:
                    highest = max(highest, _exchange_number(item))
        return highest

    def _next_sidebar_id(self) -> str:
        numbers = [int(c[3:]) for c in self._tree.records if c.startswith("SB-") and c[3:].isdigit()]
        return f"SB-{max(numbers, default=0) + 1}"

    def _require(self, workspace: Workspace, context_id: str) -> dict[str, Any]:
        fields = workspace.fields(context_id)
        if fields is None:
            raise InvalidInput(f"no context {context_id!r} in conversation {self.conversation!r}")
        return fields

    def _require_present(self, workspace: Workspace, context_id: str) -> None:
        """As :meth:`_require`, for a caller that needs no copy of the fields."""
        if context_id not in workspace:
            raise InvalidInput(f"no context {context_id!r} in conversation {self.conversation!r}")

    # -- the one write path --------------------------------------------------

    def _sync(self, staging: Staging) -> None:
        """Adopt the committed head a staging starts from (another writer may have moved it)."""
        if staging.head != self._head:
            self._tree = staging.workspace.base
            self._head = staging.head
            self._next_exchange = self._highest_exchange_number() + 1

    def _operate(self, event_type: str, context_id: str | Callable[[], str], message: str | Callable[[], str],
                 change: Callable[[Workspace], dict[str, Any]], actor: str | None = None,
                 watch: tuple[str, tuple[str, ...]] | None = None) -> CommitResult:
        """Apply ``change`` to a workspace, then persist it as one snapshot (+ one log entry).

        ``change`` returns the audit payload. Nothing of the operation is in
        memory unless the commit succeeds (the tree may move to a head read
        from the store meanwhile). When another writer moved the ref first, the
        operation is rebased: run again on their state, so its intent holds
        and ids stay unique (a three-way merge of the trees cannot see the
        intent of an operation that changed nothing from its own stale view).
        ``watch`` = (context, fields): if the other writer changed one of
        these fields of that context since our view, the two operations
        conflict and :class:`~snapstore.merge.MergeConflict` names the context.
        """
        with self._lock, contextlib.ExitStack() as queued:
            self._write_pending_voids()
            if self._head is not None and self._optimistic:
                # Optimistic: stage on the head this orchestrator committed last, without
                # reading the ref. The commit's compare-and-swap catches a head another writer
                # moved since; then the operation starts over from a fresh read, as if this
                # attempt had never been (so ``watch`` compares from that read, as always).
                result = self._operate_on_cache(event_type, context_id, message, change, actor)
                if result is not None:
                    return result
            staging = self.repo.stage(self.conversation)
            # While other writers keep moving the head, read it first (an attempt on a stale
            # head costs a whole build); trust the cache again once nobody else wrote.
            self._optimistic = staging.head == self._head
            self._sync(staging)
            payload = change(staging.workspace)
            for attempt in range(MAX_ATTEMPTS):
                try:
                    result = self._commit(staging, event_type, context_id, message, payload, actor)
                    break
                except RefConflict:
                    if attempt == MAX_ATTEMPTS - 1:
                        raise
                    if attempt == 0:
                        # Lost a race: queue with the other losers of this conversation
                        # (every replica) for the retries, instead of racing again.
                        queued.enter_context(self.repo.backend.writer_lock(ref_name(self.conversation)))
                    else:
                        # Back off a random while, longer after each loss, so
                        # contending replicas do not keep colliding.
                        time.sleep(random.uniform(0, min(MAX_BACKOFF, 0.0005 * 2 ** min(attempt, 10))))
                    theirs = self.repo.stage(self.conversation)
                    # From here the tree in memory is the store's head just read, conflict or not:
                    # what the conflict's message describes, and what the caller shows next.
                    self._sync(theirs)
                    if watch is not None:
                        _check_watch(watch, staging.workspace.base, theirs.workspace.base)
                    staging = theirs
                    payload = change(staging.workspace)
            return self._committed(result)

    def _operate_on_cache(self, event_type: str, context_id: str | Callable[[], str],
                          message: str | Callable[[], str], change: Callable[[Workspace], dict[str, Any]],
                          actor: str | None) -> CommitResult | None:
        """One attempt on the cached head; None if that head turned out stale (the compare-and-swap refused the
        commit, or the change was refused on a view that is not the stored head)."""
        staging = Staging(self.conversation, self._head, self._tree)
        try:
            payload = change(staging.workspace)
        except Exception:
            # Refused on this view (say, a context another writer made is not in it yet): final only
            # if the view is the stored head.
            if self.repo.head(self.conversation) == self._head:
                raise
            return None
        try:
            result = self._commit(staging, event_type, context_id, message, payload, actor)
        except RefConflict:
            return None
        return self._committed(result)

    def _committed(self, result: CommitResult) -> CommitResult:
        self._tree = self.repo.tree(result.snapshot)
        self._head = result.snapshot
        return result

    def _commit(self, staging: Staging, event_type: str, context_id: str | Callable[[], str],
                message: str | Callable[[], str],
                payload: dict[str, Any], actor: str | None) -> CommitResult:
        if callable(context_id):
            context_id = context_id()
        if callable(message):
            message = message()
        before_ref: Callable[[PreparedCommit], LogLink] | None = None
        appended: list[int] = []
        if getattr(self._audit, "in_transaction", False):
            # The store keeps the log: the entry rides in the commit's own write.
            def linked_payload(prepared: PreparedCommit) -> dict[str, Any]:
                return {**payload, "snapstore": _link(prepared)}

            return self.repo.commit_staged(
                staging, event=Event(event_type, context_id, message), activate=True, allow_empty=True,
                audit=AuditEntry(self._audit.log, event_type, context_id, actor or self.actor, linked_payload),
            )
        if self._audit is not None:
            audit = self._audit

            def append_entry(prepared: PreparedCommit) -> LogLink:
                linked = dict(payload)
                linked["snapstore"] = _link(prepared)
                sequence, entry_hash = audit(event_type, context_id, actor or self.actor, linked)
                appended.append(sequence)
                return LogLink(sequence, entry_hash)

            before_ref = append_entry

        due = getattr(self._audit, "meta_due", None)
        meta = due(self.repo) if due is not None else None  # the log's mark, now and then (audit.LinkedLog)
        # From before the entry is appended until the ref moved or the entry is voided: a replica starting
        # meanwhile waits instead of judging this entry pending (audit.LinkedLog.operation).
        operation = getattr(self._audit, "operation", None)
        with operation() if operation is not None else contextlib.nullcontext():
            try:
                result = self.repo.commit_staged(
                    staging, event=Event(event_type, context_id, message), activate=True,
                    allow_empty=True, before_ref=before_ref, meta=meta,
                )
            except BaseException as exc:
                if appended and not isinstance(exc, CommitOutcomeUnknown):
                    # The entry is in the log but the ref never moved: the
                    # operation failed, so the log must say it was voided. (Not when the
                    # store could not say whether the ref moved: a start's recovery then
                    # finds the entry applied, or rolls it forward, as after a crash.)
                    self._pending_voids.append((appended[0], context_id, f"{type(exc).__name__}: {exc}"))
                    try:
                        self._write_pending_voids()
                    except Exception:  # retried before the next operation
                        pass
                raise
        settled = getattr(self._audit, "settled", None) if appended else None
        if settled is not None:
            # The ref moved, linking the entry: applied (audit.LinkedLog counts it toward the mark a
            # clean shutdown records, in memory only).
            settled(appended[0])
        return result

    def _write_pending_voids(self) -> None:
        """Append a ``correction`` entry for each failed operation's entry (see :mod:`snapstore.audit`)."""
        while self._pending_voids and self._audit is not None:
            sequence, context_id, reason = self._pending_voids[0]
            self._audit("correction", context_id, "system", {
                "corrected_sequence": sequence,
                "reason": f"operation failed before it was committed: {reason}"[:500],
                "snapstore": {"void": sequence, "conversation": self.conversation},
            })
            self._pending_voids.pop(0)

    # -- life cycle ------------------------------------------------------------

    def create_root_context(self, task_description: str | None = None, *, creator: str = "AGENT-operator") -> str:
        """A new root context; focus moves to it."""
        made: list[str] = []

        def change(ws: Workspace) -> dict[str, Any]:
            made[:] = [self._next_sidebar_id()]
            ws.put_context(new_context(made[0], None, task=task_description, creator=creator))
            ws.set_active(made[0])
            return {"task_description": task_description, "root": True}

        self._operate(ROOT_EVENT, lambda: made[0], task_description or "root context", change)
        return made[0]

    def spawn_sidebar(self, parent_id: str, reason: str, inherit_last_n: int = 5, *,
                      task_description: str | None = None, success_criteria: str | None = None,
                      creator: str = "AGENT-operator") -> str:
        """A child of ``parent_id`` with a copy of its last N exchanges; parent pauses; focus moves."""
        made: list[str] = []

        def change(ws: Workspace) -> dict[str, Any]:
            cid = self._next_sidebar_id()
            made[:] = [cid]
            parent = self._require(ws, parent_id)
            child = new_context(cid, parent_id, task=task_description or reason,
                                criteria=success_criteria, creator=creator)
            inherited = ws.last_exchanges(parent_id, inherit_last_n)
            for item in inherited:
                if isinstance(item, dict):
                    item["_inherited"] = True
                    item["_inherited_from"] = parent_id
            child["inherited_memory"] = inherited
            ws.put_context(child)
            ws.update_fields(parent_id, {
                "child_sidebar_ids": [*parent.get("child_sidebar_ids", []), cid],
                "status": STATUS_PAUSED,
                "last_activity": now_text(),
            })
            ws.set_active(cid)
            return {"spawn_reason": reason, "parent_context": parent_id, "child_id": cid,
                    "inherited_count": len(inherited), "task_description": child["task_description"],
                    "success_criteria": success_criteria}

        self._operate("sidebar_spawn", lambda: made[0], reason, change)
        return made[0]

    def add_exchange(self, context_id: str, user: str, assistant: str, **metadata: Any) -> str:
        """Append one exchange to a context's own memory; returns its exchange id.

        ``metadata`` adds keys to the exchange; the keys the orchestrator
        sets itself (:data:`EXCHANGE_KEYS`) are refused with
        :class:`InvalidInput`, so exchange ids stay unique and increasing.
        """
        taken = sorted(EXCHANGE_KEYS & metadata.keys())
        if taken:
            raise InvalidInput(f"add_exchange: metadata may not set {', '.join(taken)} (the orchestrator sets them)")
        stamp = now_text()
        made: list[str] = []

        def change(ws: Workspace) -> dict[str, Any]:
            exchange_id = f"EXCH-{self._next_exchange}"
            made[:] = [exchange_id]
            self._require_present(ws, context_id)
            item = {"exchange_id": exchange_id, "user": user, "assistant": assistant,
                    "timestamp": stamp, "context_id": context_id, **metadata}
            ws.append_exchange(context_id, item)
            ws.update_fields(context_id, {"last_activity": stamp})
            return {"exchange_id": exchange_id, "user_hash": text_hash(user),
                    "assistant_hash": text_hash(assistant), "user_chars": len(user),
                    "assistant_chars": len(assistant)}

        self._operate("exchange", context_id, lambda: made[0], change)
        self._next_exchange += 1
        return made[0]

    def _set_status(self, event_type: str, context_id: str, status: str, reason: str) -> None:
        def change(ws: Workspace) -> dict[str, Any]:
            old = self._require(ws, context_id).get("status")
            ws.update_fields(context_id, {"status": status, "last_activity": now_text()})
            return {"reason": reason, "old_status": old, "new_status": status}

        self._operate(event_type, context_id, reason, change, watch=(context_id, ("status",)))

    def pause_context(self, context_id: str, reason: str = "paused") -> None:
        self._set_status("context_pause", context_id, STATUS_PAUSED, reason)

    def resume_context(self, context_id: str, reason: str = "resumed") -> None:
        self._set_status("context_resume", context_id, STATUS_ACTIVE, reason)

    def archive_context(self, context_id: str, reason: str = "archived") -> None:
        self._set_status("context_archive", context_id, STATUS_ARCHIVED, reason)

    def merge_sidebar(self, context_id: str, summary: str, merge_type: str = "summary") -> str:
        """Mark a sidebar merged and append a summary exchange to its parent, which resumes."""
        stamp = now_text()
        made: list[str] = []

        def change(ws: Workspace) -> dict[str, Any]:
            exchange_id = f"EXCH-{self._next_exchange}"
            made[:] = [exchange_id]
            child = self._require(ws, context_id)
            parent_id = child.get("parent_context_id")
            if parent_id is None or parent_id not in ws:
                raise InvalidInput(f"context {context_id!r} has no parent to merge into")
            merged_count = ws.exchange_count(context_id)
            ws.update_fields(context_id, {"status": STATUS_MERGED, "last_activity": stamp})
            ws.append_exchange(parent_id, {
                "exchange_id": exchange_id, "user": f"[merge from {context_id}]", "assistant": summary,
                "timestamp": stamp, "context_id": parent_id, "_merge_from": context_id,
                "_merge_type": merge_type, "_exchanges_merged": merged_count,
            })
            ws.update_fields(parent_id, {"status": STATUS_ACTIVE, "last_activity": stamp})
            ws.set_active(parent_id)
            return {"merge_summary": summary, "parent_context": parent_id, "exchange_count": merged_count,
                    "summary_hash": text_hash(summary), "summary_exchange_id": exchange_id}

        self._operate("sidebar_merge", context_id, f"merged into parent: {summary[:60]}", change)
        self._next_exchange += 1
        return made[0]

    def reparent_context(self, context_id: str, new_parent_id: str | None) -> None:
        """Move a context (and its subtree) under another parent, or to the top level.

        Moving a context under the parent it already has keeps its place among
        its siblings (only ``last_activity`` changes; the operation is still
        recorded, as the client records it).
        """

        def change(ws: Workspace) -> dict[str, Any]:
            moving = self._require(ws, context_id)
            old_parent = moving.get("parent_context_id")
            if new_parent_id is not None:
                self._require(ws, new_parent_id)
                ancestor: str | None = new_parent_id
                while ancestor is not None:
                    if ancestor == context_id:
                        raise InvalidInput(f"cannot move {context_id!r} under its own descendant")
                    ancestor = (ws.fields(ancestor) or {}).get("parent_context_id")
            if old_parent == new_parent_id and (
                    new_parent_id is None or context_id in self._require(ws, new_parent_id).get("child_sidebar_ids", [])):
                ws.update_fields(context_id, {"last_activity": now_text()})
                return {"old_parent": old_parent, "new_parent": new_parent_id}
            if old_parent is not None and old_parent in ws:
                kids = self._require(ws, old_parent).get("child_sidebar_ids", [])
                ws.update_fields(old_parent, {"child_sidebar_ids": [k for k in kids if k != context_id]})
            if new_parent_id is not None:
                kids = self._require(ws, new_parent_id).get("child_sidebar_ids", [])
                ws.update_fields(new_parent_id, {"child_sidebar_ids": [*kids, context_id]})
            ws.update_fields(context_id, {"parent_context_id": new_parent_id, "last_activity": now_text()})
            return {"old_parent": old_parent, "new_parent": new_parent_id}

        self._operate("context_reparent", context_id, f"moved under {new_parent_id or 'top level'}", change,
                      watch=(context_id, ("parent_context_id",)))

    def switch_focus(self, context_id: str) -> None:
        def change(ws: Workspace) -> dict[str, Any]:
            self._require_present(ws, context_id)
            old = ws.active_context_id
            ws.set_active(context_id)
            return {"from": old, "to": context_id}

        self._operate("focus_switch", context_id, f"focus on {context_id}", change)

    # -- reading -----------------------------------------------------------------

    def list_contexts(self, include_archived: bool = True) -> list[dict[str, Any]]:
        """Summaries of every context: id, parent, status, exchange count, task."""
        out = []
        for record in self._tree.preorder():
            status = record.fields.get("status")
            if not include_archived and status == STATUS_ARCHIVED:
                continue
            out.append({
                "sidebar_id": record.id, "parent_context_id": record.fields.get("parent_context_id"),
                "status": status, "exchanges": record.exchange_count(),
                "task_description": record.fields.get("task_description"),
            })
        return out

    def get_context(self, context_id: str) -> dict[str, Any] | None:
        record = self._tree.records.get(context_id)  # type: ignore[call-overload]
        return None if record is None else record.materialize()

    def get_tree(self) -> list[dict[str, Any]]:
        """The forest as nested dicts: id, status, exchanges, focus, children."""

        def node(cid: str) -> dict[str, Any]:
            record = self._tree.records[cid]  # type: ignore[index]
            return {"id": cid, "status": record.fields.get("status"), "exchanges": record.exchange_count(),
                    "focus": cid == self._tree.active_context_id,
                    "children": [node(c) for c in record.children]}

        return [node(r) for r in self._tree.roots]

    def get_context_for_llm(self, context_id: str) -> list[dict[str, Any]]:
        """What the model sees: inherited exchanges, then the context's own."""
        record = self._tree.records.get(context_id)  # type: ignore[call-overload]
        if record is None:
            raise InvalidInput(f"no context {context_id!r}")
        out: list[dict[str, Any]] = []
        for name in ("inherited_memory", "local_memory"):
            chain = record.memory.get(name)
            if chain is not None:
                out.extend(chain.items)
        from .tree import json_copy

        return json_copy(out)

    def state(self) -> dict[str, Any]:
        """The whole materialized state (as ``snap checkout -o`` writes it)."""
        return {"conversation_id": self.conversation, "active_context_id": self._tree.active_context_id,
                "contexts": self._tree.materialize(), **self._tree.extra}


def _link(prepared: PreparedCommit) -> dict[str, Any]:
    """What an operation's log entry says of its snapshot (``payload["snapstore"]``, see snapstore.audit)."""
    return {
        "conversation": prepared.conversation,
        "snapshot": prepared.snapshot,
        "parent": prepared.parent,
        "root": prepared.root,
        "nodes": dict(prepared.changed_nodes),
    }


def _field_value(fields: dict[str, Any], name: str) -> str:
    """A field's value as a conflict names it: its repr, ``(unset)`` when absent or null (not ``None``)."""
    value = fields.get(name)
    return "(unset)" if value is None else repr(value)


def _check_watch(watch: tuple[str, tuple[str, ...]], ours: Tree, theirs: Tree) -> None:
    """Raise MergeConflict if another writer changed a watched field of a context we change."""
    cid, names = watch
    before, after = ours.records.get(cid), theirs.records.get(cid)  # type: ignore[call-overload]
    if before is None or after is None or before.node_id == after.node_id:
        return
    for name in names:
        if before.fields.get(name) != after.fields.get(name):
            raise MergeConflict(cid, f"another writer changed {name} from {_field_value(before.fields, name)} "
                                     f"to {_field_value(after.fields, name)}")


def _exchange_number(item: Any) -> int:
    if isinstance(item, dict):
        ex = item.get("exchange_id")
        if isinstance(ex, str) and ex.startswith("EXCH-") and ex[5:].isdigit():
            return int(ex[5:])
    return 0

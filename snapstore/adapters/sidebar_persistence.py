"""Drop-in replacement for the client's ``sidebar_persistence`` module, backed by snapstore.

A client switches by making its ``sidebar_persistence`` module this one
(``sys.modules["sidebar_persistence"] = snapstore.adapters.sidebar_persistence``
or an import alias). It offers the same class, methods, module functions and
module global (reference §2), plus :func:`configure`.

Where contexts go. Each root context and its descendants form one snapstore
conversation: the client's conversation id once ``register_conversation_root``
names it, before that ``tree-<root id>``. A context stays in its conversation
when it is promoted to a root.

Durability and history. Every ``save_context``, ``delete_context`` and
focus change is one durable commit before it returns. Several saves make one
user operation (a spawn saves the child, then the parent, then the focus);
to give ``snap log`` one entry per operation, saves of one operation
*amend* the snapshot the operation started (it takes the same parent; the
replaced snapshots stay in the reflog). Saves belong to one operation when

- they run inside ``with persistence.operation("sidebar_spawn", "SB-3"):``, or
- an OZOLITH log is configured (``configure(ozolith=path)``) and no new
  entry was appended between them: the operation is the newest log entry,
  and its snapshot records that entry's sequence and hash.

Otherwise each save is its own snapshot. A delete is always a snapshot of
its own (never an amend), so history keeps the deleted context whole.

Threads. One instance may be shared by the threads of a server. Each call
takes the instance's lock for its commit, so calls of different threads
apply one after the other, each on the head as it is then: saves of
different contexts all land, and two saves of one context are applied in
turn (the later one is the context, as the client's ``INSERT OR REPLACE``;
never a :class:`~snapstore.merge.MergeConflict` between the instance's own
saves). An operation belongs to the thread (or asyncio task) that opened it
and holds no lock while it is open; the saves of another thread, run at the
same time, are snapshots of their own, and a save amends only a snapshot
its own operation made (under a log, one the same thread made for the same
newest entry), so interleaved operations never fold into one snapshot.

Several replicas. Where each context lives (which conversation) is a cache,
read again from the heads when a context is not where it was: another
instance may have made, moved or deleted it. When another process moved the conversation's ref since
this instance's view, a save is merged three ways onto theirs against the
common snapshot (:func:`snapstore.merge.merge_trees`): changes to different
contexts (or different fields) combine; the same field changed two ways
raises :class:`~snapstore.merge.MergeConflict` naming the context.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import itertools
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import InvalidInput, SnapstoreError, StoreExists, StoreNotFound
from ..objects import Event, LogLink, json_equal
from ..errors import RefConflict
from ..merge import merge_trees
from ..refs import (REF_PREFIX, ConversationId, conversation_of, ref_name, validate_context_id,
                    validate_conversation_id)
from ..repository import CommitResult, Repository, Staging
from ..tree import ID_FIELD, PARENT_FIELD, ContextRecord, Tree, Workspace
from . import typed

__all__ = [
    "SidebarPersistence", "configure", "get_persistence", "reset_persistence", "default_store_location",
]

_persistence_instance: SidebarPersistence | None = None
_config: dict[str, Any] = {"store": None, "context_class": None, "ozolith": None, "ozolith_key": None}

SESSION_PREFIX = "session/"
MAX_MERGE_ATTEMPTS = 50
ROOT_OF_CONVERSATION = "conversation_root/"
CONVERSATION_OF_ROOT = "root_conversation/"
HISTORICAL = "historical/"
# The caller's context class (``module:QualName``), noted at its first save: loads in a later process
# give back instances of it without configure(context_class=...).
CONTEXT_CLASS = "adapter/context_class"
from ..startup import CLEAN_SHUTDOWN_KEY, Presence  # noqa: E402  (one marker for every way of starting)
from ..timeutil import utc_now  # noqa: E402


def default_store_location() -> str:
    """``$SNAPSTORE``, else ``$XDG_DATA_HOME/snapstore``, else ``~/.local/share/snapstore``."""
    if os.environ.get("SNAPSTORE"):
        return os.environ["SNAPSTORE"]
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(base) / "snapstore")


def configure(store: str | os.PathLike[str] | None = None, context_class: type | None = None,
              ozolith: str | os.PathLike[str] | None = None, ozolith_key: str | None = None) -> None:
    """Set the store location, the caller's context class and the client's audit log.

    Takes effect for instances created afterwards (call :func:`reset_persistence`
    to drop the shared one).
    """
    _config.update(store=None if store is None else os.fspath(store), context_class=context_class,
                   ozolith=None if ozolith is None else str(ozolith), ozolith_key=ozolith_key)


def get_persistence(db_path: str | None = None) -> SidebarPersistence:
    """The shared instance, created on first call (kept in ``_persistence_instance``)."""
    global _persistence_instance
    if _persistence_instance is None:
        _persistence_instance = SidebarPersistence(db_path)
    return _persistence_instance


def reset_persistence() -> None:
    """Forget the shared instance, then close it.

    Forgotten first, so that the next :func:`get_persistence` makes a new
    one even if closing fails; an instance a test put in
    ``_persistence_instance`` that is not a :class:`SidebarPersistence` is
    closed by its own ``close()``, if it has one.
    """
    global _persistence_instance
    instance, _persistence_instance = _persistence_instance, None
    if isinstance(instance, SidebarPersistence):
        instance.close(clean=False)
    elif callable(getattr(instance, "close", None)):
        instance.close()


def _as_conversation_id(client_id: str) -> ConversationId:
    """The client's conversation id as a snapstore one (hashed if it is not a valid name)."""
    try:
        return validate_conversation_id(client_id)
    except InvalidInput:
        digest = hashlib.sha256(str(client_id).encode("utf-8", "surrogatepass")).hexdigest()[:20]
        return ConversationId(f"c-{digest}")


def _view(record: ContextRecord) -> dict[str, Any]:
    """A record as a context dict that shares the record's objects.

    Only for :func:`typed.from_json`, which copies every dict and list (a
    second copy, as :meth:`ContextRecord.materialize` makes, would be wasted).
    """
    context: dict[str, Any] = {ID_FIELD: record.id}
    context.update(record.fields)
    for name, chain in record.memory.items():
        context[name] = chain.items
    return context


# Fields saved only when they can be: the client's own layer does not persist ``scratchpad`` at all,
# so one that JSON cannot hold (an object of the caller's) is left out, not a failed save.
OPTIONAL_FIELDS = frozenset({"scratchpad"})


def _plain(value: Any, tag: str) -> Any:
    """A stored top-level value with its :mod:`typed` ``tag`` taken off (a context saved as a dict
    stores an enum or a datetime tagged); any other value as it is."""
    if isinstance(value, dict) and value.get(typed.TAG) == tag:
        return value.get("value")
    return value


def _status(record: ContextRecord) -> Any:
    """The status a record holds, as the enum's value (``"archived"``) however it was saved."""
    return _plain(record.fields.get("status"), "enum")


def _moment_key(value: Any) -> tuple[int, Any]:
    """A sort key for a stored ``last_activity``: by the moment it names (an aware one in UTC)."""
    value = _plain(value, "datetime")
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return (0, value)
        if moment.tzinfo is not None:
            moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
        return (1, moment)
    return (0, "")


def _max_depth(parents: dict[str, str | None]) -> int:
    """The most ``parent`` links any context is below one whose parent is not stored (0 if none)."""
    depth: dict[str, int] = {}
    for start in parents:
        path: list[str] = []
        cid: str | None = start
        while cid is not None and cid in parents and cid not in depth and cid not in path:
            path.append(cid)
            cid = parents[cid]
        base = depth[cid] + 1 if cid is not None and cid in depth else 0  # a cycle counts from 0
        for offset, c in enumerate(reversed(path)):
            depth[c] = base + offset
    return max(depth.values(), default=0)


def _check_id(sidebar_id: Any) -> None:
    """Refuse a context id that is not a string (a clear error instead of "no such context")."""
    if not isinstance(sidebar_id, str):
        raise InvalidInput(f"context id must be a string, got {type(sidebar_id).__name__} {sidebar_id!r}")


def _check_key(what: str, key: Any) -> str:
    """A session key or client conversation id: a string the store can hold (valid Unicode)."""
    if not isinstance(key, str):
        raise InvalidInput(f"{what} must be a string, got {type(key).__name__} {key!r}")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{what} {key!r} is not valid Unicode text (a lone surrogate)") from None
    return key


@dataclass
class _Operation:
    key: object
    event_type: str
    context_id: str | None
    message: str
    log: LogLink | None = None
    touched: list[str] = field(default_factory=list)


class SidebarPersistence:
    """The client's persistence interface over a snapstore repository."""

    def __init__(self, db_path: str | None = None, *, context_class: type | None = None,
                 ozolith: str | os.PathLike[str] | None = None) -> None:
        location = str(db_path) if db_path else (_config["store"] or default_store_location())
        try:
            self.repo = Repository.open(location)
        except StoreNotFound:
            try:
                self.repo = Repository.init(location)
            except StoreExists:  # another replica created it a moment ago
                self.repo = Repository.open(location)
        self.location = location
        self.context_class = context_class or _config["context_class"]
        self._class_noted = self.repo.backend.get_meta(CONTEXT_CLASS)
        log_path = ozolith or _config["ozolith"]
        self._log = None
        if log_path is not None:
            from ..ozolith import OzolithLog

            self._log = OzolithLog(log_path, key=_config["ozolith_key"])
        self._lock = threading.RLock()
        self._ops = itertools.count()
        # The operation open in the calling thread or asyncio task (``asyncio.to_thread`` carries it to the
        # worker): never the instance's, or a server's other requests would join it, or wait for it to end.
        self._explicit: contextvars.ContextVar[_Operation | None] = contextvars.ContextVar(
            "snapstore_adapter_operation", default=None)
        # conversation -> how many commits this instance made to it: a save staged on a head read before
        # another of this instance's threads committed there stages again on the head (see save_context).
        self._commits: dict[ConversationId, int] = {}
        # conversation -> (operation key, snapshot it made): where an amend may follow.
        self._last: dict[ConversationId, tuple[object, str]] = {}
        self._where: dict[str, ConversationId] = {}
        # The head of each conversation that _where was read from, the contexts each holds there, and the
        # conversations holding each context (more than one a moment while another instance moves it).
        self._indexed: dict[ConversationId, str] = {}
        self._contexts: dict[ConversationId, tuple[str, ...]] = {}
        self._holders: dict[str, set[ConversationId]] = {}
        # The version of each context this instance last loaded or saved.
        self._seen: dict[str, ContextRecord] = {}
        # context -> list name -> (chain head, length, typed.mirror_of the client's items saved there).
        self._mirrors: dict[str, dict[str, tuple[str | None, int, list[Any]]]] = {}
        self._refresh()
        # Announced like a Session (startup.Presence): a start beside this running instance is not misled,
        # and one after it was killed notices.
        self._presence = Presence(self.repo)
        self.repo.backend.write(meta={CLEAN_SHUTDOWN_KEY: None, **self._presence.announce_meta(utc_now()),
                                      **self._hint_meta()})

    # -- operations ------------------------------------------------------------

    @contextlib.contextmanager
    def operation(self, event_type: str, context_id: str | None = None, message: str = "") -> Iterator[None]:
        """Group the saves inside into one snapshot (each save is still durable at once).

        The operation is the calling thread's (or asyncio task's) and holds no
        lock while open: holding the instance's lock would stop every other
        request of the server until it ends, and deadlock a save the
        operation hands to a worker thread and waits for.
        """
        token = self._explicit.set(_Operation(("op", next(self._ops)), event_type, context_id, message))
        try:
            yield
        finally:
            self._explicit.reset(token)

    def _operation(self, fallback_type: str, context_id: str) -> _Operation:
        explicit = self._explicit.get()
        if explicit is not None:
            return explicit
        if self._log is not None:
            last = self._log.last()
            if last is not None:
                # The thread is part of the key: under threads the newest entry may be another request's, and
                # that request's saves must not amend this one's snapshot (two user operations in one).
                return _Operation(("log", last.sequence, last.entry_hash, threading.get_ident()),
                                  last.event_type, last.context_id, "", LogLink(last.sequence, last.entry_hash))
        return _Operation(("save", next(self._ops)), fallback_type, context_id, "")

    def _commit(self, conv: ConversationId, change, fallback_type: str, context_id: str,
                staging: Staging | None = None, *, note: str | None = None,
                may_amend: bool = True) -> tuple[CommitResult, Tree | None]:
        """Stage ``change`` on the head (on ``staging`` when the caller has just read it) and commit
        it; if another replica moved the head meanwhile, merge three ways onto theirs. Returns the commit
        and, when it had to merge, the tree as staged (what this instance's change made of the head).

        ``note`` is added to the snapshot's message; with ``may_amend`` False the commit is a snapshot
        of its own even inside an operation (the head it would replace stays in the history)."""
        op = self._operation(fallback_type, context_id)
        if staging is None:
            staging = self.repo.stage(conv)
        change(staging.workspace)
        amend = may_amend and staging.head is not None and self._last.get(conv) == (op.key, staging.head)
        if context_id not in op.touched:
            op.touched.append(context_id)
        message = op.message or f"{fallback_type} {', '.join(op.touched)}"
        if note:
            message = f"{message} ({note})"
        event = Event(op.event_type, op.context_id, message)
        staged = None
        try:
            result = self.repo.commit_staged(staging, event=event, log=op.log, activate=True, amend=amend)
        except RefConflict:
            staged = staging.workspace.build()
            result = self._merge_and_commit(conv, staging, staged, event, op.log)
        self._commits[conv] = self._commits.get(conv, 0) + 1
        if op.key[0] == "save":
            self._last.pop(conv, None)
        else:
            self._last[conv] = (op.key, result.snapshot)
        return result, staged

    def _merge_and_commit(self, conv: ConversationId, staging: Staging, ours: Tree, event: Event,
                          log: LogLink | None) -> CommitResult:
        """Another replica moved the ref: merge our change (``ours``, the staging built) three ways onto
        theirs (retrying)."""
        base = staging.workspace.base
        chunks = {oid: obj for oid, obj in staging.workspace.objects.items() if obj[0] == "chunk"}
        for _ in range(MAX_MERGE_ATTEMPTS):
            theirs = self.repo.stage(conv)
            merged = merge_trees(base, theirs.workspace.base, ours)
            merged.objects.update(chunks)
            theirs.workspace = merged
            try:
                return self.repo.commit_staged(theirs, event=event, log=log, activate=True, allow_empty=True)
            except RefConflict:
                continue
        raise RefConflict(ref_name(conv), None, self.repo.head(conv))

    # -- where contexts live ---------------------------------------------------

    def _conversation_of_root(self, root_id: str) -> ConversationId:
        registered = self.repo.backend.get_meta(CONVERSATION_OF_ROOT + root_id)
        if registered:
            return ConversationId(registered)
        return _as_conversation_id(f"tree-{root_id}")

    def _refresh(self) -> dict[ConversationId, str]:
        """Read again where each context lives, from the conversations' heads as stored now.

        Other replicas (or another instance on the same store) create, move
        and delete contexts; this instance's own map is only a cache of
        where they were. Only the conversations whose head moved since the
        last read (or that came or went) are read again, and from their
        nodes alone, all together (:meth:`Repository.context_ids`): a store
        of thousands of conversations is not loaded whole at start, and a
        save of a new context (which looks here first) costs what changed,
        not every conversation again. Returns the heads.
        """
        heads = {conv: head for ref, head in self.repo.backend.list_refs(REF_PREFIX).items()
                 if (conv := conversation_of(ref)) is not None}
        if heads != self._indexed:
            changed = {conv for conv in heads.keys() | self._indexed.keys()
                       if heads.get(conv) != self._indexed.get(conv)}
            ids = self.repo.context_ids(heads[conv] for conv in changed if conv in heads)
            touched: set[str] = set()
            for conv in changed:
                old = self._contexts.pop(conv, ())
                new = tuple(ids[heads[conv]]) if conv in heads else ()
                for cid in old:
                    self._holders[cid].discard(conv)
                for cid in new:
                    self._holders.setdefault(cid, set()).add(conv)
                if new:
                    self._contexts[conv] = new
                touched.update(old)
                touched.update(new)
            for cid in touched:
                holders = self._holders.get(cid)
                if holders:
                    self._where[cid] = min(holders)  # a context in two conversations: the first by name
                else:
                    self._holders.pop(cid, None)
                    self._where.pop(cid, None)
            self._indexed = heads
        return heads

    def _locate(self, cid: str) -> tuple[ConversationId, ContextRecord] | None:
        """The conversation whose head holds ``cid`` now, and its record there; None if none does."""
        for attempt in range(2):
            conv = self._where.get(cid)
            if conv is not None:
                head = self.repo.head(conv)
                record = self.repo.tree(head).records.get(cid) if head is not None else None  # type: ignore[call-overload]
                if record is not None:
                    return conv, record
            if attempt == 0:
                self._refresh()
        return None

    def _target(self, data: dict[str, Any]) -> ConversationId:
        cid = data[ID_FIELD]
        parent = data.get(PARENT_FIELD)
        if cid not in self._where or (isinstance(parent, str) and parent not in self._where):
            self._refresh()  # made by another replica since this instance last looked?
        if isinstance(parent, str) and parent in self._where:
            return self._where[parent]
        if cid in self._where:
            return self._where[cid]
        return self._conversation_of_root(cid)

    def _subtree(self, conv: ConversationId, cid: str) -> list[str]:
        tree = self.repo.tree(self.repo.head(conv))
        out, stack = [], [cid]
        while stack:
            c = stack.pop()
            if c in tree.records:
                out.append(c)
                stack.extend(tree.records[c].children)  # type: ignore[index]
        return out

    def _move(self, cid: str, source: ConversationId, target: ConversationId) -> None:
        """Move a context and its subtree to another conversation (two commits)."""
        moving = self._subtree(source, cid)
        tree = self.repo.tree(self.repo.head(source))
        contexts = [tree.records[c].materialize() for c in moving]  # type: ignore[index]

        def add(ws):
            for context in contexts:
                ws.put_context(context)

        def remove(ws):
            for c in moving:
                ws.remove_context(c)

        self._commit(target, add, "context_moved", cid)
        self._commit(source, remove, "context_moved", cid)
        for c in moving:
            self._where[c] = target

    # -- the client's interface ------------------------------------------------

    def save_context(self, context: Any) -> bool:
        """Upsert one whole context; durable when it returns."""
        mirrors: dict[str, list[Any] | None] = {}
        self._check_store()
        stored, read, commits = self._stored_lists(context)
        data = self._encode(context, stored, mirrors)
        cid = data[ID_FIELD]
        # The lists as this save staged them, when it staged the context as it is (no merge).
        built: dict[str, tuple[str | None, int]] = {}
        # The caller's context as a record, when _put_seen had to merge it with another replica's change.
        given: list[ContextRecord | None] = []

        def change(ws: Workspace) -> None:
            mine = self._put_seen(ws, data)
            given[:] = [mine]
            if mine is None:
                record = ws.record(cid)
                if record is not None:
                    built.update((name, (chain.head, chain.n)) for name, chain in record.memory.items())

        with self._lock:
            target = self._target(data)
            current = self._where.get(cid)
            if current is not None and current != target:
                self._refuse_cycle(cid, data.get(PARENT_FIELD))
                self._move(cid, current, target)
            # The head _stored_lists read is the base (one read of the ref per save): a replica that
            # moved it since makes the commit merge, as one that moves it during the save does. Not if
            # another thread of this instance committed there since: a merge with the instance's own
            # save would raise MergeConflict where both set a field (last_activity, say); staged on the
            # head as it is now, the saves apply in turn, as the client's own layer does.
            staging = read if (read is not None and read.conversation == target and current == target
                               and self._commits.get(target, 0) == commits) else None
            result, staged = self._commit(target, change, "save_context", cid, staging)
            self._where[cid] = target
            # What the caller now holds, as the base of its next save: the context as given, not a merge
            # of it with what another replica changed (the caller never saw that; the next save must
            # keep it, not write the caller's older values over it).
            if given and given[0] is not None:
                record = given[0]
            else:
                tree = staged if staged is not None else self.repo.tree(result.snapshot)
                record = tree.records.get(cid)  # type: ignore[call-overload]
            self._remember(cid, record)
            # Keep the mirror of each list as this save encoded it, under the chain it staged: the next
            # save uses it only where the head still holds that very chain.
            self._mirrors.pop(cid, None)
            if record is not None:
                memo = {name: (chain.head, chain.n, mirror) for name, chain in record.memory.items()
                        if (mirror := mirrors.get(name)) is not None and built.get(name) == (chain.head, chain.n)}
                if memo:
                    self._mirrors[cid] = memo
            if self.context_class is None and typed.is_instance_of_dataclass(context):
                self._adopt_class(type(context))
            elif self._class_noted is None and self.context_class is not None and isinstance(
                    context, self.context_class):
                # Configured, yet noted too: a later process opening the store without configure (the
                # client itself, after a setup script that configured it) must load this class, not dicts.
                self._note_class(self.context_class)
        return True

    def _refuse_cycle(self, cid: str, parent: Any) -> None:
        """Refuse (:class:`InvalidInput`) a parent that is ``cid`` itself or below it, before a move.

        The commit refuses a cycle too, but only after :meth:`_move` has
        committed the subtree into the parent's conversation, where a parent
        saved before its child (the child in a conversation of its own)
        leaves the two; a refused save must write nothing. Walks the stored
        parent links from ``parent`` up, across conversations.
        """
        seen: set[str] = set()
        while isinstance(parent, str) and parent not in seen:
            if parent == cid:
                raise InvalidInput(f"context {cid!r}: {PARENT_FIELD} forms a cycle through context {cid!r}")
            seen.add(parent)
            located = self._locate(parent)
            parent = located[1].fields.get(PARENT_FIELD) if located is not None else None

    def _encode(self, context: Any, stored: dict[str, typed.KnownList],
                mirrors: dict[str, list[Any] | None]) -> dict[str, Any]:
        """The context as plain JSON (see :func:`typed.to_json`), checked before anything is written.

        Refused with :class:`InvalidInput` naming the context: an id that is
        not a valid one, a field value the store cannot give back as it was,
        and a context loads could not make an instance of the caller's class
        from (a dict, or another class, lacking one of its required fields).
        """
        cid = context.get(ID_FIELD) if isinstance(context, dict) else getattr(context, ID_FIELD, None)
        try:
            data = typed.to_json(context, stored, mirrors, optional=OPTIONAL_FIELDS)
        except InvalidInput as exc:
            raise InvalidInput(f"context {cid!r}: {exc}" if isinstance(cid, str) else str(exc)) from None
        if ID_FIELD not in data:
            raise InvalidInput(f"context has no {ID_FIELD}")
        validate_context_id(cid)  # the caller's value, not its encoding (a tuple is stored tagged)
        cls = self._class()
        if cls is not None and not isinstance(context, cls):
            missing = typed.missing_fields(cls, data)
            if missing:
                raise InvalidInput(f"context {cid!r} lacks {', '.join(map(repr, missing))}, which "
                                   f"{cls.__name__} requires: loads could not give it back")
        return data

    def _stored_lists(self, context: Any) -> tuple[dict[str, typed.KnownList], Staging | None, int]:
        """The context's exchange lists as its conversation's head holds them, a staging on that
        head (None if the context is new here), and how many commits this instance had made to that
        conversation when it read the head.

        A save then encodes only what was appended since, and compares the
        rest with the mirror of the client's items it last saved, not with
        the stored text (see :func:`typed.to_json`).
        """
        cid = context.get(ID_FIELD) if isinstance(context, dict) else getattr(context, ID_FIELD, None)
        with self._lock:
            conv = self._where.get(cid) if isinstance(cid, str) else None
            if conv is None:
                return {}, None, 0
            commits = self._commits.get(conv, 0)
            read = self.repo.stage(conv)  # the head read once: the save stages on it too
            record = read.workspace.base.records.get(cid)  # type: ignore[call-overload]
            memo = self._mirrors.get(cid, {})
            if record is None:
                # Not where this instance last saw it: another replica moved or deleted it.
                self._refresh()
                return {}, None, 0
        out = {}
        for name, chain in record.memory.items():
            kept = memo.get(name)
            mirror = kept[2] if kept is not None and (kept[0], kept[1]) == (chain.head, chain.n) else None
            out[name] = typed.KnownList(chain.items, mirror)
        return out, read, commits

    def _remember(self, cid: str, record: ContextRecord | None) -> None:
        """Note the version of a context this instance's caller holds (the base of its next save)."""
        if record is not None:
            self._seen[cid] = record

    def _put_seen(self, ws: Workspace, data: dict[str, Any]) -> ContextRecord | None:
        """Stage a whole context; if another replica changed it since we saw it, merge three ways.

        Returns None if the context was staged as given; if it was merged, the record of the
        context as given (built on its own).
        """
        cid = data[ID_FIELD]
        seen = self._seen.get(cid)
        current = ws.base.records.get(cid)  # type: ignore[call-overload]
        if seen is None or current is None or current.node_id == seen.node_id or (
            json_equal(current.fields, seen.fields) and all(
                seen.memory.get(n) is not None and (c.head, c.n) == (seen.memory[n].head, seen.memory[n].n)
                for n, c in current.memory.items())
        ):
            ws.put_context(data)
            return None
        mine = Workspace(ws.base)
        mine.put_context(data)
        ours = mine.build()
        base = Tree({**ws.base.records, cid: seen}, ws.base.roots, ws.base.active_context_id,
                    ws.base.extra, None)
        merged = merge_trees(base, ws.base, ours)
        ws.objects.update({oid: obj for oid, obj in mine.objects.items() if obj[0] == "chunk"})
        ws.objects.update(merged.objects)
        record = merged.record(cid)
        if record is not None:
            ws.put_record(record, changed=True)
        return ours.records.get(cid)  # type: ignore[call-overload]

    def load_context(self, sidebar_id: str) -> Any:
        """The context as an instance of the caller's class (see :meth:`_class`), or None."""
        _check_id(sidebar_id)
        self._check_store()
        with self._lock:
            located = self._locate(sidebar_id)
        if located is None:
            return None
        record = located[1]
        self._seen[sidebar_id] = record
        return typed.from_json(self._class(), _view(record))

    def load_all_contexts(self, include_archived: bool = False) -> list[Any]:
        """Every context, newest ``last_activity`` first; archived ones only when asked.

        Each is noted as the version the caller holds, as :meth:`load_context`
        does: a later save of it merges what another instance changed since
        instead of writing over it.
        """
        found = []
        listed: set[str] = set()  # a context another instance is moving is in two conversations a moment
        self._check_store()
        with self._lock:
            heads = self._refresh()
            for conv in sorted(heads):
                for record in self.repo.tree(heads[conv]).records.values():
                    if record.id in listed or (not include_archived and _status(record) == "archived"):
                        continue
                    listed.add(record.id)
                    self._seen[record.id] = record
                    found.append(_view(record))
        found.sort(key=lambda c: _moment_key(c.get("last_activity")), reverse=True)
        cls = self._class()
        return [typed.from_json(cls, c) for c in found]

    def delete_context(self, sidebar_id: str, reason: str = "manual", deleted_by: str = "system") -> bool:
        """Remove a context from the current state; history keeps it, whole.

        The delete is a snapshot of its own, never an amend of the one before
        (which may be the only snapshot holding the context, as when the
        same operation saved it), so the conversation's history holds the
        full context as it was; the snapshot's message names the reason and
        who deleted it. (No entry is appended to a configured OZOLITH log:
        the client writes that log, and a second writer would fork its
        chain.)
        """
        _check_id(sidebar_id)
        self._check_store()
        with self._lock:
            located = self._locate(sidebar_id)
            if located is None:
                return False
            self._commit(located[0], lambda ws: ws.remove_context(sidebar_id), "context_deleted", sidebar_id,
                         note=f"reason: {reason}; deleted by: {deleted_by}", may_amend=False)
            self._where.pop(sidebar_id, None)
            self._seen.pop(sidebar_id, None)
            self._mirrors.pop(sidebar_id, None)
        return True

    def context_exists(self, sidebar_id: str) -> bool:
        _check_id(sidebar_id)
        self._check_store()
        with self._lock:
            return self._locate(sidebar_id) is not None

    def get_session_state(self, key: str, default: Any = None) -> Any:
        _check_key("session key", key)
        self._check_store()
        raw = self.repo.backend.get_meta(SESSION_PREFIX + key)
        return default if raw is None else typed.decode_value(json.loads(raw))

    def set_session_state(self, key: str, value: Any) -> bool:
        """Store a small value durably; ``active_context_id`` also moves the conversation's focus.

        The value is stored whatever it names (the client may set the focus
        before it saves the context); the focus of a conversation moves only
        to a context its head holds, so no snapshot names a focus that is
        not in its tree.
        """
        _check_key("session key", key)
        try:
            encoded = json.dumps(typed.encode_value(value))
        except RecursionError:
            raise InvalidInput(f"session value for {key!r} contains itself or nests too deeply") from None
        except ValueError as exc:  # InvalidInput from encode_value; json.dumps: an int of over 4300 digits
            raise InvalidInput(f"session value for {key!r}: {exc}") from None
        self._check_store()
        with self._lock:
            self.repo.backend.write(meta={SESSION_PREFIX + key: encoded})
            located = self._locate(value) if key == "active_context_id" and isinstance(value, str) else None
            if located is not None:
                self._commit(located[0], lambda ws: ws.set_active(value) if value in ws else None,
                             "focus_switch", value)
        return True

    def register_conversation_root(self, conversation_id: str, root_context_id: str) -> bool:
        """Map a client conversation to its root context (its snapstore conversation is renamed)."""
        _check_key("conversation id", conversation_id)
        validate_context_id(root_context_id)
        self._check_store()
        conv = _as_conversation_id(conversation_id)
        with self._lock:
            self.repo.backend.write(meta={
                ROOT_OF_CONVERSATION + conversation_id: root_context_id,
                CONVERSATION_OF_ROOT + root_context_id: conv,
            })
            located = self._locate(root_context_id)
            current = located[0] if located is not None else None
            if current is not None and current != conv:
                tree = self.repo.tree(self.repo.head(current))
                if self.repo.head(conv) is None and tree.roots == (root_context_id,):
                    self.repo.rename_conversation(current, conv)
                    for cid, where in self._where.items():
                        if where == current:
                            self._where[cid] = conv
                    self._last.pop(current, None)
                else:
                    self._move(root_context_id, current, conv)
        return True

    def get_conversation_root(self, conversation_id: str) -> str | None:
        _check_key("conversation id", conversation_id)
        self._check_store()
        return self.repo.backend.get_meta(ROOT_OF_CONVERSATION + conversation_id)

    def mark_conversation_historical(self, conversation_id: str) -> bool:
        _check_key("conversation id", conversation_id)
        self._check_store()
        self.repo.backend.write(meta={HISTORICAL + conversation_id: utc_now()})
        return True

    def get_statistics(self) -> dict[str, Any]:
        """Counts by status, depth, sizes.

        A context's depth is the number of ``parent_context_id`` links up
        from it to a context without a stored parent, followed across
        conversations (a child saved before its parent lives in a
        conversation of its own until its next save).
        """
        by_status: dict[str, int] = {}
        parents: dict[str, str | None] = {}
        exchanges = 0
        self._check_store()
        with self._lock:
            heads = self._refresh()
            convs = sorted(heads)
            for conv in convs:
                for record in self.repo.tree(heads[conv]).records.values():
                    if record.id in parents:
                        continue  # in two conversations (see _refresh): counted once
                    parent = record.fields.get(PARENT_FIELD)
                    parents[record.id] = parent if isinstance(parent, str) else None
                    status = str(_status(record))
                    by_status[status] = by_status.get(status, 0) + 1
                    exchanges += record.exchange_count()
        objects, stored, logical = self.repo.backend.count_objects()
        return {
            "total_contexts": sum(by_status.values()),
            "by_status": by_status,
            "max_depth": _max_depth(parents),
            "total_exchanges": exchanges,
            "conversations": len(convs),
            "objects": objects,
            "stored_bytes": stored,
            "logical_bytes": logical,
            "store": self.location,
        }

    # -- the caller's class ----------------------------------------------------------

    def _adopt_class(self, cls: type) -> None:
        """Load as ``cls`` from now on (the class of a saved dataclass), and note it in the store once."""
        self.context_class = cls
        self._note_class(cls)

    def _note_class(self, cls: type) -> None:
        """Note ``cls`` in the store as the class loads return (not a class defined inside a function:
        no other process could import it)."""
        path = f"{cls.__module__}:{cls.__qualname__}"
        if path != self._class_noted and "<locals>" not in path:
            self.repo.backend.write(meta={CONTEXT_CLASS: path})
            self._class_noted = path

    def _class(self) -> type | None:
        """The class loads return: the configured one, else the class saves used (noted in the store,
        found among the modules the process has imported or can import); None (dicts) if neither."""
        if self.context_class is None and self._class_noted:
            self.context_class = typed.named_class(self._class_noted)
        return self.context_class

    # -- life of the instance ------------------------------------------------------

    def _check_store(self) -> None:
        """Refuse to go on when the store's file was deleted or replaced since this instance opened it.

        SQLite keeps writing to the file it opened, so a save after ``rm`` (or
        after another store was made in its place) would return True and be
        lost, and loads would give what no other instance sees.
        """
        changed = getattr(self.repo.backend, "file_changed", None)  # the embedded store's file (SQLite)
        what = changed() if changed is not None else None
        if what is not None:
            raise StoreNotFound(f"{self.repo.backend.path} was {what} after this instance opened it; "
                                "open the store again")

    def mark_clean_shutdown(self) -> None:
        """Record a clean shutdown: the next start is CLEAN instead of AUDIT_RECOMMENDED."""
        from ..packing import shutdown_pack
        from ..timeutil import utc_now

        shutdown_pack(self.repo)
        self.repo.backend.write(meta={CLEAN_SHUTDOWN_KEY: utc_now(), **self._presence.clean_meta(),
                                      **self._hint_meta()})

    def _hint_meta(self) -> dict[str, str]:
        """Fresh chain hints of the loaded trees, to write with a marker (the next start reads faster)."""
        try:
            meta = self.repo.chain_hint_meta()
        except SnapstoreError:
            return {}  # only a cache
        self.repo.hints_written(meta)
        return meta

    def close(self, clean: bool = True) -> None:
        """Release the store; with ``clean`` (the default), mark a clean shutdown first."""
        try:
            if clean:
                self.mark_clean_shutdown()
        except SnapstoreError:
            pass
        finally:
            self._presence.release()
        self.repo.close()

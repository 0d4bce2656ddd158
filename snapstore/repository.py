"""The repository facade: what the CLI and the orchestrator hooks call.

A :class:`Repository` wraps one backend. It compresses and verifies objects,
commits conversation states as snapshots (objects and the ref swap in one
durable transaction), loads them back, walks history, resolves revisions and
diffs states. Every object read is re-hashed; a mismatch raises
:class:`~snapstore.errors.CorruptObject` naming the object.
"""

from __future__ import annotations

import base64
import json
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping, Set
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from blake3 import blake3

from .backends.base import Backend, LostReflogRows, RefUpdate, ReflogEntry, StoredObject, reflog_row_damage
from .compression import Codec, train_dictionary
from .diff import TreeDiff, diff_states
from .errors import (
    BackendError,
    CorruptObject,
    DamagedRecord,
    FormatError,
    InvalidInput,
    ObjectNotFound,
    RefConflict,
    SnapstoreError,
    StoreNotFound,
    UnknownRevision,
)
from . import packing
from .findings import Finding
from .location import default_location, open_backend, redact
from .objects import (
    AnyObject,
    ContextId,
    Event,
    LogLink,
    Node,
    ObjectId,
    Snapshot,
    State,
    decode,
    encode,
    hash_object,
    ID_HEX_LENGTH,
    KINDS,
    is_object_id,
    references,
    to_json,
)
from .refs import (
    ACTIVE_KEY,
    REF_PREFIX,
    ConversationId,
    conversation_of,
    ref_name,
    validate_conversation_id,
    validate_new_conversation_id,
)
from .revisions import AMBIGUOUS_SHOWN, MIN_PREFIX, ambiguous_short_id, parse_revision
from .rewrites import PREFIX as PRUNE_PREFIX, Rewrites
from .state import ConversationState
from .timeutil import parse_time, utc_now
from .tree import (
    NewObjects, Outline, Tree, Workspace, chain_hints, context_nodes, load_tree, outline_tree, tree_from_contexts,
)

# 2: writers move a ref together with every object their commit made, so gc
# may run beside them, and prune records can supersede reflog values (upgrade.py).
# 3: a node with many children names them through objects of kind "page" (objects.py).
# 4: the embedded store may keep cold objects, log lines and reflog rows in packs (packs.py).
STORE_FORMAT = 4
# Reflog rows read beyond ``limit`` by a limited log (a ref moved back and forth has more rows than snapshots).
_REFLOG_SLACK = 16
# The reasons of the two reflog rows a rename writes (the new name's, the old name's).
_RENAMED_FROM = "rename from "
_RENAMED_TO = "rename to "
# Objects a short id is looked up among, at most (an ambiguous one is listed, see revisions.ambiguous_short_id).
PREFIX_LOOKUP_LIMIT = 4096
# Renames Repository.reflog_lineage follows back (each costs one reflog read).
MAX_RENAMES_FOLLOWED = 1000
FORMAT_KEY = "format"
DICT_PREFIX = "zstd_dict/"
DICT_CURRENT_KEY = "zstd_dict_current"
# Compare-and-swap guard so exactly one dictionary is ever installed.
DICT_REF = "dictionaries/zstd"
# Meta key prefix of each conversation's chain hints (tree.chain_hints): a
# cache that lets a restart read long exchange lists in a few round trips.
HINTS_PREFIX = "chain_hints/"
# Train a compression dictionary once a store holds this many objects.
DICT_TRAIN_AFTER = 2000
DICT_SAMPLE = 4000
_CACHE_SIZE = 8192


@dataclass(frozen=True)
class CommitResult:
    """The outcome of a commit: the head snapshot, and whether it is new."""

    snapshot: ObjectId
    created: bool
    root: ObjectId | None = None
    objects_written: int = 0
    bytes_written: int = 0
    # The audit-log entry appended with the commit (see AuditEntry), if any.
    log: LogLink | None = None


@dataclass(frozen=True)
class PreparedCommit:
    """A snapshot whose objects are durable but which no ref names yet."""

    conversation: ConversationId
    snapshot: ObjectId
    parent: ObjectId | None
    root: ObjectId
    changed_nodes: Mapping[str, ObjectId]


# Called between the durable write of a snapshot's objects and the ref swap;
# returns the audit-log entry the snapshot answers to, if any.
BeforeRef = Callable[[PreparedCommit], LogLink | None]


@dataclass(frozen=True)
class AuditEntry:
    """An audit-log entry to append in the commit's own transaction (see :mod:`snapstore.storelog`).

    ``log`` is a :class:`~snapstore.storelog.StoreLog` of this store;
    ``payload`` gets the prepared snapshot and returns the entry's payload.
    """

    log: Any
    event_type: str
    context_id: str
    actor: str
    payload: Callable[[PreparedCommit], Mapping[str, Any]]


@dataclass(frozen=True)
class SnapshotInfo:
    """One snapshot as ``snap log`` shows it."""

    id: ObjectId
    snapshot: Snapshot
    # The audit-log entry it answers to: from the snapshot, or from the ref change that made it head.
    log: LogLink | None = None

    def to_json(self) -> dict[str, Any]:
        snap = self.snapshot
        out: dict[str, Any] = {
            "snapshot": self.id,
            "conversation": snap.conversation,
            "root": snap.root,
            "parents": list(snap.parents),
            "time": snap.time,
            "event": {
                "type": snap.event.type,
                "context_id": snap.event.context_id,
                "message": snap.event.message,
            },
        }
        link = self.log or snap.log
        out["log"] = None if link is None else {"sequence": link.sequence, "entry_hash": link.entry_hash}
        return out


@dataclass(frozen=True)
class ConversationInfo:
    """One conversation as ``snap conversations`` lists it."""

    conversation: ConversationId
    head: ObjectId
    contexts: int
    exchanges: int
    updated: str
    active: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "conversation": self.conversation,
            "head": self.head,
            "contexts": self.contexts,
            "exchanges": self.exchanges,
            "updated": self.updated,
            "active": self.active,
        }


# fsck's findings are the same records verify reports.
Problem = Finding


@dataclass(frozen=True)
class FsckReport:
    """What :meth:`Repository.fsck` found."""

    objects: int
    # Stored objects that refs and reflogs reach; those they name but the store lacks are ``missing``.
    reachable: int
    problems: tuple[Problem, ...]
    missing: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def __bool__(self) -> bool:
        return self.ok

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "objects": self.objects,
            "reachable": self.reachable,
            "missing": self.missing,
            "problems": [p.to_json() for p in self.problems],
        }


class Staging:
    """Changes to one conversation staged on top of its head (see :meth:`Repository.stage`)."""

    def __init__(self, conversation: ConversationId, head: ObjectId | None, base: Tree) -> None:
        self.conversation = conversation
        self.head = head
        self.workspace = Workspace(base)


class Repository:
    """A snapstore store: open with :meth:`open`, create with :meth:`init`."""

    def __init__(self, backend: Backend, location: str = "") -> None:
        self.backend = backend
        self.location = location
        self._check_format()
        current = backend.get_meta(DICT_CURRENT_KEY)
        self.codec = Codec(self._dictionaries(), int(current) if current else None, reload=self._dictionaries)
        self._cache: OrderedDict[ObjectId, AnyObject] = OrderedDict()
        self._trees: dict[ConversationId, tuple[ObjectId, Tree]] = {}
        # The same trees by snapshot (:meth:`_held_tree`): looked up per conversation by the paths that touch
        # every conversation, where a scan of ``_trees`` each time would grow with the square of their number.
        self._held: dict[ObjectId, Tree] = {}
        # The chain hints each conversation's meta holds, as last read or written (JSON text).
        self._hints: dict[ConversationId, str | None] = {}
        self._lock = threading.RLock()
        self._objects_since_check = 0
        self._objects_since_pack = 0

    def _dictionaries(self) -> dict[int, bytes]:
        return {
            int(k[len(DICT_PREFIX):]): base64.b64decode(v)
            for k, v in self.backend.list_meta(DICT_PREFIX).items()
        }

    # -- opening -------------------------------------------------------------

    @classmethod
    def init(cls, location: str | None = None) -> Repository:
        """Create a new empty store at ``location`` (default: ``$SNAPSTORE`` or ``./.snapstore``)."""
        location = location or default_location()
        meta = {FORMAT_KEY: str(STORE_FORMAT), "created": utc_now()}
        # Every backend here records ``meta`` in the transaction that creates the store; a
        # plugin backend that cannot gets it just after.
        backend = open_backend(location, create=True, meta=meta)
        try:
            if backend.get_meta(FORMAT_KEY) is None:
                backend.write(meta=meta)
        except BaseException:
            backend.close()
            raise
        return cls(backend, location)

    @classmethod
    def open(cls, location: str | None = None) -> Repository:
        """Open an existing store."""
        location = location or default_location()
        backend = open_backend(location)
        try:
            return cls(backend, location)
        except BaseException:
            backend.close()
            raise

    def _check_format(self) -> None:
        raw = self.backend.get_meta(FORMAT_KEY)
        if raw is None:
            raise StoreNotFound(f"{redact(self.location) or 'store'} is not a snapstore store (no format version)")
        try:
            version = int(raw)
        except ValueError:
            raise FormatError(f"store format version {raw!r} is not a number") from None
        if version > STORE_FORMAT:
            raise FormatError(
                f"store format {version} is newer than this snapstore supports ({STORE_FORMAT}); "
                "upgrade snapstore"
            )
        if version < STORE_FORMAT:
            raise FormatError(f"store format {version} is old; run `snap upgrade`")

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Repository:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- objects ---------------------------------------------------------------

    def verified_body(self, stored: StoredObject) -> bytes:
        """The decompressed body of a stored object, checked against its id and size."""
        if stored.body is not None and len(stored.body) == stored.size:
            return stored.body  # checked by the backend against the id (a packed object)
        if stored.kind not in KINDS:  # its row is damaged: named here, not hashed as some other kind
            raise CorruptObject(stored.id, f"its stored kind is {stored.kind!r:.40}, not one of {', '.join(KINDS)}")
        body = self.codec.decompress(stored.data, stored.id, stored.size)
        actual = hash_object(stored.kind, body)
        if actual != stored.id:
            raise CorruptObject(stored.id, f"content hashes to {actual}", actual)
        if len(body) != stored.size:
            raise CorruptObject(stored.id, f"size is {len(body)}, recorded {stored.size}")
        return body

    def _verify(self, stored: StoredObject) -> tuple[bytes, AnyObject]:
        body = self.verified_body(stored)
        return body, decode(stored.kind, body, stored.id)

    def read_many(self, ids: Iterable[ObjectId], kind: str | None = None) -> dict[ObjectId, AnyObject]:
        """Verified typed objects by id; :class:`ObjectNotFound` names the first missing."""
        wanted = list(dict.fromkeys(ids))
        out: dict[ObjectId, AnyObject] = {}
        missing = []
        cache = self._cache
        with self._lock:
            for oid in wanted:
                obj = cache.get(oid)
                if obj is None:
                    missing.append(oid)
                else:
                    out[oid] = obj
        # The kind of each object read now: the one its row names (it was decoded and hashed as that).
        kinds: dict[ObjectId, str] = {}
        if missing:
            found = self.backend.get_objects(missing)
            fresh = []
            for oid in missing:
                stored = found.get(oid)
                if stored is None:
                    raise ObjectNotFound(oid, f"expected a {kind}" if kind else "")
                _, obj = self._verify(stored)
                out[oid] = obj
                kinds[oid] = stored.kind
                if stored.kind != "chunk":
                    fresh.append((oid, obj))
            self._remember(fresh)
        if kind is not None:
            for oid in wanted:
                actual_kind = kinds.get(oid) or _kind_name(out[oid])
                if actual_kind != kind:
                    raise CorruptObject(oid, f"is a {actual_kind}, expected a {kind}")
        return out

    def read(self, oid: ObjectId, kind: str | None = None) -> AnyObject:
        """One verified typed object."""
        return self.read_many([oid], kind)[oid]

    def _remember(self, objects: Iterable[tuple[ObjectId, AnyObject]]) -> None:
        """Cache verified objects (the caller leaves chunks out: exchanges are read once, by a load)."""
        objects = list(objects)
        if objects:
            with self._lock:
                cache = self._cache
                for oid, obj in objects:
                    cache[oid] = obj
                while len(cache) > _CACHE_SIZE:
                    cache.popitem(last=False)

    def read_sound(self, ids: Iterable[ObjectId], kind: str | None = None) -> dict[ObjectId, AnyObject]:
        """:meth:`read_many` of the ids that read soundly: one missing, unsound or of another kind is left
        out instead of raising. What a check of many objects reads in one batch (and caches, as
        :meth:`read` does), then reads each one left out on its own, which names its fault as before."""
        wanted = list(dict.fromkeys(ids))
        with self._lock:
            out = {oid: obj for oid in wanted
                   if (obj := self._cache.get(oid)) is not None and (kind is None or _kind_name(obj) == kind)}
        fresh = self._read_present([oid for oid in wanted if oid not in out], kind)
        self._remember((oid, obj) for oid, obj in fresh.items() if _kind_name(obj) != "chunk")
        out.update(fresh)
        return out

    def _store(self, objects: NewObjects) -> list[StoredObject]:
        """The objects compressed, ready for :meth:`Backend.write` (which skips those it has)."""
        compress = self.codec.compress
        return [StoredObject(oid, kind, len(body), compress(body)) for oid, (kind, body) in objects.items()]

    # -- refs ------------------------------------------------------------------

    def head(self, conversation: str) -> ObjectId | None:
        """The newest snapshot of a conversation, or None if it has none."""
        return self.backend.get_ref(ref_name(validate_conversation_id(conversation)))

    def conversation_ids(self) -> list[ConversationId]:
        return [c for r in self.backend.list_refs() if (c := conversation_of(r)) is not None]

    @property
    def active_conversation(self) -> ConversationId | None:
        """The conversation startup resumes."""
        value = self.backend.get_meta(ACTIVE_KEY)
        return ConversationId(value) if value else None

    def set_active(self, conversation: str) -> None:
        conv = validate_conversation_id(conversation)
        if self.head(conv) is None:
            raise UnknownRevision(f"unknown conversation {conv!r}")
        self.backend.write(meta={ACTIVE_KEY: conv})

    def rename_conversation(self, old: str, new: str) -> None:
        """Give a conversation a new name, with its history, in one atomic ref change."""
        old_conv, new_conv = validate_conversation_id(old), validate_new_conversation_id(new)
        head = self.head(old_conv)
        if head is None:
            raise UnknownRevision(f"unknown conversation {old_conv!r}")
        meta = {ACTIVE_KEY: new_conv} if self.active_conversation == old_conv else None
        self.backend.write(ref_updates=[
            RefUpdate(ref_name(new_conv), None, head, _RENAMED_FROM + old_conv),
            RefUpdate(ref_name(old_conv), head, None, _RENAMED_TO + new_conv),
        ], meta=meta)
        with self._lock:
            cached = self._trees.pop(old_conv, None)
            if cached is not None:
                self._hold(new_conv, *cached)

    def reflog(self, conversation: str) -> list[ReflogEntry]:
        return self.backend.reflog(ref_name(validate_conversation_id(conversation)))

    # -- committing ------------------------------------------------------------

    def tree(self, snapshot_id: ObjectId | None) -> Tree:
        """The whole tree of a snapshot (None gives the empty tree).

        The newest tree loaded for each conversation is kept, and a newer
        state of that conversation is loaded on top of it, reading only what
        changed.
        """
        if snapshot_id is None:
            return Tree.empty()
        held = self._held_tree(snapshot_id)
        if held is not None:
            return held
        snap = self.snapshot(snapshot_id)
        with self._lock:
            cached = self._trees.get(ConversationId(snap.conversation))
        hints = None if cached else self._read_hints(ConversationId(snap.conversation))
        tree = self.tree_of_state(snap.root, cached[1] if cached else None, hints=hints)
        # Keep the newest tree loaded, head or not: it is the base the next
        # load reads on top of (a writer that keeps losing races must not
        # re-read everything since its own last commit every time).
        with self._lock:
            self._hold(ConversationId(snap.conversation), snapshot_id, tree)
        return tree

    def outline(self, snapshot_id: ObjectId | None) -> Tree | Outline:
        """A snapshot's shape (contexts, fields, places, exchange counts) read from its nodes alone.

        What a tree view needs, without reading a single exchange; the loaded
        :class:`Tree` itself when this repository holds it already.
        """
        if snapshot_id is None:
            return Tree.empty()
        held = self._held_tree(snapshot_id)
        return held if held is not None else outline_tree(self.read_many, self.snapshot_state(snapshot_id))

    def _held_tree(self, snapshot_id: ObjectId) -> Tree | None:
        """The tree of ``snapshot_id`` if it is one this repository keeps loaded."""
        with self._lock:
            return self._held.get(snapshot_id)

    def _hold(self, conv: ConversationId, snapshot_id: ObjectId, tree: Tree) -> None:
        """Keep ``tree`` as the newest loaded of ``conv`` (the caller holds the lock)."""
        old = self._trees.get(conv)
        if old is not None and self._held.get(old[0]) is old[1]:
            del self._held[old[0]]
        self._trees[conv] = (snapshot_id, tree)
        self._held[snapshot_id] = tree

    def tree_of_state(self, state_id: ObjectId, base: Tree | None = None, *,
                      hints: Mapping[str, Any] | None = None) -> Tree:
        if base is not None and base.state_id == state_id:
            return base
        state = self.read(state_id, "state")
        assert isinstance(state, State)
        return load_tree(self.read_many, state_id, state, base, hints=hints, read_some=self._read_present)

    def snapshot_state(self, snapshot_id: ObjectId) -> State:
        """The state object a snapshot names (its roots, focus and extra keys), without loading the tree."""
        state = self.read(self.snapshot(snapshot_id).root, "state")
        assert isinstance(state, State)
        return state

    def _read_present(self, ids: Iterable[ObjectId], kind: str | None = None) -> dict[ObjectId, AnyObject]:
        """Like :meth:`read_many` for guesses: ids missing, unsound or of another kind are left out."""
        wanted = [oid for oid in dict.fromkeys(ids) if is_object_id(oid)]
        found = self.backend.get_objects(wanted) if wanted else {}
        out: dict[ObjectId, AnyObject] = {}
        for oid, stored in found.items():
            if kind is not None and stored.kind != kind:
                continue
            try:
                _, obj = self._verify(stored)
            except SnapstoreError:
                continue
            out[oid] = obj
        return out

    # -- chain hints -------------------------------------------------------------

    def _read_hints(self, conv: ConversationId) -> dict[str, Any] | None:
        try:
            text = self.backend.get_meta(HINTS_PREFIX + conv)
        except SnapstoreError:
            return None
        with self._lock:
            self._hints[conv] = text
        try:
            value = json.loads(text) if text else None
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    def chain_hint_meta(self, conversations: Iterable[str] | None = None) -> dict[str, str]:
        """Meta values with fresh chain hints for the loaded trees whose stored hints are stale.

        A caller that writes meta anyway (a clean shutdown marker) adds these
        to the same write; :meth:`save_chain_hints` writes them alone.
        """
        wanted = None if conversations is None else set(conversations)
        out: dict[str, str] = {}
        with self._lock:
            trees = [(conv, tree) for conv, (_, tree) in self._trees.items() if wanted is None or conv in wanted]
        for conv, tree in trees:
            hints = chain_hints(tree)
            if conv not in self._hints:
                self._read_hints(conv)
            stored = self._hints.get(conv)
            if not hints["lists"] and stored is None:
                continue
            text = json.dumps(hints, sort_keys=True, separators=(",", ":"))
            if text != stored:
                out[HINTS_PREFIX + conv] = text
        return out

    def hints_written(self, meta: Mapping[str, str | None]) -> None:
        """Note chain hints a caller wrote with :meth:`chain_hint_meta` (so they count as fresh)."""
        with self._lock:
            for key, text in meta.items():
                if key.startswith(HINTS_PREFIX):
                    self._hints[ConversationId(key[len(HINTS_PREFIX):])] = text

    def save_chain_hints(self, conversations: Iterable[str] | None = None) -> bool:
        """Store fresh chain hints for the loaded trees whose stored ones are stale; whether it wrote.

        The next process to load them reads each long exchange list in a few
        round trips instead of one per exchange (:func:`snapstore.tree.chain_hints`).
        """
        meta = self.chain_hint_meta(conversations)
        if not meta:
            return False
        self.backend.write(meta=meta)
        self.hints_written(meta)
        return True

    def snapshot(self, snapshot_id: ObjectId) -> Snapshot:
        snap = self.read(snapshot_id, "snapshot")
        assert isinstance(snap, Snapshot)
        return snap

    def stage(self, conversation: str) -> Staging:
        """Start staging changes to a conversation on top of its current head."""
        conv = validate_conversation_id(conversation)
        head = self.head(conv)
        if head is None:  # a new conversation
            validate_new_conversation_id(conv)
        return Staging(conv, head, self.tree(head))

    def commit(
        self,
        conversation: str,
        state: ConversationState | Mapping[str, Any],
        *,
        event: Event | None = None,
        log: LogLink | None = None,
        activate: bool = False,
    ) -> CommitResult:
        """Commit a whole conversation state as a new snapshot on top of the head.

        Unchanged contexts and exchanges are not written again; a state equal
        to the head creates nothing (``created`` is False). A focus
        (``active_context_id``) naming no context of the state is
        :class:`InvalidInput`, and nothing is written.
        """
        _check_event_and_log(event, log)
        if not isinstance(state, ConversationState):
            state = ConversationState.from_json(state)
        staging = self.stage(conversation)
        workspace = staging.workspace
        tree, objects = tree_from_contexts(
            state.contexts, state.active_context_id, state.extra, workspace.base
        )
        _check_focus(tree, workspace.base)
        workspace.objects.update(objects)
        return self._commit_tree(staging, tree, workspace.objects, event, log, activate)

    def commit_staged(
        self,
        staging: Staging,
        *,
        event: Event | None = None,
        log: LogLink | None = None,
        activate: bool = False,
        allow_empty: bool = False,
        before_ref: BeforeRef | None = None,
        amend: bool = False,
        audit: AuditEntry | None = None,
        meta: Mapping[str, str] | None = None,
    ) -> CommitResult:
        """Commit what was staged; :class:`RefConflict` if the head moved meanwhile.

        With ``amend``, the new snapshot replaces the head: it takes the head's
        parents instead of the head (the replaced one stays in the reflog).

        With ``before_ref``, the objects are made durable first, then
        ``before_ref`` runs (an orchestrator appends its audit-log entry
        there), then the ref moves in a second transaction, recording the
        entry it returns. A crash in between leaves objects no ref names:
        recovery can roll the ref forward to them.

        With ``audit``, the entry is appended to the store's own audit log in
        the same transaction as the objects and the ref move, which records it:
        one durable write, and all of it or nothing.

        A staged focus naming no context of the new tree is :class:`InvalidInput`
        (see :func:`_check_focus`), before anything is written.

        ``meta`` keys are written in the transaction that moves the ref.
        """
        _check_event_and_log(event, log)
        tree = staging.workspace.build()
        _check_focus(tree, staging.workspace.base)
        return self._commit_tree(
            staging, tree, staging.workspace.objects, event, log, activate, allow_empty, before_ref, amend, audit,
            meta,
        )

    def _commit_tree(
        self,
        staging: Staging,
        tree: Tree,
        objects: NewObjects,
        event: Event | None,
        log: LogLink | None,
        activate: bool,
        allow_empty: bool = False,
        before_ref: BeforeRef | None = None,
        amend: bool = False,
        audit: AuditEntry | None = None,
        meta: Mapping[str, str] | None = None,
    ) -> CommitResult:
        conv, head = staging.conversation, staging.head
        if head is not None and tree.state_id == staging.workspace.base.state_id and not allow_empty:
            if activate and self.active_conversation != conv:
                self.backend.write(meta={ACTIVE_KEY: conv})
            return CommitResult(head, created=False, root=tree.state_id)
        assert tree.state_id is not None
        event = event or Event("commit")
        if amend and head is not None:
            parents = self.snapshot(head).parents
        else:
            parents = (head,) if head is not None else ()
        snap = Snapshot(
            conversation=conv,
            root=tree.state_id,
            parents=parents,
            time=utc_now(),
            event=event,
            log=log,
        )
        kind, body, snap_id = encode(snap)
        # The ref moves together with every object this commit made, even ones
        # already stored: until the ref names them, gc may be deleting them (gc.py).
        # Each is compressed once; the backend skips, inside its transaction, the
        # ones it has and reports the others (no query beforehand).
        carried = self._store(objects)
        carried.append(StoredObject(snap_id, kind, len(body), self.codec.compress(body)))
        new_ids: list[ObjectId] | None = None
        reason = f"{event.type}: {event.message}" if event.message else event.type
        # The snapshot keeps the message exactly (its body is ASCII JSON); a reflog row holds
        # text every backend can store: a lone surrogate or a NUL (PostgreSQL text holds none) becomes a
        # backslash escape there.
        reason = reason.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")
        if before_ref is not None:
            if head != self.head(conv):
                raise RefConflict(ref_name(conv), head, self.head(conv))
            new_ids = self.backend.write_reporting_new(carried)[1]
            log = before_ref(
                PreparedCommit(conv, snap_id, head, tree.state_id, dict(staging.workspace.changed_nodes))
            ) or log
            _check_event_and_log(event, log)
        append = None
        if audit is not None:
            payload = audit.payload(
                PreparedCommit(conv, snap_id, head, tree.state_id, dict(staging.workspace.changed_nodes))
            )
            append = audit.log.prepare(audit.event_type, audit.context_id, audit.actor, payload)
        update = RefUpdate(
            ref_name(conv), head, snap_id, reason,
            log.sequence if log else None, log.entry_hash if log else None, link_appended=append is not None,
        )
        try:
            keys = {**(meta or {}), ACTIVE_KEY: conv} if activate else meta
            if new_ids is None:
                appended, new_ids = self.backend.write_reporting_new(carried, [update], keys, append=append)
            else:
                appended = self.backend.write(carried, [update], keys, append=append)
            if audit is not None and appended is not None:
                audit.log.committed(appended)
                log = LogLink(appended.sequence, appended.entry_hash)
        except RefConflict:
            # A starting replica may have rolled this very snapshot forward
            # (its log entry was already written): then it is committed.
            if before_ref is None or not self._reaches(self.head(conv), snap_id):
                raise
        with self._lock:
            self._hold(conv, snap_id, tree)
            self._cache[snap_id] = snap
        new = set(new_ids or ())
        if new_ids is not None and len(new) < len(carried):
            self._heal([o for o in carried if o.id not in new])
        self._after_commit(len(new))
        return CommitResult(
            snap_id, True, tree.state_id, len(new), sum(len(o.data) for o in carried if o.id in new), log
        )

    def _heal(self, reused: list[StoredObject]) -> None:
        """Replace stored copies of ``reused`` that fail their checks with the commit's own.

        The backend skips an object it already has, so a commit that made an
        object again (a context back to an earlier state, a repeated exchange)
        would otherwise name a stored copy nobody has read since it was
        damaged. Those few objects are read back and verified; a copy that is
        corrupt, of the wrong kind or gone is replaced by the commit's bytes,
        which hash to the id, in one step (:meth:`Backend.replace_objects`).
        Content addressing makes the swap safe for every reader: before it they
        get the named error they already got, after it the object. A removal
        then a write would leave the head naming an object the store no
        longer has if the process died between them (and a staged commit of
        that conversation could not even read its head), and of two replicas
        mending one object at once, one would remove the other's good copy.

        A copy the store could not be asked about (S3 or the database did not
        answer) is left alone: the commit is already durable, and a copy that
        merely went unread is not damaged.
        """
        ids = [o.id for o in reused]
        unread: set[ObjectId] = set()
        try:
            found = self.backend.get_objects(ids)
        except SnapstoreError as exc:  # a damaged pack, say: check each object on its own
            if _unreachable(exc):
                return  # the store did not answer: nothing is known to be damaged
            found = {}
            for oid in ids:
                try:
                    found.update(self.backend.get_objects([oid]))
                except SnapstoreError as each:
                    if _unreachable(each):
                        unread.add(oid)
        bad: list[StoredObject] = []
        for good in reused:
            if good.id in unread:
                continue
            stored = found.get(good.id)
            try:
                if stored is None or stored.kind != good.kind:
                    raise CorruptObject(good.id, "missing or of the wrong kind")
                self.verified_body(stored)
            except SnapstoreError:
                bad.append(good)
        if bad:
            self.backend.replace_objects(bad)
            with self._lock:
                for o in bad:
                    self._cache.pop(o.id, None)

    def hot_objects(self) -> set[ObjectId]:
        """The structure of the trees this repository holds in memory: their states, nodes and pages.

        What every load and diff of a current head reads; packing leaves them
        loose (:func:`snapstore.packing.pack`). Only trees already cached are
        looked at (the conversations this process committed or loaded), so
        this reads nothing.
        """
        with self._lock:
            trees = [tree for _, tree in self._trees.values()]
        hot: set[ObjectId] = set()
        for tree in trees:
            if tree.state_id is not None:
                hot.add(tree.state_id)
            for record in tree.records.values():
                hot.add(record.node_id)
                for level in record.pages or ():
                    hot.update(page_id for page_id, _ in level)
        return hot

    def _reaches(self, start: ObjectId | None, target: ObjectId, limit: int = 1000) -> bool:
        """Whether ``target`` is ``start`` or one of its first-parent ancestors (within ``limit``)."""
        current = start
        for _ in range(limit):
            if current is None:
                return False
            if current == target:
                return True
            parents = self.snapshot(current).parents
            current = parents[0] if parents else None
        return False

    # -- compression dictionary -------------------------------------------------

    def _after_commit(self, written: int) -> None:
        """Upkeep after a durable commit (packing, the dictionary); a store that does not answer meanwhile
        leaves it for a later commit rather than failing the commit, which is done."""
        self._objects_since_pack += written
        if self._objects_since_pack >= packing.AUTO_PACK_CHECK:
            self._objects_since_pack = 0
            packing.auto_pack(self)
        if self.codec.current is not None:
            return
        self._objects_since_check += written
        if self._objects_since_check >= DICT_TRAIN_AFTER // 4:
            self._objects_since_check = 0
            try:
                self._check_dictionary()
            except SnapstoreError as exc:
                if not _unreachable(exc):
                    raise

    def _check_dictionary(self) -> None:
        """Adopt the dictionary another process installed, or train one once the store has enough objects."""
        current = self.backend.get_meta(DICT_CURRENT_KEY)
        if current is not None:  # installed by another process
            self.codec.add_dictionary(int(current), self._dictionaries()[int(current)])
        elif self.backend.count_objects()[0] >= DICT_TRAIN_AFTER:
            self.train_dictionary()

    def train_dictionary(self) -> int | None:
        """Train the store's zstd dictionary on its objects and use it from now on.

        A store has one dictionary. Processes that train at the same moment
        race on the ref ``dictionaries/zstd`` (compare-and-swap from absent):
        the winner's dictionary is installed, the others adopt it. Two
        trainings can yield dictionaries with the same zstd id but different
        tables, so a dictionary, once installed, is never replaced.
        """
        if self.codec.current is not None:
            return None
        samples = []
        for stored in self.backend.iter_objects():
            samples.append(self.codec.decompress(stored.data, stored.id, stored.size))
            if len(samples) >= DICT_SAMPLE:
                break
        trained = train_dictionary(samples)
        if trained is None:
            return None
        dict_id, data = trained
        try:
            self.backend.write(
                ref_updates=[RefUpdate(DICT_REF, None, ObjectId(blake3(data).hexdigest()), "train zstd dictionary")],
                meta={DICT_PREFIX + str(dict_id): base64.b64encode(data).decode("ascii"),
                      DICT_CURRENT_KEY: str(dict_id)},
            )
        except RefConflict:
            # Another process installed one first: use theirs.
            current = self.backend.get_meta(DICT_CURRENT_KEY)
            if current is not None:
                installed = self._dictionaries()[int(current)]
                self.codec.add_dictionary(int(current), installed)
            return None
        self.codec.add_dictionary(dict_id, data)
        return dict_id

    # -- reading -----------------------------------------------------------------

    def resolve(self, revision: str) -> ObjectId:
        """The snapshot id a revision names; :class:`UnknownRevision` / :class:`AmbiguousRevision`.

        A full 64-hex-digit id names the object of that id whenever there is
        one (an object that is not a snapshot is :class:`UnknownRevision`),
        even if a conversation has that name; otherwise a name is a
        conversation first, then a snapshot id prefix.
        """
        return self._resolve(revision)[0]

    def _resolve(self, revision: str) -> tuple[ObjectId, ConversationId | None]:
        """``(snapshot id, the conversation whose ref or reflog the revision read, or None)``."""
        rev = parse_revision(revision)
        snapshot_id: ObjectId | None = None
        conv: ConversationId | None = None
        if rev.at is not None:
            conv = _as_conversation(rev.base)
            snapshot_id = self._ref_at(rev.base, rev.at)
        else:
            if is_object_id(rev.base):
                snapshot_id = self._snapshot_by_id(ObjectId(rev.base))
            if snapshot_id is None:
                conv = _as_conversation(rev.base)
                if conv is not None:
                    snapshot_id = self.backend.get_ref(ref_name(conv))
                if snapshot_id is None:
                    conv = None
                    if rev.may_be_id and not is_object_id(rev.base):
                        snapshot_id = self._snapshot_by_prefix(rev.base)
            if snapshot_id is None:
                raise UnknownRevision(f"unknown revision {rev.base!r}: no such conversation or snapshot")
        for step in range(rev.ancestors):
            snap = self.snapshot(snapshot_id)
            if not snap.parents:
                raise UnknownRevision(
                    f"revision {revision!r} goes back {rev.ancestors} snapshots; "
                    f"{rev.base} has only {step + 1}"
                )
            snapshot_id = snap.parents[0]
        return snapshot_id, conv

    def _snapshot_by_id(self, oid: ObjectId) -> ObjectId | None:
        """``oid`` if it is a stored snapshot, None if no object has that id; UnknownRevision for another kind."""
        stored = self.backend.get_objects([oid]).get(oid)
        if stored is None:
            return None
        if stored.kind != "snapshot":
            raise UnknownRevision(f"{oid} is a {stored.kind}, not a snapshot")
        return oid

    def _snapshot_by_prefix(self, prefix: str) -> ObjectId | None:
        if len(prefix) >= ID_HEX_LENGTH:  # a full id is looked up as one; a longer "prefix" names nothing
            return self._snapshot_by_id(ObjectId(prefix)) if is_object_id(prefix) else None
        candidates = self.backend.find_ids(prefix, limit=PREFIX_LOOKUP_LIMIT)
        found = self.backend.get_objects(candidates)
        matches = [oid for oid in candidates if oid.startswith(prefix) and found[oid].kind == "snapshot"]
        if len(matches) > 1:
            raise ambiguous_short_id(prefix, matches, {m: "snapshot" for m in matches},
                                     complete=len(candidates) < PREFIX_LOOKUP_LIMIT)
        return matches[0] if matches else None

    def reflog_lineage(self, conversation: str,
                       rows_of: Callable[[str], list[ReflogEntry]] | None = None) -> list[ReflogEntry]:
        """A conversation's reflog followed back through its renames, oldest first.

        A conversation renamed from OLD starts its own reflog with a row
        ``rename from OLD``; the rows OLD has before its matching ``rename to``
        row come first, and so on back through every earlier name (the rows of
        an earlier conversation that once had the current name are left out).
        ``CONV@{TIME}``, log links and fsck read this. At most
        :data:`MAX_RENAMES_FOLLOWED` renames are followed. ``rows_of`` reads one ref's reflog
        (default: the backend's; fsck passes the rows it read once).
        """
        rows_of = rows_of or self.backend.reflog
        conv = validate_conversation_id(conversation)
        rows = rows_of(ref_name(conv))
        segments: list[list[ReflogEntry]] = []
        name, end = conv, len(rows)
        for _ in range(MAX_RENAMES_FOLLOWED):
            start = next((i for i in range(end - 1, -1, -1) if rows[i].old is None), None)
            created = rows[start] if start is not None else None
            source = (_as_conversation(created.reason[len(_RENAMED_FROM):])
                      if created is not None and isinstance(created.reason, str)  # damaged: fsck names it
                      and created.reason.startswith(_RENAMED_FROM) else None)
            if source is None or created is None or start is None:
                break
            earlier = rows_of(ref_name(source))
            match = next((j for j in range(len(earlier) - 1, -1, -1)
                          if earlier[j].new is None and earlier[j].old == created.new
                          and earlier[j].reason == _RENAMED_TO + name and earlier[j].time == created.time), None)
            if match is None:
                break
            segments.append(rows[start:end])
            name, rows, end = source, earlier, match
        segments.append(rows[:end])
        return [row for segment in reversed(segments) for row in segment]

    def _ref_at(self, base: str, moment: datetime) -> ObjectId:
        conv = _as_conversation(base)
        if conv is None or self.backend.get_ref(ref_name(conv)) is None:
            raise UnknownRevision(f"unknown conversation {base!r}")
        value: ObjectId | None = None
        for position, entry in enumerate(self.reflog_lineage(conv), 1):
            try:
                when = parse_time(entry.time)
            except (TypeError, ValueError, AttributeError):
                # A row skipped here would answer with the value before it: damage, named instead.
                raise DamagedRecord(
                    f"reflog row {position} of {conv!r} (in the reflog of {entry.name!r}, {entry.reason!r:.60}) "
                    f"holds time {entry.time!r:.40}, not a time: the store is damaged") from None
            if when > moment:
                break
            value = entry.new
        if value is None:
            raise UnknownRevision(f"conversation {conv!r} did not exist at {moment.isoformat()}")
        return value

    def load(self, revision: str) -> ConversationState:
        """The materialized state of a revision (a fresh copy)."""
        snapshot_id, named = self._resolve(revision)
        snap = self.snapshot(snapshot_id)
        tree = self.tree(snapshot_id)
        # A conversation keeps its name when renamed: prefer the name the revision used.
        conversation = named if named is not None else snap.conversation
        return ConversationState(conversation, tree.active_context_id, tree.materialize(), dict(tree.extra))

    def log(self, revision: str, limit: int | None = None) -> list[SnapshotInfo]:
        """Snapshots from a revision back along first parents, newest first."""
        start, named = self._resolve(revision)
        if named is None:
            return self._walk(start, limit, ())
        name = ref_name(named)
        if limit is None:
            return self._walk(start, limit, self.reflog_lineage(named))
        # The newest snapshots are the reflog's newest rows: read its end first.
        changes = self.backend.reflog_newest(name, limit + _REFLOG_SLACK)
        out = self._walk(start, limit, changes)
        if len(changes) == limit + _REFLOG_SLACK or any(c.reason.startswith(_RENAMED_FROM) for c in changes):
            seen = {change.new for change in changes}
            if any(info.log is None and info.id not in seen for info in out):
                # A snapshot older than the rows read (or never a head here): the whole reflog.
                out = self._walk(start, limit, self.reflog_lineage(named))
        return out

    def _walk(self, current: ObjectId | None, limit: int | None,
              changes: Iterable[ReflogEntry]) -> list[SnapshotInfo]:
        """Snapshots back along first parents from ``current``, with log links from reflog ``changes``."""
        links = {change.new: link for change in changes
                 if change.new is not None and (link := _reflog_link(change)) is not None}
        out: list[SnapshotInfo] = []
        while current is not None and (limit is None or len(out) < limit):
            snap = self.snapshot(current)
            out.append(SnapshotInfo(current, snap, snap.log or links.get(current)))
            current = snap.parents[0] if snap.parents else None
        return out

    def diff(self, old: str, new: str) -> TreeDiff:
        """The difference between the states of two revisions."""
        old_root = self.snapshot(self.resolve(old)).root
        new_root = self.snapshot(self.resolve(new)).root
        return diff_states(self.read_many, old_root, new_root)

    def conversations(self) -> list[ConversationInfo]:
        """Every conversation with its size and last activity, newest first.

        Read for all conversations together: the heads' snapshots in one
        batch, their states in another, then the nodes one level of depth at
        a time (:func:`~snapstore.tree.context_nodes`). Every start lists them
        (:func:`snapstore.startup.inspect`), and a store of thousands of
        conversations would otherwise cost a few round trips per conversation.
        """
        active = self.active_conversation
        heads = {conv: head for ref, head in self.backend.list_refs().items()
                 if (conv := conversation_of(ref)) is not None}
        snaps = self.read_many(heads.values(), "snapshot")
        with self._lock:
            held = {head: tree for head in heads.values() if (tree := self._held.get(head)) is not None}
        counted = {  # counted from the nodes: no exchange is read
            head: (len(nodes), sum(ref.count for _, node in nodes
                                   if (ref := node.memory.get("local_memory")) is not None))
            for head, nodes in self._context_nodes({h: snaps[h] for h in heads.values() if h not in held}).items()
        }
        out = []
        for conv, head in heads.items():
            snap = snaps[head]
            assert isinstance(snap, Snapshot)
            tree = held.get(head)
            contexts, exchanges = (len(tree.records), tree.exchange_count()) if tree is not None else counted[head]
            out.append(ConversationInfo(conv, head, contexts, exchanges, snap.time, conv == active))
        out.sort(key=lambda c: c.updated, reverse=True)
        return out

    def context_ids(self, snapshots: Iterable[ObjectId]) -> dict[ObjectId, list[ContextId]]:
        """The ids of the contexts each snapshot's tree holds, reading no exchange.

        From the trees this repository holds; the others from their nodes,
        all snapshots together (as :meth:`conversations` reads them): a few
        round trips per level of depth however many snapshots are asked for.
        """
        wanted = list(dict.fromkeys(snapshots))
        with self._lock:
            held = {sid: tree for sid in wanted if (tree := self._held.get(sid)) is not None}
        out: dict[ObjectId, list[ContextId]] = {sid: list(tree.records) for sid, tree in held.items()}
        snaps = self.read_many([sid for sid in wanted if sid not in held], "snapshot")
        for sid, nodes in self._context_nodes(snaps).items():
            out[sid] = [cid for cid, _ in nodes]
        return out

    def _context_nodes(self, snaps: Mapping[ObjectId, AnyObject]) -> dict[ObjectId, list[tuple[ContextId, Node]]]:
        """Each snapshot's contexts with their nodes, all snapshots together: their states in one batch,
        then the nodes a level of depth at a time (:func:`~snapstore.tree.context_nodes`); no exchange read."""
        roots = {}
        for sid, snap in snaps.items():
            assert isinstance(snap, Snapshot)
            roots[sid] = snap.root
        found = self.read_many(list(dict.fromkeys(roots.values())), "state")
        states: dict[ObjectId, State] = {}
        for sid, root in roots.items():
            state = found[root]
            assert isinstance(state, State)
            states[sid] = state
        return context_nodes(self.read_many, states)

    def checkout(self, conversation: str, at: str | None = None) -> CommitResult:
        """Make a conversation active; with ``at``, restore that revision's state on top."""
        conv = validate_conversation_id(conversation)
        head = self.head(conv)
        if head is None:
            raise UnknownRevision(f"unknown conversation {conv!r}")
        if at is None:
            if self.active_conversation != conv:
                self.backend.write(meta={ACTIVE_KEY: conv})
            return CommitResult(head, created=False)
        target = self.resolve(at)
        root = self.snapshot(target).root
        staging = self.stage(conv)
        tree = self.tree_of_state(root)
        event = Event("checkout", None, f"restore {at} ({target[:12]})")
        return self._commit_tree(staging, tree, {}, event, None, activate=True)

    def show(self, name: str) -> tuple[str, ObjectId, dict[str, Any]]:
        """``(kind, id, decoded JSON)`` of an object id, unique prefix or revision."""
        oid: ObjectId | None = None
        text = name.strip().lower()
        if MIN_PREFIX <= len(text) <= ID_HEX_LENGTH and all(c in "0123456789abcdef" for c in text):
            matches = self.backend.find_ids(text, limit=PREFIX_LOOKUP_LIMIT)
            if len(matches) > 1:
                shown = sorted(matches)[:AMBIGUOUS_SHOWN]
                kinds = {oid: stored.kind for oid, stored in self.backend.get_objects(shown).items()}
                raise ambiguous_short_id(text, matches, kinds, complete=len(matches) < PREFIX_LOOKUP_LIMIT)
            if matches:
                oid = matches[0]
        if oid is None:
            oid = self.resolve(name)
        obj = self.read(oid)
        return _kind_name(obj), oid, to_json(obj)

    # -- checking ------------------------------------------------------------------

    def fsck(self, progress: Callable[[int], None] | None = None) -> FsckReport:
        """Re-hash every object and check that everything refs and reflogs reach exists."""
        problems: list[Problem] = []
        named: dict[ObjectId, tuple[str | None, list[tuple[ObjectId, str]]]] = {}
        count = 0
        damaged: list[tuple[int, str]] = []
        stored_objects = (self.backend.iter_objects(damaged=damaged)  # type: ignore[call-arg]
                          if packing.supports_packs(self) else self.backend.iter_objects())
        for stored in stored_objects:
            count += 1
            try:
                _, obj = self._verify(stored)
            except SnapstoreError as exc:
                problems.append(Problem("corrupt", str(exc), object=stored.id))
                # A kind that is none (a damaged row, named above) is not judged again by the walk.
                named[stored.id] = (stored.kind if stored.kind in KINDS else None, [])
            else:
                named[stored.id] = (stored.kind, list(references(obj)))
            if progress is not None:
                progress(1)
        for pack_id, message in damaged:
            reason = message.removeprefix("stored in a damaged pack: ")
            problems.append(Problem("corrupt-pack", f"{reason}; what pack {pack_id} held is reported missing",
                                    object=None))
        for line in self._backend_lines("malformed_object_rows"):
            count += 1  # a row no id finds: counted, and named
            problems.append(Problem("malformed-id", line, object=None))
        # A pack index row lost or altered makes reads return less: checked against the packs.
        problems.extend(Problem("index-mismatch", line, object=None)
                        for line in self._backend_lines("damaged_index_rows"))
        refs, by_name, rows_of, damaged_refs, gaps = self._fsck_reflogs(problems)
        # A ref whose row is damaged is named, and its reflog still checked and walked.
        problems.extend(Problem("damaged-row", line, object=None) for _, line in damaged_refs)
        unreadable = {name for name, _ in damaged_refs if isinstance(name, str)}
        problems.extend(_reflog_problems(refs, by_name, unreadable, gaps))
        problems.extend(Problem("damaged-row", line, object=None) for line in self._backend_lines("damaged_meta_rows"))
        try:
            active = self.backend.get_meta(ACTIVE_KEY)
        except DamagedRecord:
            active = None  # its row is named with the other damaged meta rows
        if active is not None:
            try:
                active_ref = ref_name(validate_conversation_id(active))
            except InvalidInput as exc:
                problems.append(Problem("dangling-active", f"the active conversation {active!r:.80} (meta "
                                        f"{ACTIVE_KEY!r}) is not a conversation name: {exc}", object=None))
            else:
                if active_ref not in refs and active_ref not in unreadable:
                    problems.append(Problem("dangling-active", f"the active conversation {active!r} (meta "
                                            f"{ACTIVE_KEY!r}) does not exist: no ref {active_ref!r}", object=None))
        starts: list[tuple[ObjectId, str, str]] = []
        # Named only by the reflog of a conversation's earlier name (before a rename): checked
        # where present, but gc does not keep them, so one that is gone is not a problem.
        earlier: list[tuple[ObjectId, str, str]] = []
        rewrites = self._fsck_rewrites(problems)
        for ref in sorted(refs.keys() | unreadable):
            if not ref.startswith(REF_PREFIX):
                continue
            if ref in refs:
                starts.append((refs[ref], "snapshot", ref))
            conv = conversation_of(ref)
            try:
                rows = self.reflog_lineage(conv, rows_of)  # type: ignore[arg-type]
            except InvalidInput:  # a ref whose name is no conversation id: its own reflog only
                rows = rows_of(ref)
            for entry in rows:
                own = entry.name == ref
                for oid in (entry.old, entry.new):
                    if oid is None or rewrites.superseded(conv, oid):
                        continue
                    if own:
                        starts.append((oid, "snapshot", f"reflog of {ref}"))
                    elif not rewrites.superseded(conversation_of(entry.name), oid):
                        earlier.append((oid, "snapshot", f"reflog of {entry.name}, an earlier name of {ref}"))
        reachable: set[ObjectId] = set()
        missing: set[ObjectId] = set()  # named but not stored: not counted as reachable
        for roots, strict in ((starts, True), (earlier, False)):
            stack = list(reversed(roots))
            while stack:
                oid, want, where = stack.pop()
                if oid in reachable or oid in missing:
                    continue
                if oid not in named and not self._fsck_late(oid, named, problems):
                    if strict:
                        missing.add(oid)
                        problems.append(Problem("missing", f"{want} {oid} is missing (named by {where})", object=oid))
                    continue
                reachable.add(oid)
                have, children = named[oid]
                if have is not None and have != want:
                    problems.append(
                        Problem("wrong-kind", f"{oid} is a {have}, {where} names it as a {want}", object=oid)
                    )
                    continue
                label = f"{want} {oid[:12]}"
                stack.extend((child, kind, label) for child, kind in children)
        return FsckReport(count, len(reachable), tuple(problems), len(missing))

    def _fsck_late(self, oid: ObjectId, named: dict[ObjectId, tuple[str | None, list[tuple[ObjectId, str]]]],
                   problems: list[Problem]) -> bool:
        """Whether ``oid``, absent from fsck's listing of the objects, is stored now: a writer running beside
        fsck committed it, and the ref naming it, after the listing (the refs are read after it). Read and
        checked as a listed one (into ``named``), so a live store is not reported missing what it holds."""
        try:
            stored = self.backend.get_objects([oid]).get(oid)
        except SnapstoreError:
            return False  # unreadable now too: reported missing, as it was not in the listing
        if stored is None:
            return False
        try:
            _, obj = self._verify(stored)
        except SnapstoreError as exc:
            problems.append(Problem("corrupt", str(exc), object=oid))
            named[oid] = (stored.kind if stored.kind in KINDS else None, [])
        else:
            named[oid] = (stored.kind, list(references(obj)))
        return True

    def _fsck_rewrites(self, problems: list[Problem]) -> Rewrites:
        """The prune records fsck walks the reflogs with, each one that cannot be read added to ``problems``
        and left out: what it took out of its conversation's history is checked as history again,
        so a snapshot its prune let gc delete is reported missing, and fsck goes on."""
        damaged: list[CorruptObject] = []
        rewrites = Rewrites.load(self.backend, damaged=damaged)
        for exc in damaged:
            conversation = exc.object_id.removeprefix(PRUNE_PREFIX).rpartition("/")[0]
            problems.append(Problem("corrupt", f"{exc}: the snapshots it took out of the history of "
                                    f"{conversation!r} are checked as history, so any gone since are reported "
                                    "missing", object=exc.object_id))
        return rewrites

    def _backend_lines(self, check: str) -> list[str]:
        """The lines of a backend's own check of its rows (``malformed_object_rows``, ...), none if it has none."""
        method = getattr(self.backend, check, None)
        return [] if method is None else method()

    def _fsck_reflogs(self, problems: list[Problem]) -> tuple[
            dict[str, ObjectId], dict[Any, list[tuple[str, ReflogEntry, tuple[str, ...]]]],
            Callable[[str], list[ReflogEntry]], list[tuple[object, str]], dict[str, set[int]]]:
        """Refs, every reflog's rows ``(label, entry, damage)`` by name, a reader of one reflog, the
        damaged refs rows ``(name, line)``, and where rows are lost, for fsck.

        A backend that can (``reflog_rows``) hands refs, damaged refs rows and all reflog rows of one
        moment in one read, names without a ref included; another's reflogs are read together
        (``Backend.reflogs``), the refs' own only (an earlier name's, when asked). A reflog pack
        that cannot be read is added to ``problems`` naming it and the refs whose rows it held, and
        the scan goes on; the last value says, for each such ref, before which of its rows (by
        position) rows are lost, so its chain is not judged across the gap (see :func:`_reflog_problems`).
        """
        scan = getattr(self.backend, "reflog_rows", None)
        by_name: dict[Any, list[tuple[str, ReflogEntry, tuple[str, ...]]]] = {}
        damaged_refs: list[tuple[object, str]] = []
        gaps: dict[str, set[int]] = {}
        if scan is not None:
            lost: list[LostReflogRows] = []
            refs, rows, damaged_refs = scan(lost=lost)
            for row in rows:
                by_name.setdefault(row[1].name, []).append(row)
            for pack in lost:
                problems.append(Problem("corrupt-pack", _lost_rows_line(pack), object=None))
                before = Counter(e.name for _, e, _ in rows[:pack.at])  # each reflog's rows before the gap
                for name in pack.names or [n for n in by_name if isinstance(n, str)]:
                    gaps.setdefault(name, set()).add(before[name])
        else:
            refs = dict(self.backend.list_refs())
            reflogs = self.backend.reflogs(refs)  # together: a store may hold thousands of conversations
            for ref in refs:
                entries = reflogs[ref]
                if entries and entries[-1].new != refs[ref]:  # moved since it was listed?
                    now = self.backend.get_ref(ref)
                    if now is not None and now == entries[-1].new:
                        refs[ref] = now
                by_name[ref] = [(f"row {i}", e, ()) for i, e in enumerate(entries, 1)]
        read = {name: [e for _, e, _ in rows] for name, rows in by_name.items()}

        def rows_of(name: str) -> list[ReflogEntry]:
            if name in read:
                return read[name]
            return [] if scan is not None else self.backend.reflog(name)

        return refs, by_name, rows_of, damaged_refs, gaps


def _lost_rows_line(pack: LostReflogRows) -> str:
    """fsck's line for a reflog pack it could not read: the pack (its rows' range), why, and whose rows it held."""
    whose = (f"it held reflog rows of {', '.join(repr(n) for n in pack.names)}" if pack.names
             else "which refs' rows it held is not known")
    return (f"{pack.reason}; {whose}: their chains are not judged across its rows, and what only those "
            "rows named is not walked")


def _unreachable(exc: SnapstoreError) -> bool:
    """Whether ``exc`` says the store could not be read (a lost connection, S3 not answering), not that
    what it holds is damaged (:class:`DamagedRecord`, :class:`CorruptObject`, :class:`ObjectNotFound`)."""
    return isinstance(exc, BackendError) and not isinstance(exc, DamagedRecord)


def _check_event_and_log(event: Any, log: Any) -> None:
    """:class:`InvalidInput` unless ``event`` is an Event (or None) and ``log`` a LogLink (or None).

    Their fields are checked when they are made (``Event``, ``LogLink``): a
    snapshot that could not be read back is never written.
    """
    if event is not None and not isinstance(event, Event):
        raise InvalidInput(f"event must be an Event, not {type(event).__name__}")
    if log is not None and not isinstance(log, LogLink):
        raise InvalidInput(f"log must be a LogLink, not {type(log).__name__}")


def _check_focus(tree: Tree, base: Tree) -> None:
    """:class:`InvalidInput` if a new tree's focus names none of its contexts.

    Restoring such a state would put the user nowhere: the focus is the
    context a restart resumes. A focus the head already holds that names no
    context (stores written before this check could keep a deleted context's
    id) is let through unchanged, so every other change to that conversation
    still commits; setting one, or keeping the focus on a context the commit
    removes, is refused.
    """
    focus = tree.active_context_id
    if focus is None or focus in tree.records:
        return
    if focus == base.active_context_id and focus not in base.records:
        return
    raise InvalidInput(
        f"active_context_id {focus!r} names no context in the state: give one of its contexts, or null"
    )


def _reflog_link(change: ReflogEntry) -> LogLink | None:
    """The audit-log entry a reflog row records, if it records a well-formed one."""
    if change.log_sequence is None or not change.log_hash:
        return None
    try:
        return LogLink(change.log_sequence, change.log_hash)
    except InvalidInput:
        return None


def _row_time(time: object) -> str:
    return time if isinstance(time, str) else repr(time)


def _row_damage(entry: ReflogEntry) -> str | None:
    """What a reflog row holds that it never holds (besides its ids, which the backend judges), or None:
    the column types, and a time that does not parse."""
    damage = reflog_row_damage(entry.time, entry.reason, entry.log_sequence, entry.log_hash)
    if damage is None:
        try:
            parse_time(entry.time)
        except ValueError:
            return f"its time is {entry.time!r:.40}, not a time"
    return damage


def _reflog_problems(refs: Mapping[str, ObjectId],
                     by_name: Mapping[Any, list[tuple[str, ReflogEntry, tuple[str, ...]]]],
                     unreadable: Set[str] = frozenset(),
                     gaps: Mapping[str, Set[int]] | None = None) -> list[Problem]:
    """Damaged reflog rows, and reflogs that do not chain: each row moves the ref from where the row
    before left it (the first from nothing: no writer ever removes a reflog row, not prune, gc,
    rename or import), the last leaves it where the ref points (nowhere if there is no ref).
    A ref in ``unreadable`` exists but its target could not be read (named elsewhere): its last
    row is not judged, and it must have rows like any ref. ``gaps`` gives, by name, the positions
    before which rows are lost (in a damaged pack, named elsewhere): the chain is not judged across them."""
    problems: list[Problem] = []
    gaps = gaps or {}
    unknown = object()  # after a row whose ids are damaged: the chain is not judged across it
    for name in sorted(by_name, key=str):
        rows = by_name[name]
        lost = gaps.get(name, ())
        previous: object = None
        for position, (label, entry, damage) in enumerate(rows):
            if position in lost:
                previous = unknown
            where = f"reflog row {label} of {name!r} ({_row_time(entry.time):.40})"
            for line in damage:
                problems.append(Problem("damaged-row", f"{line} ({label}, {_row_time(entry.time):.40}): "
                                        "the store is damaged", object=None))
            field = _row_damage(entry)
            if field is not None:
                problems.append(Problem("damaged-row", f"{where}: {field}: the store is damaged", object=None))
            if damage:
                previous = unknown
                continue
            if previous is not unknown and entry.old != previous:
                if position == 0:
                    message = (f"{where} moves it from {entry.old}, but no row before it does: "
                               "its earlier reflog rows are missing")
                else:
                    message = (f"{where} moves it from {entry.old or 'nothing'}, but the row before left it at "
                               f"{previous or 'nothing'}: a row between them is missing or altered")
                problems.append(Problem("broken-reflog", message, object=None))
            previous = entry.new
        if len(rows) in lost:
            previous = unknown
        target = refs.get(name)
        if rows and previous is not unknown and name not in unreadable and previous != target:
            label, entry, _ = rows[-1]
            last = f"its last reflog row {label} ({_row_time(entry.time):.40}) leaves it at {previous or 'nothing'}"
            if target is None:
                message = f"there is no ref {name!r}, but {last}: the ref or its later reflog rows are missing"
            else:
                message = f"ref {name!r} points at {target}, but {last}: reflog rows are missing or the ref was altered"
            problems.append(Problem("broken-reflog", message, object=None))
    for name in sorted(refs.keys() | unreadable):
        if name not in by_name and name not in gaps:
            pointing = f"pointing at {refs[name]}" if name in refs else "its target unreadable"
            problems.append(Problem("broken-reflog", f"ref {name!r} ({pointing}) has no reflog rows: "
                                    "its history is missing", object=None))
    return problems


def _kind_name(obj: AnyObject) -> str:
    from .objects import kind_of

    return kind_of(obj)


def _as_conversation(text: str) -> ConversationId | None:
    try:
        return validate_conversation_id(text)
    except InvalidInput:
        return None

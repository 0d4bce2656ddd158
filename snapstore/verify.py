"""``snap verify``: the audit log, the store, and the proof that the two agree.

One report of four checks:

1. chain integrity of the OZOLITH log (first bad sequence and kind of fault);
2. store integrity (every object re-hashes; everything refs reach exists);
3. the cross-check, both ways: an entry that names objects (its
   ``snapstore`` link) -> they exist, re-hash and hold what it says; a
   snapshot or ref change that names an entry -> the entry exists with that
   hash; a structural event -> the snapshot after it shows the change;
4. replay (Option C): the structure rebuilt from the log alone equals the
   stored head's.

Every finding names what it concerns: sequence, snapshot, object, context.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .findings import Finding
from .audit import link_of, settled_end_now, voided_sequences
from .backends.base import ReflogEntry
from .errors import CorruptObject, DamagedLogPack, DamagedRecord, InvalidInput, SnapstoreError
from .objects import Chunk, Node, ObjectId, Page, Snapshot, State
from .refs import conversation_of, ref_name, validate_conversation_id
from .ozolith import LogEntry, OzolithLog
from .replay import STRUCTURAL_EVENTS, replay_entries, structure
from .repository import Repository
from .rewrites import Rewrites
from .storelog import StoreLog
from .tree import full_fields

STATUS_AFTER = {"context_pause": "paused", "context_resume": "active", "context_archive": "archived"}


@dataclass(frozen=True)
class VerifyReport:
    problems: tuple[Finding, ...]
    entries: int
    objects: int
    snapshots: int
    sampled: bool = False
    # Linked log entries appended after verify read the refs (a live writer's, in flight or committed
    # since): checked against the objects they name, not against the history read before them, which
    # cannot hold them; the next run judges them.
    after_view: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def __bool__(self) -> bool:
        return self.ok

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "problems": [p.to_json() for p in self.problems],
                "entries_checked": self.entries, "objects_checked": self.objects,
                "snapshots_checked": self.snapshots, "sampled": self.sampled,
                "entries_after_view": self.after_view}


class _Checker:
    def __init__(self, repo: Repository, store_checked: bool = False) -> None:
        self.repo = repo
        self.problems: list[Finding] = []
        # Whether fsck ran (and so named every damaged row met below).
        self.store_checked = store_checked
        self._damaged: set[str] = set()
        # Log entries in packs that could not be read (each named once): not judged missing.
        self.unread: list[tuple[int, int]] = []
        # Heads and reflogs read for every conversation together (:meth:`read_refs`): a reflog by
        # conversation, or the error reading it raised; a head by conversation, well-formed ones only.
        self._reflogs: dict[str, list[ReflogEntry] | DamagedRecord] = {}
        self._heads: dict[str, ObjectId | None] = {}

    def add(self, kind: str, message: str, **where: Any) -> None:
        self.problems.append(Finding(kind, message, **where))

    # -- refs and reflogs, read past a damaged row --------------------------------

    def conversation_ids(self) -> list[str]:
        """Every conversation, one whose refs row holds a damaged target included (reading its head
        then names the damage) where the backend can tell (``ref_rows``)."""
        rows = getattr(self.repo.backend, "ref_rows", None)
        if rows is None:
            return list(self.repo.conversation_ids())
        refs, damaged = rows()
        names = sorted([*refs, *(name for name, _ in damaged if isinstance(name, str))])
        return [conv for name in names if (conv := conversation_of(name)) is not None]

    def read_refs(self, conversations: list[str]) -> None:
        """Read the heads and reflogs of ``conversations`` together, for :meth:`head` and :meth:`reflog`.

        A store may hold thousands of conversations: read one by one, each cost two round trips
        (three: its reflog was read twice). A refs row that is damaged, or a ref gone since it was
        listed, is left to :meth:`head` to read on its own, which names it as before; a reflog that
        cannot be read keeps its error, named when :meth:`reflog` is asked for it.
        """
        backend = self.repo.backend
        rows = getattr(backend, "ref_rows", None)
        refs = rows()[0] if rows is not None else backend.list_refs()
        # A name that is no conversation id is left to the reads one by one, which refuse it as before.
        names = {conv: ref_name(conv) for conv in conversations if _valid(conv)}
        self._heads = {conv: refs[name] for conv, name in names.items() if name in refs}
        damaged: dict[str, DamagedRecord] = {}
        read = backend.reflogs(list(names.values()), damaged=damaged)
        self._reflogs = {conv: read[name] if name in read else damaged[name] for conv, name in names.items()}

    def head(self, conv: str) -> ObjectId | None:
        """``conv``'s head, or None if its refs row is damaged (see :meth:`damaged`)."""
        if conv in self._heads:
            return self._heads[conv]
        try:
            return self.repo.head(conv)
        except DamagedRecord as exc:
            self.damaged(exc)
            return None

    def reflog(self, conv: str) -> list[ReflogEntry]:
        """``conv``'s reflog, or none if a row of it is damaged (see :meth:`damaged`)."""
        read = self._reflogs.get(conv)
        if isinstance(read, DamagedRecord):
            self.damaged(read)
            return []
        if read is not None:
            return read
        try:
            return self.repo.reflog(conv)
        except DamagedRecord as exc:
            self.damaged(exc)
            return []

    def damaged(self, exc: DamagedRecord) -> None:
        """A damaged row met reading a head or reflog: the checks go on without it, and it is named
        once (by fsck when it ran, else here), not one finding for the whole store."""
        if not self.store_checked and str(exc) not in self._damaged:
            self.add("damaged-row", str(exc))
        self._damaged.add(str(exc))

    def read(self, oid: str, kind: str, **where: Any) -> Any:
        try:
            return self.repo.read(ObjectId(oid), kind)
        except SnapstoreError as exc:
            self.add("missing-object" if "not found" in str(exc) else "bad-object", str(exc), object=oid, **where)
            return None

    def children(self, node: Node, **where: Any) -> list[tuple[str, ObjectId]]:
        """A node's children in order, reading its pages if it has any (a bad page is reported and skipped)."""
        if not node.pages:
            return list(node.children)
        out: list[tuple[str, ObjectId]] = []
        stack = list(reversed(node.pages))
        while stack:
            page: Page | None = self.read(stack.pop(), "page", **where)
            if page is not None:
                stack.extend(reversed(page.pages))
                out.extend(page.children)
        return out

    # -- entry -> objects ------------------------------------------------------

    def check_linked_entry(self, entry: LogEntry, link: dict[str, Any]) -> None:
        seq = entry.sequence
        snap_id = str(link.get("snapshot"))
        snap: Snapshot | None = self.read(snap_id, "snapshot", sequence=seq, snapshot=snap_id)
        if snap is None:
            return
        if snap.root != link.get("root"):
            self.add("link-mismatch", f"entry {seq} says {_said('root', link.get('root'))}, snapshot "
                     f"{snap_id[:12]} has {snap.root[:12]}", sequence=seq, snapshot=snap_id)
        parent = snap.parents[0] if snap.parents else None
        if parent != link.get("parent"):
            self.add("link-mismatch", f"entry {seq} says {_said('parent', link.get('parent'))}, snapshot "
                     f"{snap_id[:12]} has {_said('parent', parent)}", sequence=seq, snapshot=snap_id)
        if snap.conversation != link.get("conversation"):
            named = link.get("conversation")
            names = "no conversation" if named is None else f"conversation {named!r}"
            self.add("link-mismatch", f"entry {seq} names {names}, snapshot belongs to {snap.conversation!r}",
                     sequence=seq, snapshot=snap_id)
        if snap.event.type != entry.event_type or (snap.event.context_id or "") != entry.context_id:
            self.add("link-mismatch", f"entry {seq} is {entry.event_type} {entry.context_id}, snapshot "
                     f"{snap_id[:12]} records {snap.event.type} {snap.event.context_id or '(no context)'}",
                     sequence=seq, snapshot=snap_id, context=entry.context_id)
        state: State | None = self.read(snap.root, "state", sequence=seq, snapshot=snap_id)
        nodes: dict[str, Node] = {}
        for cid, nid in dict(link.get("nodes") or {}).items():
            node = self.read(str(nid), "node", sequence=seq, snapshot=snap_id, context=cid)
            if node is None:
                continue
            if node.id != cid:
                self.add("link-mismatch", f"entry {seq} names node {str(nid)[:12]} for {cid}, it holds {node.id}",
                         sequence=seq, snapshot=snap_id, object=str(nid), context=cid)
            nodes[cid] = node
        if state is not None and entry.event_type in STRUCTURAL_EVENTS:
            self.check_structure(entry, snap_id, state, nodes)

    def check_structure(self, entry: LogEntry, snap_id: str, state: State, nodes: dict[str, Node]) -> None:
        """The snapshot after a structural event shows that change."""
        seq, cid, p = entry.sequence, entry.context_id, entry.payload
        where = {"sequence": seq, "snapshot": snap_id, "context": cid}

        def node(c: str | None) -> Node | None:
            if c is None:
                return None
            found = nodes.get(c)
            if found is None:
                # The operation left this context's node as it was (a pause of
                # a paused context, say): find it in the snapshot's tree.
                found = self.find_node(state, c)
                if found is None:
                    self.add("structure", f"after entry {seq} ({entry.event_type}) context {c} is not in "
                             f"snapshot {snap_id[:12]}", **where)
                else:
                    nodes[c] = found
            return found

        def status(n: Node | None, want: str, who: str) -> None:
            if n is not None and n.fields.get("status") != want:
                have = n.fields.get("status")
                self.add("structure", f"after entry {seq} ({entry.event_type}) {who} {n.id} "
                         f"{'has no status' if have is None else f'is {have!r}'}, expected {want!r}", **where)

        def listed(parent: Node | None, child: str, expected: bool = True) -> None:
            if parent is None:
                return
            names = [c for c, _ in self.children(parent, **where)]
            if (child in names) != expected:
                self.add("structure", f"after entry {seq} ({entry.event_type}) {child} is "
                         f"{'not ' if expected else ''}under {parent.id}", **where)

        kind = entry.event_type
        if kind == "context_created":
            if cid not in [r for r, _ in state.roots]:
                self.add("structure", f"after entry {seq} root {cid} is not a root of the state", **where)
        elif kind == "sidebar_spawn":
            child, parent_id = p.get("child_id") or cid, p.get("parent_context")
            parent = node(parent_id)
            listed(parent, child)
            if parent is not None and [c for c, _ in self.children(parent, **where)][-1:] != [child] and \
                    (full_fields(parent, self.children(parent, **where)).get("child_sidebar_ids") or [])[-1:] != [child]:
                self.add("structure", f"after entry {seq} {child} is not the newest child of {parent_id}", **where)
            status(parent, "paused", "parent")
            status(node(child), "active", "child")
            if state.active_context_id != child:
                self.add("structure", f"after entry {seq} the focus is {_focus(state.active_context_id)}, "
                         f"not {child}", **where)
        elif kind == "sidebar_merge":
            status(node(cid), "merged", "sidebar")
            parent_id = p.get("parent_context")
            parent = node(parent_id)
            status(parent, "active", "parent")
            if parent is not None:
                head = parent.memory.get("local_memory")
                last = self.read(head.head, "chunk", **where) if head is not None and head.head else None
                if not (isinstance(last, Chunk) and isinstance(last.item, dict) and last.item.get("_merge_from") == cid):
                    self.add("structure", f"after entry {seq} the newest exchange of {parent_id} is not the "
                             f"merge summary from {cid}", **where)
        elif kind in STATUS_AFTER:
            status(node(cid), STATUS_AFTER[kind], "context")
        elif kind == "context_reparent":
            new_parent = p.get("new_parent")
            if new_parent is None:
                if cid not in [r for r, _ in state.roots]:
                    self.add("structure", f"after entry {seq} {cid} is not at the top level", **where)
            else:
                listed(node(new_parent), cid)
            old_parent = p.get("old_parent")
            if old_parent is not None and old_parent != new_parent and old_parent in nodes:
                listed(nodes[old_parent], cid, expected=False)
        elif kind == "focus_switch":
            if state.active_context_id != cid:
                self.add("structure", f"after entry {seq} the focus is {_focus(state.active_context_id)}, "
                         f"not {cid}", **where)
        elif kind == "context_deleted":
            if cid in [r for r, _ in state.roots] or any(
                    cid in [c for c, _ in self.children(n, **where)] for n in nodes.values()):
                self.add("structure", f"after entry {seq} deleted context {cid} is still in the tree", **where)

    def find_node(self, state: State, context_id: str) -> Node | None:
        """A context's node in a state, searched breadth-first (reads are cached)."""
        frontier = [nid for _, nid in state.roots]
        while frontier:
            next_frontier = []
            for nid in frontier:
                node = self.read(nid, "node", context=context_id)
                if node is None:
                    continue
                if node.id == context_id:
                    return node
                next_frontier.extend(child for _, child in self.children(node, context=context_id))
            frontier = next_frontier
        return None

    # -- snapshots -> entries -----------------------------------------------------

    def check_named_entry(self, sequence: int, entry_hash: str, entries: dict[int, LogEntry], **where: Any) -> None:
        entry = entries.get(sequence)
        if entry is None and any(first <= sequence <= last for first, last in self.unread):
            return  # in a damaged pack of lines, named once: neither there nor missing
        if entry is None:
            self.add("entry-missing", f"{_describe(where)} names log entry {sequence}, which the log does not hold",
                     sequence=sequence, **where)
        elif entry.entry_hash != entry_hash:
            self.add("entry-mismatch", f"{_describe(where)} names log entry {sequence} with hash {entry_hash[:12]}, "
                     f"the log has {entry.entry_hash[:12]}", sequence=sequence, **where)


def _describe(where: dict[str, Any]) -> str:
    if where.get("snapshot"):
        return f"snapshot {str(where['snapshot'])[:12]}"
    return "a ref change"


def _exists(repo: Repository, conversation: str) -> bool:
    """Whether the store has a ref for ``conversation``; one whose row is damaged counts (the
    damage is named where its head is read, or by fsck)."""
    try:
        return repo.head(conversation) is not None
    except DamagedRecord:
        return True


def _valid(conversation: str) -> bool:
    """Whether ``conversation`` is a conversation id (a ref's name may hold anything)."""
    try:
        validate_conversation_id(conversation)
    except InvalidInput:
        return False
    return True


def _rewrites(repo: Repository, checker: _Checker) -> Rewrites:
    """The prune records, one that cannot be read left out (entries of its conversation are then checked
    against the snapshots they name) and named once (by fsck when it ran, else here)."""
    damaged: list[CorruptObject] = []
    rewrites = Rewrites.load(repo.backend, damaged=damaged)
    if not checker.store_checked:
        for exc in damaged:
            checker.add("corrupt", str(exc), object=exc.object_id)
    return rewrites


def _history(repo: Repository, conversations: Iterable[str], checker: _Checker,
             rewrites: Rewrites) -> dict[str, Snapshot]:
    """Every snapshot reachable from the conversations' heads and reflogs (reflog values a prune superseded aside),
    as :meth:`_Checker.read_refs` read them."""
    seen: dict[str, Snapshot] = {}
    stack = []
    for conv in conversations:
        head = checker.head(conv)
        if head is not None:
            stack.append(head)
        stack.extend(e.new for e in checker.reflog(conv)
                     if e.new is not None and not rewrites.superseded(conv, e.new))
    # Read a generation at a time, all of it in one batch: every snapshot a ref has held is in its
    # reflog, so a few generations cover the history (one read per snapshot before). One that does not
    # read soundly is read on its own where it is named, which names it, as before.
    while stack:
        generation, stack = stack, []
        sound = checker.repo.read_sound([sid for sid in dict.fromkeys(generation) if sid not in seen], "snapshot")
        for sid in generation:
            if sid in seen:
                continue
            snap = sound.get(sid) or checker.read(sid, "snapshot", snapshot=sid)
            if snap is None:
                continue
            seen[sid] = snap
            stack.extend(snap.parents)
    return seen


def verify(repo: Repository, log: OzolithLog | None = None, conversation: str | None = None,
           *, sample: int | None = None, seed: int | None = None) -> VerifyReport:
    """Check the log, the store and their agreement; ``sample`` spot-checks N entries.

    Live writers may commit while it runs: the store and the log are compared
    as of one view, the refs read after the log's end (:func:`settled_end_now`)
    and before its entries. Every entry up to that end had its ref move, if
    it ever gets one, before the refs were read, so it is judged in full; an
    entry appended after it is one the refs read may not account for yet,
    judged only against the objects it names (the next run judges the rest).
    """
    checker = _Checker(repo, store_checked=sample is None)
    rng = random.Random(seed)
    conversations = [conversation] if conversation else checker.conversation_ids()
    if conversation and not _exists(repo, conversation):
        checker.add("unknown-conversation", f"no conversation {conversation!r} in the store")
    # The view: the log's end, then the heads and reflogs (read before the log's entries, which then hold
    # every entry they link; the snapshots they reach are read later, objects being immutable).
    end = settled_end_now(log) if log is not None else None
    checker.read_refs(list(conversations))

    # 1. chain integrity
    entries: dict[int, LogEntry] = {}
    # Entries found past the view's end, in the log's order (none if the end was not found: all are judged).
    past_end: set[int] = set()
    passed_end = False
    chain = None
    log_read = log is not None  # whether the store can be checked against the log's entries
    if log is not None:
        lost: list[DamagedLogPack] = []  # packs of lines the walk went past: named, the rest checked
        try:
            chain = (log.verify(sample=sample, seed=seed, damaged=lost) if isinstance(log, StoreLog)
                     else log.verify(sample=sample, seed=seed))
        except SnapstoreError as exc:  # a missing key, a pack no walk can pass: a finding, the other checks go on
            checker.add("unreadable", f"cannot verify the log: {exc}", sequence=getattr(exc, "sequence", None))
        else:
            for exc in lost:
                checker.add("unreadable", f"cannot verify log entries {exc.first}-{exc.last}: {exc}; the entries "
                            "before and after them are verified", sequence=exc.first)
            for f in chain.findings:
                checker.add(str(f.kind), f.message, sequence=f.sequence)
        checker.unread = [(exc.first, exc.last) for exc in lost]
        try:
            # Past a damaged pack too (named above): the entries after it are still compared with the store.
            for entry in log.readable_entries([]) if isinstance(log, StoreLog) else log.entries():
                if passed_end:
                    past_end.add(entry.sequence)
                entries[entry.sequence] = entry
                passed_end = passed_end or (entry.sequence, entry.entry_hash) == end
        except SnapstoreError as exc:
            if chain is None:
                log_read = False  # the fault that stopped the chain check (reported): nothing to compare
            else:
                checker.add("log-unreadable", str(exc), sequence=getattr(exc, "sequence", None))
        if chain is None and not entries:
            log_read = False  # no entry read (no log at all, say): the finding above says why

    # 2. store integrity
    objects = 0
    if sample is None:
        fsck = repo.fsck()
        objects = fsck.objects
        for p in fsck.problems:
            checker.add(p.kind, p.message, object=p.object)
    rewrites = _rewrites(repo, checker)
    snapshots = _history(repo, conversations, checker, rewrites)

    # 3a. entries -> objects (entries a correction voided made no snapshot)
    voided = voided_sequences(list(entries.values()))
    linked = [(e, link) for e in entries.values() if (link := link_of(e)) is not None
              and e.sequence not in voided
              and (conversation is None or link.get("conversation") == conversation)
              # a pruned snapshot's entry is checked against its rewrite, or skipped if squashed away
              and (link := rewrites.link(link)) is not None]
    # Appended after the view and not reached by the history it read: in flight, or committed since. Their
    # objects are checked (stored before the entry was written); their place in the history is the next run's.
    unseen = {e.sequence for e, link in linked if e.sequence in past_end and link.get("snapshot") not in snapshots}
    if sample is not None and len(linked) > sample:
        linked = rng.sample(linked, sample)
    linked.sort(key=lambda pair: pair[0].sequence)
    for start in range(0, len(linked), _PREFETCH):
        batch = linked[start:start + _PREFETCH]
        _prefetch(repo, [link for _, link in batch])
        for entry, link in batch:
            checker.check_linked_entry(entry, link)
            if sample is not None:
                objects += 1 + len(link.get("nodes") or {})

    # 3b. snapshots and ref changes -> entries
    if log_read:
        for sid, snap in snapshots.items():
            if snap.log is not None:
                checker.check_named_entry(snap.log.sequence, snap.log.entry_hash, entries, snapshot=sid)
        for conv in conversations:
            for change in checker.reflog(conv):
                if change.log_sequence is not None and change.log_hash is not None:
                    checker.check_named_entry(change.log_sequence, change.log_hash, entries, snapshot=change.new)
        # Every linked entry must be part of its conversation's history (but those the view cannot know).
        for entry, link in linked:
            if entry.sequence in unseen:
                continue
            if link.get("snapshot") not in snapshots and link.get("conversation") in conversations:
                checker.add("unreachable", f"log entry {entry.sequence} names snapshot "
                            f"{str(link.get('snapshot'))[:12]}, which no history of "
                            f"{link.get('conversation')} reaches", sequence=entry.sequence,
                            snapshot=str(link.get("snapshot")))

    # 4. replay (Option C): the structure from the log equals the stored head's (not without the
    # entries of a damaged pack: a replay without them would differ for that reason alone).
    if log_read and sample is None and not checker.unread:
        by_conv: dict[str, list[LogEntry]] = {}
        for entry in entries.values():
            link = link_of(entry)
            if link is not None and entry.sequence not in voided:
                by_conv.setdefault(str(link.get("conversation")), []).append(entry)
        for conv in conversations:
            head = checker.head(conv)
            if conv not in by_conv or head is None:
                continue
            try:
                stored = structure(repo.load(head).to_json())  # the head the view read, not one committed since
            except SnapstoreError:
                continue  # already reported by the store check
            # Entries appended after the view replayed only up to that head (those past it came since).
            chain_of_head = _ancestors(head, snapshots) if past_end else set()
            result = replay_entries([e for e in by_conv[conv] if e.sequence not in past_end
                                     or str((link_of(e) or {}).get("snapshot")) in chain_of_head])
            for sequence, why in result.skips:  # an entry snapstore linked that its tree cannot have followed
                checker.add("replay-mismatch", f"{conv}: log entry {sequence} cannot be replayed: {why}",
                            sequence=sequence)
            _compare_structure(checker, conv, structure(result.state(conv)), stored)

    checked = chain.entries_checked if chain is not None else 0
    return VerifyReport(tuple(checker.problems), checked, objects, len(snapshots), sample is not None, len(unseen))


# Linked entries whose objects are read ahead together (a snapshot, its state and a node or two each: well
# inside the repository's cache of 8,192 objects).
_PREFETCH = 1024


def _prefetch(repo: Repository, links: list[dict[str, Any]]) -> None:
    """Read the objects :meth:`_Checker.check_linked_entry` reads for ``links`` into the repository's cache,
    a kind at a time for all of them: the snapshots, their states, the nodes named (a read per object before:
    a store of thousands of conversations has tens of thousands of entries). Whatever does not read soundly
    is left out, and read by the check on its own, which names it as before."""
    snaps = repo.read_sound([str(link.get("snapshot")) for link in links], "snapshot")
    repo.read_sound([snap.root for snap in snaps.values() if isinstance(snap, Snapshot)], "state")
    repo.read_sound([str(nid) for link in links if isinstance(nodes := link.get("nodes"), dict)
                     for nid in nodes.values()], "node")


def _ancestors(head: str, snapshots: dict[str, Snapshot]) -> set[str]:
    """``head`` and every snapshot of ``snapshots`` its parents reach (its conversation's history up to it)."""
    out: set[str] = set()
    stack = [head]
    while stack:
        sid = stack.pop()
        if sid in out or sid not in snapshots:
            continue
        out.add(sid)
        stack.extend(snapshots[sid].parents)
    return out


def _said(what: str, value: Any) -> str:
    """An id a log link or snapshot gives for ``what`` (root, parent), shortened; ``no root`` when it gives none
    (Python would print ``None``)."""
    return f"no {what}" if value is None else f"{what} {str(value)[:12]}"


def _focus(context_id: Any) -> str:
    """A focus as a finding names it: the context id, or ``(none)`` when there is no focus."""
    return "(none)" if context_id is None else str(context_id)


# What an absent value of a replayed field means (instead of Python's None).
_ABSENT = {"parent": "top level", "status": "no status", "children": "(no id)", "exchanges": "(no id)"}


def _structure_value(name: str, value: Any) -> str:
    """A replayed field (parent, status, children, exchanges) as a finding shows it: values as Python's repr,
    an absent one as what it means there (a root's parent is ``top level``, an exchange without an id ``(no id)``)."""
    if isinstance(value, list):
        return "[" + ", ".join(_structure_value(name, item) for item in value) + "]"
    return _ABSENT[name] if value is None else repr(value)


def _compare_structure(checker: _Checker, conv: str, replayed: dict[str, Any], stored: dict[str, Any]) -> None:
    if replayed["focus"] != stored["focus"]:
        checker.add("replay-mismatch", f"{conv}: the log replays to focus {_focus(replayed['focus'])}, "
                    f"the store has {_focus(stored['focus'])}", context=stored["focus"])
    a, b = replayed["contexts"], stored["contexts"]
    for cid in sorted(a.keys() | b.keys()):
        if cid not in b:
            checker.add("replay-mismatch", f"{conv}: the log replays context {cid}, the store has none", context=cid)
        elif cid not in a:
            checker.add("replay-mismatch", f"{conv}: the store has context {cid}, the log never made it",
                        context=cid)
        else:
            for name in ("parent", "children", "status", "exchanges"):
                if a[cid][name] != b[cid][name]:
                    checker.add("replay-mismatch", f"{conv}: {cid} {name}: the log replays "
                                f"{_structure_value(name, a[cid][name])}, the store has "
                                f"{_structure_value(name, b[cid][name])}", context=cid)

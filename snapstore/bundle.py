"""Bundles: conversations with their whole history in one self-verifying file.

Format (version 1)::

    SNAPSTORE-BUNDLE 1\\n
    record*
    trailer record

    record  = tag (1 byte) | length (4 bytes, big-endian) | payload (length bytes)
    H  header (JSON): {"version": 1, "created", "store_format", "conversations": [...],
                       "audit_log": true if E records follow}
    O  object: b"<kind> <id>\\n" + its canonical body (uncompressed, so any
       store can recompress it with its own dictionary)
    R  ref (JSON): {"ref": "conversations/<id>", "target": <snapshot id>}
    G  reflog entry (JSON): {"ref", "old", "new", "time", "reason", "log_sequence", "log_hash"}
    E  audit-log entry: the entry's line exactly as the OZOLITH log holds it
    T  trailer (JSON): {"records": <records before it>, "blake3": <hex of every byte before it>}

One header first, one trailer last. Everything in a bundle is checked
before anything of it becomes visible: the framing, that every ref and
reflog record has the types the store's rows hold (one ``R`` per ref),
every object's hash and decoding, that every object any object names is in
the bundle (a bundle is complete on its own), that refs and reflog entries
name snapshots it holds, that every audit-log link names an entry it holds
with that hash, and the trailer's BLAKE3.

Import moves each conversation's ref through the bundled reflog's values
(create, or fast-forward from a value it passed), so the store gets the same
sequence of heads, reasons and audit-log links; times become the import's
(the reflog records them as they happen). Each ref move carries every object
its target needs that no earlier move brought (the gc invariant, gc.py). A
ref that points elsewhere is refused unless the bundled head descends from
it or ``force`` is given. Importing a bundle twice changes nothing.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from blake3 import blake3

from .backends.base import RefUpdate, StoredObject, reflog_row_damage
from .errors import CorruptObject, InvalidInput, RefConflict, SnapstoreError
from .graph import Verified, Walk, references
from .objects import KINDS, AnyObject, ObjectId, Snapshot, decode, hash_object, is_object_id
from .ozolith import LogEntry, OzolithLog
from .ozolith.entry import check_sealed
from .ozolith.files import atomic_file, folders_for
from .progress import Progress, quiet
from .refs import conversation_of, ref_name, validate_conversation_id
from .repository import STORE_FORMAT, Repository
from .rewrites import Rewrites
from .timeutil import utc_now

MAGIC = b"SNAPSTORE-BUNDLE 1\n"
VERSION = 1
_FRAME = struct.Struct(">cI")


class BadBundle(SnapstoreError, ValueError):
    """A bundle that is truncated, corrupt or incomplete: nothing of it was imported."""


class ImportInterrupted(SnapstoreError):
    """A ref moved while an import was moving it: what was imported is consistent; import again."""


# -- writing ---------------------------------------------------------------------


class _Writer:
    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.hasher = blake3()
        self.records = 0
        self.size = 0
        self._emit(MAGIC)

    def _emit(self, data: bytes) -> None:
        self.handle.write(data)
        self.hasher.update(data)
        self.size += len(data)

    def record(self, tag: bytes, payload: bytes) -> None:
        self._emit(_FRAME.pack(tag, len(payload)) + payload)
        self.records += 1

    def json(self, tag: bytes, value: Any) -> None:
        self.record(tag, json.dumps(value, sort_keys=True, separators=(",", ":")).encode())

    def trailer(self) -> None:
        payload = json.dumps({"records": self.records, "blake3": self.hasher.hexdigest()}).encode()
        self.handle.write(_FRAME.pack(b"T", len(payload)) + payload)
        self.size += _FRAME.size + len(payload)


@dataclass(frozen=True)
class ExportReport:
    path: str
    conversations: tuple[str, ...]
    objects: int
    reflog_entries: int
    log_entries: int
    bytes: int

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "conversations": list(self.conversations), "objects": self.objects,
                "reflog_entries": self.reflog_entries, "log_entries": self.log_entries, "bytes": self.bytes}


def export_bundle(repo: Repository, conversations: Iterable[str], path: str | os.PathLike[str], *,
                  log: OzolithLog | None = None, progress: Progress = quiet) -> ExportReport:
    """Write the conversations, everything their history reaches, and their audit-log entries to ``path``."""
    convs = list(dict.fromkeys(validate_conversation_id(c) for c in conversations))
    if not convs:
        raise InvalidInput("nothing to export: name at least one conversation")
    rewrites = Rewrites.load(repo.backend)
    heads, reflogs = {}, {}
    for conv in convs:
        head = repo.head(conv)
        if head is None:
            raise InvalidInput(f"unknown conversation {conv!r}")
        heads[conv] = head
        # Values a prune superseded are history no more (and may be gone).
        reflogs[conv] = [e for e in repo.reflog(conv) if e.new is not None and not rewrites.superseded(conv, e.new)]
    target = Path(path)
    # Replaced whole and durably: a crash or an error leaves the old bundle (or none), never a part,
    # and no folder it made for the bundle (missing folders are made, as `snap export-log` does).
    with folders_for(target), atomic_file(target) as handle:
        writer = _Writer(handle)
        writer.json(b"H", {"version": VERSION, "created": utc_now(), "store_format": STORE_FORMAT,
                           "conversations": convs, "audit_log": log is not None})
        sequences: set[int] = set()

        def emit(item: Verified) -> None:
            writer.record(b"O", f"{item.kind} {item.id}\n".encode("ascii") + item.body)
            if isinstance(item.obj, Snapshot) and item.obj.log is not None:
                sequences.add(item.obj.log.sequence)

        with progress("exporting objects", repo.backend.count_objects()[0]) as bar:
            walk = Walk(repo, visit=emit, advance=bar.update)
            starts = [(heads[c], "snapshot", ref_name(c)) for c in convs]
            starts += [(e.new, "snapshot", f"the reflog of {c}") for c in convs for e in reflogs[c]]
            walk.add(starts)
        reflog_count = 0
        for conv in convs:
            writer.json(b"R", {"ref": ref_name(conv), "target": heads[conv]})
            for e in reflogs[conv]:
                writer.json(b"G", {"ref": e.name, "old": e.old, "new": e.new, "time": e.time, "reason": e.reason,
                                   "log_sequence": e.log_sequence, "log_hash": e.log_hash})
                reflog_count += 1
                if e.log_sequence is not None:
                    sequences.add(e.log_sequence)
        log_count = 0
        if log is not None:
            for entry in log.entries():
                link = entry.payload.get("snapstore") if isinstance(entry.payload, dict) else None
                if entry.sequence in sequences or (isinstance(link, dict) and link.get("conversation") in convs):
                    writer.record(b"E", entry.to_line().encode("utf-8"))
                    log_count += 1
        writer.trailer()
    return ExportReport(str(target), tuple(convs), len(walk.seen), reflog_count, log_count, writer.size)


# -- reading ---------------------------------------------------------------------


@dataclass
class Bundle:
    """A bundle read into memory and verified."""

    header: dict[str, Any]
    objects: dict[ObjectId, tuple[str, bytes, AnyObject]] = field(default_factory=dict)
    refs: dict[str, ObjectId] = field(default_factory=dict)
    reflog: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    log_entries: dict[int, LogEntry] = field(default_factory=dict)


def _records(data: bytes) -> Iterator[tuple[int, bytes, bytes, int]]:
    """``(index, tag, payload, offset)`` of each record after the magic line."""
    offset, index = len(MAGIC), 0
    while offset < len(data):
        if offset + _FRAME.size > len(data):
            raise BadBundle(f"bundle ends inside the frame of record {index} (byte {offset}): truncated?")
        tag, length = _FRAME.unpack_from(data, offset)
        start = offset + _FRAME.size
        if start + length > len(data):
            raise BadBundle(f"record {index} at byte {offset} runs past the end of the bundle: truncated or corrupt")
        yield index, tag, data[start : start + length], offset
        offset, index = start + length, index + 1


def _json(payload: bytes, what: str) -> Any:
    try:
        return json.loads(payload)
    except ValueError as exc:
        raise BadBundle(f"bundle {what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadBundle(f"bundle {what} is nested too deeply") from None


def _json_object(payload: bytes, what: str) -> dict[str, Any]:
    value = _json(payload, what)
    if not isinstance(value, dict):
        raise BadBundle(f"bundle {what} is a JSON {type(value).__name__}, not an object")
    return value


def _ref_record(payload: bytes, index: int) -> tuple[str, ObjectId]:
    ref = _json_object(payload, f"ref record {index}")
    name, target = ref.get("ref"), ref.get("target")
    if not isinstance(name, str) or not isinstance(target, str) or not is_object_id(target):
        raise BadBundle(f"bundle ref record {index} does not name a ref and a snapshot id")
    return name, ObjectId(target)


def _reflog_record(payload: bytes, index: int) -> dict[str, Any]:
    """A reflog record whose every field import uses or writes has the type a reflog row holds.

    Checked before anything is written: import writes these fields into the
    store's reflog, and a value no row ever holds (a log_sequence of text, a
    number as reason, one too big for a 64-bit column) would otherwise stop an
    import halfway (its earlier ref moves made) or be stored as a damaged row.
    """
    entry = _json_object(payload, f"reflog record {index}")
    if not isinstance(entry.get("ref"), str):
        raise BadBundle(f"bundle reflog record {index} names no ref")
    for name in ("old", "new"):
        value = entry.get(name)
        if value is not None and not (isinstance(value, str) and is_object_id(value)):
            raise BadBundle(f"bundle reflog record {index}: its {name} is {value!r:.40}, not an object id")
    sequence = entry.get("log_sequence")
    damage = reflog_row_damage(entry.get("time"), entry.get("reason"), sequence, entry.get("log_hash"))
    if damage is None and type(sequence) is int and sequence >= 1 << 63:
        damage = f"its log_sequence is {sequence!r:.40}, more than a 64-bit integer holds"
    if damage is not None:
        raise BadBundle(f"bundle reflog record {index}: {damage}")
    return entry


def _object(payload: bytes, index: int) -> tuple[ObjectId, str, bytes, AnyObject]:
    head, newline, body = payload.partition(b"\n")
    parts = head.decode("ascii", "replace").split(" ")
    if not newline or len(parts) != 2 or parts[0] not in KINDS or not is_object_id(parts[1]):
        raise BadBundle(f"bundle record {index} is not an object record")
    kind, oid = parts[0], ObjectId(parts[1])
    actual = hash_object(kind, body)
    if actual != oid:
        raise BadBundle(f"bundle object {oid} is corrupt: its content hashes to {actual}")
    try:
        return oid, kind, body, decode(kind, body, oid)
    except CorruptObject as exc:
        raise BadBundle(f"bundle object {oid} cannot be decoded: {exc.reason}") from None


def read_bundle(path: str | os.PathLike[str], progress: Progress = quiet) -> Bundle:
    """Read and check a whole bundle; :class:`BadBundle` names the first thing wrong."""
    try:
        with open(path, "rb") as handle:
            # The magic line first: a file that is no bundle (/dev/zero, a 50 GB log) is not read whole.
            data = handle.read(len(MAGIC))
            if data != MAGIC:
                raise BadBundle(f"{path} is not a snapstore bundle (version {VERSION})")
            data += handle.read()
    except FileNotFoundError:
        raise InvalidInput(f"{path}: no such bundle") from None
    except OSError as exc:  # a folder, no permission, an I/O error
        raise InvalidInput(f"{path}: cannot read the bundle: {exc.strerror or exc}") from None
    bundle: Bundle | None = None
    trailer: tuple[int, dict[str, Any], int] | None = None
    with progress("checking bundle", len(data)) as bar:
        for index, tag, payload, offset in _records(data):
            bar.update(_FRAME.size + len(payload))
            if trailer is not None:
                raise BadBundle(f"bundle has data after its trailer (record {index})")
            if bundle is None:
                if tag != b"H":
                    raise BadBundle("bundle does not start with a header record")
                header = _json(payload, "header")
                if not isinstance(header, dict) or header.get("version") != VERSION:
                    raise BadBundle(f"bundle header is not version {VERSION}")
                bundle = Bundle(header)
            elif tag == b"O":
                oid, kind, body, obj = _object(payload, index)
                bundle.objects[oid] = (kind, body, obj)
            elif tag == b"R":
                name, target = _ref_record(payload, index)
                if name in bundle.refs:  # which would win is a guess: refused
                    raise BadBundle(f"bundle names ref {name!r:.200} twice (again in record {index})")
                bundle.refs[name] = target
            elif tag == b"G":
                entry = _reflog_record(payload, index)
                bundle.reflog.setdefault(entry["ref"], []).append(entry)
            elif tag == b"E":
                try:
                    entry = LogEntry.from_dict(_json_object(payload, f"log entry record {index}"))
                except SnapstoreError as exc:
                    raise BadBundle(f"bundle log entry record {index}: {exc}") from None
                if not check_sealed(b"", entry.to_dict())[0]:
                    raise BadBundle(f"bundle log entry {entry.sequence} does not hash to its entry_hash")
                bundle.log_entries[entry.sequence] = entry
            elif tag == b"T":
                trailer = (index, _json_object(payload, "trailer"), offset)
            else:
                raise BadBundle(f"bundle record {index} has unknown type {tag!r}")
    if bundle is None or trailer is None:
        raise BadBundle(f"{path} has no {'header' if bundle is None else 'trailer'}: truncated?")
    index, summary, offset = trailer
    if summary.get("records") != index or summary.get("blake3") != blake3(data[:offset]).hexdigest():
        raise BadBundle(f"{path} fails its checksum: corrupt or truncated")
    _check_complete(bundle)
    return bundle


def _check_complete(bundle: Bundle) -> None:
    """Every name in the bundle resolves inside it, to the right kind."""
    objects = bundle.objects
    for oid, (kind, _, obj) in objects.items():
        for child, child_kind in references(obj):
            found = objects.get(child)
            if found is None:
                raise BadBundle(f"bundle is missing {child_kind} {child} (named by {kind} {oid[:12]})")
            if found[0] != child_kind:
                raise BadBundle(f"bundle object {child} is a {found[0]}, {kind} {oid[:12]} names a {child_kind}")
    for ref, target in bundle.refs.items():
        if conversation_of(ref) is None:
            raise BadBundle(f"bundle ref {ref!r} is not a conversation ref")
        validate_conversation_id(conversation_of(ref))
        if objects.get(target, ("",))[0] != "snapshot":
            raise BadBundle(f"bundle is missing snapshot {target} (the head of {ref})")
    for ref, entries in bundle.reflog.items():
        if ref not in bundle.refs:
            raise BadBundle(f"bundle has reflog entries for {ref!r} but no such ref")
        for entry in entries:
            new = entry.get("new")
            if new is not None and objects.get(new, ("",))[0] != "snapshot":
                raise BadBundle(f"bundle is missing snapshot {new} (named by the reflog of {ref})")
    if bundle.header.get("audit_log"):
        links = [(s.log.sequence, s.log.entry_hash, f"snapshot {oid[:12]}")
                 for oid, (_, _, s) in objects.items() if isinstance(s, Snapshot) and s.log is not None]
        links += [(e["log_sequence"], e["log_hash"], f"the reflog of {ref}")
                  for ref, entries in bundle.reflog.items() for e in entries if e.get("log_sequence") is not None]
        for sequence, entry_hash, who in links:
            entry = bundle.log_entries.get(sequence)
            if entry is None or entry.entry_hash != entry_hash:
                state = "does not hold" if entry is None else "holds another hash for"
                raise BadBundle(f"bundle {state} log entry {sequence}, which {who} names")


# -- importing -------------------------------------------------------------------


@dataclass(frozen=True)
class ImportAction:
    """What import does to one conversation."""

    conversation: str
    action: str  # "create", "up-to-date", "fast-forward", "replace"
    old: ObjectId | None
    new: ObjectId
    moves: int

    def to_json(self) -> dict[str, Any]:
        return {"conversation": self.conversation, "action": self.action, "old": self.old, "new": self.new,
                "ref_moves": self.moves}


@dataclass(frozen=True)
class ImportReport:
    path: str
    dry_run: bool
    objects: int
    new_objects: int
    actions: tuple[ImportAction, ...]
    log_entries: int

    @property
    def changed(self) -> bool:
        return any(a.moves for a in self.actions)

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "dry_run": self.dry_run, "changed": self.changed, "objects": self.objects,
                "new_objects": self.new_objects, "log_entries": self.log_entries,
                "conversations": [a.to_json() for a in self.actions]}


def _ancestors(bundle: Bundle, head: ObjectId) -> set[ObjectId]:
    seen, stack = set(), [head]
    while stack:
        sid = stack.pop()
        if sid not in seen:
            seen.add(sid)
            stack.extend(bundle.objects[sid][2].parents)  # type: ignore[union-attr]
    return seen


def _plan(repo: Repository, bundle: Bundle, force: bool, name: str) -> tuple[list[ImportAction], list[list[RefUpdate]]]:
    """Each conversation's ref moves, checked against the store before anything is written."""
    actions, moves_by_ref = [], []
    for ref, head in sorted(bundle.refs.items()):
        conv = conversation_of(ref)
        assert conv is not None
        current = repo.backend.get_ref(ref)
        entries = [e for e in bundle.reflog.get(ref, []) if e.get("new") is not None]
        path: list[tuple[ObjectId, str, int | None, str | None]] = []
        for e in entries:
            if not path or path[-1][0] != e["new"]:
                path.append((ObjectId(e["new"]), f"import: {e['reason']} (at {e['time']} in the source)",
                             e.get("log_sequence"), e.get("log_hash")))
        link = bundle.objects[head][2].log  # type: ignore[union-attr]
        final = (head, f"import from {name}", link.sequence if link else None, link.entry_hash if link else None)
        if not path or path[-1][0] != head:
            path.append(final)
        values = [p[0] for p in path]
        if current == head:
            action, steps = "up-to-date", []
        elif current is None:
            action, steps = "create", path
        elif current in values:
            action, steps = "fast-forward", path[len(values) - 1 - values[::-1].index(current) + 1:]
        elif current in _ancestors(bundle, head):
            action, steps = "fast-forward", [final]
        elif force:
            action, steps = "replace", [(head, f"import --force from {name}: replaced {current[:12]}", *final[2:])]
        else:
            raise InvalidInput(
                f"conversation {conv!r} points at {current[:12]}, and the bundled head {head[:12]} does not "
                "descend from it; nothing imported (use --force to replace it)"
            )
        updates, old = [], current
        for new, reason, sequence, entry_hash in steps:
            updates.append(RefUpdate(ref, old, new, reason, sequence, entry_hash))
            old = new
        actions.append(ImportAction(conv, action, current, head, len(updates)))
        moves_by_ref.append(updates)
    return actions, moves_by_ref


def _check_log(bundle: Bundle, log: OzolithLog) -> None:
    """The store's audit log must hold the bundled entries, unchanged."""
    wanted = dict(bundle.log_entries)
    for entry in log.entries():
        mine = wanted.pop(entry.sequence, None)
        if mine is not None and mine.entry_hash != entry.entry_hash:
            raise BadBundle(f"bundle log entry {entry.sequence} differs from entry {entry.sequence} of {log.path}")
    if wanted:
        raise BadBundle(f"{log.path} does not hold log entry {min(wanted)} of the bundle")


def import_bundle(repo: Repository, path: str | os.PathLike[str], *, force: bool = False, dry_run: bool = False,
                  log: OzolithLog | None = None, progress: Progress = quiet) -> ImportReport:
    """Check a bundle completely, then move each conversation's ref to the bundled history."""
    bundle = read_bundle(path, progress)
    if log is not None:
        _check_log(bundle, log)
    actions, moves_by_ref = _plan(repo, bundle, force, Path(path).name)
    new_objects = len(bundle.objects) - len(repo.backend.has_objects(bundle.objects))
    report = ImportReport(str(path), dry_run, len(bundle.objects), new_objects, tuple(actions), len(bundle.log_entries))
    if dry_run or not report.changed:
        return report
    carried: set[ObjectId] = set()
    rounds = max(len(m) for m in moves_by_ref)
    with progress("importing", rounds) as bar:
        for step in range(rounds):
            updates = [m[step] for m in moves_by_ref if step < len(m)]
            objects = []
            stack = [u.new for u in updates if u.new is not None]
            while stack:
                oid = stack.pop()
                if oid in carried:
                    continue
                carried.add(oid)
                kind, body, obj = bundle.objects[oid]
                objects.append(StoredObject(oid, kind, len(body), repo.codec.compress(body)))
                stack.extend(child for child, _ in references(obj))
            try:
                repo.backend.write(objects, updates)
            except RefConflict as exc:
                raise ImportInterrupted(
                    f"a ref moved during import ({exc}); what was imported so far is consistent, "
                    "run import again"
                ) from None
            bar.update(1)
    return report

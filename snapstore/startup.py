"""Startup and shutdown of an API process: what to resume, and whether it is sound.

A :class:`Session` opens a store (and optionally its OZOLITH log), decides a
recovery status and hands out orchestrators:

``CLEAN``
    the previous process marked a clean shutdown.
``AUDIT_RECOMMENDED``
    no clean-shutdown marker (a crash, a kill): a sampled check runs at once
    (the conversation to resume is loaded and re-hashed in full, the log chain
    is spot-checked) and its findings are reported.
``RECOVERY_NEEDED``
    the store and the log disagree. A log entry newer than the last snapshot
    is rolled forward where its objects exist; otherwise the report says
    exactly what is missing and the caller chooses: :meth:`Session.replay`
    (rebuild the structure from the log), :meth:`Session.discard` (accept the
    store as it is) or :meth:`Session.export` (write the unmatched entries to
    a file).
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import json
import os
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .audit import (CHECKED_KEY, LinkedLog, Recovery, linked_sequences, mark_meta, roll_forward, scan_log,
                    settled_end, settled_end_now, settled_mark, settling)
from .errors import InvalidInput, LogError, ReadOnlyStore, SnapstoreError, StoreExists, StoreNotFound
from .orchestrator import ConversationOrchestrator
from .packing import shutdown_pack
from .ozolith import Finding, OzolithLog
from .ozolith.files import write_atomic
from .refs import ref_name
from .repository import ConversationInfo, Repository
from .storelog import StoreAudit, StoreLog
from .timeutil import utc_now

CLEAN_SHUTDOWN_KEY = "clean_shutdown"
# One key per running Session (``presence/<id>``: JSON {"started", "pid", "host"}), deleted by its clean
# close; the session holds the backend's presence lock of the same name while it runs.
PRESENCE_PREFIX = "presence/"
# Log sequences a caller discarded (Session.discard): JSON list; never rolled forward or reported again.
DISCARDED_KEY = "startup/discarded_log_entries"
MAX_DISCARDED = 10_000
SESSION_STARTED_KEY = "session_started"
DEFAULT_SAMPLE = 32
# Recovery actions a start completed itself (the rest are left to the caller).
REPAIRED = frozenset({"rolled-forward", "voided", "cut-torn-tail"})


class RecoveryStatus(str, enum.Enum):
    CLEAN = "CLEAN"
    AUDIT_RECOMMENDED = "AUDIT_RECOMMENDED"
    RECOVERY_NEEDED = "RECOVERY_NEEDED"


@dataclass(frozen=True)
class StartupReport:
    """What a start found: status, what to resume, and every finding."""

    status: RecoveryStatus
    conversation: str | None
    focus: str | None
    conversations: tuple[ConversationInfo, ...]
    recoveries: tuple[Recovery, ...] = ()
    problems: tuple[str, ...] = ()
    checks: tuple[str, ...] = field(default=())
    # Why the OZOLITH file is behind the store (also in ``problems``); appends are refused while set.
    log_behind: str | None = None
    # Presence keys of sessions that ended without a clean close (named in ``checks``).
    dead_sessions: tuple[str, ...] = ()
    # With ``repair`` and an OZOLITH file: the meta value (audit.CHECKED_KEY) saying how far this start
    # settled the log, for the Session to record; None to leave the recorded one.
    log_checked: str | None = None
    # With ``repair`` and an OZOLITH file: the log's newest entry as this start read it, (sequence, hash), if
    # every entry up to it is settled now; the Session's hook counts its own entries on from it, to move the
    # mark at a clean close (audit.LinkedLog.follow). None: nothing is counted, the mark stays.
    log_settled: tuple[int, str] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "conversation": self.conversation,
            "focus": self.focus,
            "conversations": [c.to_json() for c in self.conversations],
            "recoveries": [r.to_json() for r in self.recoveries],
            "problems": list(self.problems),
            "checks": list(self.checks),
        }


class Presence:
    """A process's announced use of a store: a ``presence/<id>`` key and the backend's presence lock of that name.

    Made when a :class:`Session` (or the adapter) starts, ended by its
    close: :meth:`clean_meta` (written with the clean-shutdown marker)
    removes the key; :meth:`release` drops the lock. A process killed in
    between leaves the key without the lock, which the next start reads as a
    session that ended badly (:func:`sessions`).
    """

    def __init__(self, repo: Repository) -> None:
        self.key = f"{PRESENCE_PREFIX}{uuid.uuid4().hex}"
        self._release: Any = repo.backend.hold_presence(self.key)

    def announce_meta(self, started: str) -> dict[str, str | None]:
        """The meta that makes this session known (write it once the start's checks are done)."""
        return {self.key: json.dumps({"started": started, "pid": os.getpid(), "host": socket.gethostname()})}

    def clean_meta(self) -> dict[str, str | None]:
        return {self.key: None}

    def release(self) -> None:
        """Drop the presence lock (once; later calls do nothing)."""
        release, self._release = self._release, None
        if release is not None:
            release()


def sessions(repo: Repository, exclude: str | None = None,
             unknown: list[str] | None = None) -> tuple[list[str], list[str]]:
    """``(running, ended unclean)``: the session keys a store holds, split by whether their session still runs.

    A key whose session no longer holds its presence lock belongs to a
    process that ended without a clean close (killed, crashed, or closed
    with ``clean=False``). A key whose lock this process cannot probe (it
    may only read the store, and not its lock) goes to ``unknown`` if given,
    else counts as ended unclean.
    """
    running, dead = [], []
    for key in sorted(repo.backend.list_meta(PRESENCE_PREFIX)):
        if key == exclude:
            continue
        held = repo.backend.presence_held(key)
        (running if held else unknown if held is None and unknown is not None else dead).append(key)
    return running, dead


def inspect(repo: Repository, log: OzolithLog | StoreLog | None = None, *, conversation: str | None = None,
            sample: int = DEFAULT_SAMPLE, repair: bool = False, session: str | None = None) -> StartupReport:
    """Decide the recovery status; with ``repair``, roll the store forward first.

    Clean means no session ended without a clean close: each running
    :class:`Session` keeps a key in the store and holds a presence lock, so
    a replica starting beside running ones is not misled by them, and one
    that was killed is noticed whatever the others did since. ``session``:
    the key of the caller's own session, left out.
    """
    unknown: list[str] = []
    running, dead = sessions(repo, exclude=session, unknown=unknown)
    checks: list[str] = []
    if dead:
        clean = False
        checks.append(f"{len(dead)} earlier session{'s' if len(dead) != 1 else ''} ended without a clean close: "
                      + ", ".join(_describe_session(repo, key) for key in dead[:5]))
    elif running:
        clean = True  # other replicas are running; none ended badly
        checks.append(f"{len(running)} other session{'s' if len(running) != 1 else ''} running: "
                      + ", ".join(_describe_session(repo, key) for key in running[:5]))
    else:
        # No session keys: every earlier session closed cleanly (or the store predates them: its marker).
        # A store no session has used yet (nothing committed) has nothing to audit.
        clean = repo.backend.get_meta(CLEAN_SHUTDOWN_KEY) is not None or (
            repo.backend.get_meta(SESSION_STARTED_KEY) is None and not repo.conversation_ids()
        )
    if unknown:
        clean = False  # not known to have closed cleanly: audited, as after a crash
        checks.append(f"{len(unknown)} session{'s' if len(unknown) != 1 else ''} this process cannot tell running "
                      "or ended (it may only read the store, and not the lock a session holds): "
                      + ", ".join(_describe_session(repo, key) for key in unknown[:5]))
    recoveries: list[Recovery] = []
    problems: list[str] = []
    unreadable: list[str] = []
    behind: str | None = None
    checked: str | None = None
    settled: tuple[int, str] | None = None
    if log is not None:
        discarded = discarded_sequences(repo)
        if discarded:
            checks.append(f"{len(discarded)} log entries discarded earlier are left alone "
                          f"(newest {max(discarded)})")
        try:
            # Replicas sharing an OZOLITH file: wait for their operations between entry and ref move, and hold
            # new ones back, so what is pending below was left by a writer that is gone (audit.settling).
            with settling(log) if repair and isinstance(log, OzolithLog) else contextlib.nullcontext():
                # Only reading, beside writers it does not hold back: the file's end at a moment no operation
                # was between its entry and its ref move, read before the refs. An entry past it may be a live
                # writer's in flight (or committed since), not one a writer left pending: not judged.
                moment = settled_end_now(log) if not repair and isinstance(log, OzolithLog) else None
                newest: dict[str, int] | None = linked_sequences(repo)  # read once for both checks below
                if repair and isinstance(log, OzolithLog):
                    log.flush()  # a writer killed before its fsync: what is rolled forward below must be durable
                cut = _cut_torn_tail(log) if repair else []
                scan = scan_log(repo, log, discarded, newest)
                if repair:
                    rolled = roll_forward(repo, log, discarded, scan=scan)
            if scan.note is not None:
                checks.append(scan.note)
            if repair:
                recoveries = cut + rolled
                if any(r.action == "rolled-forward" for r in recoveries):
                    newest = None  # refs moved: log_behind reads the reflogs again
            else:
                recoveries = [
                    Recovery(e.sequence, str(link.get("conversation")), str(link.get("snapshot")), "pending",
                             f"log entry {e.sequence} names snapshot {str(link.get('snapshot'))[:12]}, "
                             "which no ref reaches yet")
                    for e, link in scan.pending if moment is None or e.sequence <= moment[0]
                ] + [
                    Recovery(e.sequence, str(link.get("conversation")), str(link.get("snapshot")), "pending",
                             f"log entry {e.sequence} names snapshot {str(link.get('snapshot'))[:12]}, which no ref "
                             f"reached before conversation {link.get('conversation')} moved on without it (entry "
                             f"{later}): a start voids it")
                    for e, link, later in scan.orphans if moment is None or e.sequence <= moment[0]
                ]
            behind = log_behind(repo, log, newest)
            if behind is not None:
                unreadable.append(behind)
            elif repair and isinstance(log, OzolithLog):
                checked = settled_mark(scan, rolled)
                settled = settled_end(scan, rolled)
        except LogError as exc:
            # An unparsable line among the newest (or, without ``repair``, a torn tail a start would
            # cut): the entries cannot be matched to the store. Start anyway so the caller sees why;
            # appending stays refused until someone repairs the log.
            unreadable.append(_unreadable_log(log, exc))
    unresolved = [r for r in recoveries if r.action not in REPAIRED]
    infos = tuple(repo.conversations())
    target = _choose(repo, infos, conversation)
    focus = None
    if not clean or unresolved:
        # The sampled audit: load the conversation to resume in full (every
        # object re-hashed) and spot-check the log chain.
        if target is not None:
            try:
                tree = repo.tree(repo.head(target))
                checks.append(f"loaded {target}: {len(tree.records)} contexts, every object re-hashed")
            except SnapstoreError as exc:
                problems.append(f"cannot load {target}: {exc}")
        if log is not None and (log.exists() if isinstance(log, StoreLog) else log.path.exists()):
            try:
                report = log.verify(sample=sample)
                checks.append(f"log chain: {report.summary()}")
                problems.extend(str(f) for f in report.findings)
            except SnapstoreError as exc:
                problems.append(f"cannot verify {log.where if isinstance(log, StoreLog) else log.path}: {exc}")
    if target is not None and not problems:
        focus, dangling = _focus(repo, target)
        if dangling is not None:
            checks.append(f"the focus of {target}'s head, {dangling!r}, names no context of it (a store written "
                          "before commits checked the focus): resuming has no focus")
    if unresolved or problems or unreadable:
        status = RecoveryStatus.RECOVERY_NEEDED
        problems = unreadable + [r.message for r in unresolved] + problems
    elif clean and not recoveries:
        status = RecoveryStatus.CLEAN
    else:
        status = RecoveryStatus.AUDIT_RECOMMENDED
    return StartupReport(status, target, focus, infos, tuple(recoveries), tuple(problems), tuple(checks),
                         log_behind=behind, dead_sessions=tuple(dead), log_checked=checked, log_settled=settled)


def _describe_session(repo: Repository, key: str) -> str:
    raw = repo.backend.get_meta(key)
    try:
        info = json.loads(raw) if raw else {}
    except ValueError:
        info = {}
    if not isinstance(info, dict):
        info = {}
    return (f"{key.removeprefix(PRESENCE_PREFIX)[:8]} (pid {info.get('pid', '?')} on {info.get('host', '?')}, "
            f"started {info.get('started', '?')})")


def discarded_sequences(repo: Repository) -> frozenset[int]:
    """The log sequences a caller discarded (:meth:`Session.discard`)."""
    raw = repo.backend.get_meta(DISCARDED_KEY)
    try:
        values = json.loads(raw) if raw else []
    except ValueError:
        return frozenset()
    return frozenset(v for v in values if isinstance(v, int) and not isinstance(v, bool)) if isinstance(
        values, list) else frozenset()


def log_behind(repo: Repository, log: OzolithLog | StoreLog, newest: dict[str, int] | None = None) -> str | None:
    """Why an OZOLITH file is behind the store, or None: it lacks the newest entry a ref change links.

    A deleted log, an older copy or another log put in its place would
    otherwise look sound, and the next append would reuse sequence numbers
    the store already links to other entries. Cost: the log's last line, the
    entries after the store's newest link (a start reads those anyway) and a
    few reflog rows.
    """
    if not isinstance(log, OzolithLog):
        return None  # the store's own log commits in the same transactions as the refs
    if newest is None:
        newest = linked_sequences(repo)
    if not newest:
        return None
    conv, highest = max(newest.items(), key=lambda item: item[1])
    if highest <= 0:
        return None
    last = log.last()
    fix = "restore the log file (the store's history is intact); appends are refused until then"
    if last is None:
        return (f"the log {log.path} is missing or empty, but the store links conversation {conv!r} to its "
                f"entry {highest}: {fix}")
    if last.sequence < highest:
        return (f"the log {log.path} ends at entry {last.sequence}, but the store links conversation {conv!r} "
                f"to entry {highest} (an older copy, or cut short): {fix}")
    recorded = next((row.log_hash for row in reversed(repo.backend.reflog_newest(ref_name(conv), 8))
                     if row.log_sequence == highest and row.log_hash), None)
    if recorded is None:
        return None
    entry = last if last.sequence == highest else next(
        (e for e in log.entries_after(highest - 1) if e.sequence == highest), None)
    if entry is not None and entry.entry_hash != recorded:
        return (f"entry {highest} of the log {log.path} is not the one the store links conversation {conv!r} "
                f"to (its hash is {entry.entry_hash[:12]}, the store recorded {recorded[:12]}: another log "
                f"in its place): {fix}")
    return None


def _cut_torn_tail(log: OzolithLog | StoreLog) -> list[Recovery]:
    """Cut an interrupted append off an OZOLITH file (see :meth:`OzolithLog.cut_torn_tail`), as a Recovery."""
    if not isinstance(log, OzolithLog):
        return []  # the store's own log commits whole entries or none
    cut = log.cut_torn_tail()
    if cut is None:
        return []
    last = log.last()
    sequence = last.sequence + 1 if last is not None else 1
    return [Recovery(sequence, "", "", "cut-torn-tail",
                     f"line {cut.line} of {log.path} was an interrupted write ({cut.size} bytes, never "
                     f"acknowledged): cut off the log and kept in {cut.saved.name}")]


def _unreadable_log(log: OzolithLog | StoreLog, error: LogError) -> str:
    """A problem naming the lines of ``log`` that stopped startup from reading it, or ``error`` itself."""
    # The tail read stops at the first bad line without counting lines; a full read names them.
    findings: tuple[Finding, ...] = ()
    if isinstance(log, OzolithLog):
        try:
            findings = log.load().findings
        except SnapstoreError:
            pass
    if not findings:
        return f"cannot read the log {log.where} past the store's last entry: {error}"
    named = "; ".join(str(f) for f in findings[:3]) + ("; ..." if len(findings) > 3 else "")
    return f"cannot read the log {log.where} past the store's last entry: {named}"


def _focus(repo: Repository, conversation: str) -> tuple[str | None, str | None]:
    """The context a restart of ``conversation`` resumes on, and (second) a stored focus naming no context.

    A store written before commits checked the focus can hold a deleted context's id: resuming onto it
    would put the user nowhere, so it is no focus. A root focus is checked from the state object alone;
    any other against the head's outline (its nodes, not one exchange; the tree itself once loaded).
    A node that cannot be read leaves the focus unchecked: resuming names the damage, not this report.
    """
    head = repo.head(conversation)
    state = repo.snapshot_state(head)
    focus = state.active_context_id
    if focus is None or focus in {cid for cid, _ in state.roots}:
        return focus, None
    try:
        contexts = repo.outline(head).records
    except SnapstoreError:
        return focus, None
    return (focus, None) if focus in contexts else (None, focus)


def _choose(repo: Repository, infos: tuple[ConversationInfo, ...], wanted: str | None) -> str | None:
    if wanted is not None:
        if repo.head(wanted) is None:
            raise InvalidInput(f"unknown conversation {wanted!r}")
        return wanted
    active = repo.active_conversation
    if active is not None and repo.head(active) is not None:
        return active
    return infos[0].conversation if infos else None


class Session:
    """One API process's use of a store: start, resume conversations, shut down cleanly."""

    def __init__(self, location: str | None = None, *, ozolith: str | os.PathLike[str] | None = None,
                 key: str | None = None, conversation: str | None = None, sample: int = DEFAULT_SAMPLE,
                 create: bool = True, log_in_store: bool = False) -> None:
        """``ozolith``: the path of an OZOLITH log file to write and check; or, with
        ``log_in_store``, the store keeps the log itself and each operation's entry
        is committed in the operation's own transaction (:mod:`snapstore.storelog`)."""
        if log_in_store and ozolith is not None:
            raise InvalidInput("give an OZOLITH log file or log_in_store, not both")
        try:
            self.repo = Repository.open(location)
        except StoreNotFound:
            if not create:
                raise
            try:
                self.repo = Repository.init(location)
            except StoreExists:  # another replica created it a moment ago
                self.repo = Repository.open(location)
        if self.repo.backend.read_only is not None:
            # A start writes: its presence lock and key, the marker, a roll-forward. Refused whole rather
            # than half-started; what a start would find is readable without one (`snap status`).
            why, where = self.repo.backend.read_only, self.repo.backend.description
            self.repo.close()
            raise ReadOnlyStore(f"{where} is read-only here ({why}): a Session cannot start on it (a start "
                                "records itself and may roll the store forward); nothing was changed. Read it "
                                "with Repository.open, and what a start would do with startup.inspect "
                                "(as `snap status` does)")
        self.log: OzolithLog | StoreLog | None
        self._audit: LinkedLog | StoreAudit | None
        if log_in_store:
            self.log = StoreLog(self.repo.backend, key=key)
            self._audit = StoreAudit(self.log)
        else:
            self.log = OzolithLog(ozolith, key=key) if ozolith is not None else None
            self._audit = LinkedLog(self.log) if self.log is not None else None
        # This session's presence: a key in the store and the lock of the same name, held until close
        # (a killed process loses the lock, and the next start finds its key without one).
        try:
            self.presence = Presence(self.repo)
        except BaseException:
            self.repo.close()
            raise
        try:
            self.report = inspect(self.repo, self.log, conversation=conversation, sample=sample, repair=True,
                                  session=self.presence.key)
            if self.report.log_behind is not None and isinstance(self._audit, LinkedLog):
                self._audit.refused = self.report.log_behind
            if self.report.log_settled is not None and isinstance(self._audit, LinkedLog):
                self._audit.follow(self.report.log_settled)  # a clean close moves the mark on from there
            started = utc_now()
            # The sessions that ended badly are reported (above) and forgotten; this one is announced.
            # With it, how far this start settled the OZOLITH file (after its roll-forward, so a crash
            # before this write leaves the older mark: the next start reads more, never less).
            checked = {} if self.report.log_checked is None else {CHECKED_KEY: self.report.log_checked}
            self.repo.backend.write(meta={CLEAN_SHUTDOWN_KEY: None, SESSION_STARTED_KEY: started,
                                          **self.presence.announce_meta(started),
                                          **dict.fromkeys(self.report.dead_sessions), **checked})
        except BaseException:
            self.presence.release()
            self.repo.close()
            raise

    # -- choosing a conversation ---------------------------------------------------

    def conversations(self) -> list[ConversationInfo]:
        """Every conversation with its last activity, newest first."""
        return self.repo.conversations()

    def resume(self, conversation: str) -> ConversationOrchestrator:
        """An orchestrator on an existing conversation, which becomes the active one."""
        if self.repo.head(conversation) is None:
            raise InvalidInput(f"unknown conversation {conversation!r}")
        if self.repo.active_conversation != conversation:
            self.repo.set_active(conversation)
        orchestrator = ConversationOrchestrator(self.repo, conversation, audit=self._audit)
        try:  # after a crash the hints are stale: the next start reads the chains in a few round trips
            self.repo.save_chain_hints([conversation])
        except SnapstoreError:
            pass  # only a cache
        return orchestrator

    def continue_last(self) -> ConversationOrchestrator | None:
        """The conversation startup chose (the active one, else the newest); None if there is none."""
        if self.report.conversation is None:
            return None
        return self.resume(self.report.conversation)

    def start_new(self, conversation: str | None = None, task_description: str | None = None) -> ConversationOrchestrator:
        """A new conversation with a root context; it becomes the active one."""
        if conversation is None:
            # conv-YYYYMMDDTHHMMSS, then -2, -3, ... when that second already has one.
            base = f"conv-{utc_now().replace(':', '').replace('-', '').replace('.', '')[:15]}"
            name = next(n for n in (base if i == 1 else f"{base}-{i}" for i in itertools.count(1))
                        if self.repo.head(n) is None)
        else:
            name = conversation
        if self.repo.head(name) is not None:
            raise InvalidInput(f"conversation {name!r} already exists")
        orchestrator = ConversationOrchestrator(self.repo, name, audit=self._audit)
        orchestrator.create_root_context(task_description)
        return orchestrator

    # -- choices when recovery is needed ---------------------------------------------

    def discard(self) -> None:
        """Accept the store as it is: unmatched log entries stay in the log, unreferenced.

        Recorded in the store (meta ``startup/discarded_log_entries``): later
        starts neither roll those entries forward nor report them again. A log
        behind the store (:func:`log_behind`) is not something to discard:
        :class:`InvalidInput` says so, and the log must be restored.
        """
        if self.report.log_behind is not None:
            raise InvalidInput(f"nothing to discard: {self.report.log_behind}")
        unresolved = sorted(r.sequence for r in self.report.recoveries if r.action not in REPAIRED)
        if unresolved:
            kept = sorted(discarded_sequences(self.repo) | set(unresolved))[-MAX_DISCARDED:]
            self.repo.backend.write(meta={DISCARDED_KEY: json.dumps(kept)})
        self.report = StartupReport(RecoveryStatus.AUDIT_RECOMMENDED, self.report.conversation,
                                    self.report.focus, self.report.conversations, self.report.recoveries,
                                    (), self.report.checks + ("recovery discarded by the caller",))

    def export(self, path: str | os.PathLike[str]) -> int:
        """Write the log entries no snapshot matches to a JSON Lines file; returns how many."""
        if self.log is None:
            raise InvalidInput("no audit log configured")
        wanted = {r.sequence for r in self.report.recoveries if r.action not in REPAIRED}
        lines = [e.to_line() for e in self.log.entries() if e.sequence in wanted]
        # Replaced whole and durably (temporary file, fsync, rename, fsync of the folder), the way
        # `snap checkout -o` and `snap export` write: a crash leaves the old export or the new one.
        write_atomic(Path(path), "".join(line if line.endswith("\n") else line + "\n" for line in lines).encode())
        return len(lines)

    def replay(self, conversation: str, as_conversation: str | None = None):
        """Rebuild a conversation's structure from the log and commit it (see :mod:`snapstore.replay`)."""
        if self.log is None:
            raise InvalidInput("no audit log configured")
        from .replay import commit_replay

        return commit_replay(self.repo, self.log, conversation, as_conversation)

    # -- shutting down -----------------------------------------------------------------

    def close(self, clean: bool = True) -> None:
        """Mark a clean shutdown (unless ``clean`` is False) and release the store.

        A clean close removes this session's key; with ``clean=False`` the key
        stays, as after a crash, and the next start audits. With an OZOLITH
        file, a clean close also moves the mark a start reads the log past
        (audit.CHECKED_KEY) over the entries this session appended and saw
        settled, in the same write: the next start does not read the whole run.
        """
        try:
            if clean:
                shutdown_pack(self.repo)
                meta: dict[str, str | None] = {CLEAN_SHUTDOWN_KEY: utc_now(), **self.presence.clean_meta()}
                if isinstance(self._audit, LinkedLog):
                    meta.update(mark_meta(self.repo, self._audit))
                try:
                    meta.update(self.repo.chain_hint_meta())
                except SnapstoreError:
                    pass  # only a cache
                self.repo.backend.write(meta=meta)
        finally:
            self.presence.release()
            self.repo.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, exc_type, *exc: object) -> None:
        self.close(clean=exc_type is None)


def report_text(report: StartupReport) -> list[str]:
    """A startup report as lines for a terminal."""
    lines = [f"status: {report.status.value}"]
    lines.append(f"resume: {report.conversation or '(no conversation)'}"
                 + (f", focus {report.focus}" if report.focus else ""))
    for r in report.recoveries:
        lines.append(f"log #{r.sequence}: {r.action}: {r.message}")
    for p in report.problems:
        lines.append(f"problem: {p}")
    for c in report.checks:
        lines.append(f"checked: {c}")
    for info in report.conversations:
        mark = "*" if info.active else " "
        lines.append(f"{mark} {info.conversation}  {info.contexts} contexts  {info.exchanges} exchanges  "
                     f"updated {info.updated}")
    return lines


def dumps(report: StartupReport) -> str:
    return json.dumps(report.to_json(), indent=2)

"""The store commands: init, commit, checkout, log, conversations, tree, diff, show, fsck."""

from __future__ import annotations

import errno
import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from snapstore.errors import BackendError, CorruptObject, InvalidInput, SnapstoreError, UnknownRevision
from snapstore.objects import Event
from snapstore.ozolith.files import atomic_file
from snapstore.refs import validate_context_id, validate_conversation_id
from snapstore.repository import FsckReport, Problem, Repository, SnapshotInfo
from snapstore.state import MAX_STATE_BYTES, ConversationState

from .main import Settings, check_location, cli, describe_location, not_empty
from .render import dump_json, render_diff, render_log, render_tree, safe, tree_json

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON (schema in docs/cli.md).")
# A count option above this means "all" (the storage engines take counts of at most 32 bits).
MAX_COUNT = 2**31 - 1


def at_most_max_count(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    """Option callback: a count larger than any store's holds means the same as :data:`MAX_COUNT`."""
    return None if value is None else min(value, MAX_COUNT)


# Show a progress bar on stderr only for stores at least this large.
PROGRESS_MIN_OBJECTS = 20000


def _settings() -> Settings:
    return click.get_current_context().find_object(Settings)


def _repo() -> Repository:
    return _settings().repo()


def _conversation_or_active(repo: Repository, conversation: str | None) -> str:
    if conversation:
        return conversation
    active = repo.active_conversation
    if active is None:
        raise UnknownRevision("no conversation given and no active conversation (see `snap conversations`)")
    try:
        exists = repo.head(active) is not None
    except InvalidInput:  # the store records a name no conversation can have
        exists = False
    if not exists:
        raise UnknownRevision(
            f"no conversation given, and the active conversation the store records, {active!r}, does not exist "
            "(the store is damaged?): name one (see `snap conversations`)"
        )
    return active


def read_state_file(path: str) -> ConversationState:
    """Read and validate a STATE.json file ('-' for stdin)."""
    if path == "-":
        data = sys.stdin.buffer.read(MAX_STATE_BYTES + 1)
        return ConversationState.from_bytes(data, "standard input")
    file = Path(path)
    if not file.exists():
        raise InvalidInput(f"{path}: no such file")
    if not file.is_file():
        raise InvalidInput(f"{path}: not a file")
    if file.stat().st_size > MAX_STATE_BYTES:
        raise InvalidInput(f"{path} is larger than {MAX_STATE_BYTES} bytes")
    return ConversationState.from_bytes(file.read_bytes(), path)


def write_file_atomically(path: str, text: str) -> None:
    """Write text to a temporary file beside ``path``, fsync it, then rename over ``path``.

    The file gets the mode of the file it replaces, else that of any new file
    (0666 less the umask). An error names ``path``, never the temporary file.
    """
    target = Path(path)
    try:
        if target.is_dir():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        with atomic_file(target) as handle:
            handle.write(text.encode("utf-8"))
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror or str(exc), path) from None


@cli.command()
@click.argument("path", required=False, callback=not_empty)
@click.pass_obj
def init(settings: Settings, path: str | None) -> None:
    """Create an empty store at PATH (default: --store, $SNAPSTORE or ./.snapstore)."""
    location = check_location(path) if path is not None else settings.location
    Repository.init(location).close()
    click.echo(f"Initialized empty snapstore store in {describe_location(location)}")


def one_word(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """Option callback: ``--event`` is one printable word; anything else is a bad option value (exit 2)."""
    if not value or not value.isprintable() or " " in value:
        raise click.BadParameter(f"{value!r} is not one printable word, like sidebar_spawn", ctx=ctx, param=param)
    return value


@cli.command()
@click.argument("conversation")
@click.option("--from", "state_file", required=True, metavar="STATE.json", callback=not_empty,
              help="The materialized state to commit ('-' reads standard input).")
@click.option("--event", "event_type", default="commit", show_default=True, callback=one_word,
              help="Event type recorded in the snapshot.")
@click.option("--context", "context_id", default=None, help="Context the event concerns.")
@click.option("-m", "--message", default="", help="Message recorded in the snapshot.")
def commit(conversation: str, state_file: str, event_type: str, context_id: str | None, message: str) -> None:
    """Commit a whole conversation state as a new snapshot and print its id.

    STATE.json is {"conversation_id", "active_context_id", "contexts": [...]}
    with the client's context fields. A state identical to the head creates
    nothing and says so.
    """
    conv = validate_conversation_id(conversation)
    repo = _repo()
    repo.backend.check_writable("`snap commit`")
    state = read_state_file(state_file)
    if state.conversation_id is not None and state.conversation_id != conv:
        raise InvalidInput(
            f"{state_file} holds conversation {state.conversation_id!r}, not {conv!r}"
        )
    if any("\ud800" <= ch <= "\udfff" for ch in message):
        # What bytes that are not UTF-8 on the command line become: the store cannot record it.
        raise InvalidInput(
            "-m holds a lone surrogate (bytes that are not UTF-8?): give the message as UTF-8 text"
        )
    if context_id is not None:
        validate_context_id(context_id)
    result = repo.commit(conv, state, event=Event(event_type, context_id, message))
    if result.created:
        click.echo(result.snapshot)
    else:
        click.echo(f"nothing to commit: state equals the head {result.snapshot}", err=True)
        click.echo(result.snapshot)


@cli.command()
@click.argument("conversation")
@click.option("--at", "at", metavar="REV", help="Restore REV's state as a new snapshot on top of the head.")
@click.option("-o", "--output", metavar="FILE", callback=not_empty,
              help="Write the materialized state (STATE.json) to FILE.")
@json_option
def checkout(conversation: str, at: str | None, output: str | None, as_json: bool) -> None:
    """Make CONVERSATION the active one and show its tree.

    History is never rewritten: --at REV commits REV's state on top.
    `checkout -o FILE` then `commit --from FILE` gives the identical root hash.
    """
    repo = _repo()
    conv = validate_conversation_id(conversation)
    head = repo.head(conv)
    if head is None:
        raise UnknownRevision(f"unknown conversation {conv!r}")
    if at is not None or repo.active_conversation != conv:
        # Refused before -o writes FILE. Checking out the active conversation changes nothing: its
        # tree and state can still be read from a store this process may only read.
        repo.backend.check_writable(f"`snap checkout` ({'--at restores a state' if at else 'makes it active'})")
    # Everything that can fail (reading the tree, rendering it, writing FILE)
    # happens before the store changes: a failed checkout leaves the active
    # conversation and the history as they were.
    shown = repo.resolve(at) if at is not None else head
    tree = repo.outline(shown)
    tree_doc: Any = None
    lines: list[str] = []
    if as_json:
        tree_doc = tree_json(tree)
        dump_json(tree_doc)  # fails here, not after the change, if it cannot be written
    else:
        lines = render_tree(tree)
    if output:
        state = repo.load(shown)
        # After --at the file holds CONV's new head, whatever conversation REV came from.
        state = replace(state, conversation_id=conv)
        write_file_atomically(output, json.dumps(state.to_json(), indent=1) + "\n")
    result = repo.checkout(conv, at)
    if as_json:
        click.echo(dump_json({"conversation": conv, "head": result.snapshot, "restored": result.created,
                              "tree": tree_doc}))
        return
    if result.created:
        click.echo(f"restored {safe(at)} as snapshot {result.snapshot[:12]}", err=True)
    click.echo(f"conversation {conv} at {result.snapshot[:12]}")
    for line in lines:
        click.echo(line)
    if output:
        click.echo(f"wrote {safe(output)}", err=True)


@cli.command()
@click.argument("conversation", required=False)
@click.option("-n", "limit", type=click.IntRange(min=1), callback=at_most_max_count, help="Show at most N snapshots.")
@json_option
def log(conversation: str | None, limit: int | None, as_json: bool) -> None:
    """Show the snapshots of a conversation (or revision), newest first."""
    repo = _repo()
    entries = repo.log(_conversation_or_active(repo, conversation), limit)
    if as_json:
        click.echo(dump_json([log_entry_json(e) for e in entries]))
        return
    for line in render_log(entries):
        click.echo(line)


def log_entry_json(info: SnapshotInfo) -> dict[str, Any]:
    """One ``snap log --json`` entry: ``log`` (the audit-log entry) only when the snapshot has one."""
    out = info.to_json()
    if out.get("log") is None:
        out.pop("log", None)
    return out


@cli.command()
@json_option
def conversations(as_json: bool) -> None:
    """List conversations with their size and last activity, newest first."""
    infos = _repo().conversations()
    if as_json:
        click.echo(dump_json([i.to_json() for i in infos]))
        return
    if not infos:
        click.echo("no conversations yet")
    for info in infos:
        mark = click.style("* ", fg="green", bold=True) if info.active else "  "
        click.echo(
            f"{mark}{click.style(safe(info.conversation), bold=True)}  {info.head[:12]}  "
            f"{info.contexts} contexts  {info.exchanges} exchanges  updated {info.updated}"
        )


@cli.command()
@click.argument("revision", required=False)
@json_option
def tree(revision: str | None, as_json: bool) -> None:
    """Show the context tree of a revision (default: the active conversation)."""
    repo = _repo()
    snapshot_id = repo.resolve(_conversation_or_active(repo, revision))
    state_tree = repo.outline(snapshot_id)  # the nodes only: no exchange is read
    if as_json:
        click.echo(dump_json(tree_json(state_tree)))
        return
    for line in render_tree(state_tree):
        click.echo(line)


@cli.command()
@click.argument("rev_a")
@click.argument("rev_b")
@json_option
def diff(rev_a: str, rev_b: str, as_json: bool) -> None:
    """Show what changed from REV_A to REV_B: contexts added, removed, moved, changed."""
    result = _repo().diff(rev_a, rev_b)
    if as_json:
        click.echo(dump_json(result.to_json()))
        return
    for line in render_diff(result):
        click.echo(line)


@cli.command()
@click.argument("name", metavar="REV_OR_OBJECT_ID")
@json_option
def show(name: str, as_json: bool) -> None:
    """Show one snapshot or object, decoded."""
    kind, oid, value = _repo().show(name)
    if as_json:
        click.echo(dump_json({"kind": kind, "id": oid, "object": value}))
        return
    click.echo(click.style(f"{kind} {oid}", fg="yellow"))
    click.echo(safe_multiline(dump_json(value)))


def safe_multiline(text: str) -> str:
    return "\n".join(safe(line) for line in text.splitlines())


@cli.command()
@json_option
def fsck(as_json: bool) -> None:
    """Re-hash every object and check that refs and reflogs reach only sound objects.

    Exits non-zero if any object is corrupt, missing or of the wrong kind.
    """
    repo = _repo()
    total = repo.backend.count_objects()[0]
    try:
        if total >= PROGRESS_MIN_OBJECTS:
            with click.progressbar(length=total, label="checking objects", file=sys.stderr) as bar:
                report = repo.fsck(progress=bar.update)
        else:
            report = repo.fsck()
    except CorruptObject as exc:
        # A record fsck needs and could not read (a damaged prune record or reflog pack is a
        # finding of its own, and fsck goes on): a report still, naming it.
        report = FsckReport(total, 0, (Problem("corrupt", str(exc), object=exc.object_id),))
    except BackendError as exc:
        # A store fsck could not read (a damaged refs, reflog or meta row, or a reflog pack, is a
        # finding of its own): a report (and --json) still, naming what failed.
        report = FsckReport(total, 0, (Problem("unreadable", f"fsck could not read the store: {exc}", object=None),))
    except SnapstoreError:
        raise
    except (TypeError, AttributeError, ValueError, UnicodeError, RecursionError) as exc:
        # The store holds a value of the wrong type where fsck reads its rows (a ref
        # naming text instead of an id, say): report it as the problem it is.
        if os.environ.get("SNAPSTORE_DEBUG"):
            raise
        report = FsckReport(total, 0, (Problem(
            "unreadable", f"fsck could not read the store: {type(exc).__name__}: {exc}", object=None),))
    if as_json:
        click.echo(dump_json(report.to_json()))
    else:
        for problem in report.problems:
            click.echo(click.style(f"{problem.kind}: {safe(problem.message)}", fg="red"))
        verdict = "ok" if report.ok else f"{len(report.problems)} problem{'' if len(report.problems) == 1 else 's'}"
        missing = f", {report.missing} missing" if report.missing else ""
        click.echo(f"{report.objects} objects, {report.reachable} reachable{missing}: {verdict}")
    if not report.ok:
        click.get_current_context().exit(1)

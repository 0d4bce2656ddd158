"""Commands that keep a store healthy: gc, prune, export, import, stats, compact, upgrade."""

from __future__ import annotations

import re
import sys
from contextlib import AbstractContextManager
from datetime import timedelta

import click

from snapstore.errors import InvalidInput, SnapstoreError
from snapstore.location import open_backend
from snapstore.progress import Bar, quiet

from .audit import find_log, key_option, named_log, ozolith_option
from .commands import PROGRESS_MIN_OBJECTS, at_most_max_count, json_option
from .main import Settings, cli, describe_location, export_target, not_empty
from .render import dump_json, safe

# Below these sizes a phase is over in a moment: no progress bar.
PROGRESS_MIN = {"checking bundle": 64 << 20, "importing": 50, "reading history": 5000}
_DURATION = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


# The longest duration taken: a time that far back or ahead is still a date (year 1 to 9999).
MAX_DURATION = timedelta(days=36500)


class Duration(click.ParamType):
    """``14d``, ``12h``, ``30m``, ``45s``, ``2w``, combinations like ``1d12h``, or ``0``."""

    name = "DURATION"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> timedelta:
        if isinstance(value, timedelta):
            return value
        text = str(value).strip().lower()
        if text == "0":
            return timedelta(0)
        parts = _DURATION.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            self.fail(f"{value!r} is not a duration (like 14d, 12h, 30m, 1d12h or 0)", param, ctx)
        total = timedelta(0)
        try:
            for number, unit in parts:
                total += timedelta(**{_UNITS[unit]: int(number)})
        except (OverflowError, ValueError):  # beyond timedelta's range, or more digits than int() takes
            total = MAX_DURATION + MAX_DURATION
        if total > MAX_DURATION:
            self.fail(f"{text[:40]!r}{'...' if len(text) > 40 else ''} is too long (at most {MAX_DURATION.days}d)",
                      param, ctx)
        return total


DURATION = Duration()


def progress(label: str, total: int) -> AbstractContextManager[Bar]:
    """A progress bar on stderr, for phases large enough to take more than a moment."""
    if total >= PROGRESS_MIN.get(label, PROGRESS_MIN_OBJECTS):
        return click.progressbar(length=total, label=label, file=sys.stderr)
    return quiet(label, total)


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _settings() -> Settings:
    return click.get_current_context().find_object(Settings)


@cli.command()
@click.option("--dry-run", is_flag=True, help="Report what would be deleted; change nothing.")
@click.option("--grace", type=DURATION, default="14d", show_default=True,
              help="Delete only objects a run at least this long ago also found unreachable (14d, 12h, 30m, 0).")
@json_option
def gc(dry_run: bool, grace: timedelta, as_json: bool) -> None:
    """Delete objects that no ref, reflog or recent snapshot reaches.

    Safe while other processes commit. Objects carry no write time, so each
    run records what it found unreachable, and an object is deleted only by a
    later run at least --grace after one that recorded it: the first run
    deletes nothing. Reports objects and bytes freed.
    """
    from snapstore.gc import collect_garbage

    repo = _settings().repo()
    if not dry_run:
        repo.backend.check_writable("`snap gc`")
    report = collect_garbage(repo, grace, dry_run=dry_run, progress=progress)
    if as_json:
        click.echo(dump_json(report.to_json()))
        return
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{verb} {report.deleted} objects, {_size(report.bytes_freed)} stored "
               f"({_size(report.logical_bytes_freed)} uncompressed)")
    if report.unindexed_deleted:
        click.echo(f"{verb} {report.unindexed_deleted} bodies no index row names "
                   f"({_size(report.unindexed_bytes_freed)}; left by lost races or crashes)")
    click.echo(f"{report.objects} objects: {report.reachable} live (reached from refs, reflogs or snapshots "
               f"younger than the grace period), {report.unreachable} not")
    if report.pending:
        click.echo(f"{report.pending} unreachable objects {'would be ' if dry_run else ''}recorded; "
                   f"the oldest become deletable after {report.eligible_after}")
    if report.fence_retries:
        click.echo(f"refs moved {report.fence_retries} times during the sweep; re-marked each time", err=True)


@cli.command()
@click.argument("conversation")
@click.option("--keep-last", type=click.IntRange(min=1), metavar="N", callback=at_most_max_count,
              help="Keep the newest N snapshots.")
@click.option("--older-than", type=DURATION, metavar="DURATION", help="Squash snapshots older than this (e.g. 30d).")
@click.option("--dry-run", is_flag=True, help="Report what would be squashed; change nothing.")
@json_option
def prune(conversation: str, keep_last: int | None, older_than: timedelta | None, dry_run: bool,
          as_json: bool) -> None:
    """Squash CONVERSATION's old history into one snapshot.

    Keeps the newest N snapshots (--keep-last) or those younger than
    DURATION (--older-than); the head always stays. Everything older becomes
    one root snapshot holding the state at the end of the pruned range, and
    the kept snapshots are rewritten on top of it (new ids, same states,
    events and audit-log links; the mapping is recorded). Other conversations
    sharing that history keep it. `snap gc` then frees the space.
    """
    from snapstore.prune import prune as run_prune

    if (keep_last is None) == (older_than is None):
        # Which history to keep is a choice of options: a usage error (exit 2, with the pointer to --help).
        raise click.UsageError("give exactly one of --keep-last N and --older-than DURATION",
                               ctx=click.get_current_context())
    repo = _settings().repo()
    if not dry_run:
        repo.backend.check_writable("`snap prune`")
    report = run_prune(repo, conversation, keep_last=keep_last, older_than=older_than,
                       dry_run=dry_run, progress=progress)
    if as_json:
        click.echo(dump_json(report.to_json()))
        return
    name = safe(report.conversation)
    if not report.changed:
        click.echo(f"{name}: nothing to prune")
        return
    verb = "would squash" if dry_run else "squashed"
    click.echo(f"{name}: {verb} {report.squashed} snapshots ({report.pruned_from} to {report.pruned_to}) "
               f"into {report.squash[:12]}, rewrote {len(report.replaced)}")
    click.echo(f"head {report.old_head[:12]} -> {report.new_head[:12]}")
    if report.dropped:
        click.echo(f"{report.dropped} other past heads of the reflog are no longer history")
    if report.shared_with:
        click.echo(f"history shared with {', '.join(safe(c) for c in report.shared_with)} stays alive there")
    if not dry_run:
        click.echo("run `snap gc` to free the space (after the grace period)", err=True)


@cli.command()
@click.argument("conversations", nargs=-1, metavar="CONV...")
@click.option("-o", "--output", required=True, metavar="FILE", callback=not_empty, help="The bundle file to write.")
@click.option("--all", "everything", is_flag=True, help="Export every conversation.")
@ozolith_option
@key_option
@json_option
@click.pass_obj
def export(settings: Settings, conversations: tuple[str, ...], output: str, everything: bool,
           log_path: str | None, key_file: str | None, as_json: bool) -> None:
    """Write conversations and their whole history to one self-verifying bundle FILE.

    The bundle holds every object the conversations' heads and reflogs
    reach, the refs, the reflogs, and the audit-log entries they name when a
    log is configured (--ozolith). `snap import` checks all of it first.
    """
    from snapstore.bundle import export_bundle

    repo = settings.repo()
    names = list(conversations)
    if everything:
        names += [c for c in repo.conversation_ids() if c not in names]
    if not names and not everything:
        # No CONV and no --all: a usage error. --all on a store with no conversations is not.
        raise click.UsageError("name the conversations to export (or --all)", ctx=click.get_current_context())
    if not names:
        raise InvalidInput("no conversations to export: the store holds none")
    log = find_log(settings, log_path, key_file, required=False)
    target = export_target(output)
    try:
        report = export_bundle(repo, names, target, log=log, progress=progress)
    except SnapstoreError:
        raise
    except OSError as exc:  # name FILE, not the temporary file written beside it
        raise OSError(exc.errno, exc.strerror or str(exc), output) from None
    if as_json:
        click.echo(dump_json(report.to_json()))
        return
    click.echo(f"wrote {safe(output)}: {_count(len(report.conversations), 'conversation')}, "
               f"{_count(report.objects, 'object')}, {report.reflog_entries} reflog and {report.log_entries} "
               f"audit-log entries, {_size(report.bytes)}")


@cli.command("import")
@click.argument("bundle", metavar="FILE", callback=not_empty)
@click.option("--force", is_flag=True, help="Replace a ref that points elsewhere (its old value stays in the reflog).")
@click.option("--dry-run", is_flag=True, help="Check the bundle and report what would change.")
@click.option("--ozolith", "log_path", metavar="LOG", callback=not_empty,
              help="Also check that this audit log holds the bundle's log entries unchanged.")
@json_option
def import_(bundle: str, force: bool, dry_run: bool, log_path: str | None, as_json: bool) -> None:
    """Import a bundle made by `snap export`, after checking every hash in it.

    Nothing becomes visible unless the whole bundle is sound and complete.
    Each conversation's ref is created, or fast-forwarded from a value it
    had; a ref that points elsewhere is refused unless --force. Importing
    the same bundle again changes nothing.
    """
    from snapstore.bundle import import_bundle

    # The check compares entry hashes, so no key is read (import takes no --key-file). A folder
    # or a missing LOG is named as such, not as a log that lacks the bundle's entries.
    log = named_log(log_path) if log_path else None
    repo = _settings().repo()
    if not dry_run:
        repo.backend.check_writable("`snap import`")
    report = import_bundle(repo, bundle, force=force, dry_run=dry_run, log=log, progress=progress)
    if as_json:
        click.echo(dump_json(report.to_json()))
        return
    for action in report.actions:
        old = action.old[:12] if action.old else "(none)"
        click.echo(f"{safe(action.conversation)}: {action.action} {old} -> {action.new[:12]}"
                   + (f" ({action.moves} ref moves)" if action.moves > 1 else ""))
    verb = "would import" if dry_run else "imported"
    click.echo(f"{verb} {report.objects} objects ({report.new_objects} new), {report.log_entries} log entries checked"
               if report.changed else "nothing to import: every conversation is up to date")


@cli.command()
@json_option
def stats(as_json: bool) -> None:
    """Show what the store holds and what deduplication and compression save.

    Objects by kind, stored (compressed) and logical (uncompressed) bytes,
    the bytes every snapshot would take as a full JSON state, both ratios,
    conversations, snapshots and the largest contexts.
    """
    from snapstore.stats import store_stats

    try:
        report = store_stats(_settings().repo(), progress=progress)
    except SnapstoreError:
        raise
    except KeyError as exc:
        # store_stats indexes the objects it read by id: an id it lacks is an object the
        # history names but the store does not hold.
        raise SnapstoreError(
            f"object {exc.args[0] if exc.args else '?'} is named by a conversation's history but is not in "
            "the store: run `snap fsck`"
        ) from None
    if as_json:
        click.echo(dump_json(report.to_json()))
        return
    click.echo(f"{report.conversations} conversations, {report.snapshots} snapshots, {report.objects} objects")
    for kind in report.kinds:
        click.echo(f"  {kind.kind:<9} {kind.objects:>9}  {_size(kind.stored_bytes):>10} stored  "
                   f"{_size(kind.logical_bytes):>10} logical")
    click.echo(f"stored {_size(report.stored_bytes)}, logical {_size(report.logical_bytes)}, "
               f"every snapshot as JSON {_size(report.materialized_bytes)} "
               f"(heads alone {_size(report.heads_materialized_bytes)})")
    if report.dedup_ratio is not None and report.compression_ratio is not None:
        click.echo(f"deduplication {report.dedup_ratio:.1f}x, compression {report.compression_ratio:.1f}x, "
                   f"together {report.dedup_ratio * report.compression_ratio:.1f}x")
    if report.largest_by_exchanges:
        click.echo("largest contexts by exchanges:")
        for c in report.largest_by_exchanges:
            click.echo(f"  {safe(c.conversation)} {safe(c.context)}: {_count(c.exchanges, 'exchange')}, "
                       f"{_size(c.bytes)}")
        click.echo("largest contexts by bytes:")
        for c in report.largest_by_bytes:
            click.echo(f"  {safe(c.conversation)} {safe(c.context)}: {_size(c.bytes)}, "
                       f"{_count(c.exchanges, 'exchange')}")


@cli.command()
@click.option("--keep", type=click.IntRange(min=0), default=0, show_default=True, callback=at_most_max_count,
              help="Leave this many of the newest loose objects loose.")
@json_option
def pack(keep: int, as_json: bool) -> None:
    """Compress cold history together: loose objects, log lines, reflog rows into packs.

    A commit stores its objects one by one ("loose"); versions of the same
    node compress far better together. Packing moves loose objects into
    packs of up to 1,024 (each object re-hashed first), old audit-log lines
    and reflog rows into packs of 128, and gives the freed pages back to
    the file system. Safe while other processes read and commit. Runs by
    itself at a clean shutdown and after many commits; embedded SQLite
    stores only. A corrupt object is left loose, named, and the exit status
    is 1.
    """
    from snapstore.packing import pack as run_pack
    from snapstore.packing import supports_packs

    repo = _settings().repo()
    repo.backend.check_writable("`snap pack`")
    total = repo.backend.loose_count() if supports_packs(repo) else 0  # type: ignore[attr-defined]
    with progress("packing objects", max(total - keep, 0)) as bar:
        report = run_pack(repo, keep=keep, progress=bar.update)
    if as_json:
        click.echo(dump_json(report.to_json()))
    elif not report.applicable:
        click.echo(f"nothing to pack: {report.store} keeps every object on its own")
    else:
        click.echo(f"packed {report.objects} objects into {report.packs_written} "
                   f"pack{'' if report.packs_written == 1 else 's'} "
                   f"({_size(report.loose_bytes)} loose -> {_size(report.pack_bytes)}), "
                   f"{report.log_lines} log lines, {report.reflog_rows} reflog rows")
    for oid, message in report.corrupt:
        click.echo(f"error: corrupt object {oid}: {message} (left loose; see `snap fsck`)", err=True)
    if report.corrupt:
        sys.exit(1)


@cli.command()
@click.option("--dry-run", is_flag=True, help="Only measure: file, WAL and free-page sizes.")
@json_option
def compact(dry_run: bool, as_json: bool) -> None:
    """Give an embedded SQLite store's free space back to the file system.

    Checkpoints and truncates the WAL, then VACUUMs (writers wait meanwhile;
    readers do not). Worth running after a `snap gc` that deleted much.
    Other backends manage their own space.
    """
    from snapstore.compact import compact as run_compact

    report = run_compact(_settings().repo().backend, dry_run=dry_run)
    if as_json:
        click.echo(dump_json(report.to_json()))
        return
    if not report.applicable:
        click.echo(f"nothing to compact: {report.store} manages its own space")
        return
    before = report.before
    assert before is not None
    click.echo(f"before: {_size(before.file_bytes)} file, {_size(before.wal_bytes)} WAL, "
               f"{before.free_pages} free pages ({_size(before.free_bytes)})")
    if report.after is not None:
        after = report.after
        click.echo(f"after:  {_size(after.file_bytes)} file, {_size(after.wal_bytes)} WAL, "
                   f"{after.free_pages} free pages; reclaimed {_size(report.reclaimed)}")
    if report.wal_busy:
        click.echo("readers kept part of the WAL in use; it is truncated at a later checkpoint", err=True)


@cli.command()
@json_option
@click.pass_obj
def upgrade(settings: Settings, as_json: bool) -> None:
    """Bring the store to this snapstore's format version, step by step.

    Each step is explicit and idempotent; a store already at the current
    format is left as it is (and the output says so). Stop every process
    using the store first.
    """
    from snapstore.upgrade import upgrade as run_upgrade

    with open_backend(settings.location) as backend:
        report = run_upgrade(backend)
    if as_json:
        click.echo(dump_json(report.to_json()))
        return
    where = describe_location(settings.location)
    if not report.changed:
        click.echo(f"{where} is at store format {report.after}, the current one: nothing to do")
        return
    for step in report.applied:
        click.echo(f"upgraded {step}")
    click.echo(f"{where} is now at store format {report.after}")

"""Commands that involve the OZOLITH audit log: verify, replay, status."""

from __future__ import annotations

import os
from pathlib import Path

import click

from snapstore.errors import BackendError, DamagedRecord, InvalidInput, LogError, StoreNotFound
from snapstore.ozolith import OzolithLog
from snapstore.refs import validate_conversation_id
from snapstore.storelog import StoreLog

from .main import Settings, cli, export_target, not_empty
from .render import dump_json, safe
from .transfer import destination_store

LOG_ENV = "SNAPSTORE_OZOLITH"
DEFAULT_LOG_NAME = "ozolith.jsonl"

ozolith_option = click.option(
    "--ozolith", "log_path", metavar="LOG", callback=not_empty,
    help=f"The OZOLITH log (default: ${LOG_ENV}, else {DEFAULT_LOG_NAME} inside an embedded store if present).",
)
key_option = click.option("--key-file", "key_file", metavar="F", callback=not_empty, help="The log's key file (default: .ozolith_key beside the log).")


def find_log(settings: Settings, log_path: str | None, key_file: str | None,
             required: bool, may_be_missing: bool = False) -> OzolithLog | StoreLog | None:
    """The audit log to use: ``--ozolith``, else ``$SNAPSTORE_OZOLITH``, else ozolith.jsonl inside an
    embedded store, else the log the store keeps itself (snapstore.storelog) if it holds any entry.
    ``may_be_missing``: a named log file need not exist (the caller judges its absence)."""
    path = log_path or os.environ.get(LOG_ENV)
    if path is None and "://" not in settings.location:
        candidate = Path(settings.location) / DEFAULT_LOG_NAME
        if candidate.exists():
            path = str(candidate)
    if path is None:
        hosted = _store_log(settings, key_file)
        if hosted is not None:
            return hosted
        if required:
            raise InvalidInput("no audit log: give --ozolith LOG (this store keeps none)")
        return None
    return named_log(path, key_file, may_be_missing)


def named_log(path: str, key_file: str | None = None, may_be_missing: bool = False) -> OzolithLog:
    """The log file a user named (``--ozolith LOG``, ``$SNAPSTORE_OZOLITH``), checked before it is read.

    A folder or a missing file is one line naming it, the same for every
    command that takes ``--ozolith``, instead of the system's "Is a directory"
    or an empty log that seems to lack every entry.
    """
    if Path(path).is_dir():
        raise InvalidInput(f"{path} is a folder, not a log file: give the log's path (--ozolith LOG)")
    if not Path(path).is_file() and not (may_be_missing and not Path(path).exists()):
        raise InvalidInput(f"{path}: no such log file")
    if key_file is not None and not Path(key_file).is_file():
        raise InvalidInput(f"{key_file}: no such key file")
    return OzolithLog(path, key_file=key_file)


def _store_log(settings: Settings, key_file: str | None) -> StoreLog | None:
    try:
        repo = settings.repo()
    except StoreNotFound:
        return None
    key = None
    if key_file is not None:
        if not Path(key_file).is_file():
            raise InvalidInput(f"{key_file}: no such key file")
        key = Path(key_file).read_text(encoding="utf-8").strip()
    log = StoreLog(repo.backend, key=key)
    return log if log.exists() else None


@cli.command("export-log")
@click.option("-o", "--output", "output", required=True, metavar="FILE", callback=not_empty,
              help="Write the log here (JSON Lines, the client's format).")
@click.option("--no-key-file", is_flag=True, help="Do not write the signing key to .ozolith_key beside FILE.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def export_log(settings: Settings, output: str, no_key_file: bool, as_json: bool) -> None:
    """Write the audit log the store keeps to a JSON Lines file.

    The file is the client's OZOLITH format entry for entry, so the client's
    tools and `snap verify --ozolith FILE` read it. The signing key goes to
    .ozolith_key beside FILE (mode 0600) unless one is there already or
    --no-key-file is given.
    """
    log = StoreLog(settings.repo().backend)
    if not log.exists():
        raise InvalidInput(f"{settings.location}: this store keeps no audit log")
    target = export_target(output)
    count = log.export(target, key_file=not no_key_file)
    if as_json:
        click.echo(dump_json({"output": str(target), "entries": count}))
    else:
        click.echo(f"wrote {count} log entries to {safe(str(target))}")


@cli.command()
@click.argument("conversation", required=False)
@ozolith_option
@key_option
@click.option("--sample", type=click.IntRange(min=1), metavar="N", help="Spot-check N random entries instead of all.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (schema in docs/cli.md).")
@click.pass_obj
def verify(settings: Settings, conversation: str | None, log_path: str | None, key_file: str | None,
           sample: int | None, as_json: bool) -> None:
    """Check the audit log, the store, and that the two agree.

    Chain integrity (first bad sequence and the kind of fault), store
    integrity (every object re-hashes), the cross-check both ways, structural
    events against the snapshots after them, and the structure replayed from
    the log against the stored head. Exits 0 only when everything agrees.
    """
    from snapstore.verify import Finding, VerifyReport, verify as run_verify

    log = find_log(settings, log_path, key_file, required=False)
    try:
        repo = settings.repo()
    except StoreNotFound:
        if log is None:
            raise
        repo = None  # a log with no store: the chain alone
    if repo is None:
        chain = log.verify(sample=sample)
        report = VerifyReport(tuple(Finding(str(f.kind), f.message, sequence=f.sequence) for f in chain.findings),
                              chain.entries_checked, 0, 0, sample is not None)
    else:
        if log is None and not _holds_conversations(repo):
            raise InvalidInput("nothing to verify: no audit log given and no snapshots in the store")
        try:
            report = run_verify(repo, log, conversation, sample=sample)
        except (LogError, BackendError) as exc:
            # A damaged log pack or store row stops the checks: still a report (and --json), naming it.
            report = VerifyReport((Finding("unreadable", f"verify stopped: {exc}",
                                           sequence=getattr(exc, "sequence", None)),),
                                  0, 0, 0, sample is not None)
    if as_json:
        click.echo(dump_json(report.to_json()))
    else:
        for p in report.problems:
            # The context a finding names may come from the log, which anyone can write: escaped too.
            where = " ".join(f"{k}={safe(v)}" for k, v in p.to_json().items() if k not in ("kind", "message"))
            click.echo(click.style(f"{p.kind}: {safe(p.message)}", fg="red") + (f"  [{where}]" if where else ""))
        count = len(report.problems)
        verdict = click.style("ok", fg="green", bold=True) if report.ok else click.style(
            f"{count} problem{'' if count == 1 else 's'}", fg="red", bold=True)
        scope = "sampled " if report.sampled else ""
        # Beside a live writer: its entries newer than the refs verify read, judged by the next run.
        later = (f" ({report.after_view} log entr{'y' if report.after_view == 1 else 'ies'} appended after the "
                 "store was read: left for the next run)") if report.after_view else ""
        click.echo(f"{scope}{report.entries} log entries, {report.objects} objects, "
                   f"{report.snapshots} snapshots: {verdict}{later}")
    if not report.ok:
        click.get_current_context().exit(1)


def _holds_conversations(repo) -> bool:
    """Whether the store holds a conversation to verify; a damaged refs row counts as one (verify names
    it, as it does with a log, and checks the rest) instead of stopping with an error about it."""
    try:
        return bool(repo.conversation_ids())
    except DamagedRecord:
        return True


@cli.command()
@click.argument("conversation")
@ozolith_option
@key_option
@click.option("--as", "as_conversation", metavar="NEWCONV", help="Commit the rebuilt state as this conversation.")
@click.option("--force", is_flag=True, help="Commit over an existing conversation (its head gets placeholders).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def replay(settings: Settings, conversation: str, log_path: str | None, key_file: str | None,
           as_conversation: str | None, force: bool, as_json: bool) -> None:
    """Rebuild a conversation's structure from the audit log alone and commit it.

    Ids, parents, order, statuses, focus, spawn metadata and merge summaries
    come back; exchange texts do not (the log keeps only their hashes), and
    the output says so.
    """
    from snapstore.replay import commit_replay

    log = find_log(settings, log_path, key_file, required=True)
    try:
        repo = settings.repo()
    except StoreNotFound:
        # No store here yet: make one, and take it away again if the replay fails
        # (no structural entry, a bad --as name), so a failed command leaves nothing.
        with destination_store(settings.location) as new_repo:
            result, replayed = commit_replay(new_repo, log, conversation, as_conversation, force)
    else:
        repo.backend.check_writable("`snap replay`")  # it commits the rebuilt state
        result, replayed = commit_replay(repo, log, conversation, as_conversation, force)
    target = as_conversation or conversation
    if as_json:
        click.echo(dump_json({"conversation": target, "snapshot": result.snapshot, "created": result.created,
                              "contexts": len(replayed.contexts), "entries": replayed.entries,
                              "placeholders": replayed.placeholders, "skipped": replayed.skipped,
                              "not_in_log": ["exchange texts", "inherited exchanges",
                                             "fields changed without a log entry"]}))
        return
    click.echo(f"{target}: {result.snapshot}")
    click.echo(replayed.missing())
    for line in replayed.skipped:
        # A skipped entry is named by the context ids the log holds: escaped, like stored data.
        click.echo(click.style(f"skipped {safe(line)}", fg="yellow"), err=True)


@cli.command()
@ozolith_option
@key_option
@click.option("--conversation", metavar="CONV", help="Report on this conversation instead of the active one.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def status(settings: Settings, log_path: str | None, key_file: str | None, conversation: str | None,
           as_json: bool) -> None:
    """What a restart would resume, and whether the store is CLEAN, AUDIT_RECOMMENDED or RECOVERY_NEEDED.

    Read-only: unlike an API's startup, it neither rolls anything forward
    nor starts a session. Exits 1 when recovery is needed.
    """
    from snapstore.startup import inspect, report_text

    log = find_log(settings, log_path, key_file, required=False, may_be_missing=True)
    repo = settings.repo()
    if conversation is None and (active := repo.active_conversation) is not None:
        try:
            validate_conversation_id(active)
        except InvalidInput:
            raise InvalidInput(
                f"the store records {active!r} as the active conversation, a name no conversation can have "
                "(the store is damaged): give --conversation CONV"
            ) from None
    report = inspect(repo, log, conversation=conversation)
    if isinstance(log, OzolithLog) and not log.path.exists() and report.log_behind is None:
        # Missing, and the store links no entry it would lack: most likely a mistyped path.
        raise InvalidInput(f"{log.path}: no such log file")
    if as_json:
        click.echo(dump_json(report.to_json()))
    else:
        for line in report_text(report):
            click.echo(safe(line))
    if report.status.value == "RECOVERY_NEEDED":
        click.get_current_context().exit(1)

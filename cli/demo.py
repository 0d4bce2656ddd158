"""``snap demo``: a scripted conversation with sidebars, then log, tree, diff and a restart."""

from __future__ import annotations

import click

from snapstore.errors import StoreNotFound
from snapstore.orchestrator import ConversationOrchestrator
from snapstore.repository import Repository
from snapstore.storelog import StoreAudit, StoreLog
from snapstore.verify import verify

from .main import Settings, cli, describe_location
from .render import render_diff, render_log, render_tree


def _heading(text: str) -> None:
    click.echo()
    click.echo(click.style(f"== {text}", fg="cyan", bold=True))


def _free_conversation(repo: Repository, base: str) -> str:
    taken = set(repo.conversation_ids())
    if base not in taken:
        return base
    n = 2
    while f"{base}-{n}" in taken:
        n += 1
    return f"{base}-{n}"


@cli.command()
@click.pass_obj
def demo(settings: Settings) -> None:
    """Run a scripted conversation (spawn, exchanges, pause, merge) into the store,
    show it with log, tree and diff, then restart and load it back.

    Uses --store / $SNAPSTORE, else ./.snapstore, creating the store if needed.
    """
    location = settings.location
    try:
        repo = Repository.open(location)
    except StoreNotFound:
        repo = Repository.init(location)
        click.echo(f"Initialized empty snapstore store in {describe_location(location)}")
    try:
        repo.backend.check_writable("`snap demo`")
    except BaseException:
        repo.close()
        raise
    conv = _free_conversation(repo, "demo")
    # The store keeps the OZOLITH audit log: each operation's entry commits with its snapshot.
    audit_log = StoreLog(repo.backend)
    orch = ConversationOrchestrator(repo, conv, audit=StoreAudit(audit_log))

    _heading(f"conversation {conv}: a root, two sidebars, a merge")
    root = orch.create_root_context("Plan the release")
    orch.add_exchange(root, "What is left before the release?", "Tests are flaky and the docs are stale.")
    orch.add_exchange(root, "Let's look at the flaky test first.", "It fails about one run in ten.")
    side = orch.spawn_sidebar(root, "Investigate the flaky test", inherit_last_n=1)
    orch.add_exchange(side, "Show me the failing assertion.", "assert elapsed < 0.5 — a timing assertion ⏱")
    orch.add_exchange(side, "Can we measure instead of assert?", "Yes: move it to benchmarks/.")
    docs = orch.spawn_sidebar(side, "Check what the docs say about timing", inherit_last_n=0)
    orch.add_exchange(docs, "Do the docs promise a latency?", "No, only throughput figures.")
    orch.pause_context(docs, "waiting for the docs owner")
    orch.switch_focus(side)
    before_merge = orch.head
    orch.merge_sidebar(side, "The flaky test was a timing assertion; moved to a benchmark.")
    orch.add_exchange(root, "Great. What about the docs?", "A sidebar is paused waiting for their owner.")
    click.echo(f"{len(repo.log(conv))} snapshots written, one per operation, each with its audit-log entry")

    _heading(f"snap log {conv} -n 5")
    for line in render_log(repo.log(conv, 5)):
        click.echo(line)

    _heading(f"snap tree {conv}")
    for line in render_tree(repo.tree(repo.head(conv))):
        click.echo(line)

    _heading(f"snap diff {before_merge[:12]} {conv}  (what the merge changed)")
    for line in render_diff(repo.diff(before_merge, conv)):
        click.echo(line)

    _heading("restart: drop everything in memory, reopen the store, load the active conversation")
    expected = orch.state()
    repo.close()
    reopened = Repository.open(location)
    active = reopened.active_conversation
    resumed = ConversationOrchestrator(reopened, active)
    same = resumed.state() == expected
    click.echo(f"active conversation: {active}, focus: {resumed.active_context_id or '(none)'}")
    click.echo(click.style("tree restored exactly" if same else "TREE DIFFERS AFTER RESTART",
                           fg="green" if same else "red", bold=True))
    for line in render_tree(resumed.tree):
        click.echo(line)

    _heading(f"snap verify {conv}  (the audit log against the store)")
    report = verify(reopened, StoreLog(reopened.backend), conv)
    click.echo(f"{report.entries} log entries, {report.objects} objects, {report.snapshots} snapshots: "
               + click.style("ok" if report.ok else f"{len(report.problems)} problems",
                             fg="green" if report.ok else "red", bold=True))
    reopened.close()
    click.echo()
    click.echo(f"Try: snap log {conv}   snap tree {conv}~3   snap diff {conv}~2 {conv}   snap verify   "
               "snap export-log -o ozolith.jsonl")
    if not same or not report.ok:
        click.get_current_context().exit(1)

"""Terminal rendering of trees, logs and diffs (colour only on a terminal)."""

from __future__ import annotations

import json
from typing import Any

import click

from snapstore.diff import TreeDiff
from snapstore.repository import SnapshotInfo
from snapstore.tree import ContextRecord, Outline, OutlineRecord, Tree

STATUS_COLOURS = {
    "active": "green",
    "testing": "green",
    "paused": "yellow",
    "waiting": "yellow",
    "reviewing": "cyan",
    "spawning_child": "cyan",
    "consolidating": "cyan",
    "merged": "blue",
    "archived": "bright_black",
    "failed": "red",
}


def safe(text: Any) -> str:
    """Text with control characters escaped, so stored data cannot drive the terminal."""
    value = str(text)
    if value.isprintable():
        return value
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in value)


def dump_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def tree_json(tree: Tree | Outline) -> Any:
    """The tree as JSON: the root node, a list if there are several roots, null if empty."""

    def node(record: ContextRecord | OutlineRecord) -> dict[str, Any]:
        return {
            "id": record.id,
            "status": record.fields.get("status"),
            "exchanges": record.exchange_count(),
            "focus": record.id == tree.active_context_id,
            "children": [node(tree.records[c]) for c in record.children],
        }

    roots = [node(tree.records[r]) for r in tree.roots]
    if not roots:
        return None
    return roots[0] if len(roots) == 1 else roots


def render_tree(tree: Tree | Outline) -> list[str]:
    """Indented lines: status, exchange count, task and a focus marker."""
    lines: list[str] = []

    def walk(cid: str, prefix: str, connector: str) -> None:
        record = tree.records[cid]
        status = record.fields.get("status")
        status_text = click.style(safe(status or "-"), fg=STATUS_COLOURS.get(str(status)))
        label = click.style(safe(cid), bold=True)
        parts = [f"{prefix}{connector}{label}", status_text, _plural(record.exchange_count(), "exchange")]
        task = record.fields.get("task_description")
        if isinstance(task, str) and task:
            short = task if len(task) <= 50 else task[:47] + "..."
            parts.append(click.style(safe(short), dim=True))
        if cid == tree.active_context_id:
            parts.append(click.style("<- focus", fg="magenta", bold=True))
        lines.append("  ".join(parts))
        kids = record.children
        child_prefix = prefix + ("    " if connector == "└── " else "│   " if connector else "")
        for i, child in enumerate(kids):
            walk(child, child_prefix, "└── " if i == len(kids) - 1 else "├── ")

    for root in tree.roots:
        walk(root, "", "")
    if not lines:
        lines.append("(empty conversation)")
    return lines


def render_log(entries: list[SnapshotInfo]) -> list[str]:
    lines = []
    for info in entries:
        snap = info.snapshot
        head = click.style(f"snapshot {info.id[:12]}", fg="yellow")
        event = snap.event
        what = safe(event.type) + (f" {safe(event.context_id)}" if event.context_id else "")
        line = f"{head}  {snap.time}  {click.style(what, bold=True)}"
        if event.message:
            line += f"  {safe(event.message)}"
        link = info.log or snap.log
        if link is not None:
            line += click.style(f"  [log #{link.sequence}]", dim=True)
        lines.append(line)
    return lines


def _value(v: Any) -> str:
    text = json.dumps(v, ensure_ascii=False)
    return safe(text if len(text) <= 80 else text[:77] + "...")


def render_diff(diff: TreeDiff) -> list[str]:
    """A diff coloured like ``git diff``: + added, - removed, ~ changed, > moved."""
    if not diff:
        return ["no differences"]
    lines = []
    for c in diff.added:
        lines.append(click.style(
            f"+ {safe(c.id)}  (under {safe(c.parent) if c.parent else 'top level'}, {safe(c.status)}, "
            f"{_plural(c.exchanges, 'exchange')})", fg="green"))
    for c in diff.removed:
        lines.append(click.style(f"- {safe(c.id)}  (was under {safe(c.parent) if c.parent else 'top level'})", fg="red"))
    for m in diff.moved:
        lines.append(click.style(
            f"> {safe(m.id)}  moved from {safe(m.old_parent) or 'top level'} to {safe(m.new_parent) or 'top level'}",
            fg="cyan"))
    for ch in diff.changed:
        lines.append(click.style(f"~ {safe(ch.id)}", fg="yellow", bold=True))
        for name, change in ch.fields.items():
            if "old" in change:
                lines.append(click.style(f"    - {safe(name)}: {_value(change['old'])}", fg="red"))
            if "new" in change:
                lines.append(click.style(f"    + {safe(name)}: {_value(change['new'])}", fg="green"))
        for name, ex in ch.memory.items():
            for label, ids, colour in (("added", ex.added, "green"), ("removed", ex.removed, "red"),
                                       ("changed", ex.changed, "yellow")):
                if ids:
                    shown = ", ".join(safe(i) for i in ids[:5]) + (", ..." if len(ids) > 5 else "")
                    lines.append(click.style(
                        f"    {name}: {len(ids)} {label} ({shown})", fg=colour))
    if diff.focus:
        lines.append(click.style(f"* focus {safe(diff.focus[0])} -> {safe(diff.focus[1])}", fg="magenta"))
    for name, change in diff.extra.items():
        lines.append(click.style(f"* {safe(name)}: {_value(change.get('old'))} -> {_value(change.get('new'))}", fg="magenta"))
    return lines

"""Terminal rendering of trees, logs and diffs (colour only on a terminal)."""

from __future__ import annotations

import json
import re
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


# A lone surrogate (U+D800..U+DFFF) is allowed in a stored string but cannot be written as UTF-8.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _escape_surrogates(text: str) -> str:
    """JSON text with each lone surrogate written as its ``\\uXXXX`` escape (it can only sit in a string)."""
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def dump_json(value: Any) -> str:
    """``value`` as JSON indented by two spaces, non-ASCII as it is, lone surrogates escaped.

    Values nested deeper than the json module can go (a chain of 1,000
    sidebars) are written by :func:`_dump_json_iteratively`, with the same text.
    """
    try:
        text = json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)
    except RecursionError:
        text = _dump_json_iteratively(value)
    return _escape_surrogates(text)


def _json_key(key: Any) -> str:
    """A dict key as ``json.dumps`` writes it (it turns non-string scalar keys into strings)."""
    if isinstance(key, str):
        return json.dumps(key, ensure_ascii=False)
    if key is None or isinstance(key, (bool, int, float)):
        return json.dumps(json.dumps(key))
    raise TypeError(f"keys must be str, int, float, bool or None, not {type(key).__name__}")


def _dump_json_iteratively(value: Any, indent: str = "  ") -> str:
    """What ``json.dumps(value, indent=2, ensure_ascii=False)`` gives, without recursion."""
    out: list[str] = []
    # Work items: a value to write at a depth, or a literal piece of text.
    stack: list[tuple[bool, Any, int]] = [(True, value, 0)]
    while stack:
        is_value, item, depth = stack.pop()
        if not is_value:
            out.append(item)
            continue
        if isinstance(item, dict) and item:
            inner = "\n" + indent * (depth + 1)
            work: list[tuple[bool, Any, int]] = [(False, "{", 0)]
            for n, (key, child) in enumerate(item.items()):
                work.append((False, ("," if n else "") + inner + _json_key(key) + ": ", 0))
                work.append((True, child, depth + 1))
            work.append((False, "\n" + indent * depth + "}", 0))
            stack.extend(reversed(work))
        elif isinstance(item, (list, tuple)) and item:
            inner = "\n" + indent * (depth + 1)
            work = [(False, "[", 0)]
            for n, child in enumerate(item):
                work.append((False, ("," if n else "") + inner, 0))
                work.append((True, child, depth + 1))
            work.append((False, "\n" + indent * depth + "]", 0))
            stack.extend(reversed(work))
        else:
            out.append(json.dumps(item, ensure_ascii=False))
    return "".join(out)


def status_text(status: Any) -> str:
    """A context's ``status`` field as the tree and the diff print it.

    A string as it is; ``-`` when there is none (absent, null or empty); any
    other JSON value as JSON (``false``, ``{"x": 1}``), never as Python
    would print it (``False``, ``None``).
    """
    if status is None or status == "":
        return "-"
    return safe(status) if isinstance(status, str) else _value(status)


def _focus(context_id: str | None) -> str:
    """One side of a focus change: the context id, or ``(none)`` when there is no focus."""
    return "(none)" if context_id is None else safe(context_id)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def tree_json(tree: Tree | Outline) -> Any:
    """The tree as JSON: the root node, a list if there are several roots, null if empty.

    Built without recursion, so a chain of any depth is fine.
    """

    def node(record: ContextRecord | OutlineRecord) -> dict[str, Any]:
        return {
            "id": record.id,
            "status": record.fields.get("status"),
            "exchanges": record.exchange_count(),
            "focus": record.id == tree.active_context_id,
            "children": [],
        }

    roots: list[dict[str, Any]] = []
    # (context id, the list its node goes into), children pushed in reverse to keep their order.
    stack: list[tuple[str, list[dict[str, Any]]]] = [(r, roots) for r in reversed(tree.roots)]
    while stack:
        cid, siblings = stack.pop()
        record = tree.records[cid]
        made = node(record)
        siblings.append(made)
        stack.extend((child, made["children"]) for child in reversed(record.children))
    if not roots:
        return None
    return roots[0] if len(roots) == 1 else roots


def render_tree(tree: Tree | Outline) -> list[str]:
    """Indented lines: status, exchange count, task and a focus marker."""
    lines: list[str] = []

    def line(cid: str, prefix: str, connector: str) -> list[tuple[str, str, str]]:
        """Append the line of ``cid``; return its children as (id, prefix, connector), in order."""
        record = tree.records[cid]
        status = record.fields.get("status")
        shown = click.style(status_text(status), fg=STATUS_COLOURS.get(status) if isinstance(status, str) else None)
        label = click.style(safe(cid), bold=True)
        parts = [f"{prefix}{connector}{label}", shown, _plural(record.exchange_count(), "exchange")]
        task = record.fields.get("task_description")
        if isinstance(task, str) and task:
            short = task if len(task) <= 50 else task[:47] + "..."
            parts.append(click.style(safe(short), dim=True))
        if cid == tree.active_context_id:
            parts.append(click.style("<- focus", fg="magenta", bold=True))
        lines.append("  ".join(parts))
        kids = record.children
        child_prefix = prefix + ("    " if connector == "└── " else "│   " if connector else "")
        return [(child, child_prefix, "└── " if i == len(kids) - 1 else "├── ") for i, child in enumerate(kids)]

    # Depth first without recursion: a chain of any depth is fine.
    stack = [(root, "", "") for root in reversed(tree.roots)]
    while stack:
        stack.extend(reversed(line(*stack.pop())))
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
        line = f"{head}  {safe(snap.time)}  {click.style(what, bold=True)}"
        if event.message:
            line += f"  {safe(event.message)}"
        link = info.log or snap.log
        if link is not None:
            line += click.style(f"  [log #{link.sequence}]", dim=True)
        lines.append(line)
    return lines


def _value(v: Any) -> str:
    try:
        text = json.dumps(v, ensure_ascii=False)
    except RecursionError:
        text = "(a value nested too deeply to show)"
    return safe(text if len(text) <= 80 else text[:77] + "...")


def _parent(parent: str | None) -> str:
    """A context's parent as a diff line names it: its id, or ``top level`` for a root."""
    return "top level" if parent is None else safe(parent)


def render_diff(diff: TreeDiff) -> list[str]:
    """A diff coloured like ``git diff``: + added, - removed, ~ changed, > moved."""
    if not diff:
        return ["no differences"]
    lines = []
    for c in diff.added:
        lines.append(click.style(
            f"+ {safe(c.id)}  (under {_parent(c.parent)}, {status_text(c.status)}, "
            f"{_plural(c.exchanges, 'exchange')})", fg="green"))
    for c in diff.removed:
        lines.append(click.style(f"- {safe(c.id)}  (was under {_parent(c.parent)})", fg="red"))
    for m in diff.moved:
        lines.append(click.style(
            f"> {safe(m.id)}  moved from {_parent(m.old_parent)} to {_parent(m.new_parent)}",
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
                        f"    {safe(name)}: {len(ids)} {label} ({shown})", fg=colour))
    if diff.focus:
        lines.append(click.style(f"* focus {_focus(diff.focus[0])} -> {_focus(diff.focus[1])}", fg="magenta"))
    for name, change in diff.extra.items():
        lines.append(click.style(f"* {safe(name)}: {_value(change.get('old'))} -> {_value(change.get('new'))}", fg="magenta"))
    return lines

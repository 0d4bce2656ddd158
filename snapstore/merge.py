"""Three-way merge of conversation trees, for writers that lost a compare-and-swap.

Two API replicas change the same conversation from the same snapshot (the
*base*); one moves the ref first (*theirs*), the other (*ours*) must not
overwrite it. :func:`merge_trees` combines the two against the base:

- a context only one side changed (or added, or removed) takes that side;
- a context both changed is merged field by field: a field one side changed
  takes that side; a field both changed to different values is a conflict;
- exchange lists both sides appended to are concatenated, theirs first, then
  ours (our exchange ids renumbered when they collide with theirs);
  any other divergence of an exchange list is a conflict;
- ``child_sidebar_ids`` both sides extended are merged the same way;
- a context one side removed and the other changed is a conflict;
- the focus and top-level keys follow the side that changed them; a focus
  moved to a context the other side removed is a conflict.

A conflict raises :class:`MergeConflict` naming the context and the field.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import SnapstoreError
from .objects import ContextId, json_equal
from .tree import CHILDREN_FIELD, Chain, ContextRecord, Tree, Workspace

_ABSENT = object()


class MergeConflict(SnapstoreError):
    """Both writers changed the same context in incompatible ways."""

    def __init__(self, context_id: str, what: str) -> None:
        self.context_id = context_id
        self.what = what
        super().__init__(f"conflict in context {context_id}: {what}")


def _extends(longer: Chain, prefix: Chain) -> bool:
    """Whether ``longer`` is ``prefix`` with items appended."""
    if longer.n < prefix.n:
        return False
    if prefix.n == 0:
        return True
    return longer._links[prefix.n - 1] == prefix.head  # noqa: SLF001  (same module family)


def _merge_lists(cid: str, name: str, base: Any, theirs: Any, ours: Any) -> Any:
    if json_equal(ours, base) or json_equal(ours, theirs):
        return theirs
    if json_equal(theirs, base):
        return ours
    if all(isinstance(v, list) for v in (base, theirs, ours)) and json_equal(theirs[: len(base)], base) and \
            json_equal(ours[: len(base)], base):
        return theirs + [x for x in ours[len(base):] if not any(json_equal(x, y) for y in theirs)]
    raise MergeConflict(cid, f"both sides changed {name}")


def _merge_fields(cid: str, base: dict[str, Any], theirs: dict[str, Any], ours: dict[str, Any],
                  mergeable: dict[str, Callable[[Any, Any, Any], Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in list(theirs) + [k for k in ours if k not in theirs]:
        b, t, o = base.get(key, _ABSENT), theirs.get(key, _ABSENT), ours.get(key, _ABSENT)
        if json_equal(o, b) or json_equal(o, t):
            value = t
        elif json_equal(t, b):
            value = o
        elif key in mergeable:
            value = mergeable[key](b, t, o)
        else:
            raise MergeConflict(cid, f"both sides changed {key!r} ({t!r} and {o!r})")
        if value is not _ABSENT:
            out[key] = value
    return out


def merge_trees(base: Tree, theirs: Tree, ours: Tree,
                renumber: Callable[[Any, set[str]], Any] | None = None) -> Workspace:
    """A workspace on top of ``theirs`` holding our changes; raises :class:`MergeConflict`.

    ``renumber(item, taken_ids)`` may give one of our appended exchanges a
    new id when its id is already among theirs.
    """
    ws = Workspace(theirs)
    for cid in set(ours.records) | set(base.records):
        b = base.records.get(cid)
        o = ours.records.get(cid)
        t = theirs.records.get(cid)
        if o is not None and b is not None and o.node_id == b.node_id:
            continue  # we did not touch it
        if o is None and b is None:
            continue
        if o is None:  # we removed it
            if t is None:
                continue
            if t.node_id != b.node_id:  # type: ignore[union-attr]
                raise MergeConflict(cid, "removed on one side, changed on the other")
            ws.remove_context(cid)
            continue
        if t is None:
            if b is not None:
                raise MergeConflict(cid, "changed on one side, removed on the other")
            _put(ws, o)  # we added it
            continue
        if b is None:
            if t.node_id != o.node_id and (not json_equal(t.fields, o.fields) or _chains(t) != _chains(o)):
                raise MergeConflict(cid, "added on both sides with different contents")
            continue
        if t.node_id == b.node_id or t.node_id == o.node_id:
            _put(ws, o)
            continue
        _put_merged(ws, cid, b, t, o, renumber)
    if ours.active_context_id != base.active_context_id:
        if ours.active_context_id is not None and ours.active_context_id not in ws:
            raise MergeConflict(ours.active_context_id, "the focus moved to it on one side, removed on the other")
        ws.set_active(ours.active_context_id)
    if not json_equal(ours.extra, base.extra):
        ws.set_extra(_merge_fields("(conversation)", base.extra, theirs.extra, ours.extra, {}))
    return ws


def _chains(record: ContextRecord) -> dict[str, tuple[str | None, int]]:
    return {name: (chain.head, chain.n) for name, chain in record.memory.items()}


def _put(ws: Workspace, record: ContextRecord) -> None:
    ws.put_record(record)


def _put_merged(ws: Workspace, cid: str, b: ContextRecord, t: ContextRecord, o: ContextRecord,
                renumber: Callable[[Any, set[str]], Any] | None) -> None:
    fields = _merge_fields(cid, b.fields, t.fields, o.fields, {
        CHILDREN_FIELD: lambda bb, tt, oo: _merge_lists(cid, CHILDREN_FIELD, bb, tt, oo),
    })
    memory: dict[str, Chain] = {}
    for name in set(t.memory) | set(o.memory):
        bc, tc, oc = b.memory.get(name, Chain()), t.memory.get(name, Chain()), o.memory.get(name, Chain())
        if oc.head == bc.head or oc.head == tc.head:
            memory[name] = tc
        elif tc.head == bc.head:
            memory[name] = oc
        elif _extends(tc, bc) and _extends(oc, bc):
            taken = {x.get("exchange_id") for x in tc.items if isinstance(x, dict)}
            items = list(tc.items)
            for item in oc.items[bc.n:]:
                if renumber is not None and isinstance(item, dict) and item.get("exchange_id") in taken:
                    item = renumber(item, taken)
                items.append(item)
                if isinstance(item, dict):
                    taken.add(item.get("exchange_id"))
            memory[name] = tc.sync(items, ws.objects)
        else:
            raise MergeConflict(cid, f"both sides rewrote {name}")
    ws.put_record(ContextRecord(ContextId(cid), fields, memory, t.node_id, t.parent, t.children), changed=True)

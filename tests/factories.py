"""Client-like conversation states for tests: full reference §1 contexts and Hypothesis strategies."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import strategies as st

STATUSES = ["active", "testing", "paused", "waiting", "reviewing", "spawning_child",
            "consolidating", "merged", "archived", "failed"]


def exchange(n: int, context_id: str, text: str = "") -> dict[str, Any]:
    return {
        "exchange_id": f"EXCH-{n}",
        "user": f"question {n} {text}",
        "assistant": f"answer {n} — ünïcødé 🙂 {text}",
        "timestamp": f"2026-01-05T10:{n // 60 % 60:02d}:{n % 60:02d}",
        "context_id": context_id,
    }


def context(sid: str, parent: str | None = None, children: list[str] | None = None,
            exchanges: int = 0, status: str = "active") -> dict[str, Any]:
    """A context with every field of the client's SidebarContext, as JSON."""
    return {
        "sidebar_id": sid,
        "uuid": f"0190a0b0-0000-7000-8000-{int(sid.split('-')[-1]) if sid.split('-')[-1].isdigit() else 0:012d}",
        "parent_context_id": parent,
        "child_sidebar_ids": list(children or []),
        "forked_from": None,
        "participants": ["AGENT-operator"],
        "coordinator_agent": "AGENT-operator",
        "inherited_memory": [],
        "local_memory": [exchange(i, sid) for i in range(1, exchanges + 1)],
        "data_refs": {},
        "cross_sidebar_refs": {},
        "scratchpad": None,
        "yarn_board_layout": {},
        "relevance_scores": {},
        "active_focus": [],
        "status": status,
        "priority": "normal",
        "created_at": "2026-01-05T10:00:00",
        "last_activity": "2026-01-05T10:05:00.123456",
        "task_description": None,
        "success_criteria": None,
        "failure_reason": None,
        "tags": [],
        "display_names": {},
    }


def sample_state(conversation: str = "conv-1") -> dict[str, Any]:
    """A root with two sidebars, one nested, exchanges in each."""
    root = context("SB-1", children=["SB-2", "SB-4"], exchanges=3, status="paused")
    child = context("SB-2", parent="SB-1", children=["SB-3"], exchanges=2)
    child["inherited_memory"] = [dict(e, _inherited=True, _inherited_from="SB-1") for e in root["local_memory"][-2:]]
    child["task_description"] = "Investigate the flaky test"
    grandchild = context("SB-3", parent="SB-2", exchanges=1, status="merged")
    other = context("SB-4", parent="SB-1", exchanges=0, status="archived")
    other["cross_sidebar_refs"] = {"SB-2": {"ref_type": "cites", "strength": 0.7, "history": []}}
    return {"conversation_id": conversation, "active_context_id": "SB-2",
            "contexts": [root, child, grandchild, other]}


json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**63),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)


@st.composite
def states(draw, max_contexts: int = 8) -> dict[str, Any]:
    """Random forests of client-like contexts with arbitrary extra fields."""
    n = draw(st.integers(min_value=0, max_value=max_contexts))
    contexts = []
    for i in range(1, n + 1):
        parent = None
        if i > 1 and draw(st.booleans()):
            parent = f"SB-{draw(st.integers(min_value=1, max_value=i - 1))}"
        ctx = context(f"SB-{i}", parent=parent, status=draw(st.sampled_from(STATUSES)))
        ctx["local_memory"] = draw(st.lists(st.one_of(json_values, st.builds(exchange, st.integers(0, 99), st.just(f"SB-{i}"), st.text(max_size=20))), max_size=4))
        for key, value in draw(st.dictionaries(st.text(min_size=1, max_size=10).filter(lambda k: k != "sidebar_id"), json_values, max_size=2)).items():
            if key not in ("local_memory", "inherited_memory", "parent_context_id", "child_sidebar_ids"):
                ctx[key] = value
        contexts.append(ctx)
    by_id = {c["sidebar_id"]: c for c in contexts}
    for c in contexts:
        if c["parent_context_id"] is not None:
            by_id[c["parent_context_id"]]["child_sidebar_ids"].append(c["sidebar_id"])
    active = draw(st.one_of(st.none(), st.sampled_from([c["sidebar_id"] for c in contexts]))) if contexts else None
    return {"conversation_id": "conv", "active_context_id": active, "contexts": contexts}


@st.composite
def mutated(draw, state: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``state`` after a few random edits of the kinds orchestrators make."""
    new = copy.deepcopy(state)
    contexts = new["contexts"]
    for _ in range(draw(st.integers(min_value=0, max_value=4))):
        op = draw(st.sampled_from(["field", "append", "edit", "drop", "add", "remove", "reparent", "focus"]))
        if op == "add" or not contexts:
            sid = f"SB-{100 + len(contexts) + draw(st.integers(0, 999))}"
            if any(c["sidebar_id"] == sid for c in contexts):
                continue
            parent = draw(st.sampled_from([None] + [c["sidebar_id"] for c in contexts]))
            contexts.append(context(sid, parent=parent, exchanges=draw(st.integers(0, 2))))
            for c in contexts:
                if c["sidebar_id"] == parent:
                    c["child_sidebar_ids"].append(sid)
            continue
        target = draw(st.sampled_from(contexts))
        if op == "field":
            target[draw(st.sampled_from(["status", "tags", "task_description", "data_refs", "new_field"]))] = draw(json_values)
        elif op == "append":
            target["local_memory"].append(exchange(draw(st.integers(100, 200)), target["sidebar_id"]))
        elif op == "edit" and target["local_memory"]:
            i = draw(st.integers(0, len(target["local_memory"]) - 1))
            target["local_memory"][i] = draw(json_values)
        elif op == "drop" and target["local_memory"]:
            target["local_memory"].pop(draw(st.integers(0, len(target["local_memory"]) - 1)))
        elif op == "remove":
            contexts.remove(target)
            if new.get("active_context_id") == target["sidebar_id"]:
                new["active_context_id"] = None  # a focus names a context of the state, or none
        elif op == "reparent":
            choices = [None] + [c["sidebar_id"] for c in contexts if c is not target]
            target["parent_context_id"] = draw(st.sampled_from(choices))
        elif op == "focus":
            new["active_context_id"] = draw(st.sampled_from([c["sidebar_id"] for c in contexts]))
    return new


def run_replicas(target, args: list[tuple]) -> list[Any]:
    """Run ``target(*arg, out)`` in one spawned process per ``arg``; each puts one result on ``out``.

    Returns the results (in finishing order) once every process exited 0; fails as soon as one dies.
    """
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*arg, out)) for arg in args]
    for p in procs:
        p.start()
    results: list[Any] = []
    while len(results) < len(procs):
        try:
            results.append(out.get(timeout=5))
        except Exception:
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            assert not dead, f"a replica failed: exit codes {dead}"
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    return results


def crash_after_append(session: Any, conversation: str, user: str = "lost?") -> int:
    """Through a hook of its own (to ``session``, another writer of its OZOLITH file), append an exchange's
    entry to ``conversation`` and die before its ref moves, as a kill there would; the entry's sequence."""
    import pytest

    from snapstore.audit import LinkedLog
    from snapstore.orchestrator import ConversationOrchestrator

    class Died(Exception):
        pass

    def append_then_die(event_type: str, context_id: str, actor: str, payload: dict[str, Any]) -> None:
        LinkedLog(session.log)(event_type, context_id, actor, payload)
        raise Died

    crashing = ConversationOrchestrator(session.repo, conversation, audit=append_then_die)
    with pytest.raises(Died):
        crashing.add_exchange(crashing.active_context_id, user, "no")
    return session.log.last().sequence

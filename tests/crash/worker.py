"""A chat-API stand-in for the crash harness: random operations, each acknowledged on stdout.

    python -m tests.crash.worker STORE LOG SEED [MAX_OPS]

Opens the store through :class:`snapstore.startup.Session` (rolling forward
what a previous kill left half-done), then runs random orchestrator
operations forever (or MAX_OPS), printing ``ACK <n> <snapshot> <root>`` after
each one returns, i.e. once it is durable. The parent kills it with SIGKILL.
"""

from __future__ import annotations

import random
import sys

from snapstore.orchestrator import ConversationOrchestrator
from snapstore.startup import Session

CONVERSATION = "crash"
TEXTS = [
    "plain ascii", "ünïcødé — naïve café", "日本語のテキスト", "emoji 🙂🚀🧪", 'quotes " and \\ backslashes',
    "NUL \u0000 inside", "code:\n```python\nprint('x')\n```\n", "x" * 3000,
]


def random_text(rng: random.Random) -> str:
    return " ".join(rng.choice(TEXTS) for _ in range(rng.randint(1, 6)))


def step(orch: ConversationOrchestrator, rng: random.Random) -> str:
    tree = orch.tree
    ids = list(tree.records)
    live = [c for c in ids if tree.records[c].fields.get("status") not in ("merged", "archived")]
    op = rng.choice(["spawn", "exchange", "exchange", "exchange", "pause", "resume", "merge", "reparent",
                     "archive", "focus"])
    if not ids:
        orch.create_root_context("crash test root")
        return "root"
    if op == "spawn" and live:
        orch.spawn_sidebar(rng.choice(live), random_text(rng)[:80], inherit_last_n=rng.randint(0, 3))
    elif op == "exchange" and live:
        orch.add_exchange(rng.choice(live), random_text(rng), random_text(rng))
    elif op == "pause" and live:
        orch.pause_context(rng.choice(live))
    elif op == "resume":
        orch.resume_context(rng.choice(ids))
    elif op == "merge":
        children = [c for c in live if tree.records[c].parent is not None]
        if not children:
            return "skip"
        orch.merge_sidebar(rng.choice(children), random_text(rng)[:200])
    elif op == "reparent":
        moving = rng.choice(ids)
        banned = set()
        stack = [moving]
        while stack:
            c = stack.pop()
            banned.add(c)
            stack.extend(tree.records[c].children)
        targets = [c for c in ids if c not in banned]
        orch.reparent_context(moving, rng.choice(targets + [None]))
    elif op == "archive" and len(live) > 1:
        orch.archive_context(rng.choice(live))
    elif op == "focus":
        orch.switch_focus(rng.choice(ids))
    else:
        return "skip"
    return op


def start(store: str, log: str, conversation: str) -> tuple[Session, ConversationOrchestrator]:
    """Start as the API does and resume ``conversation`` (or begin it), printing the START line the harness
    waits for. LOG "store": the store keeps the audit log (each operation one transaction); else the
    OZOLITH file at LOG."""
    session = Session(store, log_in_store=True) if log == "store" else Session(store, ozolith=log)
    orch = session.resume(conversation) if session.repo.head(conversation) else \
        ConversationOrchestrator(session.repo, conversation, audit=session._audit)
    print(f"START {session.report.status.value} {orch.head}", flush=True)
    return session, orch


def main() -> None:
    store, log, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    limit = int(sys.argv[4]) if len(sys.argv) > 4 else None
    rng = random.Random(seed)
    session, orch = start(store, log, CONVERSATION)
    n = 0
    while limit is None or n < limit:
        if step(orch, rng) == "skip":
            continue
        n += 1
        print(f"ACK {n} {orch.head} {orch.tree.state_id}", flush=True)
    session.close()


if __name__ == "__main__":
    main()

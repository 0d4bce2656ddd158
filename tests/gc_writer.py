"""A writer process for tests/test_gc.py: commits to one conversation in a loop.

    python -m tests.gc_writer LOCATION OUT_FILE SECONDS [PAUSE [STOP_FILE [HOLD_FILE]]]

Its states cycle, so commits keep re-creating objects that pruning made
garbage (a context whose status toggles back gets its old node id): the
reuse that gc must survive. Every other commit is two-phase (objects first,
then a pause, then the ref), like an audited orchestrator commit. Each
commit that creates a snapshot appends ``<snapshot id> <sha256 of the
state's canonical JSON>`` to OUT_FILE. PAUSE seconds (default 0) pass
between commits, so that a slow pruner also gets its turn. It stops after
SECONDS, or earlier once STOP_FILE exists (the test has seen what it needs).
While HOLD_FILE exists it waits before its next commit (a pruner that lost
race after race gets one turn).
"""

from __future__ import annotations

import hashlib
import os
import sys
import time

from snapstore.errors import RefConflict
from snapstore.objects import Event, canonical_json
from snapstore.repository import Repository

from .factories import exchange, sample_state

CONVERSATION = "busy"


def digest(state: dict) -> str:
    return hashlib.sha256(canonical_json(state)).hexdigest()


def states(n: int) -> dict:
    """The n-th state: a status that cycles through three values, an exchange every fourth step."""
    state = sample_state(CONVERSATION)
    state["contexts"][1]["status"] = ("active", "paused", "waiting")[n % 3]
    for i in range(n // 4 % 6):
        state["contexts"][0]["local_memory"].append(exchange(100 + i, "SB-1"))
    return state


def main(location: str, out_path: str, seconds: float, pause: float = 0.0, stop_file: str | None = None,
         hold_file: str | None = None) -> None:
    repo = Repository.open(location)
    deadline = time.monotonic() + seconds
    n = 0
    with open(out_path, "a", encoding="ascii") as out:
        while time.monotonic() < deadline and not (stop_file and os.path.exists(stop_file)):
            while hold_file and os.path.exists(hold_file) and time.monotonic() < deadline:
                time.sleep(0.005)
            state = states(n)
            try:
                if n % 2:
                    result = repo.commit(CONVERSATION, state, event=Event("commit", None, f"step {n}"))
                else:
                    staging = repo.stage(CONVERSATION)
                    for context in state["contexts"]:
                        staging.workspace.put_context(context)
                    staging.workspace.set_active(state["active_context_id"])
                    result = repo.commit_staged(staging, event=Event("commit", None, f"step {n} (two-phase)"),
                                                before_ref=lambda prepared: time.sleep(0.002))
            except RefConflict:
                continue  # a prune moved the ref meanwhile: do the same step again on top of it
            if result.created:
                out.write(f"{result.snapshot} {digest(state)}\n")
                out.flush()
            n += 1
            if pause:
                time.sleep(pause)
    repo.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]) if len(sys.argv) > 4 else 0.0,
         sys.argv[5] if len(sys.argv) > 5 else None, sys.argv[6] if len(sys.argv) > 6 else None)

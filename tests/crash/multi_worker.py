"""One of several API replicas on one store, for tests/crash/multi.py.

    python -m tests.crash.multi_worker STORE LOG SEED CONVERSATION [SHARED]

The operations of tests/crash/worker.py (``step``), on the conversation it is
given, made by a process that opens the store with
:class:`snapstore.startup.Session` beside other running ones. Prints
``START <status> <head>``, then ``ACK <n> <snapshot> <root>`` once each
operation returned (it is durable). With SHARED (``1``) other workers change
the same conversation: an operation the orchestrator refuses on the state
another writer left (``MergeConflict``: the other writer changed the watched
field; ``InvalidInput``: the context it names no longer allows it, say a
move under its own new descendant) prints ``REFUSED <n> <error>`` and the
worker goes on from that state, as the API would after showing the user. Any
other error ends the worker with its traceback on stderr: the harness
reports it.
"""

from __future__ import annotations

import random
import sys

from snapstore.errors import InvalidInput
from snapstore.merge import MergeConflict
from tests.crash.worker import start, step


def main() -> None:
    store, log, seed, conversation = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    shared = len(sys.argv) > 5 and sys.argv[5] == "1"
    rng = random.Random(seed)
    session, orch = start(store, log, conversation)  # the session lives (and holds its presence) until killed
    n = 0
    refused = 0
    while True:
        try:
            if step(orch, rng) == "skip":
                continue
        except (MergeConflict, InvalidInput) as exc:
            if not shared:
                raise
            refused += 1
            print(f"REFUSED {refused} {type(exc).__name__}: {exc}".replace("\n", " "), flush=True)
            continue
        n += 1
        print(f"ACK {n} {orch.head} {orch.tree.state_id}", flush=True)


if __name__ == "__main__":
    main()

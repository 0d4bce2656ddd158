"""An orchestrator driven line by line on stdin, for fault-injection tests.

    python -m tests.faults.worker STORE LOG    (LOG "store": the log kept in the store)

Commands: ``root``, ``exchange [SIZE]``, ``spawn``, ``state``, ``quit``.
Each answers one line: ``OK <head>``, ``ERR <message>`` or ``STATE <sha256 of the state JSON> <head>``.
"""

from __future__ import annotations

import hashlib
import json
import sys

from snapstore.startup import Session


def main() -> None:
    store, log = sys.argv[1], sys.argv[2]
    # LOG "store": the store keeps the audit log (one transaction per operation).
    session = Session(store, log_in_store=True) if log == "store" else Session(store, ozolith=log)
    orch = session.continue_last() or session.start_new("faults", "fault injection root")
    print(f"OK {orch.head}", flush=True)
    n = 0
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        try:
            if words[0] == "exchange":
                n += 1
                size = int(words[1]) if len(words) > 1 else 200
                orch.add_exchange(orch.active_context_id, f"question {n} ü🙂", "answer " + "x" * size)
            elif words[0] == "spawn":
                orch.spawn_sidebar(orch.active_context_id, "a sidebar", inherit_last_n=2)
            elif words[0] == "state":
                digest = hashlib.sha256(json.dumps(orch.state(), sort_keys=True).encode()).hexdigest()
                print(f"STATE {digest} {orch.head}", flush=True)
                continue
            elif words[0] == "quit":
                break
            print(f"OK {orch.head}", flush=True)
        except Exception as exc:  # the test reads the one-line error
            print("ERR " + f"{type(exc).__name__}: {exc}".replace("\n", " "), flush=True)
    session.close()
    print("BYE", flush=True)


if __name__ == "__main__":
    main()

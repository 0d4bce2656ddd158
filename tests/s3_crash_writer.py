"""A writer for tests/test_gc_s3.py that stops between its PUTs and its commit, to be killed there.

    python -m tests.s3_crash_writer LOCATION

Commits a new conversation ``crashed`` to the S3 store at LOCATION; once the
bodies are in the bucket (and the write holds its claim on the sweep lock),
prints ``uploaded`` and waits, never committing.
"""

from __future__ import annotations

import sys
import time

from snapstore.repository import Repository

from .factories import exchange, sample_state


def main(location: str) -> None:
    repo = Repository.open(location)

    def stall(*args: object, **kwargs: object) -> None:
        print("uploaded", flush=True)
        time.sleep(600)

    repo.backend._commit = stall  # type: ignore[method-assign]
    state = sample_state("crashed")
    state["contexts"][0]["local_memory"].append(exchange(1, "SB-1", "never committed"))
    repo.commit("crashed", state)


if __name__ == "__main__":
    main(sys.argv[1])

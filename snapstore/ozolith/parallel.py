"""Full verification on two cores: a helper process walks the second half of a large log.

The chain is sequential only at its joints. Each half of the log can be
walked on its own (hashes, signatures, sequences and links inside it); the
halves must then meet: the second half's first entry holds the sequence
after the first half's last, and names that entry's hash. The helper is a
fresh interpreter (``python -m snapstore.ozolith.parallel``) fed over a
pipe, so nothing depends on how the caller's program was started.

Only a clean result is used. If either half has any finding, the joint does
not hold, or the helper fails in any way, :func:`walk_in_halves` returns None
and the caller walks the whole log itself, so every finding, and where it
is, comes from one sequential walk. The key reaches the helper through its
stdin pipe, never its command line or environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from typing import Any

from .entry import Sealer
from .findings import Findings
from .walk import Walked, walk

#: Below this many lines the helper's start-up costs more than it saves.
MIN_LINES = 20_000


def walk_in_halves(
    lines: list[tuple[int, bytes]], key: bytes, anchored: set[int], strict: bool, max_findings: int,
    *, min_lines: int = MIN_LINES,
) -> Walked | None:
    """Walk a sound log on two cores; None when the log is small, not sound, or the helper failed."""
    if len(lines) < max(min_lines, 2) or (os.cpu_count() or 1) < 2:
        return None
    middle = len(lines) // 2
    second = lines[middle:]
    if second[-1][0] - second[0][0] != len(second) - 1:
        return None  # blank lines in between: not worth numbering them across the pipe
    header = {"key": key.hex(), "strict": strict, "anchored": sorted(anchored),
              "max_findings": max_findings, "first_line": second[0][0]}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    try:
        helper = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    except OSError:
        return None
    feeder = threading.Thread(target=_feed, args=(helper, header, second), daemon=True)
    feeder.start()
    try:
        out = Findings()
        first = walk(lines[:middle], Sealer(key), anchored, strict, out, max_findings)
        if out.items:
            return None
        # A watchdog, not a wait: the helper's output must be read while it runs.
        watchdog = threading.Timer(60 + len(second) / 1_000, helper.kill)
        watchdog.start()
        try:
            output = helper.stdout.read()  # type: ignore[union-attr]
        finally:
            watchdog.cancel()
        if helper.wait() != 0:
            return None
        return _join(first, json.loads(output))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    finally:
        if helper.poll() is None:
            helper.kill()
            helper.wait()
        helper.stdout.close()  # type: ignore[union-attr]
        feeder.join()


def _feed(helper: subprocess.Popen[bytes], header: dict[str, Any], lines: list[tuple[int, bytes]]) -> None:
    try:
        helper.stdin.write(json.dumps(header).encode() + b"\n")  # type: ignore[union-attr]
        helper.stdin.write(b"\n".join(raw for _, raw in lines))  # type: ignore[union-attr]
        helper.stdin.close()  # type: ignore[union-attr]
    except OSError:
        pass  # the helper died; the caller sees it fail


def _join(first: Walked, second: dict[str, Any]) -> Walked | None:
    """Both halves as one walk, if the second is clean and starts where the first ended."""
    start, previous_hash = second["first"]
    last = second["last_sequence"]
    if (not second["clean"] or start != first.last_sequence + 1 or previous_hash != first.root_hash
            or second["count"] != last - start + 1):
        return None
    return Walked(
        last_sequence=last,
        root_hash=second["root_hash"],
        first=first.first,
        stored_hash=first.stored_hash | {int(s): h for s, h in second["stored_hash"].items()},
        sequences=first.sequences + list(range(start, last + 1)),
        anchor_entries=first.anchor_entries + [tuple(item) for item in second["anchor_entries"]],
    )


def _helper() -> None:
    """Walk the lines on stdin as a later part of a log; print what was found as JSON."""
    header = json.loads(sys.stdin.buffer.readline())
    data = sys.stdin.buffer.read()
    lines = list(enumerate(data.split(b"\n"), header["first_line"]))
    out = Findings()
    walked = walk(lines, Sealer(bytes.fromhex(header["key"])), set(header["anchored"]), header["strict"],
                  out, header["max_findings"], start=None)
    result = {
        "clean": not out.items and walked.first is not None,
        "first": walked.first,
        "last_sequence": walked.last_sequence,
        "root_hash": walked.root_hash,
        "count": len(walked.sequences),
        "stored_hash": walked.stored_hash,
        "anchor_entries": walked.anchor_entries,
    }
    sys.stdout.buffer.write(json.dumps(result).encode())


if __name__ == "__main__":
    _helper()

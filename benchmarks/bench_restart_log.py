"""A start after a long clean run: how much of the audit log it reads, and how long it takes.

    python benchmarks/bench_restart_log.py [--ops 2000,20000] [--starts 5] [--dir DIR] [--against REV]

For each N in ``--ops``: a store (embedded SQLite) with an audit log, one
conversation ("idle") touched once, then N exchanges spread over three busy
conversations by one :class:`~snapstore.startup.Session` that is then closed
cleanly, as a long-running API process would be. Then the next start
(``Session(store, ozolith=log)``, the whole constructor: presence, the scan of
the log, roll-forward, the log-behind check, the meta write) is timed
``--starts`` times, each on a fresh copy of the closed store and log (copied
untimed; with ``--against``, the two codes' starts alternate), and the log entries the first parsed are counted through a wrapper of the
real parser. Both logs: an OZOLITH file (bounded by the mark a start or a
clean close records, meta ``startup/log_checked``) and the log kept in the
store (``log_in_store=True``, bounded by the newest link of any
conversation). ``--against REV`` builds and times snapstore at a git revision
beside the working tree, in the same process. Prints markdown.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import snapstore.startup as current
from _common import machine, snapstore_at, table, work_folder

BUSY = 3


def _package(module: Any) -> Any:
    """The snapstore package a ``startup`` module belongs to (the working tree's or ``--against``'s)."""
    return sys.modules[module.__name__.rsplit(".", 1)[0]]


def build(startup: Any, folder: Path, operations: int, in_store: bool) -> None:
    """A store after one long clean run: the idle conversation's one exchange, then ``operations`` more."""
    store, log = str(folder / "store"), (None if in_store else str(folder / "log.jsonl"))
    session = startup.Session(store, log_in_store=True) if in_store else startup.Session(store, ozolith=log)
    orch = session.start_new("idle", "touched once")
    orch.add_exchange(orch.active_context_id, "q", "a")
    busy = [session.start_new(f"busy{n}", "works on") for n in range(BUSY)]
    for i in range(operations):
        o = busy[i % BUSY]
        o.add_exchange(o.active_context_id, f"question {i}", f"answer {i}")
    session.close()


def start_once(startup: Any, folder: Path, log: bool, tag: str) -> tuple[float, int]:
    """Seconds of one start on a fresh copy of the closed store in ``folder``, and the entries it parsed."""
    package = _package(startup)
    log_module, storelog = package.ozolith.log, package.storelog
    parse, row = log_module._parse_entry, storelog.StoreLog._entry
    counted = [0]

    def count_line(*args: Any) -> Any:
        counted[0] += 1
        return parse(*args)

    def count_row(self: Any, sequence: int, text: str) -> Any:
        counted[0] += 1
        return row(self, sequence, text)

    copy = folder / f"start-{tag}"
    shutil.copytree(folder / "store", copy / "store")
    for path in folder.glob("log.jsonl*"):
        shutil.copy2(path, copy / path.name)
    log_module._parse_entry, storelog.StoreLog._entry = count_line, count_row
    try:
        began = time.perf_counter()
        if log:
            session = startup.Session(str(copy / "store"), ozolith=str(copy / "log.jsonl"))
        else:
            session = startup.Session(str(copy / "store"), log_in_store=True)
        elapsed = time.perf_counter() - began
    finally:
        log_module._parse_entry, storelog.StoreLog._entry = parse, row
    try:
        if session.report.status.value != "CLEAN":
            raise AssertionError(f"start of {copy}: {session.report.status.value}: {session.report.problems}")
    finally:
        session.close()
    shutil.rmtree(copy)
    return elapsed, counted[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ops", default="2000,20000", help="operations of the long run, comma-separated")
    parser.add_argument("--starts", type=int, default=5, help="timed starts per store (the median is shown)")
    parser.add_argument("--dir", default=None, help="where the temporary stores go")
    parser.add_argument("--against", default=None, help="also build and time snapstore at this git revision")
    args = parser.parse_args(argv)
    root = work_folder(args.dir, "bench-restart-log-")
    print(machine(str(root)))
    codes = [("working tree", current)]
    if args.against:
        codes.append((args.against, snapstore_at(args.against, root, "startup")))
    rows = []
    try:
        for operations in (int(n) for n in args.ops.split(",")):
            for in_store in (False, True):
                built = []
                for label, startup in codes:
                    folder = root / f"{label.replace(' ', '-').replace('/', '_')}-{operations}-{in_store}"
                    folder.mkdir()
                    began = time.perf_counter()
                    build(startup, folder, operations, in_store)
                    built.append((label, startup, folder, time.perf_counter() - began, [], []))
                for n in range(args.starts):  # interleaved, so that the machine's drift hits every code alike
                    for label, startup, folder, _, seconds, parsed in built:
                        elapsed, count = start_once(startup, folder, not in_store, str(n))
                        seconds.append(elapsed)
                        parsed.append(count)
                for label, startup, folder, run, seconds, parsed in built:
                    rows.append([f"{operations:,}", "in the store" if in_store else "OZOLITH file", label,
                                 f"{parsed[0]:,}", f"{statistics.median(seconds) * 1e3:,.1f}",
                                 f"{min(seconds) * 1e3:,.1f}–{max(seconds) * 1e3:,.1f}", f"{run:,.0f}"])
                    print(" | ".join(rows[-1]), flush=True)
                    shutil.rmtree(folder)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print()
    print(table(["operations", "log", "code", "entries parsed by the start", "start (ms, median)",
                 "range (ms)", "run (s)"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

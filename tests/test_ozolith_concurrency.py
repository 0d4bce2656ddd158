"""Concurrent writers and killed writers: the chain never forks, never tears, never gaps."""

from __future__ import annotations

import itertools
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import snapstore
from snapstore.ozolith import OzolithLog, verify_chain

KEY = "c0" * 32
ROOT = str(Path(snapstore.__file__).resolve().parent.parent)


def append_many(path: str, writer: str, count: int, start: multiprocessing.synchronize.Event) -> None:
    start.wait()
    log = OzolithLog(path, key=KEY)
    for n in range(count):
        log.append("exchange", f"SB-{writer}", "assistant", {"writer": writer, "n": n})


def check_interleaved_chain(path: Path, writers: list[str], count: int) -> None:
    report = verify_chain(path, KEY)
    assert report.ok, report.findings
    entries = list(OzolithLog(path, key=KEY).entries())
    assert [e.sequence for e in entries] == list(range(1, len(writers) * count + 1))
    for writer in writers:  # each writer's own entries in its own order, none lost
        assert [e.payload["n"] for e in entries if e.payload["writer"] == writer] == list(range(count))


def test_two_processes_appending_give_one_gapless_chain(tmp_path: Path) -> None:
    path = tmp_path / "ozolith.jsonl"
    context = multiprocessing.get_context("fork")
    start = context.Event()
    workers = [context.Process(target=append_many, args=(str(path), name, 150, start)) for name in "ab"]
    for worker in workers:
        worker.start()
    start.set()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    check_interleaved_chain(path, ["a", "b"], 150)
    contexts = [e.context_id for e in OzolithLog(path, key=KEY).entries()]
    switches = sum(1 for x, y in itertools.pairwise(contexts) if x != y)
    assert switches > 1, "the writers never overlapped: the test proved nothing"


def test_threads_appending_give_one_gapless_chain(tmp_path: Path) -> None:
    path = tmp_path / "ozolith.jsonl"
    start = threading.Event()
    threads = [threading.Thread(target=append_many, args=(str(path), name, 60, start)) for name in "wxyz"]
    for thread in threads:
        thread.start()
    start.set()
    for thread in threads:
        thread.join(120)
    check_interleaved_chain(path, list("wxyz"), 60)


WRITER = """
import sys
from snapstore.ozolith import OzolithLog
log = OzolithLog(sys.argv[1], key=sys.argv[2])
n = 0
while True:
    log.append("exchange", "SB-1", "assistant", {"n": n, "pad": "x" * 4000})
    n += 1
    if n == 20:
        print("ready", flush=True)
"""


def test_a_writer_killed_mid_stream_leaves_a_sound_log(tmp_path: Path) -> None:
    path = tmp_path / "ozolith.jsonl"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for round_ in range(3):
        child = subprocess.Popen([sys.executable, "-c", WRITER, str(path), KEY], env=env,
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        time.sleep(0.05 * round_)
        child.send_signal(signal.SIGKILL)
        child.wait()
        report = verify_chain(path, KEY)
        assert report.ok, report.findings
        # and the log goes on where the killed writer stopped
        last = OzolithLog(path, key=KEY).append("exchange", "SB-1", "human", {"after_kill": round_})
        assert last.sequence == report.last_sequence + 1
    assert verify_chain(path, KEY).ok

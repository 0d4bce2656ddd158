"""Fault injection: a full disk and I/O errors in the middle of a write.

The operation must raise a clear error, leave the in-memory tree and the
store at the previous state, and the next operation must succeed once the
fault is gone. A full disk is a real, tiny tmpfs filled up; I/O errors come
from an LD_PRELOAD shim (tests/faults/eio_shim.c) that fails write, pwrite and
fsync with EIO on chosen files, since this machine has no device-mapper.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from snapstore.ozolith import OzolithLog
from snapstore.repository import Repository
from snapstore.storelog import StoreLog
from snapstore.verify import verify

ROOT = Path(__file__).resolve().parent.parent


class Worker:
    def __init__(self, store: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.faults.worker", str(store), str(log)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        )
        assert self.read().startswith("OK")

    def read(self) -> str:
        line = self.proc.stdout.readline().strip()
        if not line:
            raise AssertionError(f"worker died: {self.proc.stderr.read()[-2000:]}")
        return line

    def ask(self, command: str) -> str:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.read()

    def state(self) -> tuple[str, str]:
        _, digest, head = self.ask("state").split()
        return digest, head

    def close(self) -> None:
        self.ask("quit")
        self.proc.wait(timeout=30)


def check_store(store: Path, log: Path, head: str) -> None:
    repo = Repository.open(str(store))
    try:
        assert repo.head("faults") == head
        assert repo.fsck().ok
        report = verify(repo, StoreLog(repo.backend) if str(log) == "store" else OzolithLog(log))
        assert report.ok, report.problems
    finally:
        repo.close()


def exercise(worker: Worker, break_it, fix_it, store: Path, log: Path, expected_error: str) -> None:
    for _ in range(3):
        assert worker.ask("exchange").startswith("OK")
    before, head = worker.state()
    break_it()
    failures = [worker.ask(cmd) for cmd in ("exchange 20000", "spawn", "exchange 20000")]
    assert all(f.startswith("ERR") for f in failures), failures
    assert any(re.search(expected_error, f) for f in failures), failures
    # Nothing changed, in memory or in the store.
    assert worker.state() == (before, head)
    fix_it()
    assert worker.ask("exchange").startswith("OK")
    assert worker.ask("spawn").startswith("OK")
    _, new_head = worker.state()
    worker.close()
    check_store(store, log, new_head)
    repo = Repository.open(str(store))
    # The failed operations left no snapshot in history: the head's grandparent is the old head.
    assert repo.log("faults")[2].id == head
    repo.close()


@pytest.fixture
def tiny_disk(tmp_path):
    mount = tmp_path / "tiny"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot mount a tmpfs for the full-disk test: {result.stderr.decode().strip()}")
        pytest.skip("mounting a tmpfs needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.parametrize("log_kind", ["file", "store"])
def test_full_disk(tiny_disk, log_kind):
    store = tiny_disk / "store"
    log = store / "ozolith.jsonl" if log_kind == "file" else Path("store")
    worker = Worker(store, log)
    filler = tiny_disk / "filler"

    def fill():
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass  # the disk is full
        finally:
            os.close(fd)

    exercise(worker, fill, lambda: filler.unlink(), store, log, r"disk is full|No space left on device")


@pytest.fixture(scope="module")
def eio_shim(tmp_path_factory):
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed to build the fault-injection shim")
    out = tmp_path_factory.mktemp("shim") / "eio_shim.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(out), str(ROOT / "tests" / "faults" / "eio_shim.c"),
                    "-ldl"], check=True)
    return out


@pytest.mark.parametrize("target", ["/store/store.sqlite", "/store/ozolith.jsonl", "/store/", "log in store"])
def test_io_errors(tmp_path, eio_shim, target):
    """EIO on the database only, on the log only, on everything in the store folder, and on the
    database of a store that keeps the log itself."""
    store, log = tmp_path / "store", tmp_path / "store" / "ozolith.jsonl"
    if target == "log in store":
        log, target = Path("store"), "/store/store.sqlite"
    trigger = tmp_path / "fail-now"
    worker = Worker(store, log, {"LD_PRELOAD": str(eio_shim), "SNAPSTORE_EIO_TRIGGER": str(trigger),
                                 "SNAPSTORE_EIO_MATCH": str(tmp_path) + target})
    exercise(worker, trigger.touch, trigger.unlink, store, log, r"I/O error|Input/output error")

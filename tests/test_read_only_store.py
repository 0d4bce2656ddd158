"""A store this process may only read: a backup on a read-only mount, another user's store, ``chmod -R a-w``.

The read commands work on it, the ones that change a store refuse in one
line naming it and change nothing, and a :class:`Session` refuses to start.
chmod does not stop root, so the store is read by a child process that, when
the tests run as root, drops to an unprivileged user first (as a normal
user, chmod alone does it). One child runs many commands through CliRunner,
to keep the module to a few seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

import snapstore
from snapstore.cli.main import cli
from snapstore.repository import Repository
from snapstore.startup import Session

from .factories import sample_state

# Where the snapstore under test is imported from: the child imports the same one.
SOURCE = str(Path(snapstore.__file__).resolve().parent.parent)

# Runs `snap --store STORE ARGS` for each ARGS of a JSON list, in one process; prints the results as JSON.
CLI_CHILD = r"""
import json, sys
from click.testing import CliRunner
from snapstore.cli.main import cli
store, commands = sys.argv[1], json.loads(sys.argv[2])
runner = CliRunner()
out = []
for args in commands:
    result = runner.invoke(cli, ["--store", store, *args])
    out.append({"args": args, "code": result.exit_code, "stdout": result.stdout, "stderr": result.stderr,
                "error": None if result.exception is None or isinstance(result.exception, SystemExit)
                else repr(result.exception)})
print(json.dumps(out))
"""

# The Python API on the store: what it reads, and what a write and a Session start raise.
API_CHILD = r"""
import json, sys
from snapstore.errors import ReadOnlyStore
from snapstore.repository import Repository
from snapstore.startup import Session
store = sys.argv[1]
out = {}
with Repository.open(store) as repo:
    out["conversations"] = repo.conversation_ids()
    out["log"] = len(repo.log("demo"))
    try:
        repo.set_active("other")
        out["write"] = "written"
    except ReadOnlyStore as exc:
        out["write"] = str(exc)
try:
    Session(store, create=False, log_in_store=True).close()
    out["session"] = "started"
except ReadOnlyStore as exc:
    out["session"] = str(exc)
print(json.dumps(out))
"""

# Opens the store, reads, tells the parent (a line on stdout), waits for its line, reads again.
RACE_CHILD = r"""
import sys
from snapstore.repository import Repository
repo = Repository.open(sys.argv[1])
print(len(repo.conversation_ids()), flush=True)
sys.stdin.readline()
try:
    print("read", repo.backend.list_refs(), flush=True)
except Exception as exc:
    print("error", exc, flush=True)
"""

READS = [["log", "demo"], ["show", "demo"], ["tree", "demo"], ["diff", "demo~2", "demo"], ["status"],
         ["conversations"], ["stats"], ["fsck"], ["verify"], ["export", "--all", "-o", "{out}/bundle"],
         ["export-log", "-o", "{out}/log.jsonl"], ["gc", "--dry-run"], ["compact", "--dry-run"],
         ["checkout", "{active}"], ["upgrade"]]
WRITES = [["gc"], ["pack"], ["compact"], ["prune", "demo", "--keep-last", "2"], ["commit", "demo", "--from", "{state}"],
          ["checkout", "{inactive}"], ["checkout", "{active}", "--at", "demo~1", "-o", "{out}/state.json"],
          ["import", "{out}/bundle"], ["replay", "demo", "--as", "rebuilt"], ["demo"]]


def _drop_privileges() -> None:
    """Become an unprivileged user (run in the child before it execs, when the tests run as root)."""
    try:
        user = pwd.getpwnam("nobody")
        uid, gid = user.pw_uid, user.pw_gid
    except KeyError:
        uid = gid = 65534
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)


def run_reader(code: str, *args: str, input_lines: Iterator[str] = iter(())) -> subprocess.CompletedProcess:
    """``python -c code args`` as a process that cannot write the read-only store."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": SOURCE, "HOME": tempfile.gettempdir(),
           "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8"}
    return subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=tempfile.gettempdir(),
                          preexec_fn=_drop_privileges if os.geteuid() == 0 else None,
                          capture_output=True, text=True, timeout=120, check=False)


def make_read_only(folder: Path) -> None:
    for path in [*folder.iterdir(), folder]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def files_of(folder: Path) -> dict[str, tuple[int, int, str | None]]:
    """Each file's mode, modification time and content hash (if readable): what any write would change."""
    return {p.name: (p.stat().st_mode, p.stat().st_mtime_ns,
                     hashlib.sha256(p.read_bytes()).hexdigest() if os.access(p, os.R_OK) else None)
            for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def place() -> Iterator[Path]:
    """A folder every user may enter (pytest's own are private to their owner), removed with its read-only stores."""
    folder = Path(tempfile.mkdtemp(prefix="snapstore-read-only-"))
    folder.chmod(0o755)
    (folder / "out").mkdir()
    (folder / "out").chmod(0o777)  # where the reader writes its exports
    state = folder / "state.json"
    state.write_text(json.dumps(sample_state("demo")))
    state.chmod(0o644)
    try:
        yield folder
    finally:
        for path in folder.rglob("*"):
            if path.is_dir():
                path.chmod(0o755)
        shutil.rmtree(folder)


@pytest.fixture(scope="module")
def closed_copy(place) -> Path:
    """A read-only copy of a closed store: `snap demo`'s (active, with its audit log) and "other"; no -wal, no -shm."""
    folder = place / "closed"
    result = CliRunner().invoke(cli, ["--store", str(folder), "demo"])
    assert result.exit_code == 0, result.output
    with Repository.open(str(folder)) as repo:
        repo.commit("other", sample_state("other"))
    assert sorted(p.name for p in folder.iterdir()) == ["store.sqlite"]
    make_read_only(folder)
    return folder


@pytest.fixture(scope="module")
def open_copy(place, closed_copy) -> Path:
    """A read-only copy taken while a Session had the store open: its -wal (holding a conversation the
    database file lacks, "late", made active), -shm, writer.lock and the Session's presence key are in it."""
    live = place / "live"
    shutil.copytree(closed_copy, live)
    for path in [live, *live.iterdir()]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)
    session = Session(str(live), log_in_store=True)
    try:
        session.start_new("late", "only in the WAL of the copy")
        folder = place / "open"
        shutil.copytree(live, folder)
    finally:
        session.close()
    assert {"store.sqlite-wal", "store.sqlite-shm", "writer.lock"} <= {p.name for p in folder.iterdir()}
    make_read_only(folder)
    return folder


def run_commands(folder: Path, commands: list[list[str]], place: Path, **names: str) -> list[dict]:
    filled = [[arg.format(out=place / "out", state=place / "state.json", **names) for arg in args]
              for args in commands]
    child = run_reader(CLI_CHILD, str(folder), json.dumps(filled))
    assert child.returncode == 0, child.stderr
    return json.loads(child.stdout)


@pytest.mark.parametrize("copy, active, inactive", [("closed_copy", "demo", "other"), ("open_copy", "late", "demo")])
def test_read_commands_work_and_writing_ones_refuse(copy, active, inactive, place, request):
    folder: Path = request.getfixturevalue(copy)
    before = files_of(folder)
    results = run_commands(folder, READS + WRITES, place, active=active, inactive=inactive)
    for result in results[:len(READS)]:
        assert result["code"] == 0, result
        assert result["error"] is None, result
    for result in results[len(READS):]:
        assert result["code"] == 1, result
        lines = result["stderr"].splitlines()
        assert lines == [lines[0]] and "is read-only here" in lines[0] and "nothing was changed" in lines[0], result
        assert str(folder / "store.sqlite") in lines[0], result
    assert files_of(folder) == before
    assert not (place / "out" / "state.json").exists()  # checkout --at refused before writing -o FILE
    listed = next(r["stdout"] for r in results if r["args"] == ["conversations"])
    assert f"* {active} " in listed and f"  {inactive} " in listed, listed  # "late" is read from the copy's WAL


@pytest.mark.parametrize("lock_mode, finding", [
    (0o444, "1 earlier session ended without a clean close"),
    (0o000, "1 session this process cannot tell running or ended"),
])
def test_status_on_a_copy_taken_during_a_session_reports_without_writing(open_copy, place, lock_mode, finding):
    """The presence key of the session running when the copy was taken: status probes its lock without
    writing it and reports a session that ended without a clean close, as a restart would find it; one whose
    lock it may not read (another user's, made 0600) is one it cannot tell, and audited all the same."""
    folder = place / f"open-{lock_mode:o}"
    shutil.copytree(open_copy, folder)
    (folder / "writer.lock").chmod(lock_mode)
    before = files_of(folder)
    [result] = run_commands(folder, [["status", "--json"]], place)
    assert result["code"] == 0, result
    report = json.loads(result["stdout"])
    assert report["status"] == "AUDIT_RECOMMENDED"
    assert any(check.startswith(finding) for check in report["checks"]), report
    assert files_of(folder) == before


def test_python_api_reads_and_refuses_writes_and_sessions(closed_copy):
    before = files_of(closed_copy)
    child = run_reader(API_CHILD, str(closed_copy))
    assert child.returncode == 0, child.stderr
    out = json.loads(child.stdout)
    assert out["conversations"] == ["demo", "other"] and out["log"] == 12
    assert out["write"].startswith(f"{closed_copy / 'store.sqlite'} is read-only here"), out
    assert "nothing was written" in out["write"]
    assert "a Session cannot start on it" in out["session"] and "nothing was changed" in out["session"], out
    assert files_of(closed_copy) == before


def test_wal_without_shm_is_refused_by_name(closed_copy, open_copy, place):
    """A -wal with transactions but no -shm, in a folder that cannot hold one: SQLite cannot read the WAL
    (read as immutable, the WAL's conversation would silently be missing)."""
    folder = place / "wal-only"
    folder.mkdir()
    for name in ("store.sqlite", "store.sqlite-wal"):
        shutil.copy2(open_copy / name, folder / name)
    make_read_only(folder)
    [result] = run_commands(folder, [["conversations"]], place)
    assert result["code"] == 1
    assert "its store.sqlite-wal holds transactions not yet in the database" in result["stderr"], result


def test_a_writer_during_a_read_without_locks_is_an_error(place, closed_copy):
    """A store no process had open is read as immutable (no locks): a process that may write it and opens it
    meanwhile makes the next read an error, never a mix of two moments."""
    folder = place / "raced"
    shutil.copytree(closed_copy, folder)
    make_read_only(folder)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": SOURCE, "HOME": tempfile.gettempdir(),
           "PYTHONDONTWRITEBYTECODE": "1"}
    child = subprocess.Popen([sys.executable, "-c", RACE_CHILD, str(folder)], env=env, cwd=tempfile.gettempdir(),
                             preexec_fn=_drop_privileges if os.geteuid() == 0 else None,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = child.stdout.readline()
        assert first.strip() == "2", first  # demo and other, read
        # The owner (who may write: the folder is made writable for it again) commits meanwhile.
        for path in [folder, *folder.iterdir()]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
        with Repository.open(str(folder)) as repo:
            repo.commit("second", sample_state("second"))
        out, err = child.communicate("go\n", timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert out.startswith("error "), (out, err)
    assert str(folder / "store.sqlite") in out and "another process opened or wrote the store" in out, out

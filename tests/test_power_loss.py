"""Power-loss proof: what a successful operation wrote survives losing everything that was not flushed.

tests/test_crash.py kills the process (kill -9 keeps the page cache); here
an LD_PRELOAD shim (tests/faults/powerloss_shim.c) keeps the durable image of
the worker's folder in the strict model "only what was fsynced survives, and
a name only once its folder was fsynced", and tests/crash/powerloss.py opens
such images taken at random acknowledgements the way an API restart does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from snapstore.location import open_backend
from snapstore.ozolith import OzolithLog
from snapstore.repository import STORE_FORMAT, Repository
from snapstore.upgrade import store_format
from snapstore.verify import verify
from tests.crash.maintenance import OPERATIONS
from tests.crash.powerloss import (
    ROOT, PowerLossStats, build_shim, check_image, flushes, materialise, materialise_at, run_power_losses,
    seed_durable, shim_env,
)

IMAGES = int(os.environ.get("SNAPSTORE_POWERLOSS_IMAGES", "40"))


@pytest.fixture(scope="module")
def shim(tmp_path_factory):
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed to build the power-loss shim")
    return build_shim(tmp_path_factory.mktemp("powerloss") / "powerloss_shim.so")


def under_shim(shim: Path, live: Path, shadow: Path, code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, **shim_env(shim, live, shadow)))


# -- the model itself ---------------------------------------------------------------------------------------

MODEL = r'''
import os, sys
live = sys.argv[1]
def put(name, data, sync):
    fd = os.open(os.path.join(live, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, data)
    if sync:
        os.fsync(fd)
    os.close(fd)
def sync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
put("named", b"synced", True)
put("unnamed", b"synced, but its folder never was", True)
put("unsynced", b"never synced", False)
os.mkdir(os.path.join(live, "sub"))
put("sub/inside", b"synced in a folder whose own name is durable", True)
sync_dir(os.path.join(live, "sub"))
sync_dir(live)
os.unlink(os.path.join(live, "unnamed"))  # never made durable anyway
put("tail", b"kept", True)
sync_dir(live)
fd = os.open(os.path.join(live, "tail"), os.O_WRONLY | os.O_APPEND)
os.write(fd, b" and lost")  # never synced
os.close(fd)
os.rename(os.path.join(live, "named"), os.path.join(live, "renamed"))  # the folder is not synced after it
os.unlink(os.path.join(live, "unsynced"))
fd = os.open(os.path.join(live, "reused"), os.O_WRONLY | os.O_CREAT, 0o644)
os.close(fd)
os.unlink(os.path.join(live, "sub", "inside"))
put("sub/new", b"same inode number, maybe: a new file", False)
os.mkdir(os.path.join(live, "newdir"))
put("newdir/file", b"synced, folder synced, but newdir's own name never is", True)
sync_dir(os.path.join(live, "newdir"))
'''


def test_the_model_keeps_only_what_was_flushed(tmp_path, shim):
    """The shim's image: fsynced bytes under names whose folder was fsynced afterwards; nothing else."""
    live, shadow, image = tmp_path / "live", tmp_path / "shadow", tmp_path / "image"
    live.mkdir()
    result = under_shim(shim, live, shadow, MODEL, str(live))
    assert result.returncode == 0, result.stderr
    materialise(live, shadow, image)
    got = {str(p.relative_to(image)): p.read_bytes() for p in image.rglob("*") if p.is_file()}
    assert got == {
        "named": b"synced",  # the rename was never flushed
        "unsynced": b"",  # its name was made durable, its bytes never
        "sub/inside": b"synced in a folder whose own name is durable",  # the unlink was never flushed
        "tail": b"kept",
    }
    assert not (image / "newdir").exists()
    # The live folder has all of it: the image really differs.
    assert (live / "renamed").read_bytes() == b"synced" and (live / "tail").read_bytes() == b"kept and lost"


# -- random power losses under the crash worker -------------------------------------------------------------

def assert_proven(stats: PowerLossStats, started: float) -> None:
    print(f"\n{stats.images} images in {time.monotonic() - started:.1f} s; {stats.acknowledged} acknowledged, "
          f"{stats.in_flight_landed} in flight landed, {stats.rolled_forward} rolled forward; lost: {stats.lost}")
    assert stats.failures == []
    assert stats.images == IMAGES
    # Images were taken between acknowledged operations, and the worker restarted on its own folder.
    assert stats.acknowledged > IMAGES and stats.worker_runs == 3
    # The model really dropped what was not flushed: the WAL's unsynced frames of the operation in flight.
    assert stats.differing > IMAGES // 4
    assert stats.lost.get("store/store.sqlite-wal differs", 0) > 0


def test_power_loss_at_random_moments_loses_nothing_acknowledged(tmp_path, shim):
    """The embedded store with an OZOLITH log file beside it (the crash harness's default)."""
    started = time.monotonic()
    stats = run_power_losses(tmp_path, shim, IMAGES, seed=20261203)
    assert_proven(stats, started)


def test_power_loss_with_the_log_in_the_store(tmp_path, shim):
    started = time.monotonic()
    stats = run_power_losses(tmp_path, shim, IMAGES, seed=20261204, log_in_store=True)
    assert_proven(stats, started)
    assert stats.rolled_forward == 0  # nothing is ever half-committed


# -- store creation -----------------------------------------------------------------------------------------

INIT_AND_APPEND = r'''
import sys
from snapstore.startup import Session
session = Session(sys.argv[1], ozolith=sys.argv[2])
orch = session.start_new("crash", "the first operation")
print(orch.head, orch.tree.state_id, flush=True)
'''


def test_a_new_store_log_and_key_survive_the_first_acknowledged_operation(tmp_path, shim):
    """The folder, the SQLite file's name, the log file and its key file: all durable once it returns."""
    live, shadow, image = tmp_path / "live", tmp_path / "shadow", tmp_path / "image"
    live.mkdir()
    result = under_shim(shim, live, shadow, INIT_AND_APPEND, str(live / "deep" / "store"),
                        str(live / "logs" / "ozolith.jsonl"))
    assert result.returncode == 0, result.stderr
    head, root = result.stdout.split()
    materialise(live, shadow, image)
    for needed in ("deep/store/store.sqlite", "logs/ozolith.jsonl", "logs/.ozolith_key"):
        assert (image / needed).is_file(), f"{needed} did not survive"
    repo = Repository.open(str(image / "deep" / "store"))
    try:
        assert repo.head("crash") == head and repo.snapshot(head).root == root
        report = verify(repo, OzolithLog(image / "logs" / "ozolith.jsonl"))
        assert report.ok, report.problems
    finally:
        repo.close()



def test_a_new_key_file_leaves_no_copy_of_the_key_beside_it(tmp_path, shim):
    """The key went to a temporary file hard-linked into place; the folder was fsynced between the link
    and the temporary name's removal, so a power loss after the key file was made kept a second copy of
    the secret key (``.ozolith_key.XXXX``) beside it. At every flush: no key file, or the key file alone."""
    live, shadow = tmp_path / "live", tmp_path / "shadow"
    (live / "logs").mkdir(parents=True)
    seed_durable(live, shadow)
    made = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                           "from snapstore.ozolith.keys import create_key_file; "
                           "print(create_key_file(Path(sys.argv[1])).decode())", str(live / "logs" / ".ozolith_key")],
                          cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, **shim_env(shim, live, shadow, True)))
    assert made.returncode == 0, made.stderr
    count = flushes(shadow)
    assert count >= 2, count  # the key's data and the folder
    for flush in range(count + 1):
        image = tmp_path / f"image{flush}"
        materialise_at(live, shadow, image, flush)
        names = sorted(os.listdir(image / "logs"))
        assert names in ([], [".ozolith_key"]), f"flush {flush} of {count}: {names}"
        shutil.rmtree(image)
    assert names == [".ozolith_key"]  # the last flush: the key is there once create_key_file returned


def test_snap_init_survives_once_it_returns(tmp_path, shim):
    live, shadow, image = tmp_path / "live", tmp_path / "shadow", tmp_path / "image"
    live.mkdir()
    result = under_shim(shim, live, shadow, "from snapstore.cli.main import main; main()", "init",
                        str(live / "a" / "store"))
    assert result.returncode == 0, result.stderr
    materialise(live, shadow, image)
    Repository.open(str(image / "a" / "store")).close()  # raises StoreNotFound if it did not survive


# -- a restart must flush what a killed writer left in the page cache ----------------------------------------

KILLED_BETWEEN_WRITE_AND_FSYNC = r'''
import os, signal, sys
import snapstore.ozolith.log as log_module
from snapstore.startup import Session
session = Session(sys.argv[1], ozolith=sys.argv[2])
orch = session.start_new("crash", "root")
orch.add_exchange(orch.active_context_id, "acknowledged", "yes")
print(orch.head, orch.tree.state_id, flush=True)
def killed(fd, line, size_before):  # the append's write() happened; SIGKILL comes before its fsync()
    os.write(fd, line)
    os.kill(os.getpid(), signal.SIGKILL)
log_module.append_line = killed
orch.add_exchange(orch.active_context_id, "in flight", "never acknowledged")
'''

RESTART = r'''
import sys
from snapstore.startup import Session
session = Session(sys.argv[1], ozolith=sys.argv[2])
print(",".join(r.action for r in session.report.recoveries), flush=True)
'''


def test_a_restart_flushes_a_log_entry_a_killed_writer_left_unflushed(tmp_path, shim):
    """A writer killed between the write() and the fsync() of a log line leaves a whole line in the page
    cache; the next start reads it and rolls the store forward to it. Unless the start flushes the log
    first, a power loss then takes the entry while the store keeps a ref and a link to it: the image
    needed recovery ("the log ends at entry 3, but the store links conversation 'crash' to entry 4")."""
    live, shadow, image = tmp_path / "live", tmp_path / "shadow", tmp_path / "image"
    live.mkdir()
    store, log = str(live / "store"), str(live / "ozolith.jsonl")
    first = under_shim(shim, live, shadow, KILLED_BETWEEN_WRITE_AND_FSYNC, store, log)
    assert first.returncode == -9, first.stderr
    acked = tuple(first.stdout.split())
    restart = under_shim(shim, live, shadow, RESTART, store, log)
    assert restart.returncode == 0, restart.stderr
    assert restart.stdout.split() == ["rolled-forward"]
    materialise(live, shadow, image)
    stats = PowerLossStats()
    check_image(image, False, (2, *acked), stats, "the image after the restart")
    assert stats.failures == []
    assert stats.in_flight_landed == 1  # the rolled-forward operation survived, with its log entry


# -- names a killed creator made but never fsynced into their folder -------------------------------------------

KILLED_BEFORE_THE_FOLDER_FSYNC = r'''
import os, signal, sys
import snapstore.ozolith.files as files
import snapstore.ozolith.log as log_module
from snapstore.startup import Session
def killed(directory, real=files.fsync_dir):  # the name was made; SIGKILL comes before the fsync of its folder
    if sys.argv[3] == "log" or str(directory) == os.path.dirname(sys.argv[1]):
        os.kill(os.getpid(), signal.SIGKILL)
    real(directory)
if sys.argv[3] == "store":
    files.fsync_dir = killed  # make_dirs: the store's folder (not the one above it, made first)
    Session(sys.argv[1], ozolith=sys.argv[2])
else:
    session = Session(sys.argv[1], ozolith=sys.argv[2])
    log_module.fsync_dir = killed  # the log file, made by the first append
    session.start_new("crash", "root")
'''

ONE_OPERATION = r'''
import sys
from snapstore.startup import Session
session = Session(sys.argv[1], ozolith=sys.argv[2])
orch = session.continue_last() or session.start_new("crash", "root")
orch.add_exchange(orch.active_context_id, "acknowledged", "yes")
print(orch.head, orch.tree.state_id, flush=True)
'''


@pytest.mark.parametrize("made", ["store", "log"])
def test_a_name_a_killed_creator_left_unsynced_is_made_durable_by_the_next_start(tmp_path, shim, made):
    """A process killed between making the store's folder (or the log file) and fsyncing the folder it is
    in leaves a name only the page cache holds. The next process finds it there and, without a flush of
    the folder, never makes it durable: its acknowledged operations vanish with the name on a power loss
    (before the fix the image had no a/store/store.sqlite, or no ozolith.jsonl)."""
    live, shadow, image = tmp_path / "live", tmp_path / "shadow", tmp_path / "image"
    live.mkdir()
    # The store one folder down: the log and key file beside it fsync the top folder, not that one.
    store, log = str(live / "a" / "store"), str(live / "ozolith.jsonl")
    first = under_shim(shim, live, shadow, KILLED_BEFORE_THE_FOLDER_FSYNC, store, log, made)
    assert first.returncode == -9, first.stderr
    assert (live / "a" / "store" if made == "store" else live / "ozolith.jsonl").exists()
    second = under_shim(shim, live, shadow, ONE_OPERATION, store, log)
    assert second.returncode == 0, second.stderr
    acked = tuple(second.stdout.split())
    materialise(live, shadow, image)
    stats = PowerLossStats()
    check_image(image, False, (1, *acked), stats, "the image after the acknowledged operation", store_at="a/store")
    assert stats.failures == []


# -- maintenance commands, cut at every flush ------------------------------------------------------------------
# tests/test_maintenance_crash.py kills each maintenance command at each of its steps; a kill keeps what
# the command wrote but never flushed. Here the shim keeps every flush of the command (its history), and
# the image after each one is built: every moment a power loss can leave something different.

def cut_at_every_flush(shim: Path, tmp_path: Path, source: Path, args: list[str]):
    """Run ``snap --store STORE ARGS`` (or tests.crash.maintenance, if ``args[0]`` is ``-m``) under the shim on
    a copy of the store at ``source``, taken as durable; yields ``(flush, count, image store)`` after each
    flush, 0 (before the first) to the last, each image removed once the caller is done with it."""
    live, shadow = tmp_path / "live", tmp_path / "shadow"
    live.mkdir()
    shutil.copytree(source, live / "store")
    seed_durable(live, shadow)
    command = (["-m", *args[1:]] if args[0] == "-m"
               else ["-c", "from snapstore.cli.main import main; main()", "--store", str(live / "store"), *args])
    done = subprocess.run([sys.executable, *[a.format(store=live / "store") for a in command]], cwd=ROOT,
                          capture_output=True, text=True, env=dict(os.environ, **shim_env(shim, live, shadow, True)))
    assert done.returncode == 0, done.stdout + done.stderr
    count = flushes(shadow)
    assert count > 3, count  # the command really flushed under the shim: the images prove something
    for flush in range(count + 1):
        image = tmp_path / f"image{flush}"
        materialise_at(live, shadow, image, flush)
        yield flush, count, image / "store"
        shutil.rmtree(image)


def test_an_upgrade_cut_at_any_flush_leaves_the_format_before_or_the_current_one(tmp_path, shim):
    """`snap upgrade` of a format-1 store wrote one meta row per step: a power loss between two left the
    store at format 2 or 3 ("flush 7: format 2"), neither the store before nor the one after."""
    seen = set()
    for flush, count, store in cut_at_every_flush(shim, tmp_path, ROOT / "tests" / "fixtures" / "format1",
                                                  ["upgrade"]):
        with open_backend(str(store)) as backend:
            seen.add(store_format(backend))
        assert seen <= {1, STORE_FORMAT}, f"flush {flush} of {count}: format {sorted(seen)}"
    assert seen == {1, STORE_FORMAT}  # the last image: upgraded, and durably so once it returned
    repo = Repository.open(str(tmp_path / "live" / "store"))
    try:
        assert sorted(repo.conversation_ids()) == ["alpha", "beta", "gamma"] and repo.fsck().ok
    finally:
        repo.close()


@pytest.fixture(scope="module")
def maintenance_stores(tmp_path_factory) -> dict[str, Path]:
    """The stores tests/test_maintenance_crash.py prepares for each operation (log in the store), and the bundle."""
    from tests.test_maintenance_crash import _prepare

    base = tmp_path_factory.mktemp("maintenance-powerloss")
    stores = {"bundle": base / "all.bundle"}

    def keep(name: str, repo: Repository) -> None:
        repo.close()
        shutil.copytree(base / "work", base / name)
        stores[name] = base / name

    _prepare(str(base / "work"), keep, stores["bundle"], packs=True)
    return stores


@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_maintenance_cut_at_any_flush_leaves_the_store_before_or_after(operation, maintenance_stores, tmp_path,
                                                                       shim):
    """Each image opens and passes fsck and verify (with the log in the store), every conversation is as
    before the command or as after it (tests/test_maintenance_crash.py's judge), and the image after the
    last flush is the store the command left: what it reported done is durable once it returned."""
    from tests.test_maintenance_crash import FINAL, _judge, _state

    with_log = operation != "import"  # the target's log lacks the bundled entries, before and after
    source = maintenance_stores[operation]
    shutil.copytree(source, tmp_path / "before")  # opening a store writes to it: states are read from copies
    before = after = None
    failures = []
    command = ["-m", "tests.crash.maintenance", "{store}", operation, "0", "after", str(maintenance_stores["bundle"])]
    for flush, count, image in cut_at_every_flush(shim, tmp_path, source, command):
        if after is None:
            before = _state(str(tmp_path / "before"), with_log)
            shutil.copytree(tmp_path / "live" / "store", tmp_path / "after")
            after = _state(str(tmp_path / "after"), with_log)
            assert before["problems"] == after["problems"] == [] and before["heads"] != {}
        try:
            cut = _state(str(image), with_log)
        except Exception as exc:  # a store that cannot be read: named, with the flush
            failures.append(f"flush {flush} of {count}: the store cannot be read: {type(exc).__name__}: {exc}")
            continue
        failures += [f"flush {flush} of {count}: {wrong}" for wrong in _judge(before, after, cut)]
        if flush == count:
            failures += [f"the last flush: {key} differs from the live store" for key in FINAL if cut[key] != after[key]]
    assert not failures, "\n".join(failures)

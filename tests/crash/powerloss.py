"""Cut the power under a working orchestrator at random moments; check nothing acknowledged is lost.

The kill harness (tests/crash/harness.py) proves that ``kill -9`` loses
nothing acknowledged; a SIGKILL keeps everything the process wrote, flushed
or not, in the page cache. A power loss keeps only what was flushed. Here
the worker (tests/crash/worker.py) runs under an LD_PRELOAD shim
(tests/faults/powerloss_shim.c, whose comment states the model) that keeps
the **durable image** of its folder: each file as of its last fsync or
fdatasync, each folder's names as of the folder's last fsync, nothing else.
At random acknowledgements the harness stops the worker (SIGSTOP), builds
that image in a fresh folder (as the disk would be after a power loss at
that moment), resumes it, and opens the image the way an API restart does
(:class:`snapstore.startup.Session`, rolling forward): the conversation must
be at the last acknowledged operation (or at the one in flight), its tree
the acknowledged one, and ``verify`` must pass on the image.

Used by tests/test_power_loss.py.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from snapstore.ozolith import OzolithLog
from snapstore.startup import Session
from snapstore.storelog import StoreLog
from snapstore.verify import verify

ROOT = Path(__file__).resolve().parents[2]
SHIM_SOURCE = ROOT / "tests" / "faults" / "powerloss_shim.c"
# SQLite's shared-memory index of the WAL: written through a shared mapping, never flushed,
# and rebuilt from the WAL by the first connection that opens the database after a reboot.
UNFLUSHED_SUFFIXES = ("-shm",)
ACK_TIMEOUT = 60.0
FULL_EVERY = 8  # a full verify on the first image and every 8th after it, and on the last; sampled between
# Acknowledgements between two images: at most this many (at least one).
GAP = int(os.environ.get("SNAPSTORE_POWERLOSS_GAP", "30"))


def build_shim(target: Path) -> Path:
    """Compile the shim to ``target`` (a shared object) with gcc; returns ``target``."""
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o", str(target), str(SHIM_SOURCE),
                    "-ldl", "-lpthread"], check=True)
    return target


def shim_env(shim: Path, live: Path, shadow: Path, history: bool = False) -> dict[str, str]:
    """The environment of a process whose writes under ``live`` the shim follows into ``shadow``
    (``history``: keeping every flush, for :func:`materialise_at`)."""
    for part in ("gen", "data", "dir", "history"):
        (shadow / part).mkdir(parents=True, exist_ok=True)
    env = {"LD_PRELOAD": str(shim), "SNAPSTORE_POWERLOSS_WATCH": str(live.resolve()),
           "SNAPSTORE_POWERLOSS_SHADOW": str(shadow.resolve()),
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if history:
        env["SNAPSTORE_POWERLOSS_HISTORY"] = "1"
    return env


def _key(shadow: Path, st: os.stat_result) -> str:
    gen = shadow / "gen" / f"{st.st_dev}-{st.st_ino}"
    return f"{st.st_dev}-{st.st_ino}-{int(gen.read_text()) if gen.exists() else 0}"


def materialise(live: Path, shadow: Path, image: Path) -> None:
    """Build in ``image`` (which must not exist) what a power loss now would leave of ``live``.

    The watched folder itself is durable (it existed before the worker); below
    it, only names its folder's last fsync recorded, each file with the bytes
    of its last flush (empty if it had none), each folder with its own
    durable names. Call it while the worker is stopped.
    """
    _build(lambda kind, key: shadow / kind / key, _key(shadow, live.stat()), image)


def _build(sample, key: str, target: Path) -> None:
    """The folder whose durable listing ``sample("dir", key)`` holds, built at ``target`` (``sample``:
    the path of a kind's sample of a key, which may not exist: nothing of it is durable)."""
    target.mkdir()
    listing = sample("dir", key)
    if listing is None or not listing.exists():
        return
    for line in listing.read_text().splitlines():
        kind, child, name = line.split(" ", 2)
        if kind == "d":
            _build(sample, child, target / name)
        elif not name.endswith(UNFLUSHED_SUFFIXES):
            data = sample("data", child)
            if data is not None and data.exists():
                shutil.copyfile(data, target / name)
            else:
                (target / name).touch()


def seed_durable(live: Path, shadow: Path) -> None:
    """Record everything under ``live`` as durable before a process runs under the shim with its history
    (a store prepared without the shim, as if it had been fully flushed): flush 0 of the history."""
    history = shadow / "history"
    history.mkdir(parents=True, exist_ok=True)
    for folder in [live, *(p for p in live.rglob("*") if p.is_dir() and not p.is_symlink())]:
        lines = []
        for entry in sorted(folder.iterdir()):
            st = entry.stat(follow_symlinks=False)
            kind = "d" if entry.is_dir() and not entry.is_symlink() else "f" if entry.is_file() else None
            if kind is None:
                continue
            lines.append(f"{kind} {_key(shadow, st)} {entry.name}\n")
            if kind == "f":
                shutil.copyfile(entry, history / f"{0:020d} data {_key(shadow, st)}")
        (history / f"{0:020d} dir {_key(shadow, folder.stat())}").write_text("".join(lines))


def flushes(shadow: Path) -> int:
    """How many flushes the history of ``shadow`` holds (after :func:`seed_durable`'s flush 0)."""
    return max((int(name.split(" ", 1)[0]) for name in os.listdir(shadow / "history")), default=0)


def materialise_at(live: Path, shadow: Path, image: Path, flush: int) -> None:
    """As :func:`materialise`, for a power loss right after flush number ``flush`` of the history (0: before
    the first, leaving what :func:`seed_durable` recorded)."""
    samples: dict[tuple[str, str], Path] = {}
    for name in sorted(os.listdir(shadow / "history")):
        n, kind, key = name.split(" ", 2)
        if int(n) > flush:
            break
        samples[(kind, key)] = shadow / "history" / name
    _build(lambda kind, key: samples.get((kind, key)), _key(shadow, live.stat()), image)


def files_of(folder: Path) -> dict[str, bytes]:
    """Every regular file under ``folder`` (but SQLite's -shm) by relative path, with its bytes."""
    found = {}
    for path in folder.rglob("*"):
        if path.is_file() and not path.name.endswith(UNFLUSHED_SUFFIXES):
            found[str(path.relative_to(folder))] = path.read_bytes()
    return found


def differences(live: Path, image: Path) -> list[str]:
    """What the image lost of the live folder: files missing from it, or with other bytes."""
    now, kept = files_of(live), files_of(image)
    return sorted({*(f"{name} missing" for name in now.keys() - kept.keys()),
                   *(f"{name} only in the image" for name in kept.keys() - now.keys()),
                   *(f"{name} differs" for name in now.keys() & kept.keys() if now[name] != kept[name])})


@dataclass
class PowerLossStats:
    images: int = 0
    acknowledged: int = 0
    # Images whose files differ from the live ones at that moment: the model really dropped unflushed data.
    differing: int = 0
    lost: dict[str, int] = field(default_factory=dict)  # what differed, by kind, over all images
    in_flight_landed: int = 0
    rolled_forward: int = 0
    worker_runs: int = 0
    failures: list[str] = field(default_factory=list)


class Acks:
    """The ACK lines of a running worker (tests/crash/worker.py), read as they come."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.buffer = b""
        self.count = 0
        self.last: tuple[int, str, str] | None = None
        self.started = False
        os.set_blocking(proc.stdout.fileno(), False)

    def _read(self) -> bool:
        try:
            chunk = self.proc.stdout.read()
        except BlockingIOError:
            chunk = None
        if not chunk:
            return False
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            parts = line.decode().split()
            if parts and parts[0] == "ACK":
                self.count += 1
                self.last = (int(parts[1]), parts[2], parts[3])
            elif parts and parts[0] == "START":
                self.started = True
        return True

    def drain(self) -> None:
        """Everything the worker printed so far (call it with the worker stopped: then it is all there)."""
        while self._read():
            pass

    def wait(self, done) -> None:
        """Read until ``done()``; raises if the worker dies or takes longer than :data:`ACK_TIMEOUT`."""
        deadline = time.monotonic() + ACK_TIMEOUT
        while not done():
            if self.proc.poll() is not None:
                self.drain()
                if done():
                    return
                raise RuntimeError(f"the worker exited {self.proc.returncode}: "
                                   f"{self.proc.stderr.read().decode()[-1500:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the worker printed nothing awaited within {ACK_TIMEOUT:.0f} s")
            if not self._read():
                time.sleep(0.0005)


def stop(proc: subprocess.Popen) -> None:
    """SIGSTOP the worker and wait until it is stopped (waitpid WUNTRACED), not just signalled."""
    os.kill(proc.pid, signal.SIGSTOP)
    _, status = os.waitpid(proc.pid, os.WUNTRACED)
    if not os.WIFSTOPPED(status):
        raise RuntimeError(f"the worker ended instead of stopping (status {status})")


def check_image(image: Path, log_in_store: bool, last: tuple[int, str, str], stats: PowerLossStats,
                name: str, full: bool = True, store_at: str = "store") -> None:
    """Restart on the image as the API would and compare with the last acknowledged state.

    ``full``: verify every object and log entry; else a sample of 32 (the
    tree of the head is re-hashed whole either way). ``store_at``: the
    store's folder in the image (the OZOLITH file is ``ozolith.jsonl`` at the top).
    """
    store = image / store_at
    log = image / "ozolith.jsonl"
    # Session creates what is missing: whatever an acknowledged operation needed must be there first.
    needed = [store / "store.sqlite"] + ([] if log_in_store else [log, image / ".ozolith_key"])
    missing = [str(p.relative_to(image)) for p in needed if not p.is_file()]
    if missing:
        stats.failures.append(f"{name}: acknowledged operation {last[0]} but the image has no {', '.join(missing)}")
        return
    try:
        session = (Session(str(store), log_in_store=True, create=False) if log_in_store
                   else Session(str(store), ozolith=str(log), create=False))
    except Exception as exc:  # the failure names the image; the test shows them all
        stats.failures.append(f"{name}: the restart failed: {type(exc).__name__}: {exc}")
        return
    stats.rolled_forward += sum(1 for r in session.report.recoveries if r.action == "rolled-forward")
    repo = session.repo
    try:
        if session.report.status.value == "RECOVERY_NEEDED":
            stats.failures.append(f"{name}: recovery needed: {session.report.problems}")
        _, acked_snapshot, acked_root = last
        head = repo.head("crash")
        if head is None:
            stats.failures.append(f"{name}: no conversation, though operation {last[0]} was acknowledged")
            return
        if head == acked_snapshot:
            if repo.snapshot(head).root != acked_root:
                stats.failures.append(f"{name}: head root differs from the acknowledged root")
        elif repo.snapshot(head).parents[:1] == (acked_snapshot,):
            stats.in_flight_landed += 1
        else:
            stats.failures.append(f"{name}: head {head} is neither the acknowledged {acked_snapshot} "
                                  f"(operation {last[0]}) nor one operation after it")
            return
        repo.load("crash")  # every object of the current tree re-hashed
        report = verify(repo, StoreLog(repo.backend) if log_in_store else OzolithLog(log),
                        sample=None if full else 32, seed=stats.images)
        if not report.ok:
            stats.failures.append(f"{name}: verify: {[p.message for p in report.problems][:3]}")
    finally:
        session.close(clean=False)


def run_power_losses(workdir: Path, shim: Path, images: int, seed: int = 0, log_in_store: bool = False,
                     runs: int = 3, keep_failed: bool = True) -> PowerLossStats:
    """``images`` power losses over ``runs`` worker lifetimes on one store; see the module docstring.

    The worker creates the store, and the first image of the first run is
    taken at its first acknowledgement: store creation (the folder, the
    SQLite file's name, the log and its key file) must be durable by then.
    Later images come after 1 to 6 more acknowledgements, at a random moment
    of the next operation. A run ends with SIGKILL and the next starts on
    the same folder (so restarts, with their roll-forward, are written under
    the shim too); its first image is taken as soon as it reports START.
    Each image is checked while the worker is stopped, then removed (kept if
    it failed).
    """
    rng = random.Random(seed)
    live, shadow, pictures = workdir / "live", workdir / "shadow", workdir / "images"
    live.mkdir()
    pictures.mkdir()
    env = dict(os.environ, **shim_env(shim, live, shadow))
    log = "store" if log_in_store else str(live / "ozolith.jsonl")
    stats = PowerLossStats()
    last: tuple[int, str, str] | None = None
    per_run = [images // runs + (1 if r < images % runs else 0) for r in range(runs)]
    for run, count in enumerate(per_run):
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.crash.worker", str(live / "store"), log, str(seed * 100003 + run)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=env,
        )
        stats.worker_runs += 1
        acks = Acks(proc)
        try:
            for k in range(count):
                if k == 0 and run > 0:
                    acks.wait(lambda: acks.started)  # a restart on the image of a killed worker's folder
                else:
                    target = acks.count + (1 if k == 0 else rng.randint(1, GAP))
                    acks.wait(lambda: acks.count >= target)
                    if k > 0:
                        time.sleep(rng.uniform(0, 0.004))  # a random moment of the next operation
                stop(proc)
                try:
                    acks.drain()  # what the worker acknowledged before it stopped
                    if acks.last is not None:
                        last = acks.last
                    image = pictures / f"run{run}-{k}"
                    materialise(live, shadow, image)
                    lost = differences(live, image)
                    stats.images += 1
                    if lost:
                        stats.differing += 1
                    for what in lost:
                        kind = re.sub(r"\.[A-Za-z0-9_]{8}\b", ".*", what)  # mkstemp's random part
                        stats.lost[kind] = stats.lost.get(kind, 0) + 1
                    if last is None:
                        stats.failures.append(f"{image.name}: taken before any acknowledgement")
                        continue
                    # Checked with the worker still stopped: on 2 cores a running worker would only
                    # grow the store (and the later checks) while the check waits for the CPU.
                    failed = len(stats.failures)
                    check_image(image, log_in_store, last, stats, f"image {image.name} (lost: {lost})",
                                full=stats.images % FULL_EVERY == 1 or (run, k) == (runs - 1, count - 1))
                    if len(stats.failures) == failed or not keep_failed:
                        shutil.rmtree(image)
                finally:
                    os.kill(proc.pid, signal.SIGCONT)
        except RuntimeError as exc:
            stats.failures.append(f"run {run}: {exc}")
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait()
            acks.drain()  # what it acknowledged after the last image: the next run's baseline
            if acks.last is not None:
                last = acks.last
            proc.communicate()
            stats.acknowledged += acks.count
        if stats.failures:
            break
    return stats

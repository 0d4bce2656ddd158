"""Which embedded storage engine: the measurement behind the SQLite default.

    python benchmarks/bench_backends.py [--quick] [--dir DIR] [--no-strace]

One workload on every engine: a commit stores ~5 new small objects (sizes
of a real commit's compressed chunk, two nodes, state and snapshot) and
moves one ref by compare-and-swap, durably. Engines:

- ``sqlite``: the real :class:`snapstore.backends.sqlite.SqliteBackend`
  (WAL, ``synchronous=FULL``, objects in a ``WITHOUT ROWID`` table);
- ``sqlite, rowid schema``: the same class and code on a database created
  with a different schema (objects in a rowid table with a unique id index,
  reflog without AUTOINCREMENT), a what-if for the schema only;
- ``files``: one file per object (write temp, fsync, rename, fsync the
  folder; skip objects that exist) and a ref file swapped the same way
  under a ``.lock`` file, as git does;
- ``pack``: objects appended to one pack file under ``flock`` and
  fdatasync'ed, then the ref file swapped as above;

next to bare durable appends of 100 bytes (``os.fdatasync``, ``os.fsync``)
and of 48 KB (about what a SQLite commit appends to its WAL) in the same
folder. All run in one process, interleaved round-robin, after
the same prefill. fsyncs and syscalls per commit are counted by re-running
each engine alone under ``strace -f -c`` (with N commits and with none, the
difference divided by N); bytes handed to write()/pwrite() come from
``/proc/self/io``.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import random
import re
import shutil
import sqlite3
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import SEED, Summary, machine, ratio, table, us, work_folder  # noqa: E402
from blake3 import blake3  # noqa: E402

from snapstore.backends.base import RefUpdate, StoredObject  # noqa: E402
from snapstore.backends.sqlite import DB_NAME, SqliteBackend  # noqa: E402

REF = "conversations/bench"
SMALL = b"x" * 100
BIG = b"x" * 48 * 1024  # about what a SQLite commit appends to its WAL
KINDS = ("chunk", "node", "node", "state", "snapshot")
# The alternative schema: objects appended to a rowid table (a unique index
# finds them by id); reflog rowids without AUTOINCREMENT's sqlite_sequence row.
ROWID_SCHEMA = """
CREATE TABLE objects (id BLOB NOT NULL UNIQUE, kind TEXT NOT NULL, size INTEGER NOT NULL, data BLOB NOT NULL);
CREATE TABLE refs (name TEXT PRIMARY KEY, target BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE reflog (seq INTEGER PRIMARY KEY, name TEXT NOT NULL, old BLOB, new BLOB,
    time TEXT NOT NULL, reason TEXT NOT NULL, log_sequence INTEGER, log_hash TEXT);
CREATE INDEX reflog_name ON reflog (name, seq);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
"""


def make_commits(count: int, rng: random.Random) -> list[list[StoredObject]]:
    """Objects of ``count`` commits: compressed-looking bytes of a real commit's sizes."""
    commits = []
    for _ in range(count):
        sizes = (rng.randint(600, 1400), rng.randint(150, 600), rng.randint(150, 600),
                 rng.randint(80, 160), rng.randint(150, 250))
        objects = []
        for kind, size in zip(KINDS, sizes):
            data = rng.randbytes(size)
            objects.append(StoredObject(blake3(data).hexdigest(), kind, size * 2, data))
        commits.append(objects)
    return commits


class RefFile:
    """One ref in a file, swapped by compare-and-swap under ``<ref>.lock`` (git's protocol)."""

    def __init__(self, root: Path) -> None:
        self.path = root / "refs" / REF
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def swap(self, old: str | None, new: str) -> None:
        lock = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            try:
                actual = self.path.read_text().strip() or None
            except FileNotFoundError:
                actual = None
            if actual != old:
                raise RuntimeError(f"ref conflict: {actual} != {old}")
            os.write(fd, new.encode() + b"\n")
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(lock)
            raise
        os.close(fd)
        os.rename(lock, self.path)
        fsync_dir(self.path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FilePerObject:
    """``objects/ab/cdef…``: each new object written to a temp file, fsynced, renamed, folder fsynced."""

    def __init__(self, root: Path) -> None:
        self.objects = root / "objects"
        self.objects.mkdir(parents=True, exist_ok=True)
        self.ref = RefFile(root)

    def put(self, obj: StoredObject, durable: bool = True) -> None:
        folder = self.objects / obj.id[:2]
        path = folder / obj.id[2:]
        if path.exists():
            return
        if not folder.is_dir():
            folder.mkdir()
            if durable:
                fsync_dir(self.objects)
        tmp = folder / f".tmp-{obj.id[2:]}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        try:
            os.write(fd, obj.data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        if durable:
            fsync_dir(folder)

    def commit(self, objects: Sequence[StoredObject], old: str | None, new: str) -> None:
        for obj in objects:
            self.put(obj)
        self.ref.swap(old, new)

    def prefill(self, objects: Sequence[StoredObject]) -> None:
        for obj in objects:
            self.put(obj, durable=False)
        os.sync()

    def close(self) -> None:
        pass


class PackFile:
    """Objects appended to one pack file (header: id, kind, length), fdatasync'ed, then the ref file.

    The index lives in memory and is rebuilt by scanning the pack at open; a
    torn last record (crash mid-append) is cut off there.
    """

    HEADER = struct.Struct(">32sBI")

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.path = root / "objects.pack"
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        self.index: dict[str, tuple[int, int]] = {}
        self._scan()
        self.ref = RefFile(root)

    def _scan(self) -> None:
        data = self.path.read_bytes()
        offset = 0
        while offset + self.HEADER.size <= len(data):
            raw, _, length = self.HEADER.unpack_from(data, offset)
            end = offset + self.HEADER.size + length
            if end > len(data):
                break
            self.index[raw.hex()] = (offset + self.HEADER.size, length)
            offset = end
        if offset != len(data):
            os.truncate(self.path, offset)

    def _append(self, objects: Sequence[StoredObject]) -> None:
        offset = os.fstat(self.fd).st_size
        records = []
        for obj in objects:
            if obj.id in self.index:
                continue
            records.append(self.HEADER.pack(bytes.fromhex(obj.id), KINDS.index(obj.kind), len(obj.data)))
            records.append(obj.data)
            self.index[obj.id] = (offset + self.HEADER.size, len(obj.data))
            offset += self.HEADER.size + len(obj.data)
        if records:
            os.write(self.fd, b"".join(records))

    def commit(self, objects: Sequence[StoredObject], old: str | None, new: str) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        try:
            self._append(objects)
            os.fdatasync(self.fd)
            self.ref.swap(old, new)
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def prefill(self, objects: Sequence[StoredObject]) -> None:
        self._append(objects)
        os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


class Sqlite:
    """The real SqliteBackend, optionally on a database created with another schema first."""

    def __init__(self, root: Path, schema: str | None = None) -> None:
        root.mkdir(parents=True, exist_ok=True)
        path = root / DB_NAME
        if schema is not None:
            db = sqlite3.connect(path)
            db.executescript(schema)
            db.close()
        self.backend = SqliteBackend(path, create=schema is None)

    def commit(self, objects: Sequence[StoredObject], old: str | None, new: str) -> None:
        self.backend.write(objects, [RefUpdate(REF, old, new, "commit")])

    def prefill(self, objects: Sequence[StoredObject]) -> None:
        for start in range(0, len(objects), 5000):
            self.backend.write(objects[start : start + 5000])

    def close(self) -> None:
        self.backend.close()


ENGINES: dict[str, Callable[[Path], object]] = {
    "sqlite": lambda root: Sqlite(root),
    "sqlite, rowid schema": lambda root: Sqlite(root, ROWID_SCHEMA),
    "files": FilePerObject,
    "pack": PackFile,
}
REASONED_FSYNCS = {
    "sqlite": "1 (WAL) + checkpoint every ~1000 WAL pages",
    "sqlite, rowid schema": "1 (WAL) + checkpoint every ~1000 WAL pages",
    "files": "2 per object (file, folder) + 2 for the ref = 12",
    "pack": "1 (pack) + 2 for the ref = 3",
    "bare fdatasync": "1",
    "bare fsync": "1",
    "bare fdatasync, 48 KB": "1",
}


def slug(name: str) -> str:
    return re.sub(r"\W+", "-", name)


def written_bytes() -> int:
    with open("/proc/self/io") as io:
        for line in io:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    return 0


def run(engines: Sequence[str], folder: Path, commits: int, prefill: int) -> dict[str, dict]:
    """Prefill every engine alike, then time ``commits`` commits on each, round-robin."""
    rng = random.Random(SEED)
    filler = [obj for batch in make_commits(prefill // 5, rng) for obj in batch]
    work = make_commits(commits + 20, rng)
    stores = {}
    for name in engines:
        store = ENGINES[name](folder / slug(name))
        store.prefill(filler)
        stores[name] = store
    heads: dict[str, str | None] = {name: None for name in engines}
    results: dict[str, dict] = {name: {"times": [], "bytes": []} for name in engines}
    baseline = os.open(folder / "baseline", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    syncs = {"bare fdatasync": os.fdatasync, "bare fsync": os.fsync, "bare fdatasync, 48 KB": os.fdatasync}
    for name in syncs:
        results[name] = {"times": [], "bytes": []}
    names = list(engines) + list(syncs)
    for i, objects in enumerate(work):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            before = written_bytes()
            if name in syncs:
                start = time.perf_counter()
                os.write(baseline, BIG if name.endswith("KB") else SMALL)
                syncs[name](baseline)
                elapsed = time.perf_counter() - start
            else:
                new = objects[-1].id
                start = time.perf_counter()
                stores[name].commit(objects, heads[name], new)
                elapsed = time.perf_counter() - start
                heads[name] = new
            after = written_bytes()
            if i >= 20:
                results[name]["times"].append(elapsed)
                results[name]["bytes"].append(after - before)
    os.close(baseline)
    payload = sum(len(o.data) for o in filler) + sum(len(o.data) for batch in work for o in batch)
    for name, store in stores.items():
        store.close()
        root = folder / slug(name)
        if isinstance(store, Sqlite):
            checkpoint = sqlite3.connect(root / DB_NAME)
            checkpoint.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            checkpoint.close()
            results[name]["pages"] = sqlite_pages(root / DB_NAME)
        results[name]["disk"] = disk_usage(root) / payload
    return results


def disk_usage(root: Path) -> int:
    """Bytes allocated on disk to every file under ``root``."""
    return sum(p.stat().st_blocks * 512 for p in root.rglob("*") if p.is_file())


def sqlite_pages(path: Path) -> dict[str, int]:
    """Pages of the objects table (and its id index) by type, from the dbstat virtual table."""
    db = sqlite3.connect(path)
    try:
        rows = db.execute(
            "SELECT pagetype, count(*), sum(payload) FROM dbstat "
            "WHERE name = 'objects' OR name LIKE 'sqlite_autoindex_objects%' GROUP BY pagetype"
        ).fetchall()
    except sqlite3.OperationalError:
        return {}
    finally:
        db.close()
    out = {}
    for kind, count, payload in rows:
        out[kind] = count
        out[kind + " payload"] = payload or 0
    return out


_STRACE_LINE = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$")


def strace_counts(name: str, folder: Path, commits: int, prefill: int) -> dict[str, float] | None:
    """Syscalls per commit of one engine, from ``strace -f -c`` runs with and without commits."""
    if shutil.which("strace") is None:
        return None
    totals = []
    for n in (commits, 0):
        out = folder / f"strace-{n}.txt"
        work = folder / f"strace-{slug(name)}-{n}"
        cmd = ["strace", "-f", "-c", "-o", str(out), sys.executable, __file__, "--worker", name,
               "--commits", str(n), "--prefill", str(prefill), "--dir", str(work)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"strace run of {name} failed: {done.stderr.strip()[-300:]}", file=sys.stderr)
            return None
        counts: dict[str, int] = {}
        for line in out.read_text().splitlines():
            m = _STRACE_LINE.match(line)
            if m and m.group(2) != "total":
                counts[m.group(2)] = int(m.group(1))
        totals.append(counts)
    with_commits, without = totals
    per = {k: (with_commits.get(k, 0) - without.get(k, 0)) / commits for k in with_commits.keys() | without.keys()}
    return {
        "fsync": per.get("fsync", 0) + per.get("fdatasync", 0) + per.get("sync_file_range", 0),
        "syscalls": sum(per.values()),
    }


def worker(name: str, commits: int, prefill: int, folder: Path) -> None:
    """One engine alone (the strace runs): prefill, then ``commits`` commits."""
    folder.mkdir(parents=True, exist_ok=True)
    if name.startswith("bare"):
        fd = os.open(folder / "baseline", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        for _ in range(commits):
            os.write(fd, BIG if name.endswith("KB") else SMALL)
            (os.fsync if name == "bare fsync" else os.fdatasync)(fd)
        os.close(fd)
        return
    rng = random.Random(SEED)
    filler = [obj for batch in make_commits(prefill // 5, rng) for obj in batch]
    work = make_commits(commits, rng)
    store = ENGINES[name](folder / "store")
    store.prefill(filler)
    head = None
    for objects in work:
        store.commit(objects, head, objects[-1].id)
        head = objects[-1].id
    store.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run (< ~30 s)")
    parser.add_argument("--dir", default=None, help="folder for the temporary stores (default: system temp dir)")
    parser.add_argument("--no-strace", action="store_true", help="do not count syscalls with strace")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--commits", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--prefill", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.commits, args.prefill, Path(args.dir))
        return
    commits = 200 if args.quick else 1000
    prefill = 2_000 if args.quick else 20_000
    folder = work_folder(args.dir, "snapstore-backends-")
    started = time.perf_counter()
    try:
        print(f"## bench_backends{' --quick' if args.quick else ''}\n")
        print(f"Machine: {machine(str(folder))}; load average at start {os.getloadavg()[0]:.2f}.")
        print(f"\nEach engine prefilled with {prefill:,} objects, then {commits:,} commits of 5 new objects "
              f"(~1.6 KB) and one ref swap each, engines interleaved round-robin.\n")
        results = run(list(ENGINES), folder, commits, prefill)
        counted: dict[str, dict[str, float] | None] = {}
        if not args.no_strace:
            for name in results:
                counted[name] = strace_counts(name, folder, 100 if args.quick else 200, prefill)
        base = Summary.of(results["bare fdatasync"]["times"])
        rows = []
        for name, result in results.items():
            s = Summary.of(result["times"])
            mean = sum(result["times"]) / len(result["times"])
            wrote = sorted(result["bytes"])[len(result["bytes"]) // 2]
            count = counted.get(name)
            rows.append([
                name, f"{1 / mean:,.0f}", us(s.median), us(s.p99), ratio(s.median, base.median),
                ratio(s.p99, base.p99), f"{count['fsync']:.2f}" if count else "—",
                f"{count['syscalls']:.0f}" if count else "—", f"{wrote:,}", REASONED_FSYNCS[name],
            ])
        print(table(["engine", "commits/s", "median µs", "p99 µs", "median / fdatasync", "p99 / fdatasync p99",
                     "fsyncs/commit (strace)", "syscalls/commit (strace)", "bytes written/commit (median)",
                     "fsyncs by reasoning"], rows))
        print("\nSpace and page layout after the run (WAL checkpointed):\n")
        rows = []
        for name, result in results.items():
            if "disk" not in result:
                continue
            pages = result.get("pages", {})
            layout = (f"{pages.get('leaf', 0):,} leaf, {pages.get('internal', 0):,} interior "
                      f"(holding {pages.get('internal payload', 0) / 1e6:.1f} MB of row data), "
                      f"{pages.get('overflow', 0):,} overflow" if pages else "—")
            rows.append([name, f"{result['disk']:.2f}", layout])
        print(table(["engine", "disk bytes / object bytes", "objects table pages (dbstat)"], rows))
        print(f"\nload average at end {os.getloadavg()[0]:.2f}; total {time.perf_counter() - started:.0f} s")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Scaling: commits/s with 1, 2, 4 and 8 writer processes on every kind of store.

    python scripts/testservers.py run -- python benchmarks/bench_scaling.py [--quick]
        [--ops N] [--writers 1,2,4,8] [--stores embedded,postgresql,s3+postgresql]
        [--workloads own,shared] [--dir DIR] [--json FILE]

Each writer is a process of its own (``multiprocessing``, spawn), like an API
replica: it opens the store with a :class:`~snapstore.startup.Session`,
resumes a conversation into its own
:class:`~snapstore.orchestrator.ConversationOrchestrator` and runs a fixed
number of operations on it, each a durable snapshot: 88% ``add_exchange``
(about 1 KB of text: a 250-400 character question, a 500-750 character
answer), 8% ``spawn_sidebar`` (two exchanges inherited) and 4%
``switch_focus``, on contexts drawn at random from the writer's current view
of the tree. Writers open the store and load their conversation first; the
clock starts when all of them are ready.

Two workloads:

- ``own``: every writer on a conversation of its own (no compare-and-swap
  can be lost; what is shared is the store);
- ``shared``: all writers on ONE conversation. A writer whose
  compare-and-swap loses backs off a random moment and re-runs its
  operation on the winner's state (``ConversationOrchestrator._operate``).
  Lost compare-and-swaps are counted in each writer by wrapping its
  repository's ``commit_staged`` (no change to snapstore), per run and for
  the unluckiest single operation.

Stores, all in one run, each created fresh and deleted afterwards:

- ``embedded``: one SQLite file in a temporary folder (``--dir``);
- ``postgresql``: a fresh database on ``$SNAPSTORE_TEST_PG_URL``;
- ``s3+postgresql``: a fresh database and a fresh bucket on
  ``$SNAPSTORE_TEST_S3_URL``, the keys exported as ``AWS_ACCESS_KEY_ID`` /
  ``AWS_SECRET_ACCESS_KEY`` as users do.

Without the test servers' variables only the embedded store runs, and the
report says so. Each store is warmed first (one conversation of a few
hundred exchanges, then its zstd dictionary trained), so that every timed
run sees a store in its steady state rather than a dictionary being trained
in the middle of one.

Reported per store, workload and writer count: commits/s over all writers
(acknowledged operations / wall time from the start signal to the last
writer done), the ratio to one writer on the embedded store and to one
writer on the same store, per-operation latency (median, 99th percentile,
lost races included), lost compare-and-swaps, and how busy the machine's
CPUs were: all of them (``/proc/stat``), split into the writers (their own
CPU time), the test servers (the postmaster with its backends, and
``weed``) and everything else (other jobs, kernel I/O threads). After every run the store
is checked: one snapshot per acknowledged operation (history and reflog),
every acknowledged exchange present with its text, exchange ids unique,
every spawned context present. Any failure is printed as a problem.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import queue
import random
import shutil
import signal
import statistics
import sys
import time
import traceback
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from _common import SEED, Summary, machine, ms, table, text, work_folder  # noqa: E402

from snapstore.errors import RefConflict, SnapstoreError  # noqa: E402
from snapstore.orchestrator import ConversationOrchestrator  # noqa: E402
from snapstore.repository import Repository  # noqa: E402
from snapstore.startup import Session  # noqa: E402

WRITERS = (1, 2, 4, 8)
OPS = 150
QUICK_OPS = 20
WARMUP_EXCHANGES = 400
QUICK_WARMUP_EXCHANGES = 120
SPAWN_SHARE = 0.08
FOCUS_SHARE = 0.04
WORKLOADS = ("own", "shared")
READY_TIMEOUT = 600.0
RUN_TIMEOUT = 1200.0
EMBEDDED = "embedded"


@dataclass(frozen=True)
class Store:
    """One store under test: what it is called and where it is."""

    key: str
    location: str
    where: str  # printable: no secrets


@dataclass(frozen=True)
class WriterJob:
    """What one writer process does (sent to it pickled)."""

    location: str
    conversation: str
    writer: int
    ops: int
    seed: int


@dataclass
class RunResult:
    store: str
    workload: str
    writers: int
    ops: int
    acknowledged: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    lost_cas: Counter = field(default_factory=Counter)
    most_lost: int = 0
    errors: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    cpu_busy: float = 0.0
    writers_cpu: float = 0.0
    servers_cpu: float | None = None

    @property
    def rate(self) -> float:
        return self.acknowledged / self.seconds if self.seconds else 0.0

    def to_json(self) -> dict[str, Any]:
        summary = Summary.of(self.latencies) if self.latencies else None
        return {
            "store": self.store, "workload": self.workload, "writers": self.writers,
            "ops_per_writer": self.ops, "acknowledged": self.acknowledged,
            "seconds": round(self.seconds, 4), "commits_per_second": round(self.rate, 2),
            "latency_median_ms": round(summary.median * 1e3, 3) if summary else None,
            "latency_p99_ms": round(summary.p99 * 1e3, 3) if summary else None,
            "latency_mean_ms": round(statistics.fmean(self.latencies) * 1e3, 3) if summary else None,
            "latency_max_ms": round(max(self.latencies) * 1e3, 3) if summary else None,
            "lost_compare_and_swaps": dict(self.lost_cas), "most_lost_by_one_operation": self.most_lost,
            "errors": self.errors,
            "problems": self.problems, "cpu_busy": round(self.cpu_busy, 3),
            "writers_cpu": round(self.writers_cpu, 3),
            "servers_cpu": None if self.servers_cpu is None else round(self.servers_cpu, 3),
        }


# -- the writer process ---------------------------------------------------------


def _plan(rng: random.Random, ops: int) -> list[tuple[str, str, str]]:
    """(kind, user text, assistant text) per operation, drawn before the clock starts."""
    plan = []
    for _ in range(ops):
        roll = rng.random()
        kind = "spawn" if roll < SPAWN_SHARE else "focus" if roll < SPAWN_SHARE + FOCUS_SHARE else "exchange"
        plan.append((kind, text(rng, 250, 400), text(rng, 500, 750)))
    return plan


def writer_main(job: WriterJob, ready: Any, start: Any, out: Any) -> None:
    """One API replica: open the store, resume the conversation, run the operations."""
    try:
        session = Session(job.location, create=False)
        orchestrator = session.resume(job.conversation)
        lost: Counter = Counter()
        commit_staged = session.repo.commit_staged

        def counting_commit_staged(staging, **options):  # type: ignore[no-untyped-def]
            try:
                return commit_staged(staging, **options)
            except RefConflict:
                lost[options["event"].type] += 1
                raise

        # The orchestrator calls repo.commit_staged once per attempt: count the lost ones.
        session.repo.commit_staged = counting_commit_staged  # type: ignore[method-assign]
        rng = random.Random(job.seed)
        plan = _plan(rng, job.ops)
    except Exception:  # noqa: BLE001  - reported to the parent, which stops the run
        ready.put((job.writer, traceback.format_exc()))
        return
    ready.put((job.writer, None))
    start.wait()

    latencies: list[float] = []
    exchanges: list[tuple[str, str, str]] = []  # (context, exchange id, marker)
    spawned: list[str] = []
    errors: list[str] = []
    most_lost = 0  # lost compare-and-swaps of the unluckiest operation
    cpu0 = time.process_time()
    began = time.monotonic()
    for i, (kind, user, assistant) in enumerate(plan):
        contexts = sorted(orchestrator.tree.records)
        target = rng.choice(contexts)
        marker = f"[w{job.writer}#{i}]"
        lost_before = sum(lost.values())
        t0 = time.perf_counter()
        try:
            if kind == "exchange":
                exchange_id = orchestrator.add_exchange(target, f"{marker} {user}", assistant)
                exchanges.append((target, exchange_id, marker))
            elif kind == "spawn":
                spawned.append(orchestrator.spawn_sidebar(target, f"{marker} spawn", inherit_last_n=2))
            else:
                orchestrator.switch_focus(target)
        except Exception as exc:  # noqa: BLE001  - every failure is reported, none stops the run
            errors.append(f"writer {job.writer} op {i} ({kind} on {target}): {type(exc).__name__}: {exc}")
            if not isinstance(exc, SnapstoreError):
                errors[-1] += "\n" + traceback.format_exc()
            continue
        latencies.append(time.perf_counter() - t0)
        most_lost = max(most_lost, sum(lost.values()) - lost_before)
    ended = time.monotonic()
    cpu = time.process_time() - cpu0
    try:
        session.close()
    except Exception as exc:  # noqa: BLE001
        errors.append(f"writer {job.writer} close: {type(exc).__name__}: {exc}")
    out.put({
        "writer": job.writer, "conversation": job.conversation, "began": began, "ended": ended,
        "cpu": cpu, "latencies": latencies, "exchanges": exchanges, "spawned": spawned,
        "acknowledged": len(latencies), "lost": dict(lost), "most_lost": most_lost, "errors": errors,
    })


# -- one run ------------------------------------------------------------------


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs, from /proc/stat (iowait counts as idle)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        total = sum(fields[:8])  # guest time is already in user
        return total - fields[3] - fields[4], total
    return 0, 0


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state, ppid, ...), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


class ServerCpu:
    """CPU seconds used by the test servers: the postmaster and its backends, and ``weed``.

    Backends that exit are reaped by the postmaster, so their time moves into
    its children's time (cutime, cstime), which is counted too.
    """

    def __init__(self) -> None:
        self.roots: list[int] = []
        from urllib.parse import urlsplit

        wanted = []
        for var, match in (("SNAPSTORE_TEST_PG_URL", self._is_postmaster), ("SNAPSTORE_TEST_S3_URL", self._is_weed)):
            with contextlib.suppress(ValueError, TypeError):
                port = urlsplit(os.environ.get(var, "")).port
                if port:
                    wanted.append((str(port), match))
        for pid in _pids():
            try:
                args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            if any(match(args, port) for port, match in wanted):
                self.roots.append(pid)

    @staticmethod
    def _is_postmaster(args: list[str], port: str) -> bool:
        return args[0].endswith("postgres") and "-p" in args[:-1] and args[args.index("-p") + 1] == port

    @staticmethod
    def _is_weed(args: list[str], port: str) -> bool:
        return args[0].endswith("weed") and f"-s3.port={port}" in args

    def seconds(self) -> float:
        ticks = 0
        roots = set(self.roots)
        for pid in _pids():
            fields = _stat(pid)
            if fields is None:
                continue
            if pid in roots:
                ticks += sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
            elif int(fields[1]) in roots:
                ticks += int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")


def prepare(repo: Repository, workload: str, writers: int, label: str) -> dict[str, int]:
    """The conversations of a run, with a few contexts; returns their snapshot counts."""
    names = [f"{label}-w{i}" for i in range(writers)] if workload == "own" else [f"{label}-shared"]
    for name in names:
        orchestrator = ConversationOrchestrator(repo, name)
        root = orchestrator.create_root_context(f"{name}: root")
        orchestrator.add_exchange(root, "hello", "hi")
        for n in range(1 if workload == "own" else 3):
            child = orchestrator.spawn_sidebar(root, f"sidebar {n}", inherit_last_n=1)
            orchestrator.add_exchange(child, f"question {n}", f"answer {n}")
    return {name: len(repo.log(name)) for name in names}


def check(repo: Repository, setup: dict[str, int], reports: list[dict[str, Any]]) -> list[str]:
    """Everything acknowledged is in the store, exactly once; the problems found."""
    problems: list[str] = []
    for conversation, before in setup.items():
        mine = [r for r in reports if r["conversation"] == conversation]
        acknowledged = sum(r["acknowledged"] for r in mine)
        snapshots = len(repo.log(conversation))
        moves = len(repo.reflog(conversation))
        if snapshots != before + acknowledged or moves != before + acknowledged:
            problems.append(
                f"{conversation}: {snapshots} snapshots and {moves} reflog entries for "
                f"{before} setup + {acknowledged} acknowledged operations"
            )
        state = repo.load(conversation)
        contexts = {c["sidebar_id"]: c for c in state.contexts}
        own_items = [(cid, item) for cid, c in contexts.items() for item in c.get("local_memory", [])
                     if isinstance(item, dict)]
        ids = Counter(item.get("exchange_id") for _, item in own_items)
        duplicated = sorted(str(i) for i, n in ids.items() if n > 1)
        if duplicated:
            problems.append(f"{conversation}: exchange ids used twice: {', '.join(duplicated[:5])}")
        present = {(cid, item.get("exchange_id"), str(item.get("user", "")).split(" ", 1)[0])
                   for cid, item in own_items}
        lost = [f"{cid}/{ex} {marker}" for r in mine for cid, ex, marker in r["exchanges"]
                if (cid, ex, marker) not in present]
        if lost:
            problems.append(f"{conversation}: {len(lost)} acknowledged exchanges missing, e.g. {lost[:3]}")
        missing = [s for r in mine for s in r["spawned"] if s not in contexts]
        if missing:
            problems.append(f"{conversation}: acknowledged sidebars missing: {missing[:5]}")
    return problems


def run(store: Store, workload: str, writers: int, ops: int, label: str, servers: ServerCpu,
        log: Any) -> RunResult:
    result = RunResult(store.key, workload, writers, ops)
    with contextlib.closing(Repository.open(store.location)) as repo:
        setup = prepare(repo, workload, writers, label)
    conversations = list(setup)
    ctx = mp.get_context("spawn")
    ready, out, start = ctx.Queue(), ctx.Queue(), ctx.Event()
    jobs = [WriterJob(store.location, conversations[i % len(conversations)], i, ops, SEED + 7919 * i)
            for i in range(writers)]
    processes = [ctx.Process(target=writer_main, args=(job, ready, start, out), daemon=True) for job in jobs]
    for process in processes:
        process.start()
    reports: list[dict[str, Any]] = []
    try:
        for _ in processes:
            try:
                writer, failure = ready.get(timeout=READY_TIMEOUT)
            except queue.Empty:
                raise RuntimeError(f"a writer was not ready after {READY_TIMEOUT:.0f} s") from None
            if failure:
                raise RuntimeError(f"writer {writer} could not start:\n{failure}")
        busy0, total0 = cpu_ticks()
        server0 = servers.seconds()
        start.set()
        deadline = time.monotonic() + RUN_TIMEOUT
        while len(reports) < writers:
            try:
                reports.append(out.get(timeout=max(1.0, deadline - time.monotonic())))
            except queue.Empty:
                result.problems.append(
                    f"{writers - len(reports)} of {writers} writers did not finish within {RUN_TIMEOUT:.0f} s "
                    "(a deadlock or a livelock?)"
                )
                break
        busy1, total1 = cpu_ticks()
        server1 = servers.seconds()
    except RuntimeError as exc:
        result.problems.append(f"run aborted: {exc}")
        busy0 = busy1 = total0 = total1 = 0
        server0 = server1 = 0.0
    finally:
        for process in processes:
            process.join(30 if reports else 1)
            if process.is_alive():
                process.terminate()
                process.join(10)
    if not reports:
        return result
    result.seconds = max(r["ended"] for r in reports) - min(r["began"] for r in reports)
    result.acknowledged = sum(r["acknowledged"] for r in reports)
    for r in reports:
        result.latencies += r["latencies"]
        result.lost_cas.update(r["lost"])
        result.most_lost = max(result.most_lost, r["most_lost"])
        result.errors += r["errors"]
    if total1 > total0:
        result.cpu_busy = (busy1 - busy0) / (total1 - total0)
    if result.seconds:
        capacity = result.seconds * (os.cpu_count() or 1)
        result.writers_cpu = sum(r["cpu"] for r in reports) / capacity
        if servers.roots:
            result.servers_cpu = (server1 - server0) / capacity
    with contextlib.closing(Repository.open(store.location)) as repo:
        result.problems += check(repo, setup, reports)
    for line in result.errors[:10] + result.problems:
        log(f"  ! {line}")
    return result


# -- the stores ----------------------------------------------------------------


def warm_up(store: Store, exchanges: int) -> str:
    """A conversation of ``exchanges`` exchanges, then the store's dictionary; what was done."""
    with contextlib.closing(Repository.open(store.location)) as repo:
        orchestrator = ConversationOrchestrator(repo, "warmup")
        root = orchestrator.create_root_context("warm-up")
        rng = random.Random(SEED)
        began = time.perf_counter()
        for _ in range(exchanges):
            orchestrator.add_exchange(root, text(rng, 250, 400), text(rng, 500, 750))
        seconds = time.perf_counter() - began
        dictionary = repo.codec.current if repo.codec.current is not None else repo.train_dictionary()
        count = repo.backend.count_objects()[0]
    return (f"{exchanges} exchanges by one process in {seconds:.1f} s ({exchanges / seconds:.0f}/s), "
            f"{count} objects, zstd dictionary {dictionary}")


def _set_env(stack: contextlib.ExitStack, name: str, value: str | None) -> None:
    old = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    stack.callback(lambda: os.environ.__setitem__(name, old) if old is not None else os.environ.pop(name, None))


@contextlib.contextmanager
def stores(folder: Path, log: Any) -> Iterator[list[Store]]:
    """Every store this machine can run, created fresh; deleted on exit."""
    with contextlib.ExitStack() as stack:
        embedded = folder / "embedded"
        Repository.init(str(embedded)).close()
        found = [Store(EMBEDDED, str(embedded), f"{embedded} (SQLite, WAL, synchronous=FULL)")]
        from tests.servers import (
            delete_s3_bucket, drop_pg_database, fresh_pg_database, fresh_s3_bucket, pg_url, s3_config,
        )

        server = pg_url()
        if server is None:
            log("$SNAPSTORE_TEST_PG_URL is not set: the PostgreSQL and S3 stores are SKIPPED, only the "
                "embedded store runs (start the servers with "
                "`python scripts/testservers.py run -- python benchmarks/bench_scaling.py`)")
        else:
            import psycopg

            database = fresh_pg_database(server)
            stack.callback(drop_pg_database, database)
            Repository.init(database).close()
            with psycopg.connect(database, autocommit=True) as conn:
                settings = {name: conn.execute(f"SHOW {name}").fetchone()[0]
                            for name in ("server_version", "fsync", "synchronous_commit", "wal_sync_method")}
            shown = ", ".join(f"{k}={v}" for k, v in settings.items())
            found.append(Store("postgresql", database, f"fresh database on 127.0.0.1 ({shown})"))
            cfg = s3_config()
            if cfg is None:
                log("$SNAPSTORE_TEST_S3_URL/KEY/SECRET are not set: the S3 store is SKIPPED")
            else:
                from tests.shared_backends import s3_location

                _set_env(stack, "AWS_ACCESS_KEY_ID", cfg["access_key"])
                _set_env(stack, "AWS_SECRET_ACCESS_KEY", cfg["secret_key"])
                _set_env(stack, "AWS_SESSION_TOKEN", None)
                _set_env(stack, "AWS_PROFILE", None)
                _set_env(stack, "NO_PROXY", ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1",
                                                                  "localhost"])))
                database = fresh_pg_database(server)
                stack.callback(drop_pg_database, database)
                bucket = fresh_s3_bucket(cfg)
                stack.callback(delete_s3_bucket, cfg, bucket)
                location = s3_location(database, cfg, bucket)
                Repository.init(location).close()
                found.append(Store("s3+postgresql", location,
                                   f"fresh database + bucket {bucket} on SeaweedFS at {cfg['endpoint_url']}"))
        yield found


# -- the report ----------------------------------------------------------------


def report(results: Sequence[RunResult], workload: str) -> str:
    base = {r.store: r.rate for r in results if r.workload == workload and r.writers == 1}
    embedded_one = base.get(EMBEDDED, 0.0)
    rows = []
    for r in results:
        if r.workload != workload:
            continue
        summary = Summary.of(r.latencies) if r.latencies else None
        lost = sum(r.lost_cas.values())
        rows.append([
            r.store, r.writers, f"{r.acknowledged}/{r.writers * r.ops}", f"{r.rate:,.0f}",
            f"{r.rate / embedded_one:.2f}x" if embedded_one else "n/a",
            f"{r.rate / base[r.store]:.2f}x" if base.get(r.store) else "n/a",
            ms(summary.median) if summary else "-", ms(summary.p99) if summary else "-",
            ms(max(r.latencies)) if summary else "-",
            f"{lost} ({lost / r.acknowledged:.2f}/op, max {r.most_lost})" if r.acknowledged else str(lost),
            f"{r.cpu_busy:.0%}", f"{r.writers_cpu:.0%}",
            "n/a" if r.servers_cpu is None else f"{r.servers_cpu:.0%}",
            "n/a" if r.servers_cpu is None else f"{max(0.0, r.cpu_busy - r.writers_cpu - r.servers_cpu):.0%}",
            len(r.errors) + len(r.problems),
        ])
    return table(
        ["store", "writers", "ops acked", "commits/s", "vs embedded x1", "vs same store x1",
         "median ms", "p99 ms", "max ms", "lost CAS (retries)", "CPU busy", "writers", "servers", "other",
         "errors"],
        rows,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"a smoke run: {QUICK_OPS} operations per writer")
    parser.add_argument("--ops", type=int, help=f"operations per writer (default {OPS})")
    parser.add_argument("--writers", help="comma-separated writer counts (default 1,2,4,8)")
    parser.add_argument("--stores", help="comma-separated stores to run (default: every one available): "
                                         f"{EMBEDDED},postgresql,s3+postgresql")
    parser.add_argument("--workloads", help="comma-separated workloads (default: own,shared)")
    parser.add_argument("--dir", help="where the embedded store goes (default: the system temp dir)")
    parser.add_argument("--json", help="also write every figure to this JSON file")
    args = parser.parse_args(argv)
    ops = args.ops or (QUICK_OPS if args.quick else OPS)
    counts = [int(n) for n in args.writers.split(",")] if args.writers else list(WRITERS)
    workloads = args.workloads.split(",") if args.workloads else list(WORKLOADS)
    wanted = set(args.stores.split(",")) if args.stores else None
    folder = work_folder(args.dir, "bench-scaling-")

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    results: list[RunResult] = []
    notes: list[str] = []
    servers = ServerCpu()
    interrupted = False

    def stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    # A SIGTERM (e.g. from `testservers.py run` stopping) still drops the databases,
    # deletes the folder and prints what was measured so far.
    signal.signal(signal.SIGTERM, stop)
    try:
        with stores(folder, log) as found:
            for store in found:
                if wanted is not None and store.key not in wanted:
                    continue
                log(f"{store.key}: {store.where}")
                done = warm_up(store, QUICK_WARMUP_EXCHANGES if args.quick else WARMUP_EXCHANGES)
                notes.append(f"- {store.key}: {store.where}; warm-up: {done}")
                log(f"  warm-up: {done}")
                for workload in workloads:
                    for writers in counts:
                        label = f"{workload}{writers}"
                        result = run(store, workload, writers, ops, label, servers, log)
                        results.append(result)
                        log(f"  {workload:6} x{writers}: {result.acknowledged} ops in {result.seconds:.2f} s = "
                            f"{result.rate:,.0f}/s, lost CAS {sum(result.lost_cas.values())}, "
                            f"errors {len(result.errors)}, problems {len(result.problems)}")
    except KeyboardInterrupt as exc:
        interrupted = True
        log(f"interrupted ({exc or 'Ctrl-C'}): reporting the runs finished so far")
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    print(f"# Scaling: {ops} operations per writer, writers {', '.join(map(str, counts))}\n")
    print(f"Machine: {machine(str(folder.parent))}.\n")
    print("Stores:\n" + "\n".join(notes) + "\n")
    if interrupted:
        print("**Interrupted**: only the runs below finished.\n")
    if not any(r.store != EMBEDDED for r in results):
        print("**Only the embedded store ran**: the PostgreSQL/S3 test servers' variables are not set.\n")
    print("Latency is per operation, lost races and back-off included; lost CAS: compare-and-swaps lost "
          "(per acknowledged operation, and the most lost by one operation); CPU: both cores over the run, "
          "split into writers, servers (postgres, weed) and other (other jobs, kernel I/O threads).\n")
    for workload in workloads:
        title = ("every writer on its own conversation" if workload == "own"
                 else "all writers on ONE conversation")
        print(f"## {workload}: {title}\n\n{report(results, workload)}\n")
    lost_by_event: Counter = Counter()
    for r in results:
        lost_by_event.update(r.lost_cas)
    if lost_by_event:
        print("Lost compare-and-swaps by operation: "
              + ", ".join(f"{k} {v}" for k, v in lost_by_event.most_common()) + "\n")
    failures = [(r, line) for r in results for line in r.errors + r.problems]
    if failures:
        print("## Problems\n")
        for r, line in failures[:40]:
            print(f"- {r.store} {r.workload} x{r.writers}: {line.splitlines()[0]}")
        if len(failures) > 40:
            print(f"- ... and {len(failures) - 40} more")
    else:
        print("Every run checked: one snapshot and one reflog entry per acknowledged operation, every "
              "acknowledged exchange and sidebar present, exchange ids unique.")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"ops_per_writer": ops, "machine": machine(str(folder.parent)),
             "stores": notes, "runs": [r.to_json() for r in results]}, indent=2))
    return 1 if failures or interrupted else 0


if __name__ == "__main__":
    sys.exit(main())

"""Crash at every step: prune, gc, pack, compact and import, SIGKILLed after (and before) each commit.

The crash harness (tests/crash/) kills an orchestrator's normal operations;
this kills the maintenance commands, which rewrite or delete what is stored.
For each operation, on a store prepared for it (three conversations written
by orchestrators, their OZOLITH log kept in the store, history worth
pruning, garbage worth collecting, loose objects, log lines and reflog rows
worth packing, a bundle worth importing):

1. the command runs once to its end in a subprocess that counts its durable
   steps (tests/crash/maintenance.py: every SQLite write that can commit);
2. for each step k and each side of it (right before its COMMIT, right
   after), a fresh copy of the prepared store gets the command in a
   subprocess that SIGKILLs itself there;
3. the copy is then opened here and must pass ``fsck`` and ``verify`` with
   the log (chain, cross-check, replay); every conversation must be there,
   its head and loaded tree exactly as before the command or exactly as a
   complete run leaves them; objects only as the command may change them
   (prune only adds, gc only deletes what the complete run deletes, pack and
   compact neither); the log and the other conversations' reflogs untouched;
4. running the command again to its end must give what the uninterrupted
   run gave.

All steps of every operation are tested (the stores are small, and the
batch constants made small so each kind of step happens several times).
"""

from __future__ import annotations

import importlib
import json
import random
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from snapstore.backends.base import RefUpdate
from snapstore.bundle import export_bundle
from snapstore.cli.main import cli
from snapstore.gc import collect_garbage
from snapstore.orchestrator import ConversationOrchestrator
from snapstore.packing import pack
from snapstore.prune import prune
from snapstore.refs import REF_PREFIX, conversation_of
from snapstore.repository import Repository
from snapstore.rewrites import Rewrites
from snapstore.storelog import StoreAudit, StoreLog
from snapstore.verify import verify

from .crash.maintenance import OPERATIONS, SMALL_BATCHES

ROOT = Path(__file__).resolve().parents[1]
CONVERSATIONS = ("c1", "c2", "c3")
# Subprocesses at once: the machine has two cores, and the checks here take the GIL.
PARALLEL = 2


def _work(repo: Repository, conv: str, operations: int, seed: int) -> ConversationOrchestrator:
    """A conversation written by an orchestrator with its log entries in the store: spawns, exchanges,
    a pause and resume, a merge."""
    orch = ConversationOrchestrator(repo, conv, audit=StoreAudit(StoreLog(repo.backend)))
    root = orch.create_root_context(f"task {conv}")
    side = orch.spawn_sidebar(root, "look into it", inherit_last_n=1)
    for i in range(operations):
        orch.add_exchange(side if (i + seed) % 3 else root, f"{conv} question {i} \u00fc \U0001f600",
                          f"answer {i} " * (5 + seed))
    orch.pause_context(side)
    orch.resume_context(side)
    orch.merge_sidebar(side, f"{conv} done")
    return orch


def _more(repo: Repository, conv: str, n: int) -> None:
    orch = ConversationOrchestrator(repo, conv, audit=StoreAudit(StoreLog(repo.backend)))
    for i in range(n):
        orch.add_exchange(orch.active_context_id, f"{conv} later {i}", f"later answer {i} " * 8)


@dataclass
class Prepared:
    """The prepared store of each operation (copied for each run, never opened) and the bundle to import."""

    stores: dict[str, str]
    bundle: Path
    copy: Callable[[str, Path], str]   # (prepared location, scratch folder) -> a fresh copy's location
    drop: Callable[[str], None]


def _prepare(work: str, keep: Callable[[str, Repository], None], bundle: Path, packs: bool) -> None:
    """Build the store of each operation at ``work``; ``keep(name, repo)`` closes it and keeps a copy."""
    repo = Repository.init(work)
    for n, conv in enumerate(CONVERSATIONS):
        _work(repo, conv, 6 + 2 * n, n)
    # A fork sharing c1's history (prune leaves what it reaches alive).
    fork_point = repo.resolve("c1~4")
    repo.backend.write(ref_updates=[RefUpdate(REF_PREFIX + "fork", None, fork_point, "branch")])
    keep("import", repo)                    # c1..c3 and the fork; the bundle brings their later history
    repo = Repository.open(work)
    if packs:
        pack(repo)                          # packed history: prune's garbage then lies in packs too
    for conv in CONVERSATIONS:
        _more(repo, conv, 3)
    _work(repo, "c4", 2, 0)                 # not in the import's target: the import creates it
    export_bundle(repo, [*CONVERSATIONS, "c4"], bundle)
    keep("prune", repo)
    repo = Repository.open(work)
    for conv in CONVERSATIONS:
        prune(repo, conv, keep_last=3)
    collect_garbage(repo, timedelta(0))     # records the garbage; the gc under test deletes it
    keep("gc", repo)
    if not packs:
        repo.close()
        return
    repo = Repository.open(work)
    collect_garbage(repo, timedelta(0))
    for conv in CONVERSATIONS:
        _more(repo, conv, 4)                # loose objects, log lines and reflog rows to pack
    keep("pack", repo)
    repo = Repository.open(work)
    pack(repo)
    for conv in CONVERSATIONS:
        _more(repo, conv, 2)
    keep("compact", repo)


@pytest.fixture(scope="module")
def sqlite_stores(tmp_path_factory) -> Prepared:
    base = tmp_path_factory.mktemp("maintenance")
    stores: dict[str, str] = {}

    def keep(name: str, repo: Repository) -> None:
        repo.close()
        shutil.copytree(base / "work", base / name)
        stores[name] = str(base / name)

    def copy(prepared: str, scratch: Path) -> str:
        shutil.copytree(prepared, scratch / "store")
        return str(scratch / "store")

    _prepare(str(base / "work"), keep, base / "all.bundle", packs=True)
    return Prepared(stores, base / "all.bundle", copy, lambda location: shutil.rmtree(location))


@pytest.fixture(scope="module")
def postgres_stores(tmp_path_factory) -> Iterator[Prepared]:
    """Each prepared store a database; a copy is ``CREATE DATABASE ... TEMPLATE`` of it."""
    import psycopg
    from psycopg import sql

    from .servers import PG_DB_PREFIX, _dbname, _with_dbname, drop_pg_database, fresh_pg_database, require_pg

    server = require_pg()
    base = tmp_path_factory.mktemp("maintenance-pg")
    work = fresh_pg_database(server)
    made = [work]

    def clone(template: str) -> str:
        name = f"{PG_DB_PREFIX}{uuid.uuid4().hex[:20]}"
        with psycopg.connect(server, autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(_dbname(template))))
        return _with_dbname(server, name)

    stores: dict[str, str] = {}

    def keep(name: str, repo: Repository) -> None:
        repo.close()
        stores[name] = clone(work)
        made.append(stores[name])

    try:
        _prepare(work, keep, base / "all.bundle", packs=False)
        yield Prepared(stores, base / "all.bundle", lambda prepared, scratch: clone(prepared), drop_pg_database)
    finally:
        for url in made:
            drop_pg_database(url)


def _state(location: str, with_log: bool = True) -> dict[str, Any]:
    """What a reader sees of a store, as values that a rerun of a command reproduces (no times,
    no pack layout); and whether fsck and verify pass."""
    repo = Repository.open(location)
    try:
        backend = repo.backend
        refs = backend.list_refs()
        heads = {conversation_of(r): t for r, t in refs.items() if conversation_of(r) is not None}
        fsck = repo.fsck()
        report = verify(repo, StoreLog(backend) if with_log else None)
        return {
            "heads": heads,
            "trees": {c: repo.load(t).to_json() for c, t in heads.items()},
            "ids": frozenset(backend.find_ids("", limit=1 << 62)),
            "reflogs": {r: [(e.old, e.new, e.log_sequence, e.log_hash) for e in backend.reflog(r)] for r in refs},
            "log": backend.log_lines(0),
            "records": sorted((r.conversation, r.old_head, r.new_head, r.squash, sorted(r.kept.items()),
                               sorted(r.squashed), sorted(r.dropped)) for r in Rewrites.load(backend).records),
            "loose": backend.loose_count() if hasattr(backend, "loose_count") else None,
            "problems": [p.message for p in fsck.problems] + [f"verify: {p.kind}: {p.message}"
                                                               for p in report.problems],
        }
    finally:
        repo.close()


def _run(location: str, operation: str, k: int, when: str, arg: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tests.crash.maintenance", location, operation, str(k), when, arg],
        cwd=ROOT, capture_output=True, text=True, timeout=120)


def _steps(out: str) -> list[str]:
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("STEPS "))
    return [line.split(" ", 2)[2] for line in lines[start + 1 :]]


def _complete(location: str, operation: str, bundle: Path) -> None:
    """Run ``operation`` to its end in this process, as tests/crash/maintenance.py runs it."""
    for command in OPERATIONS[operation]:
        args = ["--store", location] + [a.format(arg=bundle) for a in command]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, f"{' '.join(args)}: {result.output}"


def _is_prefix(short: list, long: list) -> bool:
    return long[: len(short)] == short


def _judge(before: dict[str, Any], after: dict[str, Any], crashed: dict[str, Any]) -> list[str]:
    """What is wrong with a store a command was killed in, given the store before and after a complete run."""
    wrong = list(crashed["problems"])
    lost = set(before["heads"]) - set(crashed["heads"])
    if lost:
        wrong.append(f"conversations lost: {sorted(lost)}")
    if set(crashed["heads"]) - set(after["heads"]):
        wrong.append(f"conversations neither before nor after: {sorted(set(crashed['heads']) - set(after['heads']))}")
    for conv, head in crashed["heads"].items():
        ends = {(s["heads"].get(conv), json.dumps(s["trees"].get(conv), sort_keys=True)) for s in (before, after)}
        here = (head, json.dumps(crashed["trees"][conv], sort_keys=True))
        moved = [e[1] for e in after["reflogs"][REF_PREFIX + conv]]
        if here not in ends and not (head in moved and crashed["reflogs"][REF_PREFIX + conv][-1][1] == head):
            # (an import moves a ref through the bundled history: any value the complete run moves it through)
            wrong.append(f"{conv}: head {head[:12]} is neither the one before nor after, or its tree differs")
    for ref, entries in crashed["reflogs"].items():
        if not (_is_prefix(before["reflogs"].get(ref, []), entries) and _is_prefix(entries, after["reflogs"][ref])):
            wrong.append(f"reflog of {ref}: {len(entries)} entries, neither extending the one before "
                         f"({len(before['reflogs'].get(ref, []))}) nor part of the one after ({len(after['reflogs'][ref])})")
    if crashed["log"] != before["log"]:
        wrong.append(f"the audit log changed: {len(before['log'])} lines before, {len(crashed['log'])} now")
    if not (before["ids"] & after["ids"]) <= crashed["ids"]:
        wrong.append(f"objects lost: {sorted(before['ids'] & after['ids'] - crashed['ids'])[:5]}")
    if not crashed["ids"] <= before["ids"] | after["ids"]:
        wrong.append(f"objects neither before nor after: {sorted(crashed['ids'] - before['ids'] - after['ids'])[:5]}")
    records = {json.dumps(r) for r in crashed["records"]}
    if not {json.dumps(r) for r in before["records"]} <= records <= {json.dumps(r) for r in after["records"]}:
        wrong.append("prune records neither before nor after")
    return wrong


FINAL = ("heads", "trees", "ids", "reflogs", "log", "records", "loose", "problems")


def _kill_at_every_step(operation: str, stores: Prepared, tmp_path: Path, monkeypatch, sample_before: bool) -> None:
    """Kill ``operation`` after each of its steps, and before each (``sample_before``: before half of them,
    chosen at random with a fixed seed, for the slower PostgreSQL runs)."""
    for (module, name), value in SMALL_BATCHES.items():
        monkeypatch.setattr(importlib.import_module(module), name, value)
    source = stores.stores[operation]
    with_log = operation != "import"  # the target's log lacks the bundled entries: verify would say so either way
    reference = stores.copy(source, _folder(tmp_path, "reference"))
    before = _state(reference, with_log)
    assert before["problems"] == []
    counted = _run(reference, operation, 0, "after", str(stores.bundle))
    assert counted.returncode == 0, counted.stdout + counted.stderr
    steps = _steps(counted.stdout)
    after = _state(reference, with_log)
    stores.drop(reference)
    assert after["problems"] == []
    changed = {k for k in ("heads", "ids", "loose", "reflogs") if before[k] != after[k]}
    assert changed or operation == "compact", f"{operation} changed nothing: the test would prove nothing"
    assert len(steps) >= 3, steps

    # The copies are made here, one at a time (a database is copied only while nothing is connected to it).
    before_steps = set(range(1, len(steps) + 1))
    if sample_before:
        before_steps = set(random.Random(operation).sample(sorted(before_steps), max(2, len(steps) // 2)))
    runs = [(k, when, stores.copy(source, _folder(tmp_path, f"{k}-{when}")))
            for k in range(1, len(steps) + 1) for when in ("before", "after") if when == "after" or k in before_steps]

    def crash(run: tuple[int, str, str]) -> subprocess.CompletedProcess:
        k, when, location = run
        return _run(location, operation, k, when, str(stores.bundle))

    failures = []
    with ThreadPoolExecutor(PARALLEL) as pool:
        for (k, when, location), result in zip(runs, pool.map(crash, runs), strict=True):
            where = f"{operation} killed {when} step {k} of {len(steps)} ({steps[k - 1]})"
            try:
                if result.returncode != -signal.SIGKILL:
                    failures.append(f"{where}: exit {result.returncode}, not killed: {result.stdout[-300:]}"
                                    f"{result.stderr[-300:]}")
                    continue
                try:
                    crashed = _state(location, with_log)
                except Exception as exc:  # a store that cannot even be read: the worst outcome, named
                    failures.append(f"{where}: the store cannot be read: {type(exc).__name__}: {exc}")
                    continue
                failures += [f"{where}: {w}" for w in _judge(before, after, crashed)]
                try:
                    _complete(location, operation, stores.bundle)
                    final = _state(location, with_log)
                except Exception as exc:
                    failures.append(f"{where}: running it again failed: {type(exc).__name__}: {exc}")
                    continue
                for key in FINAL:
                    if final[key] != after[key]:
                        failures.append(f"{where}: after running it again, {key} differs from an uninterrupted run")
            finally:
                stores.drop(location)
    print(f"{operation}: {len(steps)} steps, {len(runs)} kills: " + "; ".join(steps))
    assert not failures, "\n".join(failures)


def _folder(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    return folder


@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_a_kill_at_every_step_leaves_the_store_before_or_after_and_a_rerun_finishes(
        operation, sqlite_stores, tmp_path, monkeypatch):
    _kill_at_every_step(operation, sqlite_stores, tmp_path, monkeypatch, sample_before=False)


@pytest.mark.parametrize("operation", ["prune", "gc", "import"])  # pack and compact: the embedded store's
def test_postgres_a_kill_at_every_step_leaves_the_store_before_or_after_and_a_rerun_finishes(
        operation, postgres_stores, tmp_path, monkeypatch):
    _kill_at_every_step(operation, postgres_stores, tmp_path, monkeypatch, sample_before=True)

"""The core costs of snapstore, each next to what it should be compared with.

    python benchmarks/bench_core.py [--quick] [--dir DIR] [--only abcde] [--keep] [--against REV]
    python benchmarks/bench_core.py --profile [--quick]   # where the time goes
    python benchmarks/bench_core.py --whatif [--quick]    # proposed changes, patched in

a. durable commit of one changed context vs a bare fsync on the same filesystem
b. appending one exchange at history lengths 100, 1,000 and 10,000
c. open + load, and diff of a one-context change, in trees of 100 to 10,000 contexts
d. compression: plain zstd vs a dictionary trained on the store's own objects
e. canonical JSON: stdlib json vs orjson, and what share of a commit encoding is

Everything runs in one process, alternatives interleaved round-robin (the
order rotating every round) so that drifting machine load hits them alike;
results are ratios. Stores and baseline files live in one temporary folder
(``--dir``, default the system temp dir), whose filesystem is printed.
Prints markdown; ``--quick`` is a smoke run (fewer samples, trees up to
1,000 contexts) and its numbers are not the reference ones. ``--profile``
and ``--whatif`` wrap or replace snapstore internals inside this process
only, to show where time goes and what the changes proposed in
docs/benchmarks.md would buy; they never touch snapstore's files.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import zstandard  # noqa: E402
from _common import (  # noqa: E402
    SEED,
    ConversationModel,
    Summary,
    machine,
    ms,
    ratio,
    snapstore_at,
    table,
    us,
    verdict,
    work_folder,
)

from snapstore import objects as snap_objects  # noqa: E402
from snapstore import tree as snap_tree  # noqa: E402
from snapstore.objects import canonical_json, decode, encode, hash_object, to_json  # noqa: E402
from snapstore.compression import LEVEL  # noqa: E402
from snapstore.repository import DICT_PREFIX, DICT_TRAIN_AFTER, Repository  # noqa: E402

try:
    import orjson
except ImportError:  # orjson is not a dependency; section e reports it missing
    orjson = None

DB = "store.sqlite"
PAYLOAD = b"x" * 100


def rotated(items: Sequence[Any], i: int) -> list[Any]:
    """``items`` starting at position ``i`` (mod len): each alternative goes first in turn."""
    k = i % len(items)
    return list(items[k:]) + list(items[:k])


def timed(fn: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    """Seconds ``fn(*args)`` took, and its value."""
    start = time.perf_counter()
    value = fn(*args)
    return time.perf_counter() - start, value


def each(fn: Callable[[Any], Any], values: Sequence[Any]) -> list[Any]:
    return [fn(v) for v in values]


def checkpoint(store: Path) -> None:
    """Move the WAL into the database file and truncate it (a second connection, as a tool would)."""
    db = sqlite3.connect(store / DB)
    try:
        busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            raise RuntimeError(f"checkpoint of {store} was blocked")
    finally:
        db.close()


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


class SyncBaseline:
    """Bare durable writes in the store's folder: what a commit is compared with."""

    def __init__(self, folder: Path) -> None:
        self.append_fd = os.open(folder / "baseline-append", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.over_fd = os.open(folder / "baseline-overwrite", os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(self.over_fd, b"\0" * 4096)
        os.fsync(self.over_fd)

    def fdatasync(self) -> float:
        start = time.perf_counter()
        os.write(self.append_fd, PAYLOAD)
        os.fdatasync(self.append_fd)
        return time.perf_counter() - start

    def fsync(self) -> float:
        start = time.perf_counter()
        os.write(self.append_fd, PAYLOAD)
        os.fsync(self.append_fd)
        return time.perf_counter() - start

    def overwrite(self) -> float:
        start = time.perf_counter()
        os.pwrite(self.over_fd, PAYLOAD, 0)
        os.fdatasync(self.over_fd)
        return time.perf_counter() - start

    def close(self) -> None:
        os.close(self.append_fd)
        os.close(self.over_fd)


# -- orjson, made to give snapstore's canonical bytes -------------------------

_NOT_PRINTABLE_ASCII = re.compile(r"[^\x00-\x7e]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 | (code >> 10):04x}\\u{0xDC00 | (code & 0x3FF):04x}"


def orjson_canonical(value: Any) -> bytes:
    """orjson with sorted keys, then non-ASCII and DEL escaped as ``json.dumps(ensure_ascii=True)`` does.

    Equal to :func:`snapstore.objects.canonical_json` except for some floats
    written with an exponent (Python ``1e-07``, orjson ``1e-7``; which ones
    differ has changed between orjson releases), NaN (orjson writes null,
    snapstore refuses it) and integers beyond 64 bits.
    """
    text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode("utf-8")
    if not text.isascii() or "\x7f" in text:
        text = _NOT_PRINTABLE_ASCII.sub(_escape, text)
    return text.encode("ascii")


class OrjsonEncoder:
    """Swap snapstore's canonical encoder for :func:`orjson_canonical` inside a ``with``.

    A what-if for this benchmark only: it patches the two module globals the
    commit path looks the encoder up through.
    """

    def __enter__(self) -> None:
        self.saved = snap_objects.canonical_json, snap_tree.canonical_json
        snap_objects.canonical_json = orjson_canonical
        snap_tree.canonical_json = orjson_canonical

    def __exit__(self, *exc: object) -> None:
        snap_objects.canonical_json, snap_tree.canonical_json = self.saved


# -- a. durable commit of one changed context --------------------------------


def touch_context(model: ConversationModel, rng: random.Random) -> dict[str, Any]:
    """Change one random context as a status change would (status, last_activity)."""
    cid = rng.choice(list(model.contexts))
    context = model.contexts[cid]
    context["status"] = rng.choice(["active", "paused", "waiting", "reviewing"])
    context["last_activity"] = model.clock.tick()
    return context


def repository_class_at(revision: str, folder: Path) -> Any:
    """The ``Repository`` class of snapstore as of a git revision, to time it beside the working tree."""
    return snapstore_at(revision, folder, "repository").Repository


def section_a(folder: Path, commits: int, contexts: int, against: str | None = None) -> dict[str, Any]:
    store = folder / "a"
    repo = Repository.init(str(store))
    baseline = SyncBaseline(store)
    rng = random.Random(SEED)
    variants = ["staged", "whole"] + (["orjson"] if orjson else [])
    models = {}
    for i, name in enumerate(variants):
        model = ConversationModel(random.Random(SEED + i))
        model.grow(contexts)
        repo.commit(name, model.state())
        models[name] = model

    cpu: dict[str, list[float]] = {}

    def clocked(name: str, fn: Callable[[], Any]) -> tuple[float, Any]:
        """Wall time of ``fn`` (returned) and its process CPU time (kept in ``cpu``)."""
        cpu_start, start = time.process_time(), time.perf_counter()
        value = fn()
        elapsed = time.perf_counter() - start
        cpu.setdefault(name, []).append(time.process_time() - cpu_start)
        return elapsed, value

    def commit_staged(name: str) -> tuple[float, Any]:
        context = touch_context(models[name], rng)

        def commit() -> tuple[Any, Any]:
            staging = repo.stage(name)
            staging.workspace.put_context(context)
            return staging, repo.commit_staged(staging)

        return clocked(name, commit)

    def commit_whole() -> float:
        touch_context(models["whole"], rng)
        state = models["whole"].state()
        elapsed, result = clocked("whole", lambda: repo.commit("whole", state))
        assert result.created
        return elapsed

    samples: dict[str, list[float]] = {k: [] for k in ("staged", "whole", "orjson", "fdatasync", "fsync", "overwrite")}
    encode_std: list[float] = []
    encode_orjson: list[float] = []
    objects_per_commit: list[int] = []
    bytes_per_commit: list[int] = []
    last_objects: list[Any] = []
    ops: dict[str, Callable[[], float]] = {
        "whole": commit_whole,
        "fdatasync": lambda: clocked("fdatasync", baseline.fdatasync)[0],
        "fsync": lambda: clocked("fsync", baseline.fsync)[0],
        "overwrite": lambda: clocked("overwrite", baseline.overwrite)[0],
    }
    if orjson:
        def staged_orjson() -> float:
            with OrjsonEncoder():
                return commit_staged("orjson")[0]
        ops["orjson"] = staged_orjson

    def staged_and_capture() -> float:
        nonlocal last_objects
        elapsed, (staging, result) = commit_staged("staged")
        assert result.created
        objects_per_commit.append(result.objects_written)
        bytes_per_commit.append(result.bytes_written)
        # The commit's objects as typed values, to time their encoding alone below.
        typed = [decode(kind, body) for kind, body in staging.workspace.objects.values()]
        typed.append(repo.snapshot(result.snapshot))
        last_objects = typed
        return elapsed

    ops["staged"] = staged_and_capture
    if against:
        # The same staged commit by snapstore at another revision, in its own store, in the same loop.
        other = repository_class_at(against, folder).init(str(folder / "a-against"))
        models["against"] = ConversationModel(random.Random(SEED))
        models["against"].grow(contexts)
        other.commit("staged", models["against"].state())
        samples["against"] = []

        def staged_against() -> float:
            context = touch_context(models["against"], rng)

            def commit() -> Any:
                staging = other.stage("staged")
                staging.workspace.put_context(context)
                return other.commit_staged(staging)

            return clocked("against", commit)[0]

        ops["against"] = staged_against
    names = list(ops)
    warmup = 20
    training: tuple[str, int, float] | None = None
    for i in range(warmup + commits):
        if i == warmup:
            cpu.clear()
        for name in rotated(names, i):
            had_dictionary = repo.codec.current is not None
            elapsed = ops[name]()
            if i >= warmup:
                samples[name].append(elapsed)
            if not had_dictionary and repo.codec.current is not None:
                training = (name, i, elapsed)
        if i >= warmup:
            encode_std.append(timed(lambda: [encode(o) for o in last_objects])[0])
            if orjson:
                with OrjsonEncoder():
                    encode_orjson.append(timed(lambda: [encode(o) for o in last_objects])[0])
    baseline.close()
    repo.close()
    if against:
        other.close()
    stats = {name: Summary.of(values) for name, values in samples.items() if values}
    base = stats["fdatasync"]
    rows = []
    labels = {
        "staged": "commit: stage → put_context → commit_staged",
        "against": f"the same, snapstore at {against} (own store, same loop)",
        "whole": f"commit: repo.commit(whole {contexts}-context state)",
        "orjson": "commit_staged with orjson canonical encoder (what-if)",
        "fdatasync": "bare: append 100 B + os.fdatasync",
        "fsync": "bare: append 100 B + os.fsync",
        "overwrite": "bare: overwrite 100 B in place + os.fdatasync",
    }
    for name in ("staged", "against", "whole", "orjson", "fdatasync", "fsync", "overwrite"):
        if name not in stats:
            continue
        s = stats[name]
        rows.append([labels[name], s.n, us(s.median), us(s.p99), us(max(samples[name])),
                     ratio(s.median, base.median), ratio(s.median, stats["fsync"].median),
                     us(Summary.of(cpu[name]).median)])
    print(f"\n### a. Durable commit of one changed context ({contexts}-context conversation, SQLite WAL, synchronous=FULL)\n")
    print(table(["operation", "n", "median µs", "p99 µs", "max µs", "median / fdatasync", "median / fsync",
                 "CPU µs (median)"], rows))
    print("\nCPU µs is the process's CPU time over the same span (time.process_time, 1 µs resolution at best): "
          "the part of a commit that is not waiting for the disk.")
    if training is not None:
        print(f"\nThe store reached {DICT_TRAIN_AFTER:,} objects during round {training[1]} and the "
              f"'{training[0]}' commit of that round trained the compression dictionary inline: "
              f"{us(training[2])} µs.")
    staged = stats["staged"]
    ok = staged.median <= 4 * base.median and staged.median <= 4 * stats["fsync"].median
    print(f"\nobjects written per commit: median {sorted(objects_per_commit)[len(objects_per_commit) // 2]}, "
          f"compressed bytes per commit: median {sorted(bytes_per_commit)[len(bytes_per_commit) // 2]}")
    print(f"Target commit median ≤ 4x bare fsync: {verdict(ok)} "
          f"({ratio(staged.median, base.median)} of fdatasync, {ratio(staged.median, stats['fsync'].median)} of fsync)")
    return {
        "stats": stats,
        "encode_std": Summary.of(encode_std),
        "encode_orjson": Summary.of(encode_orjson) if encode_orjson else None,
        "objects": objects_per_commit,
    }


# -- b. appending one exchange at growing history lengths ----------------------


def section_b(folder: Path, lengths: Sequence[int], appends: int, controls: bool = True) -> dict[str, Any]:
    """Appends round-robin over every (store, history length); see the table legend.

    ``controls`` adds the shared-store and relevance-scores variants.
    """
    shared_path = folder / "b-shared"
    shared = Repository.init(str(shared_path)) if controls else None
    top = max(lengths)
    targets: list[dict[str, Any]] = []
    plan = [(f"own store, {n:,}", folder / f"b{n}", None, "c", n, False) for n in lengths]
    if controls:
        plan += [(f"shared store, {n:,}", shared_path, shared, f"h{n}", n, False) for n in lengths]
        plan.append((f"own store, {top:,}, scores", folder / f"b{top}-scores", None, "c", top, True))
    for label, path, repo, conv, length, scores in plan:
        repo = repo or Repository.init(str(path))
        model = ConversationModel(random.Random(SEED + length))
        for _ in range(length):
            if scores:  # relevance_scores gains an entry per exchange
                model.add_exchange("SB-1")
            else:
                model.contexts["SB-1"]["local_memory"].append(model.exchange("SB-1"))
        repo.commit(conv, model.state())
        feed = [model.exchange("SB-1") for _ in range(20 + appends + 40)]
        targets.append({"label": label, "repo": repo, "path": path, "conv": conv, "feed": feed,
                        "own": path != shared_path, "times": [], "written": []})

    def append(target: dict[str, Any]) -> float:
        repo = target["repo"]
        had_dictionary = repo.codec.current is not None
        exchange = target["feed"].pop()
        start = time.perf_counter()
        staging = repo.stage(target["conv"])
        staging.workspace.append_exchange("SB-1", exchange)
        result = repo.commit_staged(staging)
        elapsed = time.perf_counter() - start
        target["written"].append((result.bytes_written, had_dictionary))
        return elapsed

    own = [t for t in targets if t["own"]]
    for i in range(20):
        for target in rotated(targets, i):
            append(target)
    for target in targets:
        target["written"].clear()
    for target in own:
        checkpoint(target["path"])
        target["size"] = file_size(target["path"] / DB)
    for i in range(appends):
        for target in rotated(targets, i):
            target["times"].append(append(target))
    for target in own:
        checkpoint(target["path"])
        target["growth"] = (file_size(target["path"] / DB) - target["size"]) / appends
    # WAL bytes per append: a short run from an empty WAL, below the auto-checkpoint threshold.
    wal_runs = 30
    for target in own:
        checkpoint(target["path"])
        for _ in range(wal_runs):
            append(target)
        target["wal"] = file_size(target["path"] / (DB + "-wal")) / wal_runs
    for target in own:
        target["repo"].close()
    if shared is not None:
        shared.close()

    def median_bytes(target: dict[str, Any], with_dictionary: bool) -> str:
        values = sorted(b for b, d in target["written"] if d == with_dictionary)
        return f"{values[len(values) // 2]:,}" if values else "—"

    print(f"\n### b. Appending one exchange (stage → append_exchange → commit_staged), {appends} appends each\n")
    print("*own store*: the conversation is alone in its store, so the store grows with the history; "
          "*shared store*: the three histories are conversations of one store (same size, same "
          "dictionary), isolating history length; *scores*: the context also has a "
          "`relevance_scores` field with one entry per exchange (the append does not change it). "
          "bytes_written is CommitResult.bytes_written, split by whether the store had a trained "
          "dictionary yet; DB growth is the database file after `wal_checkpoint(TRUNCATE)`, before "
          "and after the timed appends; WAL bytes come from 30 appends into an empty WAL.\n")
    rows = []
    for t in targets:
        s = Summary.of(t["times"])
        rows.append([
            t["label"], us(s.median), us(s.p99), median_bytes(t, False), median_bytes(t, True),
            f"{t['growth']:,.0f}" if "growth" in t else "—", f"{t['wal']:,.0f}" if "wal" in t else "—",
        ])
    print(table(["store, history (exchanges)", "median µs", "p99 µs", "bytes_written (plain zstd)",
                 "bytes_written (dictionary)", "DB growth B/append", "WAL B/append"], rows))
    lo = min(lengths)
    by_label = {t["label"]: t for t in targets}
    print()
    verdicts = {}
    for kind in ("own store", "shared store") if controls else ("own store",):
        a, b = by_label[f"{kind}, {lo:,}"], by_label[f"{kind}, {top:,}"]
        sa, sb = Summary.of(a["times"]), Summary.of(b["times"])
        line = f"{kind}: time at {top:,} / at {lo:,} = {ratio(sb.median, sa.median)} (median), {ratio(sb.p99, sa.p99)} (p99)"
        if kind == "own store":
            line += f"; DB growth {ratio(b['growth'], a['growth'])}; WAL bytes {ratio(b['wal'], a['wal'])}"
        print(f"- {line}")
        verdicts[kind] = sb.median <= 1.5 * sa.median
    for kind, ok in verdicts.items():
        print(f"- Target ({kind}) time at {top:,} ≤ 1.5x at {lo:,}: {verdict(ok)}")
    return by_label


# -- c. load and diff in trees of growing size ---------------------------------


def open_and_load(path: Path, contexts: int) -> None:
    """Repository.open + load: the materialized state, as ``snap checkout`` needs it."""
    with Repository.open(str(path)) as repo:
        assert len(repo.load("c").contexts) == contexts


def open_and_tree(path: Path, contexts: int) -> None:
    """Repository.open + tree(head): the verified tree without materializing it."""
    with Repository.open(str(path)) as repo:
        assert len(repo.tree(repo.head("c")).records) == contexts


def section_c(folder: Path, shapes: Sequence[tuple[int, int | None]], changes: int, load_runs: int) -> None:
    """``shapes``: (contexts, fan-out cap or None for the model's natural shape)."""
    rng = random.Random(SEED)
    stores = {}
    imports = {}
    for shape in shapes:
        n, cap = shape
        model = ConversationModel(random.Random(SEED + n))
        model.grow(n, max_children=cap)
        path = folder / f"c{n}-{cap}"
        repo = Repository.init(str(path))
        state = model.state()
        imports[shape] = timed(repo.commit, "c", state)[0]
        stores[shape] = (path, model, repo)
    commit_t: dict[Any, list[float]] = {s: [] for s in shapes}
    diff_t: dict[Any, list[float]] = {s: [] for s in shapes}
    reads: dict[Any, list[int]] = {s: [] for s in shapes}
    depth: dict[Any, list[int]] = {s: [] for s in shapes}
    for i in range(changes):
        for shape in rotated(shapes, i):
            path, model, repo = stores[shape]
            cid = rng.choice(list(model.contexts))
            model.add_exchange(cid)
            start = time.perf_counter()
            staging = repo.stage("c")
            staging.workspace.put_context(model.contexts[cid])
            repo.commit_staged(staging)
            commit_t[shape].append(time.perf_counter() - start)
            with Repository.open(str(path)) as fresh:
                elapsed, diff = timed(fresh.diff, "c~1", "c")
            assert len(diff.changed) == 1 and not diff.added and not diff.removed, diff.summary()
            diff_t[shape].append(elapsed)
            reads[shape].append(diff.reads)
            depth[shape].append(model.depth[cid])
    load_t: dict[Any, list[float]] = {s: [] for s in shapes}
    tree_t: dict[Any, list[float]] = {s: [] for s in shapes}
    for i in range(load_runs):
        for shape in rotated(shapes, i):
            path, n = stores[shape][0], shape[0]
            load_t[shape].append(timed(open_and_load, path, n)[0])
            tree_t[shape].append(timed(open_and_tree, path, n)[0])
    for _, _, repo in stores.values():
        repo.close()

    def median(values: list[Any]) -> Any:
        return sorted(values)[len(values) // 2]

    print(f"\n### c. Load and diff by tree size ({changes} one-context changes per tree, each an exchange "
          f"appended to a random context; {load_runs} loads; every diff and load on a freshly opened "
          "Repository)\n")
    rows = []
    for shape in shapes:
        n, cap = shape
        model = stores[shape][1]
        mean_depth, max_depth = model.depth_summary()
        fan_out = max(len(c["child_sidebar_ids"]) for c in model.contexts.values())
        exchanges = sum(len(c["local_memory"]) + len(c["inherited_memory"]) for c in model.contexts.values())
        lo, tr, di, co = (Summary.of(x[shape]) for x in (load_t, tree_t, diff_t, commit_t))
        r = sorted(reads[shape])
        rows.append([
            f"{n:,}" + ("" if cap is None else f", fan-out ≤ {cap}"), f"{mean_depth:.1f} / {max_depth}",
            f"{fan_out:,}", f"{exchanges:,}", f"{imports[shape]:.2f}",
            ms(lo.median), f"{lo.median / n * 1e6:,.0f}", ms(tr.median),
            ms(di.median), ms(di.p99), f"{median(r)} ({r[0]}–{r[-1]})",
            f"{median(depth[shape])}", ms(co.median),
        ])
    print(table(["contexts", "depth mean / max", "widest fan-out", "exchanges", "import s (1 commit)",
                 "open+load ms", "load µs/context", "open+tree ms", "diff median ms", "diff p99 ms",
                 "diff reads median (range)", "changed ctx depth median", "commit ms"], rows))
    print()
    for cap in dict.fromkeys(c for _, c in shapes):
        sizes = [n for n, c in shapes if c == cap]
        if len(sizes) < 2:
            continue
        lo_s, hi_s = (min(sizes), cap), (max(sizes), cap)
        a, b = Summary.of(diff_t[lo_s]), Summary.of(diff_t[hi_s])
        shape_name = "natural shape" if cap is None else f"fan-out ≤ {cap}"
        print(f"- {shape_name}: diff at {hi_s[0]:,} / at {lo_s[0]:,}: {ratio(b.median, a.median)} (median time), "
              f"{ratio(median(reads[hi_s]), median(reads[lo_s]))} (median reads); "
              f"target ≤ 2x: {verdict(b.median <= 2 * a.median)}")


# -- d. compression ------------------------------------------------------------


def section_d(folder: Path, events: int) -> None:
    path = folder / "d"
    repo = Repository.init(str(path))
    model = ConversationModel(random.Random(SEED + 4))
    repo.commit("c", model.state())
    trained_at = None
    for i in range(events):
        changed = model.event()
        staging = repo.stage("c")
        for cid in dict.fromkeys(changed):
            staging.workspace.put_context(model.contexts[cid])
        staging.workspace.set_active(model.active)
        repo.commit_staged(staging)
        if trained_at is None and repo.codec.current is not None:
            trained_at = i + 1
    if repo.codec.current is None:
        repo.train_dictionary()
    dict_id = repo.codec.current
    plain = zstandard.ZstdCompressor(level=LEVEL)
    # The store's own compressor (newest dictionary); an internal, so rebuild it if it moved.
    make = getattr(repo.codec, "_compressor", None)
    if make is not None:
        with_dict = make()
    else:
        dictionary = repo.backend.get_meta(DICT_PREFIX + str(dict_id))
        with_dict = zstandard.ZstdCompressor(
            level=LEVEL, dict_data=zstandard.ZstdCompressionDict(base64.b64decode(dictionary)))
    groups: dict[tuple[str, str], list[int]] = {}
    for stored in repo.backend.iter_objects():
        body = repo.codec.decompress(stored.data, stored.id)
        held_out = zstandard.get_frame_parameters(stored.data).dict_id != 0
        for key in ((stored.kind, "held out" if held_out else "training"), ("all", "held out" if held_out else "training")):
            acc = groups.setdefault(key, [0, 0, 0, 0])
            acc[0] += 1
            acc[1] += len(body)
            acc[2] += len(plain.compress(body))
            acc[3] += len(with_dict.compress(body))
    bodies = [repo.codec.decompress(s.data, s.id) for s in repo.backend.iter_objects()]
    repo.close()
    t_plain = min(timed(lambda: [plain.compress(b) for b in bodies])[0] for _ in range(3))
    t_dict = min(timed(lambda: [with_dict.compress(b) for b in bodies])[0] for _ in range(3))
    print(f"\n### d. Compression of the store's own objects ({events} orchestrator events committed one by one; "
          f"dictionary {dict_id} trained automatically after event {trained_at})\n")
    print("*training*: objects written before the dictionary existed (its training sample); "
          "*held out*: objects written afterwards, which the dictionary never saw.\n")
    rows = []
    order = ["chunk", "node", "state", "snapshot", "all"]
    for kind in order:
        for part in ("training", "held out"):
            acc = groups.get((kind, part))
            if not acc:
                continue
            n, raw, p, d = acc
            rows.append([kind, part, f"{n:,}", f"{raw / n:,.0f}", f"{raw / p:.2f}", f"{raw / d:.2f}",
                         f"{(1 - d / p) * 100:.0f}%"])
    print(table(["kind", "objects", "n", "mean body B", "plain zstd ratio", "dictionary ratio",
                 "dictionary saves vs plain"], rows))
    print(f"\ncompress time per object: plain {t_plain / len(bodies) * 1e6:.1f} µs, "
          f"dictionary {t_dict / len(bodies) * 1e6:.1f} µs ({len(bodies):,} objects)")


# -- e. canonical JSON encoding --------------------------------------------------


def section_e(folder: Path, a_result: dict[str, Any] | None, rounds: int) -> None:
    print("\n### e. Canonical JSON: stdlib json vs orjson\n")
    if orjson is None:
        print("orjson is not installed: skipped.")
        return
    model = ConversationModel(random.Random(SEED + 5))
    model.grow(300)
    _, new_objects = snap_tree.tree_from_contexts(model.contexts.values(), model.active)
    typed = {oid: decode(kind, body) for oid, (kind, body) in new_objects.items()}
    nodes = [to_json(o) for o in typed.values() if snap_objects.kind_of(o) == "node"]
    node_bytes = [len(canonical_json(v)) for v in nodes]
    every_value = [to_json(o) for o in typed.values()]
    identical = sum(canonical_json(v) == orjson_canonical(v) for v in every_value)
    bodies = [canonical_json(v) for v in nodes]

    encoders: dict[str, Callable[[Any], bytes]] = {
        "stdlib json (canonical_json, today)": canonical_json,
        "orjson + ASCII escaping (same bytes)": orjson_canonical,
        "orjson alone (UTF-8: different bytes)": lambda v: orjson.dumps(v, option=orjson.OPT_SORT_KEYS),
    }
    decoders: dict[str, Callable[[bytes], Any]] = {"stdlib json.loads": json.loads, "orjson.loads": orjson.loads}
    enc_t: dict[str, list[float]] = {k: [] for k in encoders}
    dec_t: dict[str, list[float]] = {k: [] for k in decoders}
    for i in range(rounds):
        for name in rotated(list(encoders), i):
            enc_t[name].append(timed(each, encoders[name], nodes)[0] / len(nodes))
        for name in rotated(list(decoders), i):
            dec_t[name].append(timed(each, decoders[name], bodies)[0] / len(bodies))
    hash_t = min(timed(each, lambda b: hash_object("node", b), bodies)[0] for _ in range(rounds)) / len(bodies)
    mean_kb = sum(node_bytes) / len(node_bytes) / 1024
    base = Summary.of(enc_t["stdlib json (canonical_json, today)"]).median
    rows = []
    for name, values in enc_t.items():
        s = Summary.of(values)
        rows.append([f"encode: {name}", f"{s.median * 1e6:.2f}", f"{s.median / mean_kb * 1e6:.2f}", ratio(s.median, base)])
    dbase = Summary.of(dec_t["stdlib json.loads"]).median
    for name, values in dec_t.items():
        s = Summary.of(values)
        rows.append([f"decode: {name}", f"{s.median * 1e6:.2f}", f"{s.median / mean_kb * 1e6:.2f}", ratio(s.median, dbase)])
    rows.append(["for scale: BLAKE3 id of the body", f"{hash_t * 1e6:.2f}", f"{hash_t / mean_kb * 1e6:.2f}", ratio(hash_t, base)])
    print(f"{len(nodes)} real node objects of a 300-context conversation, mean canonical body "
          f"{sum(node_bytes) / len(node_bytes):,.0f} B (min {min(node_bytes):,}, max {max(node_bytes):,}); "
          f"warm loop, median of {rounds} rounds.\n")
    print(table(["operation", "µs per node", "µs per KB", "vs stdlib"], rows))
    print(f"\norjson + ASCII escaping gives byte-identical canonical bodies for {identical:,} of "
          f"{len(every_value):,} objects (chunks with non-ASCII text, nodes, state).")
    floats = [1e16, 1e22, 1e-5, 1e-7, 2.5e-8, 1.5e300, 5e-324, 0.1, 123456.789]
    differ = [f for f in floats if json.dumps(f) != orjson.dumps(f).decode()]
    print(f"Where it differs (orjson {orjson.__version__}): floats " + (", ".join(
        f"`{json.dumps(f)}` vs `{orjson.dumps(f).decode()}`" for f in differ) or "none of those tried")
        + f" (same: {', '.join(f'`{json.dumps(f)}`' for f in floats if f not in differ)}); "
        "NaN: json refuses (snapstore raises InvalidInput), orjson writes `null`; "
        "integers beyond 64 bits: json writes them, orjson raises.")
    if a_result is not None:
        stats = a_result["stats"]
        staged = stats["staged"].median
        enc = a_result["encode_std"].median
        print(f"\nIn section a's commits ({sorted(a_result['objects'])[len(a_result['objects']) // 2]} objects each, "
              f"timed right after each commit): encoding them with stdlib json takes {us(enc)} µs "
              f"= {enc / staged * 100:.1f}% of the commit median ({us(staged)} µs)"
              + (f"; with orjson {us(a_result['encode_orjson'].median)} µs." if a_result["encode_orjson"] else "."))
        if "orjson" in stats:
            o = stats["orjson"].median
            print(f"Whole commit_staged with the orjson encoder swapped in: median {us(o)} µs vs {us(staged)} µs "
                  f"({ratio(o, staged)}): saves {us(staged - o)} µs = "
                  f"{(staged - o) / stats['fdatasync'].median:.2f} bare fdatasyncs per commit.")


# -- --profile: where the time of a commit and of a diff goes ----------------------


def phases(folder: Path, commits: int) -> None:
    """Median time of each step of a staged commit, by wrapping the methods it calls.

    Wall-clock per step, next to a bare fdatasync in the same loop; the
    wrapped names are snapstore internals of the measured revision (a name
    that no longer exists is skipped).
    """
    from snapstore import repository as snap_repository
    from snapstore.backends import sqlite as snap_sqlite

    spots = [
        (Repository, "stage", "Repository.stage (head SELECT + cached tree)"),
        (snap_tree.Workspace, "put_context", "Workspace.put_context"),
        (snap_tree.Workspace, "build", "Workspace.build (encode node, ancestors, state)"),
        (snap_repository, "utc_now", "timeutil.utc_now (snapshot time)"),
        (snap_repository, "encode", "encode(snapshot)"),
        (Repository, "_store", "Repository._store (compress)"),
        (snap_sqlite.SqliteBackend, "has_objects", "SqliteBackend.has_objects (SELECT; no longer on this path)"),
        (snap_sqlite.SqliteBackend, "write", "SqliteBackend.write (transaction + COMMIT fsync)"),
        (Repository, "_after_commit", "Repository._after_commit (dictionary check)"),
        (Repository, "commit_staged", "Repository.commit_staged (all of the above but stage/put)"),
    ]
    spent: dict[str, list[float]] = {}
    saved = []
    for owner, name, label in spots:
        original = getattr(owner, name, None)
        if original is None:
            continue
        saved.append((owner, name, original))

        def wrapper(*args: Any, _original: Any = original, _label: str = label, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                spent.setdefault(_label, []).append(time.perf_counter() - start)

        setattr(owner, name, wrapper)
    store = folder / "phases"
    try:
        repo = Repository.init(str(store))
        model = ConversationModel(random.Random(SEED))
        model.grow(100)
        repo.commit("c", model.state())
        repo.train_dictionary()  # so that no training lands inside the loop
        spent.clear()
        baseline = SyncBaseline(store)
        rng = random.Random(SEED)
        total, syncs = [], []
        for _ in range(commits):
            context = touch_context(model, rng)
            start = time.perf_counter()
            staging = repo.stage("c")
            staging.workspace.put_context(context)
            repo.commit_staged(staging)
            total.append(time.perf_counter() - start)
            syncs.append(baseline.fdatasync())
        baseline.close()
        repo.close()
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)
    whole = Summary.of(total).median
    sync = Summary.of(syncs).median
    rows = [[label, us(Summary.of(spent[label]).median), f"{Summary.of(spent[label]).median / whole * 100:.0f}%",
             f"{len(spent[label]) / commits:.0f}"] for _, _, label in spots if label in spent]
    rows.append(["whole commit (stage → commit_staged)", us(whole), "100%", "1"])
    rows.append(["bare: append 100 B + os.fdatasync (same loop)", us(sync), f"{sync / whole * 100:.0f}%", "1"])
    print(f"\n### profile: steps of a staged commit, 100-context conversation ({commits} commits, "
          "medians; wrapping adds ~1 µs per step)\n")
    print(table(["step", "median µs", "share of commit median", "calls/commit"], rows))


def profile(folder: Path, commits: int, tree_size: int) -> None:
    """cProfile of section a's staged commits and of section c's fresh-open diffs (not timed runs)."""
    import cProfile
    import io
    import pstats

    def report(title: str, prof: cProfile.Profile, count: int) -> None:
        out = io.StringIO()
        stats = pstats.Stats(prof, stream=out)
        print(f"\n### profile: {title} ({count} runs; tottime, top 15)\n\n```")
        stats.sort_stats("tottime").print_stats(15)
        print("\n".join(line for line in out.getvalue().splitlines() if line.strip())[:6000])
        print("```")

    phases(folder, commits)
    repo = Repository.init(str(folder / "profile-a"))
    model = ConversationModel(random.Random(SEED))
    model.grow(100)
    repo.commit("c", model.state())
    rng = random.Random(SEED)
    prof = cProfile.Profile()
    for _ in range(commits):
        context = touch_context(model, rng)
        prof.enable()
        staging = repo.stage("c")
        staging.workspace.put_context(context)
        repo.commit_staged(staging)
        prof.disable()
    repo.close()
    report("stage → put_context → commit_staged, 100-context conversation", prof, commits)

    path = folder / "profile-c"
    repo = Repository.init(str(path))
    model = ConversationModel(random.Random(SEED + tree_size))
    model.grow(tree_size)
    repo.commit("c", model.state())
    prof = cProfile.Profile()
    runs = 20
    for _ in range(runs):
        cid = rng.choice(list(model.contexts))
        model.add_exchange(cid)
        staging = repo.stage("c")
        staging.workspace.put_context(model.contexts[cid])
        repo.commit_staged(staging)
        with Repository.open(str(path)) as fresh:
            prof.enable()
            fresh.diff("c~1", "c")
            prof.disable()
    repo.close()
    report(f"Repository.diff('c~1', 'c') on a fresh Repository, {tree_size:,}-context tree", prof, runs)


# -- --whatif: how far the changes proposed in docs/benchmarks.md would move the targets --


class Patched:
    """Set attributes for the length of a ``with`` (what-ifs of this benchmark only)."""

    def __init__(self, *patches: tuple[Any, str, Any]) -> None:
        self.patches = patches

    def __enter__(self) -> None:
        self.saved = [(owner, name, getattr(owner, name)) for owner, name, _ in self.patches]
        for owner, name, value in self.patches:
            setattr(owner, name, value)

    def __exit__(self, *exc: object) -> None:
        for owner, name, value in self.saved:
            setattr(owner, name, value)


_OBJECT_ID = re.compile(r"[0-9a-f]{64}")


def _is_object_id_regex(text: str) -> bool:
    return _OBJECT_ID.fullmatch(text) is not None


# The SQLite schema of stores made before the rowid objects table (still read and written as they are).
OLD_SCHEMA = """
CREATE TABLE objects (id BLOB PRIMARY KEY, kind TEXT NOT NULL, size INTEGER NOT NULL, data BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE refs (name TEXT PRIMARY KEY, target BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE reflog (seq INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, old BLOB, new BLOB,
    time TEXT NOT NULL, reason TEXT NOT NULL, log_sequence INTEGER, log_hash TEXT);
CREATE INDEX reflog_name ON reflog (name, seq);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
"""


def _old_schema_repository(path: Path) -> Repository:
    """A store whose database was created with the schema of stores made before, opened by the real code."""
    from snapstore.backends.sqlite import SqliteBackend
    from snapstore.repository import FORMAT_KEY, STORE_FORMAT

    path.mkdir(parents=True)
    db = sqlite3.connect(path / DB)
    db.executescript(OLD_SCHEMA)
    db.close()
    backend = SqliteBackend(path / DB)
    backend.write(meta={FORMAT_KEY: str(STORE_FORMAT)})
    return Repository(backend, str(path))


def whatif(folder: Path, commits: int, tree_size: int) -> None:
    """Commit and diff with each variant, round-robin."""
    encoder = [(snap_objects, "canonical_json", orjson_canonical), (snap_tree, "canonical_json", orjson_canonical)]
    regex = (snap_objects, "is_object_id", _is_object_id_regex)
    # name -> (store: "sqlite", "old schema" or "memory", patches)
    variants: dict[str, tuple[str, list[tuple[Any, str, Any]]]] = {
        "as is": ("sqlite", []),
        "store made with the old schema (WITHOUT ROWID objects)": ("old schema", []),
    }
    if orjson:
        variants["orjson canonical encoder (same bytes)"] = ("sqlite", encoder)
    variants["floor: MemoryBackend (no SQLite, no disk)"] = ("memory", [])
    repos, models = {}, {}
    for i, (name, (kind, _)) in enumerate(variants.items()):
        path = folder / f"whatif-{i}"
        if kind == "memory":
            repos[name] = Repository.init("memory:")
        else:
            repos[name] = _old_schema_repository(path) if kind == "old schema" else Repository.init(str(path))
        models[name] = ConversationModel(random.Random(SEED))
        models[name].grow(100)
        repos[name].commit("c", models[name].state())
        repos[name].train_dictionary()
    baseline = SyncBaseline(folder / "whatif-0")
    rng = random.Random(SEED)
    times: dict[str, list[float]] = {name: [] for name in variants}
    times["bare fdatasync"] = []
    cpu: dict[str, list[float]] = {name: [] for name in times}
    names = list(times)
    for i in range(commits + 20):
        for name in rotated(names, i):
            cpu_start = time.process_time()
            if name == "bare fdatasync":
                elapsed = baseline.fdatasync()
            else:
                context = touch_context(models[name], rng)
                repo = repos[name]
                with Patched(*variants[name][1]):
                    cpu_start = time.process_time()
                    start = time.perf_counter()
                    staging = repo.stage("c")
                    staging.workspace.put_context(context)
                    repo.commit_staged(staging)
                    elapsed = time.perf_counter() - start
            if i >= 20:
                times[name].append(elapsed)
                cpu[name].append(time.process_time() - cpu_start)
    baseline.close()
    for repo in repos.values():
        repo.close()
    base = Summary.of(times["bare fdatasync"]).median
    asis = Summary.of(times["as is"]).median
    rows = []
    for name, values in times.items():
        s = Summary.of(values)
        c = Summary.of(cpu[name]).median
        rows.append([name, us(s.median), us(s.p99), ratio(s.median, asis), ratio(s.median, base),
                     us(c), ratio(c, Summary.of(cpu["as is"]).median)])
    print(f"\n### what-if: staged commit of one changed context, 100-context conversation ({commits} commits each, "
          "round-robin, dictionary trained beforehand)\n")
    print(table(["variant", "median µs", "p99 µs", "vs as is", "median / fdatasync", "CPU µs (median)",
                 "CPU vs as is"], rows))

    path = folder / "whatif-diff"
    repo = Repository.init(str(path))
    model = ConversationModel(random.Random(SEED + tree_size))
    model.grow(tree_size)
    repo.commit("c", model.state())
    diff_variants = {"as is": [], "regex is_object_id": [regex]}
    diff_t: dict[str, list[float]] = {name: [] for name in diff_variants}
    tree_t: dict[str, list[float]] = {name: [] for name in diff_variants}
    for i in range(30):
        cid = rng.choice(list(model.contexts))
        model.add_exchange(cid)
        staging = repo.stage("c")
        staging.workspace.put_context(model.contexts[cid])
        repo.commit_staged(staging)
        for name in rotated(list(diff_variants), i):
            with Patched(*diff_variants[name]), Repository.open(str(path)) as fresh:
                diff_t[name].append(timed(lambda: fresh.diff("c~1", "c"))[0])
            if i < 3:
                with Patched(*diff_variants[name]), Repository.open(str(path)) as fresh:
                    tree_t[name].append(timed(lambda: fresh.tree(fresh.head("c")))[0])
    repo.close()
    rows = []
    for name in diff_variants:
        d, t = Summary.of(diff_t[name]), Summary.of(tree_t[name])
        rows.append([name, ms(d.median), ms(d.p99), ratio(d.median, Summary.of(diff_t["as is"]).median),
                     ms(t.median), ratio(t.median, Summary.of(tree_t["as is"]).median)])
    print(f"\n### what-if: fresh-open diff of a one-context change and tree load, {tree_size:,}-context tree "
          "(natural shape)\n")
    print(table(["variant", "diff median ms", "diff p99 ms", "vs as is", "open+tree ms", "vs as is"], rows))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer samples, smaller trees (< ~30 s)")
    parser.add_argument("--dir", default=None, help="folder for the temporary stores (default: system temp dir)")
    parser.add_argument("--only", default="abcde", help="sections to run, e.g. 'ab'")
    parser.add_argument("--keep", action="store_true", help="keep the temporary stores")
    parser.add_argument("--against", metavar="REV", default=None,
                        help="section a also times the staged commit of snapstore at git revision REV, side by side")
    parser.add_argument("--profile", action="store_true",
                        help="instead of a-e, print where a commit's and a diff's time goes")
    parser.add_argument("--whatif", action="store_true",
                        help="instead of a-e, time commit and diff with the proposed changes patched in")
    args = parser.parse_args(argv)
    folder = work_folder(args.dir, "snapstore-bench-")
    try:
        revision = subprocess.run(
            ["git", "-C", str(Path(__file__).resolve().parent), "describe", "--always", "--dirty"],
            capture_output=True, text=True, check=False,
        ).stdout.strip() or "unknown"
    except OSError:
        revision = "unknown"
    print(f"## bench_core{' --quick' if args.quick else ''}\n")
    print(f"Machine: {machine(str(folder))}; snapstore at {revision}; orjson "
          f"{orjson.__version__ if orjson else 'not installed'}; load average at start {os.getloadavg()[0]:.2f}.")
    start = time.perf_counter()
    a_result = None
    try:
        if args.profile:
            profile(folder, commits=300, tree_size=1_000 if args.quick else 10_000)
            return
        if args.whatif:
            whatif(folder, commits=150 if args.quick else 600, tree_size=1_000 if args.quick else 10_000)
            return
        if "a" in args.only:
            a_result = section_a(folder, commits=150 if args.quick else 1000, contexts=100, against=args.against)
        if "b" in args.only:
            section_b(folder, (100, 1_000, 10_000), appends=100 if args.quick else 1000, controls=not args.quick)
        if "c" in args.only:
            if args.quick:
                section_c(folder, ((100, None), (1_000, None), (100, 16), (1_000, 16)), changes=15, load_runs=2)
            else:
                section_c(folder, ((100, None), (1_000, None), (10_000, None), (100, 16), (10_000, 16)),
                          changes=60, load_runs=3)
        if "d" in args.only:
            section_d(folder, events=700 if args.quick else 3000)
        if "e" in args.only:
            section_e(folder, a_result, rounds=5 if args.quick else 15)
    finally:
        if args.keep:
            print(f"\nstores kept in {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"\n(load average at end {os.getloadavg()[0]:.2f}; total {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()

"""snap stats: sizes by kind, exact materialized sizes, both ratios, the largest contexts."""

from __future__ import annotations

import json

from click.testing import CliRunner

from snapstore.cli.main import cli
from snapstore.objects import Event, canonical_json
from snapstore.repository import Repository
from snapstore.stats import store_stats

from .factories import context, exchange, sample_state


def grow(repo: Repository) -> None:
    state = sample_state("c")
    state["odd_top_level"] = {"kept": [1, 2.5]}
    for i in range(12):
        state["contexts"][1]["local_memory"].append(exchange(300 + i, "SB-2", "é" * 50))
        repo.commit("c", state, event=Event("exchange", "SB-2"))
    other = {"conversation_id": "d", "active_context_id": None, "contexts": [context("D-1", exchanges=5)]}
    repo.commit("d", other)
    repo.commit("empty", {"conversation_id": "empty", "active_context_id": None, "contexts": []})


def test_sizes_and_ratios(repo):
    grow(repo)
    stats = store_stats(repo)
    count, stored, logical = repo.backend.count_objects()
    assert (stats.objects, stats.stored_bytes, stats.logical_bytes) == (count, stored, logical)
    assert {k.kind for k in stats.kinds} == {"chunk", "node", "state", "snapshot"}
    assert stats.conversations == 3 and stats.snapshots == 14
    # Materialized sizes are exact: every snapshot's STATE.json as compact canonical JSON.
    snapshots = [info.id for conv in ("c", "d", "empty") for info in repo.log(conv)]
    assert stats.materialized_bytes == sum(len(canonical_json(repo.load(s).to_json())) for s in snapshots)
    heads = sum(len(canonical_json(repo.load(c).to_json())) for c in ("c", "d", "empty"))
    assert stats.heads_materialized_bytes == heads
    assert stats.dedup_ratio > 2 and stats.compression_ratio > 1


def test_largest_contexts(repo):
    grow(repo)
    stats = store_stats(repo, top=2)
    assert [(c.conversation, c.context, c.exchanges) for c in stats.largest_by_exchanges] == [
        ("c", "SB-2", 14), ("d", "D-1", 5)]
    assert stats.largest_by_bytes[0].context == "SB-2"
    sb2 = next(c for c in repo.load("c").contexts if c["sidebar_id"] == "SB-2")
    assert stats.largest_by_bytes[0].bytes == len(canonical_json(sb2))


def test_empty_store(repo):
    stats = store_stats(repo)
    assert stats.objects == 0 and stats.dedup_ratio is None and stats.compression_ratio is None
    assert stats.to_json()["largest_contexts"] == {"by_exchanges": [], "by_bytes": []}


def test_stats_cli(tmp_path):
    location = str(tmp_path / "store")
    repo = Repository.init(location)
    grow(repo)
    repo.close()
    result = CliRunner().invoke(cli, ["--store", location, "stats", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report) == {"objects", "by_kind", "stored_bytes", "logical_bytes", "materialized_bytes",
                           "heads_materialized_bytes", "dedup_ratio", "compression_ratio", "conversations",
                           "snapshots", "largest_contexts"}
    assert set(report["by_kind"]["chunk"]) == {"objects", "stored_bytes", "logical_bytes"}
    assert set(report["largest_contexts"]["by_bytes"][0]) == {"conversation", "context", "exchanges", "bytes"}
    text = CliRunner().invoke(cli, ["--store", location, "stats"])
    assert text.exit_code == 0 and "deduplication" in text.stdout and "SB-2: 14 exchanges" in text.stdout

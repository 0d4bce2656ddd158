"""Crash proof on the shared store: SIGKILL a working orchestrator on PostgreSQL, and PostgreSQL + S3.

The configuration API replicas run: a ``postgresql://`` or
``s3+postgresql://`` location with the audit log kept in the store
(``log_in_store=True``), so an operation's log entry, index rows and ref swap
commit in one PostgreSQL transaction (and its S3 bodies are PUT before it).
The harness is tests/crash/harness.py's, as in tests/test_crash.py; each
kill's restart, ``verify`` and, every 20 kills and at the end, ``fsck`` run
against the shared store. Fewer kills than the embedded test: a round here
costs a worker start with psycopg (and boto3), and the S3 store's
operations are a few PUTs each.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import pytest

from tests.crash.harness import run_kills

# Each test well under a minute on a busy 2-core machine: a round takes ~1 s on PostgreSQL and ~2 s with
# S3 (a worker start of 0.7-1.2 s, then the restart and verify against the servers).
KILLS_SHARED = {
    "postgres": int(os.environ.get("SNAPSTORE_CRASH_KILLS_POSTGRES", "20")),
    "s3": int(os.environ.get("SNAPSTORE_CRASH_KILLS_S3", "15")),
}


@dataclass
class SharedStore:
    name: str
    location: str
    pg_url: str
    # The test server's S3 settings and the store's bucket; None for the PostgreSQL store.
    s3: dict | None = None
    bucket: str | None = None


@pytest.fixture(params=["postgres", "s3"])
def shared_store(request) -> Iterator[SharedStore]:
    """A fresh database (and bucket) for the worker to create the store in; S3 keys in the environment."""
    from tests.servers import (
        delete_s3_bucket, drop_pg_database, fresh_pg_database, fresh_s3_bucket, require_pg, require_s3,
    )
    from tests.shared_backends import s3_credentials, s3_location

    server = require_pg()
    cfg = require_s3() if request.param == "s3" else None
    with ExitStack() as stack:
        url = fresh_pg_database(server)
        stack.callback(drop_pg_database, url)
        if cfg is None:
            yield SharedStore(request.param, url, url)
            return
        s3_credentials(stack, cfg)  # os.environ, which the harness hands to each worker
        bucket = fresh_s3_bucket(cfg)
        stack.callback(delete_s3_bucket, cfg, bucket)
        yield SharedStore(request.param, s3_location(url, cfg, bucket), url, cfg, bucket)


def _indexed_ids(pg_url: str) -> set[str]:
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        return {bytes(row[0]).hex() for row in conn.execute("SELECT id FROM snapstore_objects")}


def _bodies_in_bucket(cfg: dict, bucket: str) -> set[str]:
    """The ids whose bodies the bucket holds, listed directly (not through the backend)."""
    from tests.servers import s3_client

    ids = set()
    for page in s3_client(cfg).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="objects/"):
        for item in page.get("Contents", []):
            fan_out, _, rest = item["Key"].removeprefix("objects/").partition("/")
            ids.add(fan_out + rest)
    return ids


def test_sigkill_on_the_shared_store_with_the_log_in_the_store(shared_store, tmp_path):
    """After any kill the head is the acknowledged operation or the one in flight, never between;
    nothing is ever half-committed; verify and fsck pass on the shared store."""
    kills = KILLS_SHARED[shared_store.name]
    stats = run_kills(tmp_path, kills, seed=20261129, log_in_store=True, store=shared_store.location)
    assert stats.failures == []
    assert stats.kills == kills
    # The harness really exercised the store: operations were acknowledged between kills.
    assert stats.acknowledged > kills
    assert stats.during_start > 0  # some kills hit a start: Session init, presence, chain hints
    assert stats.rolled_forward == 0  # entry, index rows and ref swap commit in one transaction

    from snapstore.repository import Repository
    from snapstore.storelog import StoreLog
    from snapstore.verify import verify

    # The harness's last check ran a full verify (fsck included); once more here, to see that it ran
    # on the shared store: every object the database indexes was read and re-hashed.
    repo = Repository.open(shared_store.location)
    try:
        report = verify(repo, StoreLog(repo.backend))
        assert [p.message for p in report.problems] == []
        indexed = _indexed_ids(shared_store.pg_url)
        assert report.objects == len(indexed) > 0
    finally:
        repo.close()
    if shared_store.s3 is not None:
        # Every indexed object (everything a committed head reaches among them) has its body in the
        # bucket; bodies of writes a kill cut short before their commit may be there unindexed.
        assert indexed <= _bodies_in_bucket(shared_store.s3, shared_store.bucket)

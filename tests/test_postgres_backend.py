"""What is specific to the shared backends (PostgreSQL, and S3 with PostgreSQL).

The backend contract itself is tests/test_backend_conformance.py, which runs
on these backends too. These tests need the servers of scripts/testservers.py.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
import time
import traceback
from urllib.parse import urlsplit

import pytest

from snapstore.backends import postgres
from snapstore.backends.base import RefUpdate, StoredObject
from snapstore.backends.postgres import MIGRATIONS, Migration, PostgresBackend
from snapstore.errors import (
    BackendError, FormatError, InvalidInput, ObjectNotFound, RefConflict, StoreExists, StoreNotFound,
)
from snapstore.location import open_backend
from snapstore.objects import hash_object
from snapstore.repository import Repository

from .factories import sample_state
from .shared_backends import SHARED_FACTORIES, object_key

psycopg = pytest.importorskip("psycopg")


def obj(n: int, kind: str = "snapshot") -> StoredObject:
    body = b'{"n":%d}' % n
    return StoredObject(hash_object(kind, body), kind, len(body), b"data-%d" % n)


@pytest.fixture
def pg_store(tmp_path):
    yield from SHARED_FACTORIES["postgres"](tmp_path)


@pytest.fixture
def s3_store(tmp_path):
    yield from SHARED_FACTORIES["s3"](tmp_path)


@pytest.fixture(params=list(SHARED_FACTORIES))
def shared_store(request, tmp_path):
    yield from SHARED_FACTORIES[request.param](tmp_path)


def pg_url_of(store) -> str:
    """The PostgreSQL URL behind a store's location."""
    if store.location.startswith("s3+"):
        from snapstore.backends.s3 import split_location

        return split_location(store.location)[0]
    return store.location


def query(url: str, sql: str, params: tuple = ()) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def s3_parts(store) -> tuple[dict, str]:
    from tests.servers import s3_config

    from snapstore.backends.s3 import split_location

    return s3_config(), split_location(store.location)[1].bucket


# -- schema and migrations ------------------------------------------------------


def test_migrations_are_recorded_and_applied_once(pg_store, monkeypatch):
    url = pg_store.location
    pg_store.backend(create=True)
    applied = [(m.version, m.name) for m in MIGRATIONS]
    versions = "SELECT version, name FROM snapstore_schema_version ORDER BY version"
    assert query(url, versions) == applied
    again = pg_store.backend()
    assert again.migrate() == 0
    assert query(url, versions) == applied

    # A new migration is applied on the next open, once: this one is not
    # idempotent on purpose, so running it twice would fail.
    extra = Migration(MIGRATIONS[-1].version + 1, "probe table", ("CREATE TABLE snapstore_probe (x int)",))
    monkeypatch.setattr(postgres, "MIGRATIONS", (*MIGRATIONS, extra))
    newer = pg_store.backend()
    assert query(url, versions) == [*applied, (extra.version, extra.name)]
    assert newer.migrate() == 0
    pg_store.backend()

    # The database is now newer than the code.
    monkeypatch.setattr(postgres, "MIGRATIONS", MIGRATIONS)
    with pytest.raises(FormatError, match="newer than this snapstore"):
        pg_store.backend()


def test_a_failing_migration_leaves_nothing_behind(pg_store, monkeypatch):
    url = pg_store.location
    pg_store.backend(create=True)
    broken = Migration(
        MIGRATIONS[-1].version + 1, "broken",
        ("CREATE TABLE snapstore_half (x int)", "SELECT no_such_function()"),
    )
    monkeypatch.setattr(postgres, "MIGRATIONS", (*MIGRATIONS, broken))
    with pytest.raises(BackendError, match="no_such_function"):
        pg_store.backend()
    assert query(url, "SELECT to_regclass('snapstore_half')") == [(None,)]
    assert query(url, "SELECT max(version) FROM snapstore_schema_version") == [(MIGRATIONS[-1].version,)]


_RACER = """
import os, sys, time
import snapstore.backends.postgres as pg
from snapstore.errors import StoreExists
if sys.argv[2] == "with-probe":
    pg.MIGRATIONS += (pg.Migration(pg.MIGRATIONS[-1].version + 1, "probe", ("CREATE TABLE snapstore_probe (x int)",)),)
start = float(sys.argv[1])
while time.time() < start:
    time.sleep(0.001)
try:
    backend = pg.PostgresBackend(os.environ["RACE_URL"], create=sys.argv[3] == "create")
except StoreExists:
    print("exists")
else:
    backend.close()
    print("opened")
"""


def _race(url: str, processes: int, *args: str) -> list[str]:
    start = str(time.time() + 2.0)  # every process has imported psycopg by then
    env = dict(os.environ, RACE_URL=url)
    racers = [
        subprocess.Popen([sys.executable, "-c", _RACER, start, *args], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(processes)
    ]
    outcomes = []
    for racer in racers:
        out, err = racer.communicate(timeout=60)
        assert racer.returncode == 0, err
        outcomes.append(out.strip())
    return sorted(outcomes)


def test_processes_creating_one_fresh_database_at_once(pg_store):
    url = pg_store.location
    assert _race(url, 5, "plain", "create") == ["exists"] * 4 + ["opened"]
    rows = query(url, "SELECT version FROM snapstore_schema_version ORDER BY version")
    assert rows == [(m.version,) for m in MIGRATIONS]
    assert query(url, "SELECT objects FROM snapstore_store") == [("postgresql",)]


def test_processes_migrating_one_database_at_once(pg_store):
    url = pg_store.location
    pg_store.backend(create=True).close()
    assert _race(url, 5, "with-probe", "open") == ["opened"] * 5
    rows = query(url, "SELECT version FROM snapstore_schema_version ORDER BY version")
    assert rows == [(m.version,) for m in MIGRATIONS] + [(MIGRATIONS[-1].version + 1,)]


def test_create_on_a_store_raises_and_open_on_an_empty_database_explains(pg_store):
    Repository.init(pg_store.location).close()
    with pytest.raises(StoreExists):
        Repository.init(pg_store.location)
    from tests.servers import drop_pg_database, fresh_pg_database, require_pg

    empty = fresh_pg_database(require_pg())
    try:
        with pytest.raises(StoreNotFound, match="no snapstore store .*snap init"):
            Repository.open(empty)
        assert query(empty, "SELECT to_regclass('snapstore_schema_version')") == [(None,)]
    finally:
        drop_pg_database(empty)


def test_s3_store_refuses_to_open_as_a_plain_postgres_store(s3_store):
    s3_store.backend(create=True)
    with pytest.raises(InvalidInput, match="s3://"):
        PostgresBackend(pg_url_of(s3_store))


# -- refs under concurrency -------------------------------------------------------


@pytest.mark.parametrize("rival_commits", [True, False], ids=["rival-commits", "rival-rolls-back"])
def test_creating_an_absent_ref_waits_for_a_racing_creator(shared_store, rival_commits):
    backend = shared_store.backend(create=True)
    mine, theirs = obj(1), obj(2)
    backend.write([mine, theirs])
    url = pg_url_of(shared_store)
    outcome: list[object] = []

    def create() -> None:
        try:
            backend.write(ref_updates=[RefUpdate("conversations/x", None, mine.id, "create")])
            outcome.append("won")
        except Exception as exc:  # noqa: BLE001 - the test inspects what was raised
            outcome.append(exc)

    with psycopg.connect(url) as rival:  # not autocommit: the insert stays uncommitted
        rival.execute(
            "INSERT INTO snapstore_refs (name, target) VALUES (%s, %s)",
            ("conversations/x", bytes.fromhex(theirs.id)),
        )
        contender = threading.Thread(target=create)
        contender.start()
        deadline = time.monotonic() + 10
        while not query(url, "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
                             "AND application_name = 'snapstore' AND wait_event_type = 'Lock'"):
            assert time.monotonic() < deadline, "the contender never waited for the rival's row"
            time.sleep(0.02)
        rival.commit() if rival_commits else rival.rollback()
        contender.join(10)
    (result,) = outcome
    if rival_commits:
        assert isinstance(result, RefConflict), result
        assert (result.expected, result.actual) == (None, theirs.id)
        assert backend.get_ref("conversations/x") == theirs.id
        assert backend.reflog("conversations/x") == []
    else:
        assert result == "won"
        assert backend.get_ref("conversations/x") == mine.id


def test_many_replicas_creating_one_ref_have_one_winner(shared_store):
    shared_store.backend(create=True)
    replicas = [shared_store.backend() for _ in range(8)]
    start = threading.Barrier(len(replicas))
    outcomes: list[str] = []

    def contend(i: int) -> None:
        candidate = obj(100 + i)
        start.wait()
        try:
            replicas[i].write([candidate], [RefUpdate("conversations/x", None, candidate.id, f"replica {i}")])
            outcomes.append("won")
        except RefConflict:
            outcomes.append("lost")

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(len(replicas))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcomes) == ["lost"] * (len(replicas) - 1) + ["won"]
    (entry,) = replicas[0].reflog("conversations/x")
    assert replicas[0].get_ref("conversations/x") == entry.new


def test_a_connection_dropped_by_the_server_is_reopened(shared_store):
    backend = shared_store.backend(create=True)
    a, b = obj(1), obj(2)
    backend.write([a], [RefUpdate("conversations/x", None, a.id, "create")])
    url = pg_url_of(shared_store)

    def kill_sessions() -> None:
        killed = query(url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = current_database() AND application_name = 'snapstore'")
        assert killed

    kill_sessions()
    assert backend.get_ref("conversations/x") == a.id
    kill_sessions()
    backend.write([b], [RefUpdate("conversations/x", a.id, b.id, "advance")])
    assert backend.get_ref("conversations/x") == b.id
    assert [e.new for e in backend.reflog("conversations/x")] == [a.id, b.id]


# -- credentials --------------------------------------------------------------------


def _assert_hidden(exc: BaseException, *secret_values: str) -> None:
    shown = "".join(traceback.format_exception(exc))
    for value in secret_values:
        assert value not in shown


def test_credentials_never_appear_in_descriptions_or_errors(pg_store):
    url = pg_store.location
    password = urlsplit(url).password
    assert password
    backend = pg_store.backend(create=True)
    for shown in (backend.description, repr(backend), str(backend)):
        assert password not in shown and ":***@" in shown

    wrong = "wrong-" + secrets.token_hex(8)
    bad_url = url.replace(f":{password}@", f":{wrong}@")
    with pytest.raises(BackendError, match="password authentication failed") as info:
        open_backend(bad_url)
    _assert_hidden(info.value, password, wrong)
    with pytest.raises(BackendError) as info:
        Repository.open(bad_url)
    _assert_hidden(info.value, password, wrong)

    no_database = url.rsplit("/", 1)[0] + "/snapstore_no_such_db"
    with pytest.raises(StoreNotFound, match="does not exist") as info:
        open_backend(no_database)
    _assert_hidden(info.value, password)

    parts = urlsplit(url)
    in_query = f"postgresql://{parts.username}@{parts.hostname}:{parts.port}{parts.path}?password={password}"
    backend = open_backend(in_query)
    assert password not in backend.description and "password=***" in backend.description


def test_s3_credentials_never_appear(s3_store):
    cfg, _ = s3_parts(s3_store)
    backend = s3_store.backend(create=True)
    for shown in (backend.description, repr(backend)):
        assert cfg["secret_key"] not in shown and cfg["access_key"] not in shown
    with pytest.raises(InvalidInput, match="AWS_ACCESS_KEY_ID") as info:
        open_backend(f"{s3_store.location}&secret_access_key={cfg['secret_key']}")
    _assert_hidden(info.value, cfg["secret_key"])

    wrong = "wrong-" + secrets.token_hex(8)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
        with pytest.raises(BackendError, match="cannot reach bucket") as info:
            open_backend(s3_store.location)
    _assert_hidden(info.value, cfg["secret_key"], wrong)


# -- objects in S3 ------------------------------------------------------------------


def test_s3_objects_are_content_addressed_and_written_once(s3_store):
    from tests.servers import s3_client

    cfg, bucket = s3_parts(s3_store)
    client = s3_client(cfg)
    backend = s3_store.backend(create=True)
    a = obj(1, "chunk")
    backend.write([a])
    key = object_key(a.id)
    assert key == f"objects/{a.id[:2]}/{a.id[2:]}"
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert body == b"snapstore1 chunk %d\n" % a.size + a.data

    # The server refuses a second conditional PUT (412) and the backend takes that as success.
    with pytest.raises(Exception) as info:
        client.put_object(Bucket=bucket, Key=key, Body=b"other", IfNoneMatch="*")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412  # type: ignore[attr-defined]
    backend.write([StoredObject(a.id, a.kind, a.size, b"other bytes")])
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == body
    assert backend.get_objects([a.id]) == {a.id: a}
    assert backend._conditional_put is True  # type: ignore[attr-defined]

    # Servers without If-None-Match get a HEAD first, then a plain PUT.
    backend._conditional_put = False  # type: ignore[attr-defined]
    b = obj(2, "chunk")
    backend.write([b])
    backend.write([StoredObject(b.id, b.kind, b.size, b"other bytes")])
    assert backend.get_objects([a.id, b.id]) == {a.id: a, b.id: b}


def test_a_lost_ref_swap_commits_no_index_rows(s3_store):
    backend = s3_store.backend(create=True)
    a, b = obj(1), obj(2)
    backend.write([a], [RefUpdate("conversations/x", None, a.id, "create")])
    with pytest.raises(RefConflict):
        backend.write([b], [RefUpdate("conversations/x", None, b.id, "lost")])
    assert backend.has_objects([b.id]) == set()
    assert backend.get_objects([b.id]) == {}
    assert backend.count_objects()[0] == 1


def test_an_object_missing_from_the_bucket_is_named(s3_store):
    from tests.servers import s3_client

    cfg, bucket = s3_parts(s3_store)
    repo = s3_store.init()
    result = repo.commit("c", sample_state("c"))
    repo.close()
    s3_client(cfg).delete_object(Bucket=bucket, Key=object_key(result.snapshot))

    backend = s3_store.backend()
    with pytest.raises(ObjectNotFound) as info:
        backend.get_objects([result.snapshot])
    assert info.value.object_id == result.snapshot
    assert result.snapshot in str(info.value) and "missing from s3://" in str(info.value)
    assert backend.has_objects([result.snapshot]) == {result.snapshot}
    with pytest.raises(ObjectNotFound, match=result.snapshot):
        list(backend.iter_objects("snapshot"))
    with pytest.raises(ObjectNotFound, match=result.snapshot):
        s3_store.open().load("c")


def test_config_file_form(s3_store, tmp_path):
    from snapstore.backends.s3 import S3Backend, open_config, split_location

    cfg, bucket = s3_parts(s3_store)
    pg_url = pg_url_of(s3_store)
    path = tmp_path / "store.toml"
    path.write_text(
        "[snapstore.postgresql]\n"
        f'url = "{pg_url}"\n'
        "[snapstore.s3]\n"
        f'bucket = "{bucket}"\n'
        f'endpoint = "{cfg["endpoint_url"]}"\n'
        f'region = "{cfg["region"]}"\n'
        'prefix = "objects"\n'
        f'access_key_id = "{cfg["access_key"]}"\n'
        f'secret_access_key = "{cfg["secret_key"]}"\n'
    )
    with pytest.MonkeyPatch.context() as patch:  # the file's keys are the only ones
        patch.delenv("AWS_ACCESS_KEY_ID")
        patch.delenv("AWS_SECRET_ACCESS_KEY")
        backend = open_config(path, create=True)
        try:
            assert isinstance(backend, S3Backend)
            from_url = split_location(s3_store.location)[1]
            assert (backend.s3.bucket, backend.s3.prefix, backend.s3.endpoint) == (
                from_url.bucket, from_url.prefix, from_url.endpoint
            )
            for secret in (cfg["secret_key"], urlsplit(pg_url).password):
                assert secret not in backend.description and secret not in repr(backend)
            a = obj(1)
            backend.write([a], [RefUpdate("conversations/x", None, a.id, "create")])
        finally:
            backend.close()
    again = s3_store.backend()
    assert again.get_objects([a.id]) == {a.id: a}


# -- end to end -----------------------------------------------------------------------


def test_repository_commits_and_loads_through_the_url(shared_store):
    location = shared_store.location
    state = sample_state("conv-1")
    with Repository.init(location) as repo:
        first = repo.commit("conv-1", state, activate=True)
        state["contexts"][1]["status"] = "merged"
        second = repo.commit("conv-1", state)
    with pytest.raises(StoreExists):
        Repository.init(location)
    with Repository.open(location) as repo:
        assert repo.load("conv-1").to_json() == state
        assert repo.load("conv-1~1").to_json()["contexts"][1]["status"] == "active"
        assert [s.id for s in repo.log("conv-1")] == [second.snapshot, first.snapshot]
        assert repo.active_conversation == "conv-1"
        assert repo.fsck().ok


def test_init_records_the_format_in_the_transaction_that_creates_the_store(shared_store, monkeypatch):
    """No moment exists where the store row is there without its format: a crash right after creating is a store."""
    writes = []
    real_write = PostgresBackend.write

    def write(self, *args, **kwargs):
        writes.append(kwargs.get("meta") if len(args) < 3 else args[2])
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(PostgresBackend, "write", write)
    Repository.init(shared_store.location).close()
    assert writes == []  # nothing left for a second step
    url = pg_url_of(shared_store)
    assert dict(query(url, "SELECT key, value FROM snapstore_meta WHERE key IN ('format', 'created')")).keys() == {
        "format", "created"}
    Repository.open(shared_store.location).close()


def test_init_takes_over_a_store_row_an_interrupted_init_left_without_meta(shared_store):
    """An older snapstore created the store row, then wrote the format in a second step; a crash between
    left a database neither open (no format) nor init (exists) accepted. init takes it over."""
    shared_store.backend(create=True).close()  # the store row, no format: the first step only
    url = pg_url_of(shared_store)
    assert query(url, "SELECT count(*) FROM snapstore_meta WHERE key = 'format'") == [(0,)]
    with pytest.raises(StoreNotFound, match="no format version"):
        Repository.open(shared_store.location)
    repo = Repository.init(shared_store.location)
    try:
        repo.commit("c", sample_state("c"))
    finally:
        repo.close()
    with pytest.raises(StoreExists):  # taken over once: now it is a store
        Repository.init(shared_store.location)


_SESSION_RACER = """
import os, sys, time
from snapstore.startup import Session
start = float(sys.argv[1])
while time.time() < start:
    time.sleep(0.001)
with Session(os.environ["RACE_URL"]) as session:
    print(session.report.status.value)
"""


def test_replicas_starting_together_on_an_empty_database_all_start(pg_store):
    """Each Session creates the store or, having lost the race, opens the one the winner made (with its format)."""
    start = str(time.time() + 2.0)
    env = dict(os.environ, RACE_URL=pg_store.location)
    racers = [subprocess.Popen([sys.executable, "-c", _SESSION_RACER, start], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(5)]
    for racer in racers:
        out, err = racer.communicate(timeout=60)
        assert racer.returncode == 0, err
        assert out.strip() in {"CLEAN", "AUDIT_RECOMMENDED"}, out
    Repository.open(pg_store.location).close()


def test_an_append_after_a_renumbered_log_row_is_refused(shared_store):
    """A last row keyed 100 holding entry 3: the next entry (4) would be written below it and chain onto a
    row out of place; it is refused, nothing written (as on the embedded store)."""
    from snapstore.errors import LogError
    from snapstore.storelog import StoreLog

    repo = Repository.init(shared_store.location)
    try:
        log = StoreLog(repo.backend)
        for n in range(3):
            log.append("exchange", "SB-1", "system", {"n": n})
        url = pg_url_of(shared_store)
        query(url, "UPDATE snapstore_ozolith SET sequence = 100 WHERE sequence = 3 RETURNING sequence")
        with pytest.raises(LogError, match="keyed 100 but holds entry 3"):
            log.append("exchange", "SB-1", "system", {"n": 3})
        assert query(url, "SELECT sequence FROM snapstore_ozolith ORDER BY sequence") == [(1,), (2,), (100,)]
    finally:
        repo.close()


def test_a_server_older_than_postgresql_13_is_refused_before_anything_is_written(monkeypatch):
    """Writes settle a lost COMMIT with pg_xact_status (PostgreSQL 13). No older server runs here, so the
    version the real server reports is replaced by 12's; the open must refuse it in one line and leave the
    database without a table."""
    import psycopg

    from tests.servers import drop_pg_database, fresh_pg_database, require_pg

    empty = fresh_pg_database(require_pg())
    try:
        monkeypatch.setattr(psycopg.ConnectionInfo, "server_version", property(lambda self: 120017))
        with pytest.raises(BackendError, match="the server runs PostgreSQL 12; snapstore needs 13 or newer"):
            Repository.init(empty)
        monkeypatch.undo()
        assert query(empty, "SELECT to_regclass('snapstore_schema_version')") == [(None,)]
    finally:
        drop_pg_database(empty)

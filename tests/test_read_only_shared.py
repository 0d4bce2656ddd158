"""A shared store this process may only read: a role granted SELECT only, a session whose transactions
are read-only (as every one is on a hot standby), read-only S3 keys.

Ops dashboards, cron jobs running `snap verify` and support staff read the
store of API replicas that way. The read commands work; the ones that change
the store refuse in one line naming it and why, before any work, and change
nothing (the tables are compared, as the owner sees them, before and after);
a :class:`Session` refuses to start. What the check at open cannot see (a
privilege only gc needs, an AccessDenied from the bucket) is named the same
way when the server refuses. The standby is a real one: a hot standby
streaming from the test server, made for this module (tests/servers.py
``pg_standby``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import pytest
from click.testing import CliRunner

from snapstore.cli.main import cli
from snapstore.errors import ReadOnlyStore
from snapstore.repository import Repository
from snapstore.startup import Session

from .factories import sample_state
from .servers import (
    delete_s3_bucket, drop_pg_database, fresh_pg_database, fresh_s3_bucket, on_standby, pg_standby, require_pg,
    require_s3, require_s3_read_only_keys, s3_client, wait_replayed,
)
from .shared_backends import s3_credentials, s3_location, with_query

psycopg = pytest.importorskip("psycopg")

READ_ONLY_TRANSACTIONS = "options=" + quote("-c default_transaction_read_only=on", safe="")
READS = [["log", "demo"], ["show", "demo"], ["tree", "demo"], ["diff", "demo~2", "demo"], ["status"],
         ["conversations"], ["stats"], ["fsck"], ["verify"], ["export", "--all", "-o", "{out}/bundle"],
         ["export-log", "-o", "{out}/log.jsonl"], ["gc", "--dry-run"], ["prune", "demo", "--keep-last", "2",
         "--dry-run"], ["checkout", "demo"], ["upgrade"]]
WRITES = [["gc"], ["pack"], ["prune", "demo", "--keep-last", "2"], ["commit", "demo", "--from", "{out}/state.json"],
          ["checkout", "other"], ["checkout", "demo", "--at", "demo~1", "-o", "{out}/state-at.json"],
          ["import", "{out}/bundle"], ["replay", "demo", "--as", "rebuilt"], ["demo"]]


def snap(location: str, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--store", location, *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def as_user(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{parts.hostname}:{parts.port}"))


@contextmanager
def role(url: str, *grants: str) -> Iterator[str]:
    """The URL of a new role that may connect and SELECT every table of ``url``'s database, plus ``grants``
    (``"DELETE ON snapstore_meta"``); dropped afterwards (roles belong to the server, not the database)."""
    name, password = f"snapstore_ro_{uuid.uuid4().hex[:12]}", uuid.uuid4().hex
    database = urlsplit(url).path.lstrip("/")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
        try:
            for grant in (f"CONNECT ON DATABASE {database}", "USAGE ON SCHEMA public",
                          "SELECT ON ALL TABLES IN SCHEMA public", *grants):
                conn.execute(f"GRANT {grant} TO {name}")
            yield as_user(url, name, password)
        finally:
            conn.execute(f"DROP OWNED BY {name}")  # its grants, here and on the database
            conn.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{name}'")
            conn.execute(f"DROP ROLE {name}")


def tables(url: str) -> str:
    """Every row of the store's tables as the owner reads them: what any write would change."""
    with psycopg.connect(url, autocommit=True) as conn:
        return json.dumps([conn.execute(f"SELECT coalesce(json_agg(t ORDER BY t::text), '[]')::text FROM {table} t")
                           .fetchone()[0] for table in ("snapstore_objects", "snapstore_refs", "snapstore_reflog",
                                                        "snapstore_meta", "snapstore_ozolith",
                                                        "snapstore_schema_version")])


@pytest.fixture
def database() -> Iterator[str]:
    url = fresh_pg_database(require_pg())
    try:
        yield url
    finally:
        drop_pg_database(url)


def make_store(location: str, tmp_path: Path, demo: bool = True) -> None:
    """`snap demo`'s store (the audit log in it, "demo" active) and a second conversation, "other"; without
    ``demo``, "demo" has two snapshots only (an S3 store's every object costs a PUT)."""
    if demo:
        code, out, err = snap(location, "demo")
        assert code == 0, out + err
    with Repository.open(location) if demo else Repository.init(location) as repo:
        if not demo:
            repo.commit("demo", dict(sample_state("demo"), active_context_id="SB-1"))
            repo.commit("demo", dict(sample_state("demo"), active_context_id="SB-3"))  # the state file differs
            repo.set_active("demo")
        repo.commit("other", sample_state("other"))
    (tmp_path / "state.json").write_text(json.dumps(sample_state("demo")))


def check_commands(location: str, owner: str, tmp_path: Path, reason: str,
                   reads: list[list[str]] = READS, writes: list[list[str]] = WRITES) -> None:
    """``reads`` work through ``location``, ``writes`` refuse in one line naming it and ``reason``; nothing
    changes."""
    before = tables(owner)
    for args in reads:
        code, out, err = snap(location, *[a.format(out=tmp_path) for a in args])
        assert code == 0, (args, out, err)
    for args in writes:
        code, out, err = snap(location, *[a.format(out=tmp_path) for a in args])
        assert code == 1, (args, out, err)
        lines = err.splitlines()
        assert len(lines) == 1 and "is read-only here" in lines[0] and "nothing was changed" in lines[0], (args, err)
        assert reason in lines[0] and "@127.0.0.1:" in lines[0], (args, err)  # the store, named (password hidden)
    with pytest.raises(ReadOnlyStore, match="a Session cannot start on it"):
        Session(location, create=False, log_in_store=True)
    with Repository.open(location) as repo:
        with pytest.raises(ReadOnlyStore, match="is read-only here .*: nothing was written"):
            repo.set_active("other")
    assert tables(owner) == before
    assert not (tmp_path / "state-at.json").exists()  # checkout --at refused before writing -o FILE


def test_a_role_granted_select_only_reads_and_refuses_writes(database, tmp_path):
    make_store(database, tmp_path)
    with role(database) as reader:
        check_commands(reader, database, tmp_path, "(role snapstore_ro_")
        with Repository.open(reader) as repo:
            assert repo.backend.read_only.endswith(" lacks INSERT on snapstore_objects, INSERT on snapstore_refs, "
                                                   "UPDATE on snapstore_refs and 2 more")


def test_read_only_transactions_read_and_refuse_writes(database, tmp_path):
    """``default_transaction_read_only``, in the URL (as on a standby, every transaction is read-only)."""
    make_store(database, tmp_path)
    check_commands(with_query(database, READ_ONLY_TRANSACTIONS), database, tmp_path,
                   "default_transaction_read_only is on")


@pytest.fixture(scope="module")
def standby() -> Iterator[str]:
    """The URL of a hot standby of the test server (its main database), for this module's tests."""
    with pg_standby() as url:
        yield url


def test_a_standby_reads_refuses_writes_and_cannot_tell_whether_a_session_of_the_primary_runs(database, standby,
                                                                                             tmp_path):
    """Through a hot standby the read commands work and the writing ones refuse, naming the standby. Its
    advisory locks are its own (never WAL-logged): a running Session's presence lock on the primary is
    invisible there, so `snap status` reports its session as one it cannot tell, not one that ended without
    a clean close (audited all the same)."""
    make_store(database, tmp_path)
    replica = on_standby(database, standby)
    wait_replayed(database, standby)
    check_commands(replica, database, tmp_path, "the server is a standby in recovery, which accepts no writes")
    with Repository.open(replica) as repo:
        assert repo.backend.read_only == "the server is a standby in recovery, which accepts no writes"
    session = Session(database, create=False, log_in_store=True)
    try:
        wait_replayed(database, standby)  # the session's record, read through the standby
        before = tables(database)
        code, out, err = snap(replica, "status", "--json")
        assert code == 0, out + err
        report = json.loads(out)
        assert report["status"] == "AUDIT_RECOMMENDED", report
        assert any(c.startswith("1 session this process cannot tell running or ended") for c in report["checks"])
        code, out, err = snap(replica, "gc")
        assert code == 1 and "the server is a standby in recovery, which accepts no writes" in err, err
        assert tables(database) == before
    finally:
        session.close()


def test_a_write_the_server_refuses_is_named_read_only(database, tmp_path):
    """A role that may commit but not delete (the check at open looks at what a commit needs): gc's
    deletion, refused by the server, is a ReadOnlyStore naming the store; nothing was deleted."""
    make_store(database, tmp_path)
    with role(database, "INSERT, UPDATE ON ALL TABLES IN SCHEMA public") as writer:
        with Repository.open(writer) as repo:
            assert repo.backend.read_only is None
            oid = next(repo.backend.iter_objects()).id
            with pytest.raises(ReadOnlyStore) as raised:
                repo.backend.delete_objects([oid])
            assert str(raised.value).startswith(repo.backend.description + " is read-only here (the server refused")
            assert "permission denied for table snapstore_objects [42501]): nothing was committed" in str(raised.value)
            assert repo.backend.has_objects([oid]) == {oid}


def test_an_older_schema_is_read_unless_it_lacks_a_table(database, tmp_path):
    """Nothing is migrated through a read-only role: a missing index only slows reads; a missing table
    (the audit log's) is named, with what to do."""
    make_store(database, tmp_path)
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("DELETE FROM snapstore_schema_version WHERE version = 3")
        conn.execute("DROP INDEX snapstore_reflog_log")
    with role(database) as reader:
        code, out, err = snap(reader, "verify")
        assert code == 0, out + err
        with psycopg.connect(database, autocommit=True) as conn:
            assert conn.execute("SELECT max(version) FROM snapstore_schema_version").fetchone()[0] == 2
            conn.execute("DELETE FROM snapstore_schema_version WHERE version = 2")
        code, out, err = snap(reader, "conversations")
        assert code == 1 and len(err.splitlines()) == 1, err
        assert "its schema (version 1) lacks 'audit log kept in the store' (version 2)" in err, err
        assert "open it once with a role that may write it" in err


def test_init_through_read_only_transactions_creates_nothing(database):
    code, out, err = snap(with_query(database, READ_ONLY_TRANSACTIONS), "init")
    assert code == 1, out + err
    assert len(err.splitlines()) == 1 and "a store cannot be created in it; nothing was changed" in err, err
    with psycopg.connect(database, autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('snapstore_schema_version')").fetchone()[0] is None


@pytest.fixture
def s3_store(tmp_path) -> Iterator[tuple[str, str, dict, str]]:
    """(location, its PostgreSQL URL, S3 config, bucket) of `snap demo`'s store with its objects in S3."""
    cfg = require_s3()
    with ExitStack() as stack:
        s3_credentials(stack, cfg)
        url = fresh_pg_database(require_pg())
        stack.callback(drop_pg_database, url)
        bucket = fresh_s3_bucket(cfg)
        stack.callback(delete_s3_bucket, cfg, bucket)
        location = s3_location(url, cfg, bucket)
        make_store(location, tmp_path, demo=False)
        yield location, url, cfg, bucket


def bodies(cfg: dict, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in s3_client(cfg).list_objects_v2(Bucket=bucket).get("Contents", []))


def test_s3_store_through_a_select_only_role(s3_store, tmp_path):
    location, url, cfg, bucket = s3_store
    before = bodies(cfg, bucket)
    with role(url) as reader:
        # The reads that fetch bodies from the bucket, and the writes that would PUT or DELETE them.
        check_commands(s3_location(reader, cfg, bucket), url, tmp_path, "lacks INSERT on snapstore_objects",
                       reads=[["show", "demo"], ["verify"]], writes=[["commit", "demo", "--from", "{out}/state.json"],
                                                               ["gc"], ["checkout", "demo", "--at", "demo~1"]])
    assert bodies(cfg, bucket) == before  # refused before any PUT


def test_s3_keys_that_may_only_read_read_and_a_put_they_may_not_make_is_named_read_only(s3_store, tmp_path,
                                                                                            monkeypatch):
    """Read-only S3 keys (the test server's second identity may only Read and List) cannot be told without
    writing: reads work; the bucket's AccessDenied on the first PUT is named, and the write commits nothing."""
    location, _, cfg, bucket = s3_store
    key, secret = require_s3_read_only_keys()
    before = bodies(cfg, bucket)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    for args in (["show", "demo"], ["verify"], ["log", "demo"]):
        code, out, err = snap(location, *args)
        assert code == 0, (args, out, err)
    with Repository.open(location) as repo:
        head = repo.head("demo")
        with pytest.raises(ReadOnlyStore) as raised:
            repo.commit("fresh", sample_state("fresh"))
        message = str(raised.value)
        assert message.startswith(f"{repo.backend.description} is read-only here (these S3 credentials may not "
                                  f"write to bucket {bucket!r}: AccessDenied"), message
        assert message.endswith("nothing was committed") and "\n" not in message
        assert repo.head("fresh") is None and repo.head("demo") == head
    assert bodies(cfg, bucket) == before
"""Helpers for tests that need the real PostgreSQL / S3 test servers.

The servers are started by ``scripts/testservers.py`` (``run -- CMD`` or ``start``),
which exports:

    SNAPSTORE_TEST_PG_URL            postgresql://user:pass@127.0.0.1:PORT/snapstore_test
    SNAPSTORE_TEST_S3_URL            http://127.0.0.1:PORT
    SNAPSTORE_TEST_S3_KEY / SNAPSTORE_TEST_S3_SECRET
    SNAPSTORE_TEST_S3_BUCKET_PREFIX

When a variable is missing, ``require_pg()`` / ``require_s3()`` skip the test locally
but fail it when ``CI=true`` (in CI a missing server is a bug, not a reason to skip).

``pg_standby()`` makes a real hot standby of the PostgreSQL server on demand (about a
second), for the tests that need one, and removes it after them.

psycopg and boto3 are imported lazily so that importing this module never fails.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import pytest

ENV_PG_URL = "SNAPSTORE_TEST_PG_URL"
ENV_S3_URL = "SNAPSTORE_TEST_S3_URL"
ENV_S3_KEY = "SNAPSTORE_TEST_S3_KEY"
ENV_S3_SECRET = "SNAPSTORE_TEST_S3_SECRET"
# A second identity of the test server that may only read and list (scripts/testservers.py).
ENV_S3_RO_KEY = "SNAPSTORE_TEST_S3_RO_KEY"
ENV_S3_RO_SECRET = "SNAPSTORE_TEST_S3_RO_SECRET"
ENV_S3_BUCKET_PREFIX = "SNAPSTORE_TEST_S3_BUCKET_PREFIX"

DEFAULT_BUCKET_PREFIX = "snapstore-test-"
S3_REGION = "us-east-1"
# Only databases with this prefix are ever dropped by drop_pg_database().
PG_DB_PREFIX = "snapstore_t_"

_HOWTO = "start it with `python scripts/testservers.py run -- <test command>`"

# fresh database URL -> URL of the database it was created from (used to drop it)
_admin_urls: dict[str, str] = {}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _missing(what: str, detail: str = "") -> None:
    msg = f"{what} test server not running: {_HOWTO}"
    if detail:
        msg += f" ({detail})"
    if in_ci():
        pytest.fail(f"{msg}; CI=true, so this is a failure, not a skip", pytrace=False)
    pytest.skip(msg)


# --------------------------------------------------------------------------- PostgreSQL


def pg_url() -> str | None:
    return os.environ.get(ENV_PG_URL) or None


def require_pg() -> str:
    """The server URL, or skip (locally) / fail (CI=true) the calling test."""
    url = pg_url()
    if not url:
        _missing("PostgreSQL", f"{ENV_PG_URL} is not set")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _missing("PostgreSQL", "psycopg is not installed: pip install 'psycopg[binary]'")
    return url


def _with_dbname(url: str, dbname: str) -> str:
    if "://" in url:
        parts = urlsplit(url)
        return urlunsplit(parts._replace(path="/" + quote(dbname, safe="")))
    from psycopg.conninfo import make_conninfo  # key=value DSN

    return make_conninfo(url, dbname=dbname)


def _dbname(url: str) -> str:
    if "://" in url:
        return unquote(urlsplit(url).path.lstrip("/"))
    from psycopg.conninfo import conninfo_to_dict

    return str(conninfo_to_dict(url).get("dbname", ""))


def fresh_pg_database(url: str) -> str:
    """Create a new, uniquely named, empty database on url's server; return its URL."""
    import psycopg
    from psycopg import sql

    name = f"{PG_DB_PREFIX}{uuid.uuid4().hex[:20]}"
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    new_url = _with_dbname(url, name)
    _admin_urls[new_url] = url
    return new_url


def drop_pg_database(url: str) -> None:
    """Drop a database made by fresh_pg_database(), disconnecting leftover sessions.

    Idempotent. Refuses names without the PG_DB_PREFIX, so it cannot drop the main one.
    """
    import psycopg
    from psycopg import sql

    name = _dbname(url)
    if not name.startswith(PG_DB_PREFIX):
        raise ValueError(f"refusing to drop database {name!r}: not created by fresh_pg_database()")
    admin = _admin_urls.pop(url, None) or pg_url() or _with_dbname(url, "postgres")
    with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
        ident = sql.Identifier(name)
        if conn.info.server_version >= 130000:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
        else:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(ident))


def _testservers():
    """scripts/testservers.py as a module: it knows how the test server's cluster is run (its
    binaries, its OS user when the tests run as root), so a standby is made the same way."""
    name = "snapstore_testservers"
    if name not in sys.modules:
        path = Path(__file__).resolve().parent.parent / "scripts" / "testservers.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@contextmanager
def pg_standby() -> Iterator[str]:
    """The URL (the test server's, with the standby's port) of a streaming-replication hot standby of
    the PostgreSQL test server, made for the caller and stopped, its data removed, on exit.

    A test that needs what only a real standby shows (``pg_is_in_recovery()``, advisory locks of its
    own, read-only transactions it imposes) uses this rather than a fake: pg_basebackup of a test
    cluster takes well under a second. Missing binaries skip locally and fail when CI=true; a
    standby that cannot be made or does not recover is an error naming why.
    """
    import psycopg

    url = require_pg()
    servers = _testservers()
    with psycopg.connect(url, connect_timeout=10) as conn:
        major = conn.info.server_version // 10000
    bindir = servers.pg_bindir_for(major)
    if bindir is None:
        _missing("PostgreSQL standby", f"no pg_basebackup, pg_ctl and postgres of PostgreSQL {major} found: "
                                       "apt-get install postgresql, or set SNAPSTORE_PG_BINDIR")
    info = servers.start_standby(url, bindir)
    try:
        with psycopg.connect(info["url"], connect_timeout=10) as conn:
            if not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                raise RuntimeError(f"the standby on port {info['port']} is not in recovery: "
                                   f"{servers.tail(info['log'])}")
        yield info["url"]
    finally:
        servers.stop_pg(info)


def on_standby(url: str, standby: str) -> str:
    """The URL of ``url``'s database (made on the primary) read through the standby ``standby``."""
    return _with_dbname(standby, _dbname(url))


def wait_replayed(primary: str, standby: str, timeout: float = 30.0) -> None:
    """Return once ``standby`` has replayed all the WAL ``primary``'s server had written when called
    (every transaction committed before), else fail naming both positions."""
    import psycopg

    with psycopg.connect(primary, autocommit=True, connect_timeout=10) as conn:
        (target,) = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    deadline = time.monotonic() + timeout
    with psycopg.connect(standby, autocommit=True, connect_timeout=10) as conn:
        while True:
            done, replayed = conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn, "
                                          "pg_last_wal_replay_lsn()::text", (target,)).fetchone()
            if done:
                return
            if time.monotonic() >= deadline:
                raise AssertionError(f"the standby replayed the WAL up to {replayed} only, {timeout:.0f} s after "
                                     f"the primary wrote it up to {target}")
            time.sleep(0.01)  # polling the standby's position, not waiting for a guess


# --------------------------------------------------------------------------- S3


def s3_config() -> dict | None:
    """{'endpoint_url', 'access_key', 'secret_key', 'bucket_prefix', 'region'} or None."""
    url = os.environ.get(ENV_S3_URL)
    key = os.environ.get(ENV_S3_KEY)
    secret = os.environ.get(ENV_S3_SECRET)
    if not (url and key and secret):
        return None
    return {
        "endpoint_url": url,
        "access_key": key,
        "secret_key": secret,
        "bucket_prefix": os.environ.get(ENV_S3_BUCKET_PREFIX) or DEFAULT_BUCKET_PREFIX,
        "region": S3_REGION,
    }


def require_s3() -> dict:
    cfg = s3_config()
    if cfg is None:
        _missing("S3", f"{ENV_S3_URL}/{ENV_S3_KEY}/{ENV_S3_SECRET} are not all set")
    try:
        import boto3  # noqa: F401
    except ImportError:
        _missing("S3", "boto3 is not installed: pip install boto3")
    return cfg


def require_s3_read_only_keys() -> tuple[str, str]:
    """The test server's read-only identity: ``(access key, secret)``."""
    key, secret = os.environ.get(ENV_S3_RO_KEY), os.environ.get(ENV_S3_RO_SECRET)
    if not (key and secret):
        _missing("S3", f"{ENV_S3_RO_KEY}/{ENV_S3_RO_SECRET} are not set (servers started before they existed: "
                       "restart them)")
    return key, secret  # type: ignore[return-value]


def s3_client(cfg: dict):
    """A boto3 S3 client for cfg (cached; boto3 clients are thread-safe)."""
    return _s3_client(cfg["endpoint_url"], cfg["access_key"], cfg["secret_key"],
                      cfg.get("region") or S3_REGION)


def drop_expect_header(request, **_kwargs) -> None:
    """botocore ``before-send`` handler: never send ``Expect: 100-continue``.

    botocore (seen with 1.43.11, boto/botocore#3755) sends the header on every PUT with
    a body, even an empty one. SeaweedFS (like Go servers in general) answers an empty
    PUT at once without a ``100 Continue``; botocore then leaves the pooled connection
    with a stale status line, so the *next* request on it stalls for read_timeout (60 s
    by default) and is silently retried. A retried ``IfNoneMatch='*'`` create then fails
    with 412 although the first attempt wrote the object. The header is not part of the
    SigV4 signature, so removing it here is safe.
    """
    request.headers.pop("Expect", None)


@functools.lru_cache(maxsize=8)
def _s3_client(endpoint_url: str, key: str, secret: str, region: str):
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        region_name=region,
        config=Config(
            s3={"addressing_style": "path"},  # no <bucket>.127.0.0.1 host names
            proxies={},  # never send 127.0.0.1 traffic through HTTP(S)_PROXY
            signature_version="s3v4",
            connect_timeout=5,
            read_timeout=60,
            retries={"max_attempts": 3, "mode": "standard"},
        ),
    )
    client.meta.events.register("before-send.s3", drop_expect_header)
    return client


def fresh_s3_bucket(cfg: dict) -> str:
    """Create a new uniquely named bucket; return its name."""
    prefix = cfg.get("bucket_prefix") or DEFAULT_BUCKET_PREFIX
    name = f"{prefix}{uuid.uuid4().hex[:20]}"
    if len(name) > 63:
        raise ValueError(f"bucket prefix {prefix!r} too long")
    s3_client(cfg).create_bucket(Bucket=name)
    return name


def delete_s3_bucket(cfg: dict, bucket: str) -> None:
    """Empty (objects, versions, multipart uploads) and delete a bucket. Idempotent."""
    from botocore.exceptions import ClientError

    c = s3_client(cfg)

    def gone(e: ClientError) -> bool:
        return e.response.get("Error", {}).get("Code") in ("NoSuchBucket", "404")

    try:
        for page in c.get_paginator("list_multipart_uploads").paginate(Bucket=bucket):
            for up in page.get("Uploads", []):
                c.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
    except ClientError as e:
        if gone(e):
            return
        # not every server implements it; an upload left over only makes delete_bucket fail
    try:
        for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                c.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
        # versioned buckets keep old versions and delete markers
        with_versions = c.get_bucket_versioning(Bucket=bucket).get("Status") in ("Enabled", "Suspended")
        if with_versions:
            for page in c.get_paginator("list_object_versions").paginate(Bucket=bucket):
                vers = [{"Key": v["Key"], "VersionId": v["VersionId"]}
                        for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]
                if vers:
                    c.delete_objects(Bucket=bucket, Delete={"Objects": vers, "Quiet": True})
        c.delete_bucket(Bucket=bucket)
    except ClientError as e:
        if not gone(e):
            raise

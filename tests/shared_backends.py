"""The shared backends under the ``store`` fixture: PostgreSQL, and S3 with PostgreSQL.

Each factory gets a fresh database (and a fresh bucket) on the test servers
that ``scripts/testservers.py`` starts, and drops them after the test. Without
the servers the tests skip, or fail when ``CI=true`` (see tests/servers.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest

from snapstore.backends.base import Backend


def _opener(location: str, opened: list[Backend]) -> Callable[[bool], Backend]:
    """Open ``location`` like the sqlite factory does: ``create`` only until the store exists."""
    from snapstore.location import open_backend

    created = False

    def open_store(create: bool) -> Backend:
        nonlocal created
        backend = open_backend(location, create=create and not created)
        created = True
        opened.append(backend)
        return backend

    return open_store


def _close_all(opened: list[Backend]) -> None:
    for backend in opened:
        backend.close()


def with_query(url: str, query: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{query}"


def s3_location(pg_url: str, cfg: dict, bucket: str, prefix: str = "objects/") -> str:
    """The ``s3+postgresql://`` location of a store on the test servers."""
    return with_query(
        f"s3+{pg_url}",
        f"bucket={bucket}&endpoint={cfg['endpoint_url']}&region={cfg['region']}&prefix={prefix}",
    )


def s3_credentials(stack: ExitStack, cfg: dict) -> None:
    """Export the test server's keys the way users do, until ``stack`` closes."""
    patch = stack.enter_context(pytest.MonkeyPatch.context())
    patch.setenv("AWS_ACCESS_KEY_ID", cfg["access_key"])
    patch.setenv("AWS_SECRET_ACCESS_KEY", cfg["secret_key"])
    patch.delenv("AWS_SESSION_TOKEN", raising=False)
    patch.delenv("AWS_PROFILE", raising=False)
    # The servers are local: never route them through a developer's HTTP proxy.
    no_proxy = ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1", "localhost"]))
    patch.setenv("NO_PROXY", no_proxy)


def _corrupt_in_postgres(url: str) -> Callable[[Backend, str], None]:
    """Flip a byte of an object's body in the database, behind the store's back."""

    def corrupt(backend: Backend, oid: str) -> None:
        import psycopg

        from tests.conftest import flip_byte

        with psycopg.connect(url, autocommit=True) as conn:
            (data,) = conn.execute(
                "SELECT data FROM snapstore_objects WHERE id = %s", (bytes.fromhex(oid),)
            ).fetchone()
            conn.execute(
                "UPDATE snapstore_objects SET data = %s WHERE id = %s", (flip_byte(data), bytes.fromhex(oid))
            )

    return corrupt


def object_key(oid: str, prefix: str = "objects/") -> str:
    """Where the S3 backend keeps an object's body (its documented layout)."""
    return f"{prefix}{oid[:2]}/{oid[2:]}"


def _corrupt_in_bucket(cfg: dict, bucket: str) -> Callable[[Backend, str], None]:
    """Flip a byte of an object's data in the bucket, keeping its header line."""

    def corrupt(backend: Backend, oid: str) -> None:
        from tests.conftest import flip_byte
        from tests.servers import s3_client

        client = s3_client(cfg)
        body = client.get_object(Bucket=bucket, Key=object_key(oid))["Body"].read()
        header, _, data = body.partition(b"\n")
        client.put_object(Bucket=bucket, Key=object_key(oid), Body=header + b"\n" + flip_byte(data))

    return corrupt


def _postgres(tmp_path) -> Iterator:
    from tests.conftest import StoreFactory
    from tests.servers import drop_pg_database, fresh_pg_database, require_pg

    url = fresh_pg_database(require_pg())
    opened: list[Backend] = []
    try:
        yield StoreFactory("postgres", url, _opener(url, opened), None, _corrupt_in_postgres(url))
    finally:
        _close_all(opened)
        drop_pg_database(url)


def _s3(tmp_path) -> Iterator:
    from tests.conftest import StoreFactory
    from tests.servers import (
        delete_s3_bucket, drop_pg_database, fresh_pg_database, fresh_s3_bucket, require_pg, require_s3,
    )

    server, cfg = require_pg(), require_s3()
    opened: list[Backend] = []
    with ExitStack() as stack:
        s3_credentials(stack, cfg)
        url = fresh_pg_database(server)
        stack.callback(drop_pg_database, url)
        bucket = fresh_s3_bucket(cfg)
        stack.callback(delete_s3_bucket, cfg, bucket)
        stack.callback(_close_all, opened)
        location = s3_location(url, cfg, bucket)
        yield StoreFactory("s3", location, _opener(location, opened), None, _corrupt_in_bucket(cfg, bucket))


SHARED_FACTORIES: dict[str, Callable] = {"postgres": _postgres, "s3": _s3}

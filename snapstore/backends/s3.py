"""The shared backend for big stores: object bodies in S3, everything else in PostgreSQL.

Refs, reflog, meta and an index of objects (id, kind, size, stored size) live
in PostgreSQL exactly as in :mod:`.postgres`, so ``has_objects``, ``find_ids``,
``count_objects`` and ``iter_objects`` never list the bucket. Bodies live in
any S3-compatible store (AWS S3, SeaweedFS, MinIO, ...).

Location, as a URL::

    s3+postgresql://user:password@host:port/dbname?bucket=NAME
        &endpoint=http://127.0.0.1:8333   (omit for AWS)
        &prefix=objects/                  (default objects/)
        &region=us-east-1
        &addressing=path                  (path, virtual or auto; default path
                                           with an endpoint, auto without)

Other query parameters (``sslmode``, ``options``, ...) go to libpq. S3
credentials never go in the URL, which is printed in messages: they come from
boto3's usual chain (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``,
``AWS_PROFILE``, an instance role). Or, as a TOML file (see :func:`open_config`)::

    [snapstore.postgresql]
    url = "postgresql://snap@db.internal/snapstore"
    [snapstore.s3]                 # leave out to keep the objects in PostgreSQL
    bucket = "snapstore"
    endpoint = "http://127.0.0.1:8333"
    prefix = "objects/"
    access_key_id = "..."          # optional, else the boto3 chain
    secret_access_key = "..."

An object is stored at ``<prefix><id[:2]>/<id[2:]>`` (the fan-out keeps
listings of one folder small on servers that care) and its body is a one-line
header ``snapstore1 <kind> <size>\\n`` followed by the compressed data: the
bucket alone describes every object, even without the index, and one GET
returns all of it. A GET reads at most what an object of the index's size
can take (:func:`_body_bound`): a longer body is named as corrupt, not
downloaded. Objects are immutable, so a PUT carries ``If-None-Match: *``:
a 412 answer means the object is already there, which is success. A server
that rejects the header as not implemented is remembered and gets a HEAD then
a plain PUT instead.

A write first PUTs its objects, in parallel, and only then commits the index
rows, the ref swaps and the meta in one PostgreSQL transaction, so a ref never
names an object that is not durable in S3. A write that loses its ref swap
leaves its objects in the bucket without index rows; they are invisible and
harmless, and a later write of the same objects reuses them.

**Writers and gc (the sweep lock).** A 412 means "the body is there *now*";
gc deletes bodies after their index rows, so without more a writer could be
told "already stored" for a body gc is about to delete, commit its index row
and ref, and be left with a missing body. One PostgreSQL advisory lock per
database (:data:`_SWEEP_LOCK`, session level) closes that:

- a write with objects takes it *shared* before its first PUT and keeps it
  until its transaction has committed (the claim: gc sees every write in
  flight through it). Writers never wait for each other;
- gc takes it *exclusive* around each batch: the fenced transaction that
  deletes index rows (``_delete_index``), then the DELETEs of those bodies.
  Bodies without index rows (from writers that lost a ref swap or died,
  or from a gc that died between the two steps) are found by listing the
  bucket and deleted under the same exclusive lock, after re-checking that
  no index row names them (:meth:`S3Backend.sweep_unindexed`).

So no PUT answer is ever given between gc's index deletion and its body
deletion, and a 412 is the truth until the write commits: a body that gc
deleted before the write's claim gets a fresh PUT (200). A lock dies with
its session: a write whose transaction would run on another session than
the one holding its claim (the connection was lost and reopened) starts
again from its PUTs; gc checks after its DELETEs that its session is still
the one holding the lock, and if not, names any object a writer re-created
meanwhile whose body is gone. A writer or gc that crashes releases the lock
with its session, leaving at worst bodies without index rows (invisible to
readers and fsck, deleted by a later gc). Writers wait only while gc holds
the lock for one batch (an index transaction and one or two DELETE calls);
they poll for it (``pg_try_advisory_lock_shared``) rather than block, so a
waiting writer does not hold the backend's connection, and a gc waiting for
the lock queues ahead of new writers.
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
import threading
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote

from ..errors import (
    BackendError, CorruptObject, InvalidInput, ObjectNotFound, ReadOnlyStore, RefConflict, StoreNotFound,
)
from ..location import register_url_backend
from ..objects import ObjectId
from .base import AppendedEntry, Backend, LogAppend, RefUpdate, StoredObject
from .postgres import SCHEMES as PG_SCHEMES
from .postgres import PostgresBackend, psycopg, safe_location

try:
    import boto3
    import botocore.exceptions as boto_errors
    from botocore.config import Config
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("the S3 backend needs boto3: pip install 'snapstore[s3]'") from exc

log = logging.getLogger(__name__)

SCHEMES = tuple(f"s3+{s}" for s in PG_SCHEMES)
DEFAULT_PREFIX = "objects/"
HEADER_MAGIC = b"snapstore1"
_URL_SETTINGS = ("bucket", "endpoint", "prefix", "region", "addressing")
_CREDENTIAL_PARAMS = {
    "access_key", "access_key_id", "aws_access_key_id", "secret", "secret_key",
    "secret_access_key", "aws_secret_access_key", "session_token", "aws_session_token",
}
_WORKERS = 8
_ATTEMPTS = 3  # our own retries, each on top of botocore's standard-mode retries
_TRANSIENT = (boto_errors.ConnectionError, boto_errors.HTTPClientError, boto_errors.IncompleteReadError)
_TRANSIENT_CODES = {
    "ConditionalRequestConflict", "OperationAborted", "InternalError", "RequestTimeout",
    "ServiceUnavailable", "SlowDown",
}
_UNSUPPORTED_CODES = {"NotImplemented", "InvalidArgument", "InvalidRequest", "InvalidHeader"}
# Creating boto3 sessions and clients from several threads at once is not safe.
_client_lock = threading.Lock()
# Session-level advisory lock (per database) shared by writes with objects and held
# exclusively by gc while it deletes bodies (see the module docstring). Distinct from
# postgres.py's keys (…0001 migrations, …0002 the audit log).
_SWEEP_LOCK = 0x5E1A_D0C5_7A11_0003
_CLAIM_ATTEMPTS = 3
_KEY_TAIL = re.compile(r"[0-9a-f]{2}/[0-9a-f]{62}")

T = TypeVar("T")


@dataclass(frozen=True)
class S3Settings:
    """Where the object bodies of a store live, and how to reach them."""

    bucket: str
    prefix: str = DEFAULT_PREFIX
    endpoint: str | None = None
    region: str | None = None
    addressing: str | None = None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.bucket:
            raise InvalidInput("an S3 store needs a bucket (bucket=NAME)")
        prefix = self.prefix.lstrip("/")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        object.__setattr__(self, "prefix", prefix)
        if self.addressing not in (None, "path", "virtual", "auto"):
            raise InvalidInput(f"S3 addressing must be path, virtual or auto, not {self.addressing!r}")
        if bool(self.access_key_id) != bool(self.secret_access_key):
            raise InvalidInput("give both access_key_id and secret_access_key, or neither")

    @property
    def objects_location(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


def split_location(location: str) -> tuple[str, S3Settings]:
    """``s3+postgresql://...?bucket=...`` as (PostgreSQL URL, S3 settings)."""
    scheme, rest = location.split("://", 1)
    pg_scheme = scheme.split("+", 1)[1]
    rest, _, _fragment = rest.partition("#")
    base, _, query = rest.partition("?")
    libpq: list[str] = []
    settings: dict[str, str] = {}
    for piece in filter(None, query.split("&")):
        key, _, value = piece.partition("=")
        name = unquote(key).lower()
        if name in _URL_SETTINGS:
            settings[name] = unquote(value)
        elif name in _CREDENTIAL_PARAMS:
            raise InvalidInput(
                "S3 credentials do not belong in the store location, which is shown in messages: "
                "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or use a config file"
            )
        else:
            libpq.append(piece)
    if not settings.get("bucket"):
        raise InvalidInput(f"{safe_location(location)} names no bucket (add ?bucket=NAME)")
    pg_url = f"{pg_scheme}://{base}" + ("?" + "&".join(libpq) if libpq else "")
    return pg_url, S3Settings(**settings)


class _ClaimLost(Exception):
    """The PostgreSQL session that held a claim on the sweep lock ended, and the lock with it."""


@dataclass(eq=False)
class _Claim:
    """The sweep lock, held by this thread through the session of ``conn``."""

    conn: psycopg.Connection
    exclusive: bool


class _SharedExclusive:
    """The sweep lock between the threads of one process.

    PostgreSQL never makes one session wait for itself, and all threads of a
    backend share its session, so they exclude each other here first.
    A waiting exclusive holder goes before new shared ones.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting = 0

    @contextlib.contextmanager
    def hold(self, exclusive: bool) -> Iterator[None]:
        with self._cond:
            if exclusive:
                self._waiting += 1
                try:
                    self._cond.wait_for(lambda: not self._exclusive and not self._shared)
                finally:
                    self._waiting -= 1
                self._exclusive = True
            else:
                self._cond.wait_for(lambda: not self._exclusive and not self._waiting)
                self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                if exclusive:
                    self._exclusive = False
                else:
                    self._shared -= 1
                self._cond.notify_all()


def _body_bound(kind: str, size: int) -> int:
    """The most bytes the bucket body of an object of ``size`` bytes takes.

    Its header line, then its stored data: a zstd frame of the body (at most
    ``ZSTD_compressBound``, size + size/256 + 64 bytes, plus an 18-byte frame
    header; a frame of raw blocks, how packed objects travel, size + 3 bytes
    per 128 KiB) and a CRC-32, well inside size + size/128 + 4 KB. A longer
    body is damage, refused without reading it all: the index's size, not
    the bucket, decides how much a read may hold.
    """
    return len(str(kind)) + size + (size >> 7) + 4096


class S3Backend(PostgresBackend):
    """Object bodies in an S3 bucket; refs, reflog, meta and the object index in PostgreSQL."""

    def __init__(
        self,
        pg_url: str,
        s3: S3Settings,
        create: bool = False,
        *,
        description: str | None = None,
        meta: Mapping[str, str] | None = None,
    ) -> None:
        self.s3 = s3
        self._conditional_put: bool | None = None  # None: not known yet
        self._executor: ThreadPoolExecutor | None = None
        self._executor_lock = threading.Lock()
        self._sweep_threads = _SharedExclusive()
        self._claims = threading.local()  # .current: the _Claim this thread holds, if any
        self._s3_secrets = [s for s in (s3.access_key_id, s3.secret_access_key) if s]
        description = description or f"{safe_location(pg_url)} + {s3.objects_location}"
        self.description = description
        self._client = self._make_client()
        try:
            super().__init__(pg_url, create, description=description, meta=meta)
        except BaseException:
            self.close()
            raise

    def _open_store(self, create: bool, meta: Mapping[str, str] | None = None) -> None:
        # Before the store row is created: a store must not be created without its bucket.
        self._check_bucket()
        super()._open_store(create, meta)

    # -- S3 plumbing -------------------------------------------------------

    def _make_client(self):  # type: ignore[no-untyped-def]
        s3 = self.s3
        addressing = s3.addressing or ("path" if s3.endpoint else "auto")
        config = Config(
            retries={"mode": "standard", "max_attempts": 2},
            connect_timeout=5,
            read_timeout=30,
            max_pool_connections=_WORKERS * 2,
            s3={"addressing_style": addressing},
        )
        with _client_lock:
            session = boto3.session.Session()
            client = session.client(
                "s3",
                endpoint_url=s3.endpoint,
                region_name=s3.region,
                aws_access_key_id=s3.access_key_id,
                aws_secret_access_key=s3.secret_access_key,
                config=config,
            )
        # Scrub whatever the credential chain found, too, from any message we build.
        credentials = session.get_credentials()
        if credentials is not None:
            frozen = credentials.get_frozen_credentials()
            self._s3_secrets += [s for s in (frozen.access_key, frozen.secret_key, frozen.token) if s]
        return client

    def _scrub(self, text: str) -> str:
        for secret in self._s3_secrets:
            text = text.replace(secret, "***")
        return super()._scrub(text)

    def _key(self, oid: ObjectId) -> str:
        return f"{self.s3.prefix}{oid[:2]}/{oid[2:]}"

    def _where(self, oid: ObjectId) -> str:
        return f"s3://{self.s3.bucket}/{self._key(oid)}"

    def _s3_error(self, exc: Exception, doing: str, writing: bool = False) -> BackendError:
        """``exc`` as a one-line error naming the store; ``writing``: a refusal to write (read-only keys, a
        bucket policy) is :class:`ReadOnlyStore`, as a read-only PostgreSQL session's writes are."""
        if writing and isinstance(exc, boto_errors.ClientError) and _code(exc) == "AccessDenied":
            error = exc.response.get("Error", {})
            text = self._scrub(f"AccessDenied: {error.get('Message', '')}".rstrip(": "))
            return ReadOnlyStore(f"{self.description} is read-only here (these S3 credentials may not write to "
                                 f"bucket {self.s3.bucket!r}: {text}): cannot {doing}; nothing was committed")
        if isinstance(exc, boto_errors.NoCredentialsError | boto_errors.PartialCredentialsError):
            text = "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        elif isinstance(exc, boto_errors.ClientError):
            error = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            text = f"{error.get('Code', status)}: {error.get('Message', '')}".rstrip(": ")
            if status == 403:
                text += " (check the S3 credentials and the bucket policy)"
        else:
            text = str(exc)
        where = f" at {self.s3.endpoint}" if self.s3.endpoint else ""
        return BackendError(f"{self.description}: cannot {doing}{where}: {self._scrub(text)}")

    def _with_retries(self, action: Callable[[], T], doing: str, writing: bool = False) -> T:
        """``action()``, retried with exponential backoff on connection errors and busy servers; ``writing``:
        it writes to the bucket (see :meth:`_s3_error`)."""
        for attempt in range(_ATTEMPTS):
            try:
                return action()
            except boto_errors.ClientError as exc:
                transient = _code(exc) in _TRANSIENT_CODES or _status(exc) >= 500
                if not transient or attempt == _ATTEMPTS - 1:
                    raise self._s3_error(exc, doing, writing) from None
            except _TRANSIENT as exc:
                if attempt == _ATTEMPTS - 1:
                    raise self._s3_error(exc, doing) from None
            except boto_errors.BotoCoreError as exc:
                raise self._s3_error(exc, doing) from None
            time.sleep(min(2.0, 0.2 * 2**attempt) * random.uniform(0.5, 1.0))
        raise AssertionError("unreachable")

    def _parallel(self, work: Callable[[T], object], items: Sequence[T]) -> list:
        if len(items) <= 1:
            return [work(item) for item in items]
        with self._executor_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(_WORKERS, thread_name_prefix="snapstore-s3")
            executor = self._executor
        return list(executor.map(work, items))

    def _check_bucket(self) -> None:
        def exists() -> bool:
            try:
                self._client.head_bucket(Bucket=self.s3.bucket)
                return True
            except boto_errors.ClientError as exc:
                if _status(exc) == 404:
                    return False
                raise

        if not self._with_retries(exists, f"reach bucket {self.s3.bucket!r}"):
            raise StoreNotFound(f"{self.description}: bucket {self.s3.bucket!r} does not exist")

    def _objects_location(self) -> str:
        return self.s3.objects_location

    # -- one object in the bucket ------------------------------------------

    def _put(self, obj: StoredObject, replace: bool = False) -> None:
        """Store one object's body unless the bucket has it already (with ``replace``, over what it has)."""
        key = self._key(obj.id)
        body = b"%s %s %d\n" % (HEADER_MAGIC, obj.kind.encode("ascii"), obj.size) + obj.data

        def put() -> None:
            if replace:
                # A PUT replaces the key's body at once: a GET returns the old bytes or these, never nothing.
                self._client.put_object(Bucket=self.s3.bucket, Key=key, Body=body)
                return
            if self._conditional_put is not False:
                try:
                    self._client.put_object(Bucket=self.s3.bucket, Key=key, Body=body, IfNoneMatch="*")
                    self._conditional_put = True
                    return
                except boto_errors.ClientError as exc:
                    if _status(exc) == 412:
                        self._conditional_put = True
                        return  # already stored: objects are immutable
                    unsupported = _status(exc) == 501 or (
                        _status(exc) == 400 and _code(exc) in _UNSUPPORTED_CODES
                    )
                    if self._conditional_put or not unsupported:
                        raise
                    log.info("%s: the S3 server rejects If-None-Match; using HEAD + PUT", self.description)
            try:
                self._client.head_object(Bucket=self.s3.bucket, Key=key)
                return
            except boto_errors.ClientError as exc:
                if _status(exc) != 404:
                    raise
            self._client.put_object(Bucket=self.s3.bucket, Key=key, Body=body)
            if self._conditional_put is None:
                self._conditional_put = False

        self._with_retries(put, f"store object {obj.id} as {self._where(obj.id)}", writing=True)

    def _get(self, oid: ObjectId, kind: str, size: int) -> StoredObject:
        """One indexed object's body; its absence from the bucket is damage, named."""

        limit = _body_bound(kind, size)

        def get() -> tuple[bytes, int | None] | None:
            try:
                response = self._client.get_object(Bucket=self.s3.bucket, Key=self._key(oid))
            except boto_errors.ClientError as exc:
                if _status(exc) == 404:
                    return None
                raise
            with contextlib.closing(response["Body"]) as stream:
                return stream.read(limit + 1), response.get("ContentLength")

        got = self._with_retries(get, f"read object {oid} from {self._where(oid)}")
        if got is None:
            raise ObjectNotFound(
                oid, f"listed in the PostgreSQL index but missing from {self._where(oid)}; "
                "the store is damaged"
            )
        body, length = got
        if len(body) > limit:  # read no further: a body the index's size cannot explain is not downloaded
            raise CorruptObject(
                oid, f"{self._where(oid)} holds {length if length is not None else 'over ' + str(limit)} "
                f"bytes, more than the {limit} an object of {size} bytes can take"
            )
        header, newline, data = body.partition(b"\n")
        fields = header.split(b" ")
        if not newline or len(fields) != 3 or fields[0] != HEADER_MAGIC:
            raise CorruptObject(oid, f"{self._where(oid)} has no snapstore object header")
        if fields[1].decode("ascii", "replace") != kind or fields[2] != b"%d" % size:
            raise CorruptObject(
                oid, f"{self._where(oid)} says {fields[1]!r} of size {fields[2]!r}, "
                f"the index says {kind!r} of size {size}"
            )
        return StoredObject(oid, kind, size, data)

    # -- objects -----------------------------------------------------------

    def get_objects(self, ids: Iterable[ObjectId]) -> dict[ObjectId, StoredObject]:
        # The index decides what exists: bodies of failed writes in the bucket do not count.
        indexed = [(ObjectId(bytes(r).hex()), k, s) for r, k, s in self._index_rows(ids, "id, kind, size")]
        return {o.id: o for o in self._parallel(lambda row: self._get(*row), indexed)}

    def iter_objects(self, kind: str | None = None) -> Iterator[StoredObject]:
        page: list[tuple[ObjectId, str, int]] = []
        for raw, k, size in self._iter_index(kind, "id, kind, size"):
            page.append((ObjectId(bytes(raw).hex()), k, size))
            if len(page) == _WORKERS * 16:
                yield from self._parallel(lambda row: self._get(*row), page)
                page = []
        yield from self._parallel(lambda row: self._get(*row), page)

    def delete_objects(self, ids: Iterable[ObjectId], fence: Mapping[str, tuple[ObjectId, int]] | None = None) -> int:
        # Index first: a body without an index row is invisible garbage, while an
        # index row without a body would be damage. Both steps under the exclusive
        # sweep lock, so that no write is between its PUTs and its commit meanwhile.
        self._refuse_write()
        wanted = list(dict.fromkeys(ids))
        for _ in range(_CLAIM_ATTEMPTS):
            try:
                with self._sweep_lock(exclusive=True) as claim:
                    removed = self._delete_index(wanted, fence)
                    self._delete_bodies(removed)
                    self._check_held(claim, removed)
                return len(removed)
            except _ClaimLost:
                continue  # lost before the index transaction committed: nothing was deleted
        raise self._claims_lost("deleting objects")

    def replace_objects(self, objects: Sequence[StoredObject]) -> None:
        """PUT each body over the bucket's copy, then write the index rows over in one transaction,
        under the shared sweep lock like :meth:`write` (gc deletes nothing in between). A failure
        between the two leaves good bodies under the old rows: never a row without a body."""
        self._refuse_write()
        unique = list({o.id: o for o in objects}.values())
        if not unique:
            return
        for _ in range(_CLAIM_ATTEMPTS):
            try:
                with self._sweep_lock(exclusive=False):
                    self._parallel(lambda o: self._put(o, replace=True), unique)
                    self._replace_rows(unique, with_data=False)
                return
            except _ClaimLost:
                continue  # nothing committed; PUT again under a new claim
        raise self._claims_lost("replacing objects")

    def sweep_unindexed(self, before: datetime, dry_run: bool = False) -> tuple[int, int]:
        """Delete the bodies in the bucket that no index row names, last written before ``before``.

        They are invisible (reads go through the index): bodies of writes that
        lost their ref swap or died before committing, and of a gc that died
        between deleting index rows and bodies. Each batch is re-checked against
        the index under the exclusive sweep lock, when no write is in flight.
        Returns how many bodies (with ``dry_run``: would be) deleted and their bytes.
        """
        found: dict[ObjectId, int] = {}
        for page in self._list_bodies():
            old = {oid: size for oid, size, modified in page if modified <= before}
            if old:
                indexed = self.has_objects(old)
                found.update((oid, size) for oid, size in old.items() if oid not in indexed)
        if dry_run or not found:
            return len(found), sum(found.values())
        self._refuse_write()
        deleted = freed = 0
        candidates = sorted(found)
        for start in range(0, len(candidates), 1000):
            batch = candidates[start : start + 1000]
            for _ in range(_CLAIM_ATTEMPTS):
                try:
                    with self._sweep_lock(exclusive=True) as claim:
                        indexed = self._indexed_under_claim(batch)
                        doomed = [oid for oid in batch if oid not in indexed]
                        self._delete_bodies(doomed)
                        self._check_held(claim, doomed)
                    break
                except _ClaimLost:
                    continue
            else:
                raise self._claims_lost("deleting unindexed bodies")
            deleted += len(doomed)
            freed += sum(found[oid] for oid in doomed)
        return deleted, freed

    # -- the sweep lock (see the module docstring) ---------------------------

    @contextlib.contextmanager
    def _sweep_lock(self, exclusive: bool) -> Iterator[_Claim]:
        """Hold the sweep lock: shared for a write with objects, exclusive for gc's deletions."""
        with self._sweep_threads.hold(exclusive):
            claim = self._acquire(exclusive)
            self._claims.current = claim
            try:
                yield claim
            finally:
                self._claims.current = None
                self._release(claim)

    def _acquire(self, exclusive: bool) -> _Claim:
        if exclusive:
            # Blocks, queued: new shared requests wait behind it, so gc is not starved.
            with self._lock:
                self._read("SELECT 1 FROM pg_advisory_lock(%s)", (_SWEEP_LOCK,))
                return _Claim(self._live(), True)
        delay = 0.002
        while True:
            with self._lock:
                if self._read("SELECT pg_try_advisory_lock_shared(%s)", (_SWEEP_LOCK,))[0][0]:
                    return _Claim(self._live(), False)
            time.sleep(delay)  # gc holds it (or waits for it): at most one batch of deletions
            delay = min(delay * 2, 0.05)

    def _release(self, claim: _Claim) -> None:
        unlock = "pg_advisory_unlock" if claim.exclusive else "pg_advisory_unlock_shared"
        with self._lock:
            conn = claim.conn
            if conn is not self._conn or conn.broken or conn.closed:
                return  # that session has ended, and its locks with it
            try:
                conn.execute(f"SELECT {unlock}(%s)", (_SWEEP_LOCK,))
            except psycopg.Error:
                conn.close()  # never leave the lock held by a session we cannot talk to

    def _claim_alive(self, claim: _Claim) -> bool:
        """Whether the session that took ``claim`` still exists (so it has held the lock throughout)."""
        with self._lock:
            conn = claim.conn
            if conn is not self._conn or conn.broken or conn.closed:
                return False
            try:
                conn.execute("SELECT 1")
            except psycopg.Error:
                return False
            return True

    def _transaction(self, work: Callable[[psycopg.Cursor], object]) -> object:
        claim: _Claim | None = getattr(self._claims, "current", None)
        if claim is None:
            return super()._transaction(work)

        def claimed(cur: psycopg.Cursor) -> object:
            # A retry on a reopened connection would run without the lock the claim took.
            if cur.connection is not claim.conn:
                raise _ClaimLost()
            return work(cur)

        return super()._transaction(claimed)

    def _indexed_under_claim(self, ids: Sequence[ObjectId]) -> set[ObjectId]:
        """Which of ``ids`` have index rows, read in the session holding this thread's claim."""
        rows: list[tuple] = self._transaction(lambda cur: cur.execute(  # type: ignore[assignment]
            "SELECT id FROM snapstore_objects WHERE id = ANY(%b)", ([bytes.fromhex(i) for i in ids],)
        ).fetchall())
        return {ObjectId(bytes(r[0]).hex()) for r in rows}

    def _check_held(self, claim: _Claim, deleted: Sequence[ObjectId]) -> None:
        """After deleting bodies: if the lock may have lapsed meanwhile, find any write that relied on one."""
        if not deleted or self._claim_alive(claim):
            return
        # The session ended during the DELETEs, so writes may have run meanwhile. Wait for
        # every write that started since (the lock again, exclusive), then look.
        again = self._acquire(exclusive=True)
        try:
            lost = [oid for oid in sorted(self.has_objects(deleted)) if not self._body_exists(oid)]
        finally:
            self._release(again)
        if lost:
            raise BackendError(
                f"{self.description}: gc lost its PostgreSQL session while deleting bodies, and "
                f"{len(lost)} objects written meanwhile have no body ({', '.join(lost[:5])}"
                f"{', ...' if len(lost) > 5 else ''}); run `snap fsck`"
            )
        log.warning("%s: gc lost its PostgreSQL session while deleting bodies; no write relied on them",
                    self.description)

    def _claims_lost(self, doing: str) -> BackendError:
        return BackendError(
            f"{self.description}: the PostgreSQL connection kept dropping while {doing}; nothing was changed"
        )

    # -- bodies in the bucket ------------------------------------------------

    def _delete_bodies(self, ids: Sequence[ObjectId]) -> None:
        """DELETE bodies; a failure leaves them as unindexed bodies for a later sweep."""
        keys = [{"Key": self._key(oid)} for oid in ids]
        for start in range(0, len(keys), 1000):
            batch = keys[start : start + 1000]
            try:
                result = self._with_retries(
                    lambda batch=batch: self._client.delete_objects(  # type: ignore[misc]
                        Bucket=self.s3.bucket, Delete={"Objects": batch, "Quiet": True}
                    ),
                    "delete objects", writing=True,
                )
            except BackendError as exc:
                log.warning("%s; %d unindexed bodies left in the bucket", exc, len(batch))
                continue
            for error in result.get("Errors", []):
                log.warning("%s: cannot delete %s: %s", self.description, error.get("Key"), error.get("Code"))

    def _body_exists(self, oid: ObjectId) -> bool:
        def head() -> bool:
            try:
                self._client.head_object(Bucket=self.s3.bucket, Key=self._key(oid))
                return True
            except boto_errors.ClientError as exc:
                if _status(exc) == 404:
                    return False
                raise

        return self._with_retries(head, f"check {self._where(oid)}")

    def _list_bodies(self) -> Iterator[list[tuple[ObjectId, int, datetime]]]:
        """Pages of ``(id, size, last modified)`` of every body under the store's prefix."""
        prefix = self.s3.prefix
        token: str | None = None
        while True:
            args = {"Bucket": self.s3.bucket, "Prefix": prefix}
            if token:
                args["ContinuationToken"] = token
            response = self._with_retries(
                lambda args=args: self._client.list_objects_v2(**args),  # type: ignore[misc]
                f"list s3://{self.s3.bucket}/{prefix}",
            )
            page = []
            for item in response.get("Contents", []):
                tail = item["Key"][len(prefix):]
                if _KEY_TAIL.fullmatch(tail):  # anything else under the prefix is not ours
                    page.append((ObjectId(tail[:2] + tail[3:]), int(item["Size"]), item["LastModified"]))
            yield page
            if not response.get("IsTruncated"):
                return
            token = response["NextContinuationToken"]

    # -- the one write path ------------------------------------------------

    def write(
        self,
        objects: Sequence[StoredObject] = (),
        ref_updates: Sequence[RefUpdate] = (),
        meta: Mapping[str, str | None] | None = None,
        append: LogAppend | None = None,
    ) -> AppendedEntry | None:
        self._refuse_write()  # before any PUT: nothing reaches the bucket either
        unique = list({o.id: o for o in reversed(objects)}.values())
        if not unique:
            return self._commit(unique, ref_updates, meta, with_data=False, append=append)
        if ref_updates:
            self._precheck_refs(ref_updates)
        for _ in range(_CLAIM_ATTEMPTS):
            try:
                # The claim: from before the first PUT until the index rows are committed,
                # gc deletes no body (module docstring).
                with self._sweep_lock(exclusive=False):
                    self._parallel(self._put, unique)
                    return self._commit(unique, ref_updates, meta, with_data=False, append=append)
            except _ClaimLost:
                continue  # nothing committed; PUT again under a new claim
        raise self._claims_lost("writing objects")

    def _precheck_refs(self, ref_updates: Sequence[RefUpdate]) -> None:
        """Fail a write that will lose its ref swap before uploading anything for it.

        Only an optimisation: the swap in the transaction is what decides.
        """
        names = sorted({u.name for u in ref_updates})
        current = {
            name: ObjectId(bytes(target).hex())
            for name, target in self._read(
                "SELECT name, target FROM snapstore_refs WHERE name = ANY(%s::text[])", (names,)
            )
        }
        seen: set[str] = set()
        for update in ref_updates:
            if update.name not in seen and current.get(update.name) != update.old:
                raise RefConflict(update.name, update.old, current.get(update.name))
            seen.add(update.name)

    def close(self) -> None:
        with self._executor_lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)
        self._client.close()
        super().close()


def _status(exc: boto_errors.ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _code(exc: boto_errors.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def open_s3(location: str, create: bool, meta: Mapping[str, str] | None = None) -> S3Backend:
    """The factory behind ``s3+postgresql://`` locations."""
    pg_url, settings = split_location(location)
    return S3Backend(pg_url, settings, create, description=safe_location(location), meta=meta)


def open_config(path: str | Path, create: bool = False, meta: Mapping[str, str] | None = None) -> Backend:
    """The shared store a TOML file describes (see the module docstring).

    A ``[snapstore.s3]`` table puts the objects in S3; without one they stay in
    PostgreSQL. Messages name the file, never the secrets in it.
    """
    path = Path(path)
    try:
        config = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StoreNotFound(f"no store config file {path}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InvalidInput(f"cannot read store config {path}: {exc}") from None
    section = config.get("snapstore")
    pg = section.get("postgresql") if isinstance(section, dict) else None
    if not isinstance(section, dict) or not isinstance(pg, dict) or not isinstance(pg.get("url"), str):
        raise InvalidInput(f"{path}: needs a [snapstore.postgresql] table with a url")
    pg_url = pg["url"]
    s3 = section.get("s3")
    if s3 is not None and not isinstance(s3, dict):
        raise InvalidInput(f"{path}: [snapstore.s3] must be a table")
    if s3 is None:
        return PostgresBackend(pg_url, create, description=f"{path} ({safe_location(pg_url)})", meta=meta)
    unknown = set(s3) - {*_URL_SETTINGS, "access_key_id", "secret_access_key"}
    if unknown:
        raise InvalidInput(f"{path}: unknown [snapstore.s3] settings {', '.join(sorted(unknown))}")
    try:
        settings = S3Settings(**s3)
    except TypeError as exc:
        raise InvalidInput(f"{path}: bad [snapstore.s3] table: {exc}") from None
    return S3Backend(pg_url, settings, create, meta=meta,
                     description=f"{path} ({safe_location(pg_url)} + {settings.objects_location})")


for _scheme in SCHEMES:
    register_url_backend(_scheme, open_s3)

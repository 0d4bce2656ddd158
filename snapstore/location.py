"""Where a store lives: a folder for the embedded store, a URL for shared ones.

``snap --store LOCATION``, else ``$SNAPSTORE``, else ``./.snapstore``.
A location is either a path to a folder holding ``store.sqlite`` (the
embedded default), ``memory:`` (a throwaway in-memory store), a URL naming
a shared backend (``postgresql://...``, ``s3+postgresql://...``) or a
``.toml`` config file naming both (see docs/scaling.md).
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path

from .backends.base import Backend
from .errors import InvalidInput, StoreExists, StoreNotFound
from .ozolith.files import fsync_dir, make_dirs

DEFAULT_LOCATION = ".snapstore"
ENV_VAR = "SNAPSTORE"

# URL scheme -> factory(location, create) -> Backend. Shared backends register here.
_URL_BACKENDS: dict[str, Callable[..., Backend]] = {}


def register_url_backend(scheme: str, factory: Callable[..., Backend]) -> None:
    """Make ``scheme://...`` locations open with ``factory(location, create[, meta])``.

    A factory that takes a third argument gets, when a store is created, the
    meta keys to record in the transaction that creates it (see :func:`open_backend`).
    """
    _URL_BACKENDS[scheme] = factory


def _takes_meta(factory: Callable[..., Backend]) -> bool:
    try:
        parameters = list(inspect.signature(factory).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 3 or any(p.kind is p.VAR_POSITIONAL for p in parameters)


def default_location() -> str:
    """``$SNAPSTORE`` if set, else ``./.snapstore``."""
    return os.environ.get(ENV_VAR) or DEFAULT_LOCATION


def redact(location: str) -> str:
    """A location fit to print: any password in a URL (user part or query) is replaced by ``***``."""
    if "://" not in location:
        return location
    location = re.sub(r"(?i)([?&](?:password|secret|aws_secret_access_key|sslpassword)=)[^&#]*", r"\1***", location)
    scheme, rest = location.split("://", 1)
    netloc, sep, tail = rest.partition("/")
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{host}" if ":" in userinfo else f"{user}@{host}"
    return f"{scheme}://{netloc}{sep}{tail}"


def is_url(location: str) -> bool:
    return "://" in location


def _load_plugins() -> list[str]:
    """Import the shared backends (they need optional drivers); returns why any could not load."""
    problems = []
    for module, extra in (("snapstore.backends.postgres", "postgres"), ("snapstore.backends.s3", "s3")):
        try:
            __import__(module)
        except ImportError as exc:
            problems.append(f"{exc} (pip install 'snapstore[{extra}]')")
    return problems


def open_backend(location: str, create: bool = False, meta: Mapping[str, str] | None = None) -> Backend:
    """The backend at ``location``; with ``create``, a new empty one there.

    ``meta``: keys the new store records in the very transaction that
    creates it, so that no process ever sees it without them. A registered
    URL factory gets it as a third argument if it takes one (otherwise
    :meth:`Repository.init` writes what is missing afterwards).
    """
    if location == "memory:":
        from .backends.memory import MemoryBackend

        return MemoryBackend()
    if is_url(location):
        scheme = location.split("://", 1)[0]
        problems = _load_plugins() if scheme not in _URL_BACKENDS else []
        factory = _URL_BACKENDS.get(scheme)
        if factory is None:
            why = f": {'; '.join(problems)}" if problems else ""
            raise InvalidInput(f"unknown store URL scheme {scheme!r} in {redact(location)}{why}")
        if meta is not None and _takes_meta(factory):
            return factory(location, create, meta)  # type: ignore[call-arg]
        return factory(location, create)
    if location.endswith(".toml") and Path(location).is_file():
        problems = _load_plugins()
        try:
            from .backends.s3 import open_config
        except ImportError:
            raise InvalidInput(f"cannot open {location}: {'; '.join(problems)}") from None
        return open_config(location, create, meta)

    from .backends.sqlite import DB_NAME, SqliteBackend

    folder = Path(location)
    db = folder / DB_NAME
    if create:
        if folder.exists() and not folder.is_dir():
            raise InvalidInput(f"{folder} exists and is not a folder")
        if db.exists() and not db.is_file():
            raise StoreExists(f"a store already exists at {folder}")
        try:
            if not make_dirs(folder):
                # make_dirs fsyncs the parent of the folders it makes, not of one already there: an
                # init killed between its mkdir and that fsync (or a folder made by hand) left a name
                # a power loss can take, with the whole store under it. One fsync per store made.
                fsync_dir(folder.parent)
        except OSError as exc:
            raise InvalidInput(f"cannot create {folder}: {exc.strerror}") from None
        # An existing store.sqlite is the backend's to judge: a store (StoreExists), or
        # the empty file of an interrupted init, which it takes over.
        return SqliteBackend(db, create=True, meta=meta)
    if not folder.exists():
        raise StoreNotFound(f"no store at {folder} (create one with `snap init {folder}`)")
    if not folder.is_dir() or not db.is_file():
        raise StoreNotFound(f"{folder} is not a snapstore store (no {DB_NAME}; see `snap init`)")
    return SqliteBackend(db)

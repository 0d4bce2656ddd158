"""Shared fixtures: every backend behind one ``store`` fixture, Hypothesis profiles."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from snapstore.backends.base import Backend
from snapstore.backends.memory import MemoryBackend
from snapstore.repository import Repository

settings.register_profile(
    "ci", derandomize=True, max_examples=60, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "dev", max_examples=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile("ci" if os.environ.get("CI") == "true" else os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@dataclass
class StoreFactory:
    """One store under test: reopen its backend, or open it as a repository."""

    name: str
    # Location string for the CLI and Repository.open; None for the memory backend.
    location: str | None
    _open: Callable[[bool], Backend]
    _shared: Backend | None = None
    # Overwrites one stored object's bytes behind the store's back, if the backend allows.
    corrupt: Callable[[Backend, str], None] | None = None

    def backend(self, create: bool = False) -> Backend:
        if self._shared is not None:
            return self._shared
        return self._open(create)

    def init(self) -> Repository:
        backend = self.backend(create=True)
        if backend.get_meta("format") is None:
            from snapstore.repository import FORMAT_KEY, STORE_FORMAT

            backend.write(meta={FORMAT_KEY: str(STORE_FORMAT)})
        return Repository(backend, self.location or "memory:")

    def open(self) -> Repository:
        return Repository(self.backend(), self.location or "memory:")


def flip_byte(data: bytes, position: int | None = None) -> bytes:
    """``data`` with one byte changed (by default the middle one)."""
    i = len(data) // 2 if position is None else position
    return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]


def _memory(tmp_path) -> Iterator[StoreFactory]:
    shared = MemoryBackend()

    def corrupt(backend: Backend, oid: str) -> None:
        stored = backend._objects[oid]  # type: ignore[attr-defined]
        backend._objects[oid] = dataclasses.replace(stored, data=flip_byte(stored.data))  # type: ignore[attr-defined]

    yield StoreFactory("memory", None, lambda create: shared, shared, corrupt)


def _sqlite(tmp_path) -> Iterator[StoreFactory]:
    from snapstore.location import open_backend

    location = str(tmp_path / "store")

    def open_sqlite(create: bool) -> Backend:
        exists = (tmp_path / "store" / "store.sqlite").exists()
        return open_backend(location, create=create and not exists)

    def corrupt(backend: Backend, oid: str) -> None:
        import sqlite3

        db = sqlite3.connect(tmp_path / "store" / "store.sqlite")
        (data,) = db.execute("SELECT data FROM objects WHERE id = ?", (bytes.fromhex(oid),)).fetchone()
        db.execute("UPDATE objects SET data = ? WHERE id = ?", (flip_byte(data), bytes.fromhex(oid)))
        db.commit()
        db.close()

    yield StoreFactory("sqlite", location, open_sqlite, None, corrupt)


# Backend name -> generator of factories (setup, yield, teardown). Shared
# backends add themselves in tests/shared_backends.py when present.
BACKEND_FACTORIES: dict[str, Callable] = {"memory": _memory, "sqlite": _sqlite}
try:
    from tests.shared_backends import SHARED_FACTORIES  # type: ignore[import-not-found]

    BACKEND_FACTORIES.update(SHARED_FACTORIES)
except ImportError:
    pass

DURABLE_BACKENDS = [n for n in BACKEND_FACTORIES if n != "memory"]


@pytest.fixture(params=list(BACKEND_FACTORIES))
def store(request, tmp_path) -> Iterator[StoreFactory]:
    """A fresh empty store on every backend."""
    yield from BACKEND_FACTORIES[request.param](tmp_path)


@pytest.fixture(params=DURABLE_BACKENDS)
def durable_store(request, tmp_path) -> Iterator[StoreFactory]:
    """A fresh empty store on every backend that has a location and survives reopening."""
    yield from BACKEND_FACTORIES[request.param](tmp_path)


@pytest.fixture
def fsynced(monkeypatch) -> list[Path]:
    """The path of every file and folder ``os.fsync`` syncs from now on, in order (the real fsync runs)."""
    synced: list[Path] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


@pytest.fixture
def repo(store) -> Iterator[Repository]:
    repository = store.init()
    yield repository
    repository.close()

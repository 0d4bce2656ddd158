"""Fixtures shared by the tamper tests: a copy of `snap demo`'s store per test, and SQL on it.

Test modules import what they use: ``from .demo_store import demo_template, snap, sql``
(pytest finds the imported fixtures in the module).
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from snapstore.cli.main import cli


@pytest.fixture(scope="module")
def demo_template(tmp_path_factory) -> Path:
    """A store holding `snap demo`'s conversation (with its audit log: 12 entries), made once a module."""
    folder = tmp_path_factory.mktemp("template") / "store"
    result = CliRunner().invoke(cli, ["--store", str(folder), "demo"])
    assert result.exit_code == 0, result.output
    return folder


@pytest.fixture
def store(demo_template, tmp_path, monkeypatch) -> Path:
    """A fresh copy of the demo store, in a working folder with no snapstore environment variables."""
    monkeypatch.chdir(tmp_path)
    for name in ("SNAPSTORE", "SNAPSTORE_DEBUG", "SNAPSTORE_OZOLITH"):
        monkeypatch.delenv(name, raising=False)
    folder = tmp_path / "store"
    shutil.copytree(demo_template, folder)
    return folder


@pytest.fixture
def snap(store):
    """``snap --store <a fresh copy of the demo store> ARGS`` through CliRunner."""
    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(cli, ["--store", str(store), *args])

    run.location = str(store)  # type: ignore[attr-defined]
    run.db = store / "store.sqlite"  # type: ignore[attr-defined]
    run.runner = runner  # type: ignore[attr-defined]
    return run


def sql(db: Path, statement: str, *args) -> None:
    """One statement on a store's database file, committed."""
    con = sqlite3.connect(db)
    con.execute(statement, args)
    con.commit()
    con.close()

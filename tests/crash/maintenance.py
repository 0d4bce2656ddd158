"""Run one maintenance command on a store and SIGKILL it at a chosen durable step.

``python -m tests.crash.maintenance STORE OPERATION K WHEN [ARG]`` runs
OPERATION (see :data:`OPERATIONS`) through the CLI, in this process, on the
store at STORE. On the embedded store a *durable step* is one SQLite write that can
commit: the ``COMMIT`` of a ``BEGIN IMMEDIATE`` transaction (every write
transaction of :class:`~snapstore.backends.sqlite.SqliteBackend`), or a
statement that writes on its own outside one (``PRAGMA
incremental_vacuum`` after packing; ``snap compact``'s checkpoints and
``VACUUM``). Every connection the process opens is made with a
:class:`sqlite3.Connection` subclass that counts them, so no write of the
command can slip past (a new write path is counted without changing this
file). On PostgreSQL it is one transaction of the backend
(:func:`install_postgres`).

With K = 0 the command runs to its end and the last line printed is
``STEPS n`` followed by one ``STEP i what`` line per step. With K >= 1 the
process SIGKILLs itself right ``after`` step K committed, or right
``before`` it (the transaction's statements ran, its COMMIT did not): the
two crash points of a transaction. A run that ends before step K prints
``NOT REACHED`` and exits 0, which the test treats as a failure (the step
count changed between runs).

The constants that size a command's transactions are made small
(:func:`_small_batches`) so a small store exercises every kind of step more
than once: several gc delete batches, several pack rounds, packs of log
lines and reflog rows, sparse packs packed again. The code paths are the
ones a large store takes.

Used by tests/test_maintenance_crash.py.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import sys

# What each operation runs: CLI arguments after ``--store STORE`` (several lists: one command after
# another in this process, as a maintenance script would). ARG, where given, is the bundle to import.
OPERATIONS: dict[str, list[list[str]]] = {
    "prune": [["prune", c, "--keep-last", "3"] for c in ("c1", "c2", "c3")],
    "gc": [["gc", "--grace", "0"]],
    "pack": [["pack"]],
    "compact": [["compact"]],
    "import": [["import", "{arg}"]],
}

_STEPS: list[str] = []
_TARGET = 0
_WHEN = "after"


# Transactions of a few rows, so a small store takes every kind of step several times:
# (module, name) -> value. The test applies them too, to the runs it makes in its own process.
SMALL_BATCHES = {
    ("snapstore.gc", "SWEEP_BATCH"): 20,
    ("snapstore.packing", "BATCH"): 32,
    ("snapstore.packing", "MAX_MEMBERS"): 16,
    ("snapstore.packing", "SMALL_PACK"): 4,
    ("snapstore.packing", "LOG_PACK_LINES"): 16,
}


def _small_batches() -> None:
    import importlib

    for (module, name), value in SMALL_BATCHES.items():
        setattr(importlib.import_module(module), name, value)


def _step(what: str, run):
    """Count one durable step; die before or after it as asked."""
    n = len(_STEPS) + 1
    if n == _TARGET and _WHEN == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    result = run()
    _STEPS.append(what)
    if n == _TARGET and _WHEN == "after":
        os.kill(os.getpid(), signal.SIGKILL)
    return result


_WRITES_ALONE = ("PRAGMA INCREMENTAL_VACUUM", "PRAGMA WAL_CHECKPOINT", "VACUUM")


class CountingConnection(sqlite3.Connection):
    """A connection that counts its durable steps (see the module docstring)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.writing = False
        self.first_statement = ""

    def execute(self, sql, *args):  # type: ignore[override]
        text = " ".join(str(sql).split()).upper()
        if text.startswith("BEGIN IMMEDIATE"):
            self.writing, self.first_statement = True, ""
            return super().execute(sql, *args)
        if self.writing and not self.first_statement and not text.startswith(("SELECT", "CREATE", "COMMIT")):
            self.first_statement = text[:60]
        if text == "COMMIT" and self.writing:
            self.writing = False
            return _step(f"commit ({self.first_statement or 'no change'})", lambda: super(CountingConnection, self)
                         .execute(sql, *args))
        if text.startswith(_WRITES_ALONE) and not self.in_transaction:
            return _step(text[:40].lower(), lambda: super(CountingConnection, self).execute(sql, *args))
        return super().execute(sql, *args)

    def executemany(self, sql, *args):  # type: ignore[override]
        if self.writing and not self.first_statement:
            self.first_statement = " ".join(str(sql).split()).upper()[:60]
        return super().executemany(sql, *args)

    def executescript(self, script):  # type: ignore[override]
        text = " ".join(str(script).split()).upper()
        if text.startswith(_WRITES_ALONE) and not self.in_transaction:
            return _step(text[:40].lower(), lambda: super(CountingConnection, self).executescript(script))
        return super().executescript(script)


def install() -> None:
    """Make every connection this process opens a :class:`CountingConnection`."""
    plain = sqlite3.connect

    def connect(*args, **kwargs):
        kwargs.setdefault("factory", CountingConnection)
        return plain(*args, **kwargs)

    sqlite3.connect = connect  # type: ignore[assignment]


def install_postgres() -> None:
    """Count each transaction of the PostgreSQL backend (:meth:`PostgresBackend._transaction`, which
    every write of it goes through): ``before`` dies once its statements ran and before its COMMIT
    is sent (the server rolls it back when the connection drops), ``after`` once it committed."""
    from snapstore.backends.postgres import PostgresBackend

    plain = PostgresBackend._transaction

    def transaction(self, work):
        n = len(_STEPS) + 1

        def run(cur):
            result = work(cur)
            if n == _TARGET and _WHEN == "before":
                os.kill(os.getpid(), signal.SIGKILL)
            return result

        result = plain(self, run)
        _STEPS.append(f"transaction ({work.__qualname__.split('.')[-3]})")
        if n == _TARGET and _WHEN == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    PostgresBackend._transaction = transaction  # type: ignore[method-assign]


def main(argv: list[str]) -> int:
    global _TARGET, _WHEN
    store, operation, target, when = argv[:4]
    arg = argv[4] if len(argv) > 4 else ""
    _TARGET, _WHEN = int(target), when
    if store.startswith("postgresql"):
        install_postgres()
    else:
        install()
    _small_batches()
    from snapstore.cli.main import cli

    for command in OPERATIONS[operation]:
        args = ["--store", store] + [a.format(arg=arg) for a in command]
        try:
            cli.main(args, standalone_mode=False)
        except SystemExit as exc:  # a command that reports a problem (exit 1)
            if exc.code:
                print(f"FAILED {command}: exit {exc.code}", flush=True)
                return 1
    if _TARGET:
        print("NOT REACHED", flush=True)
    print(f"STEPS {len(_STEPS)}")
    for i, what in enumerate(_STEPS, 1):
        print(f"STEP {i} {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

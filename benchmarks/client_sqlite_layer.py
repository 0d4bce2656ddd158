"""The client's own persistence layer, rebuilt from reference §2 for benchmarking.

One SQLite row per context, written by ``INSERT OR REPLACE`` of every field
as JSON text; WAL mode; no history: a save rewrites the whole row, including
the whole ``local_memory``, and the old row is gone. ``scratchpad`` is not
persisted. Nothing ties rows to the audit log.

Durability: the reference names only WAL mode, so the layer sets nothing
else and gets SQLite's default ``synchronous`` for WAL databases. That is
build-dependent: Python 3.11's bundled SQLite 3.40 is compiled with
``SQLITE_DEFAULT_WAL_SYNCHRONOUS=2`` (FULL: one fsync of the WAL per
commit), not NORMAL. ``synchronous="NORMAL"`` may be passed to measure the
weaker setting (no fsync per commit; the last commits can be lost on power
failure). ``synchronous=None`` keeps the build default.

This is the same interface as :mod:`snapstore.adapters.sidebar_persistence`
(class, methods, module functions, module global), so the benchmark's
client-style orchestrator runs unchanged on either. It keeps one connection
open for the life of the instance, which is the cheapest way the client
could use SQLite.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import sqlite3
import threading
from datetime import datetime
from typing import Any

_persistence_instance: SidebarPersistence | None = None

DEFAULT_DB = "data/sidebar_state.db"

# Fields stored as JSON text; the rest as plain columns.
JSON_FIELDS = (
    "child_sidebar_ids", "participants", "inherited_memory", "local_memory", "data_refs",
    "cross_sidebar_refs", "yarn_board_layout", "relevance_scores", "active_focus", "tags",
    "display_names",
)
TEXT_FIELDS = (
    "uuid", "parent_context_id", "forked_from", "coordinator_agent", "task_description",
    "success_criteria", "failure_reason",
)
ENUM_FIELDS = ("status", "priority")
TIME_FIELDS = ("created_at", "last_activity")
COLUMNS = ("sidebar_id", *TEXT_FIELDS, *ENUM_FIELDS, *TIME_FIELDS, *JSON_FIELDS)

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS sidebar_contexts (
    sidebar_id TEXT PRIMARY KEY,
    {", ".join(f"{c} TEXT" for c in COLUMNS[1:])},
    updated_at TEXT
);
CREATE INDEX IF NOT EXISTS idx_contexts_status ON sidebar_contexts (status);
CREATE INDEX IF NOT EXISTS idx_contexts_parent ON sidebar_contexts (parent_context_id);
CREATE TABLE IF NOT EXISTS session_state (key TEXT PRIMARY KEY, value TEXT, updated_at TEXT);
CREATE TABLE IF NOT EXISTS conversation_roots (
    conversation_id TEXT PRIMARY KEY,
    root_context_id TEXT NOT NULL,
    historical INTEGER NOT NULL DEFAULT 0,
    created_at TEXT
);
CREATE TABLE IF NOT EXISTS deleted_contexts (
    sidebar_id TEXT, deleted_at TEXT, reason TEXT, deleted_by TEXT, context_json TEXT
);
"""


def get_persistence(db_path: str | None = None) -> SidebarPersistence:
    """The shared instance, created on first call."""
    global _persistence_instance
    if _persistence_instance is None:
        _persistence_instance = SidebarPersistence(db_path)
    return _persistence_instance


def reset_persistence() -> None:
    global _persistence_instance
    if _persistence_instance is not None:
        _persistence_instance.close()
    _persistence_instance = None


class SidebarPersistence:
    """Contexts as rows of one SQLite table, rewritten whole on every save."""

    def __init__(self, db_path: str | None = None, *, context_class: type | None = None,
                 synchronous: str | None = None) -> None:
        self.db_path = str(db_path or DEFAULT_DB)
        os.makedirs(os.path.dirname(os.path.abspath(self.db_path)), exist_ok=True)
        self.context_class = context_class
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        if synchronous is not None:
            self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.executescript(_SCHEMA)
        self._insert = (f"INSERT OR REPLACE INTO sidebar_contexts ({', '.join(COLUMNS)}, updated_at) "
                        f"VALUES ({', '.join('?' * (len(COLUMNS) + 1))})")

    @property
    def synchronous(self) -> int:
        return self._db.execute("PRAGMA synchronous").fetchone()[0]

    # -- rows <-> contexts -------------------------------------------------

    def _row(self, context: Any) -> tuple:
        get = context.get if isinstance(context, dict) else lambda name: getattr(context, name)
        values: list[Any] = [get("sidebar_id")]
        values += [get(name) for name in TEXT_FIELDS]
        for name in ENUM_FIELDS:
            value = get(name)
            values.append(value.value if isinstance(value, enum.Enum) else value)
        for name in TIME_FIELDS:
            value = get(name)
            values.append(value.isoformat() if isinstance(value, datetime) else value)
        values += [json.dumps(get(name), default=str) for name in JSON_FIELDS]
        values.append(datetime.now().isoformat())
        return tuple(values)

    def _context(self, row: tuple) -> Any:
        data: dict[str, Any] = dict(zip(COLUMNS, row))
        for name in JSON_FIELDS:
            data[name] = json.loads(data[name]) if data[name] is not None else None
        cls = self.context_class
        if cls is None:
            return data
        hints = {f.name: f for f in dataclasses.fields(cls)}
        for name in ENUM_FIELDS:
            default = hints[name].default
            if isinstance(default, enum.Enum) and data[name] is not None:
                data[name] = type(default)(data[name])
        for name in TIME_FIELDS:
            if data[name] is not None:
                data[name] = datetime.fromisoformat(data[name])
        return cls(**{k: v for k, v in data.items() if k in hints})

    def _write(self, sql: str, params: tuple) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.execute(sql, params)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    # -- the interface ---------------------------------------------------------

    def save_context(self, context: Any) -> bool:
        """Upsert the whole context: every field, the whole local_memory."""
        self._write(self._insert, self._row(context))
        return True

    def load_context(self, sidebar_id: str) -> Any:
        with self._lock:
            row = self._db.execute(f"SELECT {', '.join(COLUMNS)} FROM sidebar_contexts WHERE sidebar_id = ?",
                                   (sidebar_id,)).fetchone()
        return None if row is None else self._context(row)

    def load_all_contexts(self, include_archived: bool = False) -> list[Any]:
        where = "" if include_archived else "WHERE status != 'archived'"
        with self._lock:
            rows = self._db.execute(
                f"SELECT {', '.join(COLUMNS)} FROM sidebar_contexts {where} ORDER BY last_activity DESC"
            ).fetchall()
        return [self._context(r) for r in rows]

    def delete_context(self, sidebar_id: str, reason: str = "manual", deleted_by: str = "system") -> bool:
        with self._lock:
            row = self._db.execute(f"SELECT {', '.join(COLUMNS)} FROM sidebar_contexts WHERE sidebar_id = ?",
                                   (sidebar_id,)).fetchone()
            if row is None:
                return False
            self._db.execute("BEGIN")
            self._db.execute("INSERT INTO deleted_contexts VALUES (?, ?, ?, ?, ?)",
                             (sidebar_id, datetime.now().isoformat(), reason, deleted_by,
                              json.dumps(dict(zip(COLUMNS, row)))))
            self._db.execute("DELETE FROM sidebar_contexts WHERE sidebar_id = ?", (sidebar_id,))
            self._db.execute("COMMIT")
        return True

    def context_exists(self, sidebar_id: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM sidebar_contexts WHERE sidebar_id = ?",
                                    (sidebar_id,)).fetchone() is not None

    def get_session_state(self, key: str, default: Any = None) -> Any:
        with self._lock:
            row = self._db.execute("SELECT value FROM session_state WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def set_session_state(self, key: str, value: Any) -> bool:
        self._write("INSERT OR REPLACE INTO session_state VALUES (?, ?, ?)",
                    (key, json.dumps(value, default=str), datetime.now().isoformat()))
        return True

    def register_conversation_root(self, conversation_id: str, root_context_id: str) -> bool:
        self._write("INSERT OR REPLACE INTO conversation_roots (conversation_id, root_context_id, created_at) "
                    "VALUES (?, ?, ?)", (conversation_id, root_context_id, datetime.now().isoformat()))
        return True

    def get_conversation_root(self, conversation_id: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT root_context_id FROM conversation_roots WHERE conversation_id = ?",
                                   (conversation_id,)).fetchone()
        return None if row is None else row[0]

    def mark_conversation_historical(self, conversation_id: str) -> bool:
        self._write("UPDATE conversation_roots SET historical = 1 WHERE conversation_id = ?", (conversation_id,))
        return True

    def get_statistics(self) -> dict[str, Any]:
        with self._lock:
            by_status = dict(self._db.execute(
                "SELECT status, count(*) FROM sidebar_contexts GROUP BY status").fetchall())
            size = self._db.execute(
                "SELECT coalesce(sum(length(local_memory) + length(inherited_memory)), 0) FROM sidebar_contexts"
            ).fetchone()[0]
        return {"total_contexts": sum(by_status.values()), "by_status": by_status, "memory_bytes": size,
                "db_path": self.db_path}

    def close(self) -> None:
        with self._lock:
            self._db.close()

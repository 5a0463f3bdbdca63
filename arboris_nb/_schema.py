"""The run store's file layout: numbered migrations, and the version row built from
:class:`~arboris_nb.results.Version`'s fields.

The ``versions`` table has one column per generated field of ``Version`` (the editor's
fields are not generated: an edit is ``edited_content``), named as the field — except
``index``, an SQL keyword, stored as ``idx`` — plus the store's own ``run_id``,
``session``, ``written_at`` and ``edited_content``. A field added to ``Version`` gets its
column when a store is next opened (``ALTER TABLE … ADD COLUMN``; old rows read NULL,
which loads as the field's default), so adding a field touches one definition. Renaming
or removing a field, or any other change, is a numbered migration below.
"""

from __future__ import annotations

import json
import sqlite3
import types
import typing
from dataclasses import dataclass, fields
from typing import Any

from .results import EDITOR_FIELDS, Version

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "VERSION_COLUMNS",
    "VersionColumn",
    "missing_columns",
    "version_from_row",
    "version_row",
]

SCHEMA_VERSION = 6

MIGRATIONS: list[str] = [
    # 0 → 1
    """
    CREATE TABLE IF NOT EXISTS runs (
        run_id TEXT PRIMARY KEY,
        project TEXT,
        chapter INTEGER,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        mode TEXT NOT NULL,
        version_count INTEGER NOT NULL,
        indices TEXT NOT NULL,
        max_parallel_requests TEXT NOT NULL,
        model TEXT,
        messages TEXT NOT NULL,
        temperature REAL,
        max_tokens INTEGER,
        elapsed_s REAL,
        sessions INTEGER NOT NULL DEFAULT 1,
        status TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS runs_by_project ON runs(project, created_at);
    CREATE INDEX IF NOT EXISTS runs_by_created ON runs(created_at);
    CREATE TABLE IF NOT EXISTS versions (
        run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        status TEXT NOT NULL,
        content TEXT,
        title TEXT,
        summary TEXT,
        error TEXT,
        error_type TEXT,
        queued_at REAL,
        started_at REAL,
        first_token_at REAL,
        finished_at REAL,
        output_tokens INTEGER NOT NULL DEFAULT 0,
        tokens_from_usage INTEGER NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 0,
        attempt_log TEXT NOT NULL DEFAULT '[]',
        key_id TEXT,
        cached INTEGER NOT NULL DEFAULT 0,
        session INTEGER NOT NULL DEFAULT 1,
        written_at REAL NOT NULL,
        PRIMARY KEY (run_id, idx)
    );
    CREATE TABLE IF NOT EXISTS cache (
        key TEXT PRIMARY KEY,
        reply TEXT NOT NULL,
        model TEXT,
        created_at REAL NOT NULL
    );
    """,
    # 1 → 2: editor work (edits, retries) is stored without touching generated text
    """
    ALTER TABLE versions ADD COLUMN edited_content TEXT;
    ALTER TABLE runs ADD COLUMN parent_run_id TEXT;
    ALTER TABLE runs ADD COLUMN parent_index INTEGER;
    CREATE INDEX IF NOT EXISTS runs_by_parent ON runs(parent_run_id, created_at);
    """,
    # 2 → 3: "cached" is a field of its own, no longer the key id "cache"; the book tables
    # (arboris_nb.queue.records) join the migrations — before, BookRecords created them.
    """
    UPDATE versions SET cached = 1, key_id = NULL WHERE key_id = 'cache';
    CREATE TABLE IF NOT EXISTS book_jobs (
        job_id TEXT PRIMARY KEY,
        project TEXT,
        created_at REAL NOT NULL,
        spec TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS book_units (
        job_id TEXT NOT NULL,
        chapter INTEGER NOT NULL,
        version INTEGER NOT NULL,
        state TEXT NOT NULL,
        worker TEXT,
        requests INTEGER NOT NULL DEFAULT 0,
        updated_at REAL NOT NULL,
        PRIMARY KEY (job_id, chapter, version)
    );
    """,
    # 3 → 4: keep the first N of N+k — how many versions the run keeps (NULL: all of
    # them, as before) and how many it started beyond those.
    """
    ALTER TABLE runs ADD COLUMN keep INTEGER;
    ALTER TABLE runs ADD COLUMN extra_versions INTEGER NOT NULL DEFAULT 0;
    """,
    # 4 → 5: the editor's decisions (select, edit, notes, evaluate), append-only, in
    # order (seq) per run; version_run_id names the retry run holding the version (NULL:
    # the run itself). Scene notes are the versions.notes column (a Version field).
    """
    CREATE TABLE IF NOT EXISTS decisions (
        run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        at REAL NOT NULL,
        kind TEXT NOT NULL,
        idx INTEGER,
        version_run_id TEXT,
        data TEXT NOT NULL DEFAULT '{}',
        PRIMARY KEY (run_id, seq)
    );
    """,
    # 5 → 6: Version.attempts is the list of Attempt (it was ``attempt_log``); the count
    # it was is derived (Version.attempt_count), so its column goes.
    """
    ALTER TABLE versions DROP COLUMN attempts;
    ALTER TABLE versions RENAME COLUMN attempt_log TO attempts;
    """,
]
assert len(MIGRATIONS) == SCHEMA_VERSION

_COLUMN_NAMES = {"index": "idx"}  # fields stored under another name (SQL keywords)
_SQL_TYPES = {bool: "INTEGER", int: "INTEGER", float: "REAL", str: "TEXT"}


@dataclass(frozen=True)
class VersionColumn:
    """One ``versions`` column and the Version field it holds."""

    field: str
    name: str
    kind: type  # bool, int, float, str; anything else is stored as JSON text

    @property
    def sql_type(self) -> str:
        return _SQL_TYPES.get(self.kind, "TEXT")

    def encode(self, value: Any) -> Any:
        return value if self.kind in _SQL_TYPES or value is None else json.dumps(value)

    def decode(self, value: Any) -> Any:
        if value is None or self.kind in (int, float, str):
            return value
        return bool(value) if self.kind is bool else json.loads(value)


def _kind(hint: Any) -> type:
    """The stored kind of a field's type: ``float | None`` → float, ``list[X]`` → list,
    a ``Literal`` of strings → str."""
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if origin in (typing.Union, types.UnionType):
        return _kind(args[0])
    if origin is typing.Literal:
        return type(args[0])
    if isinstance(origin, type):  # list[Attempt], dict[str, int]
        return origin
    return hint if isinstance(hint, type) else object


def _version_columns() -> tuple[VersionColumn, ...]:
    hints = typing.get_type_hints(Version)
    return tuple(
        VersionColumn(f.name, _COLUMN_NAMES.get(f.name, f.name), _kind(hints[f.name]))
        for f in fields(Version)
        if f.name not in EDITOR_FIELDS
    )


VERSION_COLUMNS = _version_columns()


def version_row(version: Version) -> dict[str, Any]:
    """The generated columns of ``version`` (from ``Version.to_dict(editor=False)``)."""
    data = version.to_dict(editor=False)
    return {c.name: c.encode(data[c.field]) for c in VERSION_COLUMNS}


def version_from_row(row: sqlite3.Row) -> Version:
    """The Version in a ``versions`` row; an edit shows as the content (``edited=True``)."""
    data = {c.field: c.decode(row[c.name]) for c in VERSION_COLUMNS if row[c.name] is not None}
    version = Version.from_dict(data)
    edited = row["edited_content"]
    if edited is not None:
        version.original_content, version.content = version.content, edited
        version.edited = True
    return version


def missing_columns(conn: sqlite3.Connection) -> list[VersionColumn]:
    """Version fields without a ``versions`` column yet (a field added since)."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(versions)")}
    return [c for c in VERSION_COLUMNS if c.name not in have]

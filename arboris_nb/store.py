"""SQLite persistence: every run and every version, written as each version finishes.

The store is an ``on_event`` subscriber (:class:`RunRecorder`) of the engine, so the
engine keeps no persistence logic. It writes

* the run row at ``RunStarted`` (id, project, chapter, mode, N, C, model, the prompt
  messages, temperature, max_tokens) and again at ``RunFinished`` (elapsed, status);
* one version row per ``VersionFinished`` / ``VersionFailed`` / ``VersionCancelled``, in
  its own transaction, so a process killed mid-run loses only versions not yet finished.

Never per token: a write is one small transaction per version. The file is in WAL mode
with a busy timeout, so several processes (notebook, CLI, queue workers) can write to it
at once. ``synchronous=NORMAL``: in WAL mode a committed version survives the process
dying (kill -9, a crashed kernel); only an OS crash or power loss can drop the last
commits. ``FULL`` would add an fsync per version (~2 ms measured) on the event loop.

No API key is ever written: versions carry only the masked ``key_id``.

Editor work is kept apart from what the model produced: an edit fills
``versions.edited_content`` (``content`` stays the generated text), scene notes fill
``versions.notes``, and a retry is its own run whose row names the run and version it
retries (``parent_run_id``, ``parent_index``). Every selection, edit, note and evaluation
is also a row of ``decisions`` (append-only, so each edited text stays in the history),
kept on the run the editor works on — the parent run when the version is a retry's.

Schema version 6 (``PRAGMA user_version``; older files are migrated when opened; a file
from a newer arboris_nb is refused with :class:`StoreTooNew` and left untouched; the
migrations and the version columns are in :mod:`arboris_nb._schema`)::

    runs(run_id PK, project, chapter, created_at, updated_at, mode, version_count,
         indices JSON, max_parallel_requests, model, messages JSON, temperature,
         max_tokens, elapsed_s, sessions, status, parent_run_id, parent_index, keep,
         extra_versions)
    versions(run_id, idx, <one column per generated Version field: status, content,
             title, summary, error, error_type, queued_at, started_at, first_token_at,
             finished_at, output_tokens, tokens_from_usage, attempts JSON, key_id,
             cached, notes …>, session, written_at, edited_content; PK (run_id, idx))
    decisions(run_id, seq, at, kind, idx, version_run_id, data JSON; PK (run_id, seq))
    cache(key PK, reply JSON, model, created_at)          -- see arboris_nb.cache
    book_jobs(job_id PK, project, created_at, spec JSON)  -- see arboris_nb.queue.records
    book_units(job_id, chapter, version, state, worker, requests, updated_at)
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ._schema import (
    MIGRATIONS,
    SCHEMA_VERSION,
    missing_columns,
    version_from_row,
    version_row,
)
from ._sqlite import SQLiteFile
from .backends.base import Message
from .config import store_setting
from .decisions import Decision, DecisionKind
from .errors import ConfigError
from .events import (
    Event,
    RunFinished,
    RunStarted,
    VersionCancelled,
    VersionFailed,
    VersionFinished,
    VersionQueued,
)
from .results import Run, Version

__all__ = [
    "SCHEMA_VERSION",
    "RunNotFound",
    "RunRecord",
    "RunRecorder",
    "RunStore",
    "StoreSpec",
    "StoreTooNew",
    "open_recorder",
    "open_store",
    "store_session",
]

log = logging.getLogger("arboris_nb")

_HEADER_USER_VERSION = slice(60, 64)  # SQLite file header: user_version, big-endian


class RunNotFound(ConfigError):
    """No run with this id in the store."""


class StoreTooNew(ConfigError):
    """The run store was written by a newer arboris_nb (a schema this code does not know).
    The file is not changed; ``found`` and ``supported`` are the two schema numbers."""

    def __init__(self, path: Path, found: int) -> None:
        super().__init__(
            f"the run store {path} has schema version {found}, newer than {SCHEMA_VERSION}, "
            "the newest this arboris_nb knows: upgrade arboris_nb to open it (the file "
            "was not changed)"
        )
        self.path, self.found, self.supported = path, found, SCHEMA_VERSION


def _file_schema(path: Path) -> int | None:
    """The schema number in an existing file's header, read without opening it as a
    database (which could write to it); None for a missing or not-yet-initialised file."""
    try:
        with path.open("rb") as file:
            header = file.read(100)
    except OSError:
        return None
    if len(header) < 100 or not header.startswith(b"SQLite format 3\x00"):
        return None
    return int.from_bytes(header[_HEADER_USER_VERSION], "big")


@dataclass
class RunRecord:
    """A stored run's row: what it asked for and where it stands (no version texts)."""

    run_id: str
    project: str | None
    chapter: int | None
    created_at: float
    updated_at: float
    mode: str
    version_count: int
    indices: list[int]
    max_parallel_requests: int | str
    model: str | None
    messages: list[Message]
    temperature: float | None
    max_tokens: int | None
    elapsed_s: float | None
    sessions: int
    status: str  # running | complete | partial | failed
    parent_run_id: str | None = None  # set on a retry: the run and version it retries
    parent_index: int | None = None
    keep: int | None = None  # versions the run keeps (None: all); see Run.keep
    extra_versions: int = 0
    ok: int = 0
    failed: int = 0
    cancelled: int = 0
    counts: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def parallel(self) -> bool:
        return self.mode == "parallel"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("counts")
        return data


def _limit_value(text: str) -> int | str:
    return int(text) if text.isdigit() else text


class RunStore(SQLiteFile):
    """One SQLite file holding runs, versions and (optionally) the reply cache.

    Safe to share between threads (one connection per thread) and processes (WAL,
    busy timeout, ``BEGIN IMMEDIATE`` writes); a forked child opens its own connection
    (:class:`~arboris_nb._sqlite.SQLiteFile`). Why runs, versions and the editor's
    decisions stay in one class (a little over 300 lines): their writes share
    transactions — an edit writes the version and its decision in one commit — and
    each method is one statement or two.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path)
        found = _file_schema(self.path)
        if found is not None and found > SCHEMA_VERSION:  # before any write to the file
            raise StoreTooNew(self.path, found)
        try:
            self._migrate()
        except StoreTooNew:  # newer since the header was read (another process upgraded)
            self.close()
            raise
        except (OSError, sqlite3.Error) as exc:
            self.close()
            raise ConfigError(
                f"cannot open the run store {self.path} (ARBORIS_STORE): {exc}"
            ) from exc

    def __repr__(self) -> str:
        return f"RunStore({str(self.path)!r})"

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _migrate(self) -> None:
        conn = self.connection()
        current = conn.execute("PRAGMA user_version").fetchone()[0]
        if current == SCHEMA_VERSION and not missing_columns(conn):
            return
        with self.transaction() as tx:  # re-read under the write lock: another process
            current = tx.execute("PRAGMA user_version").fetchone()[0]  # may have migrated
            if current > SCHEMA_VERSION:
                raise StoreTooNew(self.path, current)
            for number in range(current, SCHEMA_VERSION):
                for statement in MIGRATIONS[number].split(";"):
                    if statement.strip():
                        tx.execute(statement)
            for column in missing_columns(tx):  # a field added to Version since
                tx.execute(f"ALTER TABLE versions ADD COLUMN {column.name} {column.sql_type}")
            tx.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @property
    def schema_version(self) -> int:
        return int(self.connection().execute("PRAGMA user_version").fetchone()[0])

    # -- writes --------------------------------------------------------------------------
    def begin_run(
        self,
        run: Run,
        messages: Sequence[Message],
        *,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> tuple[int, float]:
        """Write the run row (or re-open it for a resume).

        Returns ``(session, elapsed_before)``: the session number (1 for a new run) and
        the generation time already spent on this run by earlier sessions.
        """
        now = time.time()
        indices = [v.index for v in run.versions]
        with self.transaction() as tx:
            row = tx.execute(
                "SELECT indices, sessions, elapsed_s FROM runs WHERE run_id = ?", (run.run_id,)
            ).fetchone()
            if row is None:
                tx.execute(
                    "INSERT INTO runs (run_id, project, chapter, created_at, updated_at, mode, "
                    "version_count, indices, max_parallel_requests, model, messages, "
                    "temperature, max_tokens, elapsed_s, sessions, status, parent_run_id, "
                    "parent_index, keep, extra_versions) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, 1, 'running', "
                    "?, ?, ?, ?)",
                    (
                        run.run_id,
                        run.project,
                        run.chapter,
                        run.created_at or now,
                        now,
                        run.mode,
                        len(indices),
                        json.dumps(indices),
                        str(run.max_parallel_requests),
                        run.model,
                        json.dumps(list(messages), ensure_ascii=False),
                        temperature,
                        max_tokens,
                        run.parent_run_id,
                        run.parent_index,
                        run.keep,
                        run.extra_versions,
                    ),
                )
                return 1, 0.0
            planned = sorted(set(json.loads(row["indices"])) | set(indices))
            tx.execute(
                "UPDATE runs SET indices = ?, version_count = ?, sessions = sessions + 1, "
                "status = 'running', updated_at = ? WHERE run_id = ?",
                (json.dumps(planned), len(planned), now, run.run_id),
            )
            return int(row["sessions"]) + 1, float(row["elapsed_s"] or 0.0)

    def add_version(self, run_id: str, index: int) -> None:
        """A version added to a running run (``RunHandle.add_versions``): it is planned,
        and the run keeps one more."""
        with self.transaction() as tx:
            row = tx.execute("SELECT indices FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                raise KeyError(run_id)
            planned = sorted(set(json.loads(row["indices"])) | {index})
            tx.execute(
                "UPDATE runs SET indices = ?, version_count = ?, keep = keep + 1, "
                "updated_at = ? WHERE run_id = ?",
                (json.dumps(planned), len(planned), time.time(), run_id),
            )

    def save_version(
        self, run_id: str, version: Version, *, session: int = 1, elapsed_s: float | None = None
    ) -> bool:
        """Write one finished version (one commit). An ``ok`` row is never overwritten:
        returns False when this version already had a stored ok result."""
        row = {"run_id": run_id, **version_row(version), "session": session}
        row["written_at"] = time.time()
        columns = ", ".join(row)
        kept = ("run_id", "idx", "notes")  # an editor's notes survive a resume's rewrite
        updates = ", ".join(f"{c} = excluded.{c}" for c in row if c not in kept)
        with self.transaction() as tx:
            cursor = tx.execute(
                f"INSERT INTO versions ({columns}) VALUES ({', '.join('?' * len(row))}) "
                f"ON CONFLICT (run_id, idx) DO UPDATE SET {updates} "
                "WHERE versions.status != 'ok'",
                tuple(row.values()),
            )
            tx.execute(
                "UPDATE runs SET updated_at = ?, elapsed_s = COALESCE(?, elapsed_s) "
                "WHERE run_id = ?",
                (time.time(), elapsed_s, run_id),
            )
        if cursor.rowcount == 0:
            log.warning(
                "run %s version %d: an ok result is already stored; kept it", run_id, version.index
            )
            return False
        return True

    def finish_run(self, run_id: str, *, elapsed_s: float | None = None) -> str:
        """Set the run's final status (complete / partial / failed) and elapsed time."""
        with self.transaction() as tx:
            record = self._record(tx, run_id)
            if record is None:
                raise KeyError(run_id)
            status = _status(record)
            tx.execute(
                "UPDATE runs SET status = ?, updated_at = ?, elapsed_s = COALESCE(?, elapsed_s) "
                "WHERE run_id = ?",
                (status, time.time(), elapsed_s, run_id),
            )
        return status

    def save_edit(self, run_id: str, index: int, text: str) -> Decision:
        """Store an editor's text for an ok version of run ``run_id`` (the run holding it:
        a retry's id for a retry version) and record an "edit" decision holding the text,
        in one commit; the generated text stays, and so does every earlier edit (in the
        decisions). Returns the decision.

        Raises :class:`ConfigError` when the version is not stored or not ok.
        """
        with self.transaction() as tx:
            row = tx.execute(
                "SELECT status FROM versions WHERE run_id = ? AND idx = ?", (run_id, index)
            ).fetchone()
            if row is None or row["status"] != "ok":
                state = "not stored" if row is None else row["status"]
                raise ConfigError(
                    f"run {run_id} version {index} is {state} in the run store {self.path}; "
                    "only a stored ok version can be edited"
                )
            tx.execute(
                "UPDATE versions SET edited_content = ?, written_at = ? "
                "WHERE run_id = ? AND idx = ?",
                (text, time.time(), run_id, index),
            )
            return self._decide(tx, run_id, "edit", index, {"text": text})

    def save_notes(self, run_id: str, index: int, notes: str | None) -> Decision:
        """Set the scene notes of version ``index`` of run ``run_id`` (the run holding
        it; "" or None clears them) and record a "notes" decision, in one commit.

        Raises :class:`ConfigError` when the version is not stored.
        """
        text = notes if notes and notes.strip() else None
        with self.transaction() as tx:
            cursor = tx.execute(
                "UPDATE versions SET notes = ? WHERE run_id = ? AND idx = ?",
                (text, run_id, index),
            )
            if cursor.rowcount == 0:
                raise ConfigError(
                    f"run {run_id} version {index} is not stored in the run store "
                    f"{self.path}; notes can be kept only with a stored version"
                )
            return self._decide(tx, run_id, "notes", index, {"notes": text or ""})

    def save_decision(self, run_id: str, decision: Decision) -> None:
        """Append ``decision`` to run ``run_id``'s history (one commit)."""
        with self.transaction() as tx:
            if tx.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is None:
                raise RunNotFound(f"no run {run_id!r} in the run store {self.path}")
            self._append(tx, run_id, decision)

    def _decide(
        self,
        tx: sqlite3.Connection,
        holder: str,
        kind: DecisionKind,
        index: int,
        data: dict[str, Any],
    ) -> Decision:
        """Record what an editor did to version ``index`` of run ``holder``: on the run
        it retries when ``holder`` is a retry (where the editor's history is), else on
        ``holder`` itself."""
        row = tx.execute("SELECT parent_run_id FROM runs WHERE run_id = ?", (holder,)).fetchone()
        parent = row["parent_run_id"] if row is not None else None
        decision = Decision.now(kind, index, version_run_id=holder if parent else None, data=data)
        self._append(tx, parent or holder, decision)
        return decision

    def _append(self, tx: sqlite3.Connection, run_id: str, decision: Decision) -> None:
        seq = tx.execute(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM decisions WHERE run_id = ?", (run_id,)
        ).fetchone()[0]
        tx.execute(
            "INSERT INTO decisions (run_id, seq, at, kind, idx, version_run_id, data) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                run_id,
                seq,
                decision.at,
                decision.kind,
                decision.index,
                decision.version_run_id,
                json.dumps(decision.data, ensure_ascii=False),
            ),
        )
        tx.execute("UPDATE runs SET updated_at = ? WHERE run_id = ?", (time.time(), run_id))

    def delete_run(self, run_id: str) -> int:
        """Remove a run with its versions and decisions, and its linked retry runs (theirs
        too: a retry is part of the run it retries), in one transaction. Returns how many
        runs went: 0 when there was no such run, else 1 + its retry runs."""
        with self.transaction() as tx:
            if tx.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is None:
                return 0
            doomed, todo = [run_id], [run_id]
            while todo:  # retries of retries too, should there ever be any
                rows = tx.execute("SELECT run_id FROM runs WHERE parent_run_id = ?", (todo.pop(),))
                found = [row[0] for row in rows if row[0] not in doomed]
                doomed += found
                todo += found
            for table in ("decisions", "versions", "runs"):
                tx.executemany(f"DELETE FROM {table} WHERE run_id = ?", [(r,) for r in doomed])
            return len(doomed)

    # -- reads ---------------------------------------------------------------------------
    def get_run(self, run_id: str) -> RunRecord | None:
        """The run row with version counts, or None."""
        return self._record(self.connection(), run_id)

    def list_runs(self, project: str | None = None, limit: int | None = 50) -> list[RunRecord]:
        """Newest first; ``project`` filters; ``limit=None`` lists all."""
        sql = "SELECT * FROM runs"
        params: list[Any] = []
        if project is not None:
            sql += " WHERE project = ?"
            params.append(project)
        sql += " ORDER BY created_at DESC, run_id"
        if limit is not None:
            if limit < 1:
                raise ConfigError(f"limit must be 1 or more (or None for all), got {limit}")
            sql += " LIMIT ?"
            params.append(limit)
        conn = self.connection()
        return [self._with_counts(conn, _record(row)) for row in conn.execute(sql, params)]

    def retries_of(self, run_id: str, index: int | None = None) -> list[RunRecord]:
        """The runs that retried a version of ``run_id`` (only ``index``'s if given),
        oldest first."""
        sql = "SELECT * FROM runs WHERE parent_run_id = ?"
        params: list[Any] = [run_id]
        if index is not None:
            sql += " AND parent_index = ?"
            params.append(index)
        conn = self.connection()
        rows = conn.execute(sql + " ORDER BY created_at, run_id", params)
        return [self._with_counts(conn, _record(row)) for row in rows]

    def get_versions(self, run_id: str) -> list[Version]:
        """The stored versions of a run, by index (only those that finished)."""
        rows = self.connection().execute(
            "SELECT * FROM versions WHERE run_id = ? ORDER BY idx", (run_id,)
        )
        return [version_from_row(row) for row in rows]

    def decisions(self, run_id: str) -> list[Decision]:
        """Run ``run_id``'s decisions, oldest first."""
        rows = self.connection().execute(
            "SELECT * FROM decisions WHERE run_id = ? ORDER BY seq", (run_id,)
        )
        return [
            Decision(
                kind=row["kind"],
                at=row["at"],
                index=row["idx"],
                version_run_id=row["version_run_id"],
                data=json.loads(row["data"]),
            )
            for row in rows
        ]

    def _record(self, conn: sqlite3.Connection, run_id: str) -> RunRecord | None:
        row = conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return None if row is None else self._with_counts(conn, _record(row))

    def _with_counts(self, conn: sqlite3.Connection, record: RunRecord) -> RunRecord:
        rows = conn.execute(
            "SELECT status, COUNT(*) FROM versions WHERE run_id = ? GROUP BY status",
            (record.run_id,),
        )
        record.counts = {str(status): int(n) for status, n in rows}
        record.ok = record.counts.get("ok", 0)
        record.failed = record.counts.get("failed", 0)
        record.cancelled = record.counts.get("cancelled", 0)
        return record


def _status(record: RunRecord) -> str:
    """complete: every version it keeps ok; partial: some ok; failed: none ok."""
    if record.ok >= (record.keep or record.version_count):
        return "complete"
    return "partial" if record.ok else "failed"


def _record(row: sqlite3.Row) -> RunRecord:
    return RunRecord(
        run_id=row["run_id"],
        project=row["project"],
        chapter=row["chapter"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        mode=row["mode"],
        version_count=row["version_count"],
        indices=json.loads(row["indices"]),
        max_parallel_requests=_limit_value(row["max_parallel_requests"]),
        model=row["model"],
        messages=json.loads(row["messages"]),
        temperature=row["temperature"],
        max_tokens=row["max_tokens"],
        elapsed_s=row["elapsed_s"],
        sessions=row["sessions"],
        status=row["status"],
        parent_run_id=row["parent_run_id"],
        parent_index=row["parent_index"],
        keep=row["keep"],
        extra_versions=row["extra_versions"],
    )


#: What ``generate_versions(store=…)`` accepts: None = the default (``ARBORIS_STORE``),
#: False = off, a path, or an open :class:`RunStore`.
StoreSpec = RunStore | str | os.PathLike[str] | bool | None


class RunRecorder:
    """The ``on_event`` subscriber that writes a run to a :class:`RunStore`.

    It writes at ``RunStarted``, at each version's final event and at ``RunFinished``
    only; it does not hear ``TokenDelta`` (``wants_tokens = False``). ``owns_store``:
    :meth:`close` closes the store.
    """

    def __init__(
        self,
        store: RunStore,
        messages: Sequence[Message],
        *,
        temperature: float | None = None,
        max_tokens: int | None = None,
        owns_store: bool = False,
    ) -> None:
        self.store = store
        self.messages = list(messages)
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.owns_store = owns_store
        self.session = 1
        self.elapsed_before = 0.0
        self.planned: set[int] = set()

    wants_tokens = False  # never called for TokenDelta: nothing is written per token

    def __call__(self, event: Event) -> None:
        kind = type(event)
        if kind is RunStarted:
            self.session, self.elapsed_before = self.store.begin_run(
                event.run, self.messages, temperature=self.temperature, max_tokens=self.max_tokens
            )
            self.planned = {v.index for v in event.run.versions}
        elif kind is VersionQueued:
            index = event.version.index  # type: ignore[attr-defined]
            if index not in self.planned:  # added to the running run
                self.planned.add(index)
                self.store.add_version(event.run.run_id, index)
        elif kind in (VersionFinished, VersionFailed, VersionCancelled):
            version: Version = event.version  # type: ignore[attr-defined]
            self.store.save_version(
                event.run.run_id,
                version,
                session=self.session,
                elapsed_s=self.elapsed_before + event.t,
            )
        elif kind is RunFinished:
            self.store.finish_run(event.run.run_id, elapsed_s=self.elapsed_before + event.t)

    def close(self) -> None:
        """Close the store if this recorder opened it (the engine calls this at the end)."""
        if self.owns_store:
            self.store.close()


def open_store(spec: StoreSpec = None) -> tuple[RunStore | None, bool]:
    """Resolve a ``store=`` value to ``(store, owned)``; ``owned`` means close it after.

    None reads ``ARBORIS_STORE`` (default path when unset). An explicit path that cannot
    be opened is a :class:`ConfigError`; the *default* path failing only warns, so a
    read-only home directory never stops a generation.
    """
    if spec is False:
        return None, False
    if isinstance(spec, RunStore):
        return spec, False
    if spec is None or spec is True:
        path, explicit = store_setting()
        if path is None:
            return None, False
        if not explicit:
            try:
                return RunStore(path), True
            except ConfigError as exc:
                warnings.warn(f"runs are not being saved: {exc}", RuntimeWarning, stacklevel=3)
                return None, False
        return RunStore(path), True
    if isinstance(spec, str | os.PathLike):
        return RunStore(spec), True
    raise ConfigError(
        f"store must be a RunStore, a path, None (ARBORIS_STORE) or False, "
        f"got {type(spec).__name__}"
    )



@contextmanager
def store_session(spec: StoreSpec = None) -> Iterator[RunStore | None]:
    """:func:`open_store` as a ``with`` block: the store (None when it is off), closed at
    the end if this block opened it — the one place the open/close dance is written."""
    store, owned = open_store(spec)
    try:
        yield store
    finally:
        if owned and store is not None:
            store.close()


def open_recorder(
    spec: StoreSpec,
    messages: Sequence[Message],
    *,
    temperature: float | None = None,
    max_tokens: int | None = None,
) -> RunRecorder | None:
    """The engine's hook: a recorder for ``generate_versions(store=spec)``, or None."""
    store, owned = open_store(spec)
    if store is None:
        return None
    return RunRecorder(
        store, messages, temperature=temperature, max_tokens=max_tokens, owns_store=owned
    )

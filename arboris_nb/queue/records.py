"""Book jobs in the run store's SQLite file: the job's spec and each unit's progress.

The versions themselves (texts, timings, attempts) are the store's ``versions`` rows:
chapter ``c`` of job ``J`` is the store run ``J-chc`` (see :func:`chapter_run_id`), so
``arboris-nb runs`` and ``resume`` see book chapters like any other run. These two
extra tables only say what the job *is* and where each unit stands right now (queued:
waiting for a slot; running: holding one; on which worker), which the store does not know
until a version finishes. They
are part of the store's schema (created and migrated by :mod:`arboris_nb._schema`)::

    book_jobs(job_id PK, project, created_at, spec JSON)
    book_units(job_id, chapter, version, state, worker, requests, updated_at;
               PK (job_id, chapter, version))

``requests`` counts attempts made for a unit over all sessions (a cancelled or retried
unit keeps its earlier attempts), so what was paid for stays visible. With Celery the
submitter copies states and counts from Redis (:meth:`BookRecords.sync_units`, see
:mod:`arboris_nb.queue.board`), so workers need no access to this file.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from ..results import FINAL
from ..store import RunStore

__all__ = ["SETTLED", "BookRecords", "chapter_run_id"]

#: The unit states after which a book job does not run a unit again. Not results.FINAL:
#: a cancelled unit is run again by resume, so only ok and failed settle it.
SETTLED: frozenset[str] = FINAL - {"cancelled"}


def chapter_run_id(job_id: str, chapter: int) -> str:
    """The store run holding chapter ``chapter`` of job ``job_id``."""
    return f"{job_id}-ch{chapter}"


class BookRecords:
    """The book tables of one :class:`~arboris_nb.store.RunStore` (same file, same
    connections, so the multi-process guarantees are the store's; the store's migrations
    create the tables)."""

    def __init__(self, store: RunStore) -> None:
        self.store = store

    # -- jobs ----------------------------------------------------------------------------
    def save_job(self, job_id: str, project: str | None, spec: dict[str, Any]) -> bool:
        """Write the job's spec once; False if the job already existed (kept as it was)."""
        with self.store.transaction() as tx:
            cursor = tx.execute(
                "INSERT OR IGNORE INTO book_jobs (job_id, project, created_at, spec) "
                "VALUES (?, ?, ?, ?)",
                (job_id, project, time.time(), json.dumps(spec, ensure_ascii=False)),
            )
        return cursor.rowcount > 0

    def load_job(self, job_id: str) -> dict[str, Any] | None:
        row = (
            self.store.connection()
            .execute("SELECT spec FROM book_jobs WHERE job_id = ?", (job_id,))
            .fetchone()
        )
        return None if row is None else dict(json.loads(row["spec"]))

    def list_jobs(self) -> list[dict[str, Any]]:
        rows = self.store.connection().execute(
            "SELECT job_id, project, created_at FROM book_jobs ORDER BY created_at DESC"
        )
        return [dict(row) for row in rows]

    # -- units ---------------------------------------------------------------------------
    def add_units(self, job_id: str, units: list[tuple[int, int]]) -> None:
        """Register units as ``pending`` (units already known are left alone)."""
        now = time.time()
        with self.store.transaction() as tx:
            tx.executemany(
                "INSERT OR IGNORE INTO book_units (job_id, chapter, version, state, updated_at) "
                "VALUES (?, ?, ?, 'pending', ?)",
                [(job_id, c, v, now) for c, v in units],
            )

    def set_state(
        self,
        job_id: str,
        chapter: int,
        version: int,
        state: str,
        *,
        worker: str | None = None,
        requests: int = 0,
    ) -> None:
        """Move a unit to ``state`` and add ``requests`` attempts; an ``ok`` unit stays ok."""
        with self.store.transaction() as tx:
            tx.execute(
                "INSERT INTO book_units (job_id, chapter, version, state, worker, requests, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (job_id, chapter, version) DO UPDATE SET "
                "state = CASE WHEN book_units.state = 'ok' THEN 'ok' ELSE excluded.state END, "
                "worker = COALESCE(excluded.worker, book_units.worker), "
                "requests = book_units.requests + excluded.requests, "
                "updated_at = excluded.updated_at",
                (job_id, chapter, version, state, worker, requests, time.time()),
            )

    def sync_units(self, job_id: str, rows: list[tuple[int, int, str, str | None, int]]) -> None:
        """Set units to what the workers reported — ``(chapter, version, state, worker,
        requests)`` with ``requests`` the total so far — in one transaction. An ``ok`` unit
        stays ok, and a total never lowers the count (it may include this store's own)."""
        now = time.time()
        with self.store.transaction() as tx:
            tx.executemany(
                "INSERT INTO book_units (job_id, chapter, version, state, worker, requests, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (job_id, chapter, version) DO UPDATE SET "
                "state = CASE WHEN book_units.state = 'ok' THEN 'ok' ELSE excluded.state END, "
                "worker = COALESCE(excluded.worker, book_units.worker), "
                "requests = MAX(book_units.requests, excluded.requests), "
                "updated_at = excluded.updated_at",
                [(job_id, c, v, state, worker, n, now) for c, v, state, worker, n in rows],
            )

    def units(self, job_id: str) -> list[dict[str, Any]]:
        rows = self.store.connection().execute(
            "SELECT chapter, version, state, worker, requests, updated_at FROM book_units "
            "WHERE job_id = ? ORDER BY chapter, version",
            (job_id,),
        )
        return [dict(row) for row in rows]

    def all_final(self, job_id: str) -> bool:
        """True when every unit of the job is ok or failed."""
        return all(u["state"] in SETTLED for u in self.units(job_id))

    def ok_units(self, job_id: str, chapters: Sequence[int]) -> set[tuple[int, int]]:
        """(chapter, version) of every version of these chapters already ok in the store."""
        run_ids = {chapter_run_id(job_id, c): c for c in chapters}
        marks = ", ".join("?" * len(run_ids))
        rows = self.store.connection().execute(
            f"SELECT run_id, idx FROM versions WHERE status = 'ok' AND run_id IN ({marks})",
            list(run_ids),
        )
        return {(run_ids[run_id], int(idx)) for run_id, idx in rows}

"""Celery results into the submitter's run store: :class:`Collector`.

Workers record in Redis (:mod:`.board`), since they may have no access to the
submitter's SQLite file. A collect copies into the job's store what they recorded —
each unit's state, worker and request count, and every finished version not stored yet —
so ``status()``, ``frame()``, ``export()``, ``arboris-nb runs`` and a resume see it.
A unit is reported ``running`` only while a live lease of the global limit names it
(:func:`.redis_limit.live_holders`), so a unit waiting for a slot, or left behind by a
killed worker, is ``queued``, and "running" never exceeds the limit.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from typing import Any

from ..results import Run, Version
from ..store import RunRecord
from .board import UnitReport, read_results, read_units, slot_holder
from .records import SETTLED, BookRecords, chapter_run_id
from .redis_limit import live_holders
from .unit import BookSpec

__all__ = ["Collector", "with_slots"]

log = logging.getLogger("arboris_nb")

_LIVE = ("queued", "running")  # the states a lease decides between


def with_slots(reports: list[UnitReport], job_id: str, holders: set[str]) -> list[UnitReport]:
    """The reports with each unit still under way ``running`` if it holds a slot (its
    name is in ``holders``, from :func:`.redis_limit.live_holders`), else ``queued``."""
    out = []
    for r in reports:
        if r.state in _LIVE:
            held = slot_holder(job_id, r.chapter, r.version) in holders
            r = dataclasses.replace(r, state="running" if held else "queued")
        out.append(r)
    return out


class Collector:
    """Copies one Celery job's records from Redis into the job's store; safe to repeat
    and to call from several threads (one collect at a time)."""

    def __init__(self, spec: BookSpec, records: BookRecords, broker: str | None) -> None:
        self.spec, self.records, self.broker = spec, records, broker
        self._lock = threading.Lock()
        self._collected: set[str] = set()  # result ids already copied into the store
        self._synced_at = -math.inf

    @property
    def job_id(self) -> str:
        return self.spec.job_id

    def collect(self) -> int:
        """Copy states and new results; returns how many versions were written."""
        with self._lock:
            reports, results = self._read()
            # Versions first, then states: a unit never reads ok before its text is here.
            written = {unit for unit, data in results.items() if self._store_result(*unit, data)}
            changed = self._sync_states(reports)
            for chapter in changed | {c for c, _ in written}:
                self._finish_chapter(chapter)
            self._collected.update(r.result for r in reports if r.result)
            self._synced_at = time.monotonic()
        return len(written)

    def sync(self, every_s: float) -> None:
        """:meth:`collect` at most every ``every_s``; if Redis cannot be reached, readers
        get what the store has (and a warning), not an exception."""
        if time.monotonic() - self._synced_at < every_s:
            return
        from redis.exceptions import RedisError

        try:
            self.collect()
        except (RedisError, OSError) as exc:
            self._synced_at = time.monotonic()
            log.warning("book job %s: cannot read Redis (%s); showing the store", self.job_id, exc)

    def _read(self) -> tuple[list[UnitReport], dict[tuple[int, int], dict[str, Any]]]:
        """The units' reports (running decided by the live leases) and the results not
        copied yet — a result's text is read once."""
        from .celery_app import redis_client

        client = redis_client(self.broker)
        try:
            holders = set(live_holders(client, self.spec.limit_name))
            reports = with_slots(read_units(client, self.job_id), self.job_id, holders)
            have = self.records.ok_units(self.job_id, self.spec.chapters)
            new = [r for r in reports if r.result and r.result not in self._collected]
            wanted = [(r.chapter, r.version) for r in new if (r.chapter, r.version) not in have]
            return reports, read_results(client, self.job_id, wanted)
        finally:
            client.close()

    def _store_result(self, chapter: int, version: int, data: dict[str, Any]) -> bool:
        store = self.records.store
        run_id = chapter_run_id(self.job_id, chapter)
        record = store.get_run(run_id) or self._begin_chapter(chapter)
        got = Version.from_dict(data["version"])
        mine = next((v for v in store.get_versions(run_id) if v.index == version), None)
        if mine is not None and (mine.ok or mine == got):
            return False  # a worker sharing this store file wrote it already
        elapsed = (record.elapsed_s or 0.0) + float(data.get("elapsed_s") or 0.0)
        return store.save_version(run_id, got, session=record.sessions, elapsed_s=elapsed)

    def _begin_chapter(self, chapter: int) -> RunRecord:
        """Open the chapter's store run for results made on machines without this store:
        through ``RunStore.begin_run``, the call the engine's recorder makes, with the
        chapter's prompt and sampling settings and every version of it planned."""
        spec, store = self.spec, self.records.store
        run = Run(
            run_id=chapter_run_id(self.job_id, chapter),
            versions=[Version(i) for i in range(1, spec.versions + 1)],
            max_parallel_requests=spec.limit,
            project=spec.project,
            chapter=chapter,
            model=spec.llm.get("model"),
            created_at=time.time(),
        )
        store.begin_run(
            run,
            spec.prompts[chapter],
            temperature=spec.llm.get("temperature"),
            max_tokens=spec.llm.get("max_tokens"),
        )
        record = store.get_run(run.run_id)
        assert record is not None
        return record

    def _sync_states(self, reports: list[UnitReport]) -> set[int]:
        """Write the units whose state, worker or requests changed; their chapters."""
        current = {(u["chapter"], u["version"]): u for u in self.records.units(self.job_id)}
        rows = []
        for r in reports:
            unit = current.get((r.chapter, r.version))
            if unit is None:
                continue
            state = "ok" if unit["state"] == "ok" else r.state  # ok stays ok
            if (state, r.worker) != (unit["state"], unit["worker"]) or (
                r.requests > unit["requests"]
            ):
                rows.append((r.chapter, r.version, state, r.worker, r.requests))
        if rows:
            self.records.sync_units(self.job_id, rows)
        return {row[0] for row in rows}

    def _finish_chapter(self, chapter: int) -> None:
        """Set the chapter run's final status once all its units have ended."""
        states = [u["state"] for u in self.records.units(self.job_id) if u["chapter"] == chapter]
        run_id = chapter_run_id(self.job_id, chapter)
        # No run row when no version of it was ever stored (a unit that crashed).
        if all(state in SETTLED for state in states) and self.records.store.get_run(run_id):
            self.records.store.finish_run(run_id)

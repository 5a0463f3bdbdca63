"""Whole-book generation: every (chapter, version) unit under one global concurrency limit.

:class:`BookJob` plans a job (chapters × versions), writes it to the run store, and runs
the units that are not already ok there — in this process on an asyncio queue
(``backend="local"``, the default) or as Celery tasks on any number of workers
(``backend="celery"``, see :mod:`arboris_nb.queue.celery_app`). Either way each unit is
one engine call (``indices=[v]``) into the store run ``<job_id>-ch<chapter>``, so a
version already ok is never requested again and a job can be resumed from any process
with :meth:`BookJob.load`. With Celery, workers record results in Redis (they may have
no access to this store) and :meth:`BookJob.collect` copies them into this job's store.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..backends.base import Backend, Message
from ..config import LLMConfig
from ..errors import ConfigError
from ..events import Event, TokenDelta
from ..limits import FixedLimit, Limiter
from ..prompts import as_messages
from ..results import Run, Version
from ..retry import RetryPolicy
from ..store import RunRecord, RunStore, StoreSpec, open_store
from .board import (
    UnitReport,
    forget_units,
    read_results,
    read_units,
    set_cancelled,
)
from .records import SETTLED, BookRecords, chapter_run_id
from .unit import BookSpec, backend_from_spec, llm_spec, run_unit

if TYPE_CHECKING:
    import pandas as pd

    from ..widgets.book import BookProgress

__all__ = ["BOOK_FRAME_COLUMNS", "BookJob", "parse_chapters"]

log = logging.getLogger("arboris_nb")

_SYNC_EVERY_S = 0.5  # status() and the widget read Redis at most this often

BackendName = Literal["local", "celery"]
PromptSource = (
    str | Mapping[int, str | Sequence[Message]] | Callable[[int], str | Sequence[Message]]
)

#: Columns of :meth:`BookJob.frame`, one row per unit.
BOOK_FRAME_COLUMNS: dict[str, str] = {
    "job_id": "id of the book job",
    "run_id": "store run of the chapter (<job_id>-ch<chapter>)",
    "chapter": "chapter number",
    "version": "1-based version index",
    "status": "pending, queued, running, ok, failed or cancelled",
    "attempts": "attempts of the stored result (1 = first try)",
    "requests": "attempts made for this unit over all sessions (what was paid for)",
    "duration_s": "seconds from first admitted to finished (retries included)",
    "ttft_s": "seconds to the first token of the kept attempt",
    "output_tokens": "completion tokens",
    "chars": "characters of content",
    "worker": "process that ran it last (kernel, or Celery worker hostname)",
    "key_id": "masked id of the API key that served it",
    "error_type": "exception class name when failed",
    "error": "error message when failed",
}


def parse_chapters(text: str) -> list[int]:
    """``"1-10,12"`` → ``[1, …, 10, 12]`` (for the CLI); errors name the setting."""
    chapters: list[int] = []
    try:
        for part in text.split(","):
            low, _, high = part.strip().partition("-")
            first, last = int(low), int(high or low)
            if first < 1 or last < first:
                raise ValueError
            chapters.extend(range(first, last + 1))
    except ValueError:
        raise ConfigError(
            f"chapters must look like 1-10 or 1,3,5-7 (numbers >= 1), got {text!r}"
        ) from None
    return sorted(set(chapters))


def _chapters(chapters: Iterable[int] | str) -> tuple[int, ...]:
    values = parse_chapters(chapters) if isinstance(chapters, str) else list(chapters)
    if any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in values):
        raise ConfigError(f"chapters must be whole numbers >= 1, got {values!r}")
    return tuple(sorted(set(values)))


def _prompts(source: PromptSource, chapters: tuple[int, ...]) -> dict[int, list[Message]]:
    """Resolve every chapter's prompt up front, so workers and resumes need no callable."""
    if isinstance(source, str):
        if "{chapter}" not in source:
            raise ConfigError("a prompt template must contain {chapter}")
        return {c: as_messages(source.replace("{chapter}", str(c))) for c in chapters}
    if isinstance(source, Mapping):
        missing = [c for c in chapters if c not in source]
        if missing:
            raise ConfigError(f"prompts has no entry for chapter(s) {missing}")
        return {c: as_messages(source[c]) for c in chapters}
    if callable(source):
        return {c: as_messages(source(c)) for c in chapters}
    raise ConfigError(
        "prompts must be a dict chapter → prompt, a callable(chapter) → prompt, "
        f"or a template with {{chapter}}; got {type(source).__name__}"
    )


def _open(store: StoreSpec) -> RunStore:
    opened, _ = open_store(store)
    if opened is None:
        raise ConfigError("a book job needs the run store: ARBORIS_STORE is off (set a path)")
    return opened


class BookJob:
    """Generate ``versions_per_chapter`` versions of every chapter, ``limit`` requests at
    a time across the whole job (and across all Celery workers with ``backend="celery"``).

    ``prompts``: a dict chapter → prompt (text or messages), a callable(chapter) → prompt,
    or a template string containing ``{chapter}``. ``llm``: an ``LLMConfig`` (its key is
    never stored; Celery workers read ``api_key_env`` from their own environment) or a
    backend; ``backend="celery"`` needs an ``LLMConfig`` or a ``SimulatedLLM``.
    ``limiter``: share a limit with other jobs in this process (local backend only).
    """

    def __init__(
        self,
        project: str | None = None,
        *,
        chapters: Iterable[int] | str,
        prompts: PromptSource,
        versions_per_chapter: int = 3,
        llm: LLMConfig | Backend | None = None,
        limit: int = 2,
        backend: BackendName = "local",
        retry: RetryPolicy | None = None,
        job_id: str | None = None,
        store: StoreSpec = None,
        limit_name: str = "default",
        limiter: Limiter | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        broker: str | None = None,
        poll_s: float = 0.5,
    ) -> None:
        chosen = _chapters(chapters)
        retry_fields = dataclasses.asdict(retry or RetryPolicy())
        spec = BookSpec(
            job_id=job_id or f"book-{uuid.uuid4().hex[:8]}",
            project=project,
            chapters=chosen,
            versions=versions_per_chapter,
            prompts=_prompts(prompts, chosen),
            llm=llm_spec(llm, api_key_env=api_key_env),
            limit=limit,
            limit_name=limit_name,
            retry=dict(retry_fields),
        )
        self._setup(spec, llm=llm, backend=backend, store=store, limiter=limiter)
        self.broker, self.poll_s = broker, poll_s
        if not self.records.save_job(spec.job_id, project, {**spec.to_dict(), "backend": backend}):
            raise ConfigError(f"book job {spec.job_id!r} already exists: use BookJob.load()")
        self.records.add_units(spec.job_id, spec.units())

    def _setup(
        self,
        spec: BookSpec,
        *,
        llm: LLMConfig | Backend | None,
        backend: str,
        store: StoreSpec,
        limiter: Limiter | None,
    ) -> None:
        if backend not in ("local", "celery"):
            raise ConfigError(f'backend must be "local" or "celery", got {backend!r}')
        if backend == "celery" and not spec.llm.get("portable"):
            raise ConfigError(
                'backend="celery" needs llm=LLMConfig(...) or SimulatedLLM(...) without a '
                "reply function: workers rebuild the model in their own process"
            )
        self.spec = spec
        self.backend: str = backend
        self._llm = llm
        self._limiter = limiter
        self.records = BookRecords(_open(store))
        self._task: asyncio.Task[dict[str, Any]] | None = None
        self._widget: BookProgress | None = None
        self._session_start: float | None = None
        self._session_end: float | None = None
        self._task_ids: list[str] = []
        self._collect_lock = threading.Lock()
        self._collected: set[str] = set()  # result ids already copied into the store
        self._synced_at = -math.inf

    @classmethod
    def load(
        cls,
        job_id: str,
        *,
        llm: LLMConfig | Backend | None = None,
        store: StoreSpec = None,
        backend: BackendName | None = None,
        limiter: Limiter | None = None,
        broker: str | None = None,
        poll_s: float = 0.5,
    ) -> BookJob:
        """Re-open a stored job (to watch, resume or export it) from any process."""
        records = BookRecords(_open(store))
        data = records.load_job(job_id)
        if data is None:
            raise ConfigError(f"no book job {job_id!r} in {records.store.path}")
        stored_backend = data.pop("backend", "local")
        job = cls.__new__(cls)
        spec = BookSpec.from_dict(data)
        job._setup(
            spec,
            llm=llm,
            backend=backend or stored_backend,
            store=records.store,
            limiter=limiter,
        )
        job.broker, job.poll_s = broker, poll_s
        return job

    def __repr__(self) -> str:
        s = self.status()
        return (
            f"<BookJob {self.job_id} {self.backend}: {s['ok']}/{s['units']} versions ok, "
            f"{s['chapters_done']}/{s['chapters']} chapters>"
        )

    @property
    def job_id(self) -> str:
        return self.spec.job_id

    # -- planning ------------------------------------------------------------------------
    def pending_units(self) -> list[tuple[int, int]]:
        """Units not yet ok in the store (a complete chapter contributes none); with
        Celery, after collecting what the workers recorded in Redis."""
        self.collect()
        done = self.records.ok_units(self.job_id, self.spec.chapters)
        todo: list[tuple[int, int]] = []
        for chapter in self.spec.chapters:
            for version in range(1, self.spec.versions + 1):
                if (chapter, version) in done:
                    self.records.set_state(self.job_id, chapter, version, "ok")
                else:
                    todo.append((chapter, version))
        return todo

    # -- running -------------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        """Generate every unit not already ok; returns :meth:`status` at the end.

        Cancelling the awaiting task stops the job: finished units are kept, units in
        flight become ``cancelled``, and :meth:`resume` picks up what is left.
        """
        self._session_start, self._session_end = time.time(), None
        self.refresh()
        try:
            if self.backend == "local":
                await self._run_local(self.pending_units())
            else:
                await self._run_celery()
        finally:
            self._session_end = time.time()
            self.refresh()
        return self.status()

    async def resume(self) -> dict[str, Any]:
        """Run what is left (the same as :meth:`run`: done units are never redone)."""
        return await self.run()

    def start(self) -> asyncio.Task[dict[str, Any]]:
        """:meth:`run` as a task on the running loop (the job keeps a reference)."""
        if self._task is not None and not self._task.done():
            raise ConfigError(f"book job {self.job_id} is already running")
        self._task = asyncio.get_running_loop().create_task(self.run())
        return self._task

    def cancel(self) -> None:
        """Stop the job started with :meth:`start` (finished units are kept). With Celery,
        queued tasks are told to skip; units already running finish."""
        if self.backend == "celery":
            from .celery_app import cancel_job

            cancel_job(self.job_id, self.broker)
        if self._task is not None:
            self._task.cancel()

    async def _run_local(self, todo: list[tuple[int, int]]) -> None:
        limiter = self._limiter or FixedLimit(self.spec.limit)
        llm = self._llm if self._llm is not None else backend_from_spec(self.spec.llm)
        queue: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
        for chapter, version in todo:
            self.records.set_state(self.job_id, chapter, version, "queued")
            queue.put_nowait((chapter, version))
        # More consumers than slots, so a unit sleeping before a retry (it holds no slot)
        # does not leave a slot idle.
        consumers = [
            asyncio.ensure_future(self._consume(queue, limiter, llm))
            for _ in range(min(len(todo), 2 * limiter.limit))
        ]
        try:
            await asyncio.gather(*consumers)
        finally:
            for consumer in consumers:
                consumer.cancel()
            await asyncio.gather(*consumers, return_exceptions=True)
            while not queue.empty():  # never started: back to pending
                chapter, version = queue.get_nowait()
                self.records.set_state(self.job_id, chapter, version, "pending")

    async def _consume(
        self, queue: asyncio.Queue[tuple[int, int]], limiter: Limiter, llm: LLMConfig | Backend
    ) -> None:
        while not queue.empty():
            chapter, version = queue.get_nowait()
            await run_unit(
                self.spec,
                chapter,
                version,
                llm=llm,
                limiter=limiter,
                records=self.records,
                worker="kernel",
                on_event=self._on_event,
            )
            self.poke()

    def _on_event(self, event: Event) -> None:
        if not isinstance(event, TokenDelta):
            self.poke()

    def submit(self) -> list[str]:
        """Celery: queue a task for every unit not yet ok and return at once (task ids).
        Watch with :meth:`status` or the widget; :meth:`run` submits and waits."""
        if self.backend != "celery":
            raise ConfigError('submit() is for backend="celery"; use run() or start()')
        from .celery_app import redis_client, submit_units

        todo = self.pending_units()
        client = redis_client(self.broker)
        try:
            # Old failed/cancelled records of these units would read as this run's end.
            forget_units(client, self.job_id, todo)
            set_cancelled(client, self.job_id, False)
        finally:
            client.close()
        for chapter, version in todo:
            self.records.set_state(self.job_id, chapter, version, "queued")
        submission = uuid.uuid4().hex[:12]
        self._task_ids = submit_units(self.spec, todo, self.broker, submission=submission)
        return self._task_ids

    async def _run_celery(self) -> None:
        from redis.exceptions import RedisError

        await asyncio.to_thread(self.submit)
        # Workers record in Redis; this loop copies their results into this job's store.
        while True:
            try:
                await asyncio.to_thread(self.collect)
            except (RedisError, OSError) as exc:  # a blip: the workers carry on
                log.warning("book job %s: cannot read Redis (%s); retrying", self.job_id, exc)
            self.refresh()
            if self._all_final():
                return
            await asyncio.sleep(self.poll_s)

    # -- collecting (Celery) -------------------------------------------------------------
    def collect(self) -> int:
        """Celery: copy what the workers recorded in Redis into this job's store — each
        unit's state, worker and requests, and every finished version not stored yet.
        Returns how many versions were written. Safe to repeat; :meth:`run` does it on
        every poll, and :meth:`status`, :meth:`frame` and :meth:`export` on their own."""
        if self.backend != "celery":
            return 0
        from .celery_app import redis_client

        with self._collect_lock:
            client = redis_client(self.broker)
            try:
                reports = read_units(client, self.job_id)
                have = self.records.ok_units(self.job_id, self.spec.chapters)
                new = [r for r in reports if r.result and r.result not in self._collected]
                wanted = [(r.chapter, r.version) for r in new if (r.chapter, r.version) not in have]
                results = read_results(client, self.job_id, wanted)
            finally:
                client.close()
            # Versions first, then states: a unit never reads ok before its text is here.
            written = {unit for unit, data in results.items() if self._store_result(*unit, data)}
            changed = self._sync_states(reports)
            for chapter in changed | {c for c, _ in written}:
                self._finish_chapter(chapter)
            self._collected.update(r.result for r in reports if r.result)
            self._synced_at = time.monotonic()
        return len(written)

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
        """The chapter's store run, as the engine would have written it on a worker."""
        spec, store = self.spec, self.records.store
        run = Run(
            run_id=chapter_run_id(self.job_id, chapter),
            versions=[Version(i) for i in range(1, spec.versions + 1)],
            max_parallel_requests=min(spec.limit, 10),
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

    def _sync(self, every_s: float = _SYNC_EVERY_S) -> None:
        """:meth:`collect` for readers, at most every ``every_s``; if Redis cannot be
        reached, readers get what the store has (and a warning), not an exception."""
        if self.backend != "celery" or time.monotonic() - self._synced_at < every_s:
            return
        from redis.exceptions import RedisError

        try:
            self.collect()
        except (RedisError, OSError) as exc:
            self._synced_at = time.monotonic()
            log.warning("book job %s: cannot read Redis (%s); showing the store", self.job_id, exc)

    # -- watching ------------------------------------------------------------------------
    def finished(self) -> bool:
        """True when every unit is ok or failed."""
        self._sync()
        return self._all_final()

    def _all_final(self) -> bool:
        return all(u["state"] in SETTLED for u in self.records.units(self.job_id))

    def status(self) -> dict[str, Any]:
        """Counts, chapters done, elapsed and ETA of this session (JSON-ready)."""
        self._sync()
        units = self.records.units(self.job_id)
        states = Counter(u["state"] for u in units)
        by_chapter: dict[int, list[str]] = {}
        for u in units:
            by_chapter.setdefault(u["chapter"], []).append(u["state"])
        now = self._session_end or time.time()
        start = self._session_start
        elapsed = None if start is None else now - start
        finished_now = sum(
            u["state"] in SETTLED and start is not None and u["updated_at"] >= start for u in units
        )
        remaining = len(units) - states["ok"] - states["failed"]
        eta = None
        if elapsed is not None and finished_now and remaining:
            eta = elapsed / finished_now * remaining
        return {
            "job_id": self.job_id,
            "backend": self.backend,
            "chapters": len(self.spec.chapters),
            "chapters_done": sum(all(s == "ok" for s in ss) for ss in by_chapter.values()),
            "units": len(units),
            **{state: states[state] for state in ("ok", "failed", "running", "queued")},
            "cancelled": states["cancelled"],
            "pending": states["pending"],
            "requests": sum(u["requests"] for u in units),
            "elapsed_s": elapsed,
            "eta_s": 0.0 if remaining == 0 else eta,
        }

    def frame(self) -> pd.DataFrame:
        """One row per unit; columns in :data:`BOOK_FRAME_COLUMNS`."""
        import pandas as pd

        self._sync()
        stored = {
            (c, v.index): v
            for c in self.spec.chapters
            for v in self.records.store.get_versions(chapter_run_id(self.job_id, c))
        }
        rows = []
        for u in self.records.units(self.job_id):
            v = stored.get((u["chapter"], u["version"]))
            rows.append(
                {
                    "job_id": self.job_id,
                    "run_id": chapter_run_id(self.job_id, u["chapter"]),
                    "chapter": u["chapter"],
                    "version": u["version"],
                    "status": u["state"],
                    "attempts": v.attempts if v else 0,
                    "requests": u["requests"],
                    "duration_s": v.duration_s if v else None,
                    "ttft_s": v.ttft_s if v else None,
                    "output_tokens": v.output_tokens if v else 0,
                    "chars": len(v.content or "") if v else 0,
                    "worker": u["worker"],
                    "key_id": v.key_id if v else None,
                    "error_type": v.error_type if v else None,
                    "error": v.error if v else None,
                }
            )
        return pd.DataFrame(rows, columns=list(BOOK_FRAME_COLUMNS))

    def export(self, out: str | Path) -> list[Path]:
        """Write ``chapter-<c>/version-<v>.md`` for every ok version; returns the paths."""
        self._sync(every_s=0.0)
        written: list[Path] = []
        for chapter in self.spec.chapters:
            for v in self.records.store.get_versions(chapter_run_id(self.job_id, chapter)):
                if v.ok:
                    path = Path(out) / f"chapter-{chapter}" / f"version-{v.index}.md"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(v.content or "", encoding="utf-8")
                    written.append(path)
        return written

    # -- the progress widget -------------------------------------------------------------
    @property
    def widget(self) -> BookProgress:
        """The progress widget (made on first use; show it as a cell's last expression)."""
        if self._widget is None:
            from ..widgets.book import BookProgress

            self._widget = BookProgress(self.status)
        return self._widget

    def poke(self) -> None:
        """Ask the widget (if any) for a throttled redraw."""
        if self._widget is not None:
            self._widget.poke()

    def refresh(self) -> None:
        """Redraw the widget (if any) now."""
        if self._widget is not None:
            self._widget.refresh()

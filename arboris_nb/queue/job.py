"""Whole-book generation: every (chapter, version) unit under one global concurrency limit.

:class:`BookJob` plans a job (chapters × versions), writes it to the run store, and runs
the units that are not already ok there — in this process on an asyncio queue
(``backend="local"``, the default) or as Celery tasks on any number of workers
(``backend="celery"``, see :mod:`arboris_nb.queue.celery_app`). Either way each unit is
one engine call (``indices=[v]``) into the store run ``<job_id>-ch<chapter>``, so a
version already ok is never requested again and a job can be resumed from any process
with :meth:`BookJob.load`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
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
from ..retry import RetryPolicy
from ..store import RunStore, StoreSpec, open_store
from .records import FINAL, BookRecords, chapter_run_id
from .unit import BookSpec, backend_from_spec, llm_spec, run_unit

if TYPE_CHECKING:
    import pandas as pd

    from ..widgets.book import BookProgress

__all__ = ["BOOK_FRAME_COLUMNS", "BookJob", "parse_chapters"]

log = logging.getLogger("arboris_nb")

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
        """Units not yet ok in the store (a complete chapter contributes none)."""
        todo: list[tuple[int, int]] = []
        for chapter in self.spec.chapters:
            done = self.records.ok_versions(self.job_id, chapter)
            for version in range(1, self.spec.versions + 1):
                if version in done:
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
        from .celery_app import clear_cancel, submit_units

        todo = self.pending_units()
        for chapter, version in todo:
            self.records.set_state(self.job_id, chapter, version, "queued")
        clear_cancel(self.job_id, self.broker)
        self._task_ids = submit_units(self.spec, todo, self.broker)
        return self._task_ids

    async def _run_celery(self) -> None:
        await asyncio.to_thread(self.submit)
        # Workers write to the store; the notebook only watches it.
        while not self.finished():
            await asyncio.sleep(self.poll_s)
            self.refresh()

    # -- watching ------------------------------------------------------------------------
    def finished(self) -> bool:
        """True when every unit is ok or failed."""
        return all(u["state"] in FINAL for u in self.records.units(self.job_id))

    def status(self) -> dict[str, Any]:
        """Counts, chapters done, elapsed and ETA of this session (JSON-ready)."""
        units = self.records.units(self.job_id)
        states = Counter(u["state"] for u in units)
        by_chapter: dict[int, list[str]] = {}
        for u in units:
            by_chapter.setdefault(u["chapter"], []).append(u["state"])
        now = self._session_end or time.time()
        start = self._session_start
        elapsed = None if start is None else now - start
        finished_now = sum(
            u["state"] in FINAL and start is not None and u["updated_at"] >= start for u in units
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

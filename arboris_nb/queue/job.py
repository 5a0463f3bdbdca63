"""Whole-book generation: every (chapter, version) unit under one global concurrency limit.

:class:`BookJob` plans a job (chapters × versions), writes it to the run store, and has
its executor run the units that are not already ok there — in this process on an asyncio
queue (``backend="local"``, the default, :mod:`.local`) or as Celery tasks on any number
of workers (``backend="celery"``, :mod:`.celery_executor`). Either way each unit is one
engine call (``indices=[v]``) into the store run ``<job_id>-ch<chapter>``, so a version
already ok is never requested again and a job can be resumed from any process with
:meth:`BookJob.load`. With Celery, workers record results in Redis (they may have no
access to this store) and :meth:`BookJob.collect` copies them into this job's store.

Views subscribe to the job (:meth:`BookJob.subscribe`); the job knows none of them (the
progress widget is ``arboris_nb.widgets.BookProgress(job)``).
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
from typing import TYPE_CHECKING, Any

from ..backends.base import Backend, Message
from ..config import LLMConfig
from ..errors import ConfigError, StateError
from ..limits import Limiter
from ..prompts import as_messages
from ..results import Version
from ..retry import RetryPolicy
from ..store import RunStore, StoreSpec, open_store
from .executor import BackendName, Executor, Notify, Unit, make_executor
from .records import SETTLED, BookRecords, chapter_run_id
from .unit import BookSpec, llm_spec

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["BOOK_FRAME_COLUMNS", "BookJob", "parse_chapters"]

log = logging.getLogger("arboris_nb")

_SYNC_EVERY_S = 0.5  # status() and the widget read Redis at most this often

PromptSource = (
    str | Mapping[int, str | Sequence[Message]] | Callable[[int], str | Sequence[Message]]
)

#: Columns of :meth:`BookJob.frame`, one row per unit.
BOOK_FRAME_COLUMNS: dict[str, str] = {
    "job_id": "id of the book job",
    "run_id": "store run of the chapter (<job_id>-ch<chapter>)",
    "chapter": "chapter number",
    "version": "1-based version index",
    "status": "pending, queued (waiting for a slot), running (holding one), ok, failed "
    "or cancelled",
    "attempts": "attempts of the stored result (1 = first try)",
    "requests": "attempts made for this unit over all sessions (what was paid for)",
    "duration_s": "seconds from first admitted to finished (retries included)",
    "ttft_s": "seconds to the first token of the kept attempt",
    "output_tokens": "completion tokens",
    "input_tokens": "prompt tokens of the stored result (None: not reported)",
    "cost": "US dollars the stored result was billed, every attempt (None: unknown)",
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
    ``limiter``: share a limit with other jobs in this process (local backend only);
    ``broker`` and ``poll_s``: Redis URL and poll interval (Celery backend only).
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
        records = BookRecords(_open(store))
        self._setup(spec, records, backend, llm=llm, limiter=limiter, broker=broker, poll_s=poll_s)
        if not records.save_job(spec.job_id, project, {**spec.to_dict(), "backend": backend}):
            raise StateError(
                f"book job {spec.job_id!r} already exists: resume it with "
                f"BookJob.load({spec.job_id!r}) or `arboris-nb book resume {spec.job_id}`"
            )
        records.add_units(spec.job_id, spec.units())

    def _setup(
        self,
        spec: BookSpec,
        records: BookRecords,
        backend: str,
        *,
        llm: LLMConfig | Backend | None,
        limiter: Limiter | None,
        broker: str | None,
        poll_s: float,
    ) -> None:
        self.spec = spec
        self.records = records
        self._listeners: list[Notify] = []
        self._executor: Executor = make_executor(
            backend,
            spec=spec,
            records=records,
            notify=self._notify,
            llm=llm,
            limiter=limiter,
            broker=broker,
            poll_s=poll_s,
        )
        self._task: asyncio.Task[dict[str, Any]] | None = None
        self._session_start: float | None = None
        self._session_end: float | None = None
        self._billed: tuple[tuple[Any, ...], tuple[float | None, float | None]] = ((), (None, None))

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
        job._setup(
            BookSpec.from_dict(data),
            records,
            backend or stored_backend,
            llm=llm,
            limiter=limiter,
            broker=broker,
            poll_s=poll_s,
        )
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

    @property
    def backend(self) -> BackendName:
        """Where the units run: ``"local"`` or ``"celery"``."""
        return self._executor.name

    # -- planning ------------------------------------------------------------------------
    def pending_units(self) -> list[Unit]:
        """Units not yet ok in the store (a complete chapter contributes none); with
        Celery, after collecting what the workers recorded in Redis."""
        self.collect()
        done = self.records.ok_units(self.job_id, self.spec.chapters)
        todo: list[Unit] = []
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
        self._notify(True)
        try:
            await self._executor.run(self.pending_units)
        finally:
            self._session_end = time.time()
            self._notify(True)
        return self.status()

    async def resume(self) -> dict[str, Any]:
        """Run what is left (the same as :meth:`run`: done units are never redone)."""
        return await self.run()

    def start(self) -> asyncio.Task[dict[str, Any]]:
        """:meth:`run` as a task on the running loop (the job keeps a reference)."""
        if self._task is not None and not self._task.done():
            raise StateError(f"book job {self.job_id} is already running: await it or cancel it")
        self._task = asyncio.get_running_loop().create_task(self.run())
        return self._task

    def cancel(self) -> None:
        """Stop the job started with :meth:`start` (finished units are kept). With Celery,
        queued tasks are told to skip; units already running finish."""
        self._executor.cancel()
        if self._task is not None:
            self._task.cancel()

    def submit(self) -> list[str]:
        """Celery: queue a task for every unit not yet ok and return at once (task ids).
        Watch with :meth:`status` or ``BookProgress(job)``; :meth:`run` submits and waits."""
        return self._executor.submit(self.pending_units())

    def collect(self) -> int:
        """Celery: copy what the workers recorded in Redis into this job's store — each
        unit's state, worker and requests, and every finished version not stored yet.
        Returns how many versions were written (0 with the local backend). Safe to repeat;
        :meth:`run` does it on every poll, and :meth:`status`, :meth:`frame` and
        :meth:`export` on their own."""
        return self._executor.collect()

    # -- watching ------------------------------------------------------------------------
    def subscribe(self, listener: Callable[[bool], None]) -> Callable[[], None]:
        """Call ``listener(now)`` when the progress may have changed: ``now=False`` on
        engine events and finished units (redraw when convenient), ``True`` when a session
        starts or ends and on every Celery poll. Returns a function that unsubscribes.
        This is how views (``arboris_nb.widgets.BookProgress``) follow the job."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def _notify(self, now: bool) -> None:
        for listener in list(self._listeners):
            try:
                listener(now)
            except Exception:  # a broken view must not stop the job
                log.exception("book job %s: progress listener %r failed", self.job_id, listener)

    def finished(self) -> bool:
        """True when every unit is ok or failed."""
        self._executor.sync(_SYNC_EVERY_S)
        return self.records.all_final(self.job_id)

    def status(self) -> dict[str, Any]:
        """Counts, chapters done, elapsed and ETA of this session (JSON-ready).

        ``running`` counts units holding a slot of the limit (never above ``limit``);
        ``queued`` those waiting for one (a retry's wait included); ``pending`` and
        ``cancelled`` those not in this session's queue. ``cost``: US dollars the stored
        results were billed so far (every attempt they record); ``projected_cost``: that
        plus the mean cost of a finished unit for each unit still to finish (None until
        one finished, or when a price or some usage is unknown)."""
        self._executor.sync(_SYNC_EVERY_S)
        units = self.records.units(self.job_id)
        states = Counter(u["state"] for u in units)
        by_chapter: dict[int, list[str]] = {}
        for u in units:
            by_chapter.setdefault(u["chapter"], []).append(u["state"])
        elapsed, eta = self._timing(units, remaining=len(units) - states["ok"] - states["failed"])
        return {
            "job_id": self.job_id,
            "backend": self.backend,
            "limit": self._executor.limit,
            "chapters": len(self.spec.chapters),
            "chapters_done": sum(all(s == "ok" for s in ss) for ss in by_chapter.values()),
            "units": len(units),
            **{state: states[state] for state in _STATES},
            "requests": sum(u["requests"] for u in units),
            "elapsed_s": elapsed,
            "eta_s": eta,
            **dict(zip(("cost", "projected_cost"), self._costs(units), strict=True)),
        }

    def _costs(self, units: list[dict[str, Any]]) -> tuple[float | None, float | None]:
        """Cost so far and projected; read from the store only when a unit moved on."""
        key = tuple((u["chapter"], u["version"], u["state"], u["requests"]) for u in units)
        if key != self._billed[0]:
            stored = [
                v
                for c in self.spec.chapters
                for v in self.records.store.get_versions(chapter_run_id(self.job_id, c))
            ]
            self._billed = key, _projection(stored, len(units))
        return self._billed[1]

    def _timing(
        self, units: list[dict[str, Any]], *, remaining: int
    ) -> tuple[float | None, float | None]:
        """This session's elapsed seconds, and the ETA from its pace so far."""
        start = self._session_start
        if start is None:
            return None, (0.0 if remaining == 0 else None)
        elapsed = (self._session_end or time.time()) - start
        finished_now = sum(u["state"] in SETTLED and u["updated_at"] >= start for u in units)
        if remaining == 0:
            return elapsed, 0.0
        return elapsed, (elapsed / finished_now * remaining if finished_now else None)

    def frame(self) -> pd.DataFrame:
        """One row per unit; columns in :data:`BOOK_FRAME_COLUMNS`."""
        import pandas as pd

        self._executor.sync(_SYNC_EVERY_S)
        stored = {
            (c, v.index): v
            for c in self.spec.chapters
            for v in self.records.store.get_versions(chapter_run_id(self.job_id, c))
        }
        rows = [
            _frame_row(self.job_id, u, stored.get((u["chapter"], u["version"])))
            for u in self.records.units(self.job_id)
        ]
        return pd.DataFrame(rows, columns=list(BOOK_FRAME_COLUMNS))

    def export(self, out: str | Path) -> list[Path]:
        """Write ``chapter-<c>/version-<v>.md`` for every ok version; returns the paths."""
        self._executor.sync(0.0)
        written: list[Path] = []
        for chapter in self.spec.chapters:
            for v in self.records.store.get_versions(chapter_run_id(self.job_id, chapter)):
                if v.ok:
                    path = Path(out) / f"chapter-{chapter}" / f"version-{v.index}.md"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(v.content or "", encoding="utf-8")
                    written.append(path)
        return written


_STATES = ("ok", "failed", "running", "queued", "cancelled", "pending")


def _projection(stored: list[Version], units: int) -> tuple[float | None, float | None]:
    """(spent, projected): what the stored versions cost, and that plus the mean cost of
    a finished one for every unit not finished yet."""
    costs = [v.cost for v in stored]
    if not stored or None in costs:
        return None, None
    spent = sum(c for c in costs if c is not None)
    finished = [v.cost or 0.0 for v in stored if v.status in ("ok", "failed")]
    if not finished:
        return spent, None
    return spent, spent + sum(finished) / len(finished) * (units - len(finished))


def _frame_row(job_id: str, unit: dict[str, Any], v: Version | None) -> dict[str, Any]:
    """One row of :meth:`BookJob.frame`: the unit's state and its stored version, if any."""
    return {
        "job_id": job_id,
        "run_id": chapter_run_id(job_id, unit["chapter"]),
        "chapter": unit["chapter"],
        "version": unit["version"],
        "status": unit["state"],
        "attempts": v.attempt_count if v else 0,
        "requests": unit["requests"],
        "duration_s": v.duration_s if v else None,
        "ttft_s": v.ttft_s if v else None,
        "output_tokens": v.output_tokens if v else 0,
        "input_tokens": v.input_tokens if v else None,
        "cost": v.cost if v else None,
        "chars": len(v.content or "") if v else 0,
        "worker": unit["worker"],
        "key_id": v.key_id if v else None,
        "error_type": v.error_type if v else None,
        "error": v.error if v else None,
    }

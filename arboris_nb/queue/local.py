"""Book units in this process: :class:`LocalExecutor`, an asyncio queue on the running loop
whose units share one limiter (a :class:`~arboris_nb.limits.FixedLimit` of the job's
``limit`` unless one is given).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ..errors import ConfigError
from ..events import (
    Event,
    EventHandler,
    TokenDelta,
    VersionCancelled,
    VersionFailed,
    VersionFinished,
    VersionRetrying,
    VersionStarted,
)
from ..limits import FixedLimit, Limiter
from .executor import BackendName, Notify, Plan, Unit
from .unit import backend_from_spec, run_unit

if TYPE_CHECKING:
    from ..backends.base import Backend
    from ..config import LLMConfig
    from .records import BookRecords
    from .unit import BookSpec

__all__ = ["LocalExecutor"]

# A unit's state follows the engine's events. VersionStarted and VersionFinished come
# inside the attempt's slot, VersionRetrying / VersionFailed / VersionCancelled right after
# it is released, before the loop runs anything else (with an asyncio limiter), so no
# other unit can be marked running in between: "running" counts slots held.
_STATE_OF: dict[type[Event], str] = {
    VersionStarted: "running",
    VersionRetrying: "queued",  # a retry waits without a slot
    VersionFinished: "ok",
    VersionFailed: "failed",
    VersionCancelled: "cancelled",
}


class LocalExecutor:
    """Runs every unit of a job on this loop, at most ``limit`` requests at once."""

    def __init__(
        self,
        spec: BookSpec,
        records: BookRecords,
        notify: Notify,
        *,
        llm: LLMConfig | Backend | None,
        limiter: Limiter | None,
    ) -> None:
        self.spec, self.records, self._notify = spec, records, notify
        self._llm = llm
        self._limiter = limiter

    @property
    def name(self) -> BackendName:
        return "local"

    @property
    def limit(self) -> int:
        return self.spec.limit if self._limiter is None else self._limiter.limit

    async def run(self, plan: Plan) -> None:
        todo = plan()
        # A fresh semaphore per run: one made on another (closed) loop cannot be awaited.
        limiter = self._limiter or FixedLimit(self.spec.limit)
        llm = self._llm if self._llm is not None else backend_from_spec(self.spec.llm)
        queue: asyncio.Queue[Unit] = asyncio.Queue()
        for chapter, version in todo:
            self.records.set_state(self.spec.job_id, chapter, version, "queued")
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
                self.records.set_state(self.spec.job_id, chapter, version, "pending")

    async def _consume(
        self, queue: asyncio.Queue[Unit], limiter: Limiter, llm: LLMConfig | Backend
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
                on_event=self._tracker(chapter, version),
            )
            self._notify(False)

    def _tracker(self, chapter: int, version: int) -> EventHandler:
        """The engine-event subscriber of one unit: its state, then a progress poke."""

        def track(event: Event) -> None:
            if isinstance(event, TokenDelta):
                return  # per token: far too often, and changes no state
            state = _STATE_OF.get(type(event))
            if state is not None:
                self.records.set_state(self.spec.job_id, chapter, version, state)
            self._notify(False)

        return track

    def submit(self, todo: list[Unit]) -> list[str]:
        raise ConfigError('submit() is for backend="celery"; use run() or start()')

    def cancel(self) -> None:
        """Nothing runs outside the job's task: cancelling it stops every unit."""

    def collect(self) -> int:
        return 0  # results are written to the store as they finish

    def sync(self, every_s: float) -> None:
        """The store is always up to date."""

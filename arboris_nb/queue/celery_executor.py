"""Book units as Celery tasks: :class:`CeleryExecutor` queues them, then follows them
through Redis with a :class:`~arboris_nb.queue.collector.Collector`. Celery itself is
imported only when a job uses it (:mod:`arboris_nb.queue.celery_app`).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import TYPE_CHECKING

from ..errors import ConfigError
from .board import forget_units, set_cancelled
from .collector import Collector
from .executor import BackendName, Notify, Plan, Unit

if TYPE_CHECKING:
    from .records import BookRecords
    from .unit import BookSpec

__all__ = ["CeleryExecutor"]

log = logging.getLogger("arboris_nb")


class CeleryExecutor:
    """Submits a job's units to Celery workers on ``broker`` (default: the environment,
    see :mod:`.celery_app`) and polls Redis every ``poll_s`` while :meth:`run` waits."""

    def __init__(
        self,
        spec: BookSpec,
        records: BookRecords,
        notify: Notify,
        *,
        broker: str | None,
        poll_s: float,
    ) -> None:
        if not spec.llm.get("portable"):
            raise ConfigError(
                'backend="celery" needs llm=LLMConfig(...) or SimulatedLLM(...) without a '
                "reply function: workers rebuild the model in their own process"
            )
        if isinstance(poll_s, bool) or not isinstance(poll_s, int | float) or not poll_s > 0:
            raise ConfigError(f"poll_s must be a number of seconds above 0, got {poll_s!r}")
        self.spec, self.records, self._notify = spec, records, notify
        self.broker, self.poll_s = broker, float(poll_s)
        self.collector = Collector(spec, records, broker)
        self.task_ids: list[str] = []

    @property
    def name(self) -> BackendName:
        return "celery"

    @property
    def limit(self) -> int:
        return self.spec.limit

    def submit(self, todo: list[Unit]) -> list[str]:
        """Queue one task per unit under a new submission id; returns the task ids."""
        from .celery_app import redis_client, submit_units

        client = redis_client(self.broker)
        try:
            # Old failed/cancelled records of these units would read as this run's end.
            forget_units(client, self.spec.job_id, todo)
            set_cancelled(client, self.spec.job_id, False)
        finally:
            client.close()
        for chapter, version in todo:
            self.records.set_state(self.spec.job_id, chapter, version, "queued")
        submission = uuid.uuid4().hex[:12]
        self.task_ids = submit_units(self.spec, todo, self.broker, submission=submission)
        return self.task_ids

    async def run(self, plan: Plan) -> None:
        """Submit what ``plan()`` returns, then copy the workers' results into the store
        until every unit is ok or failed."""
        from redis.exceptions import RedisError

        await asyncio.to_thread(lambda: self.submit(plan()))
        while True:
            try:
                await asyncio.to_thread(self.collector.collect)
            except (RedisError, OSError) as exc:  # a blip: the workers carry on
                log.warning("book job %s: cannot read Redis (%s); retrying", self.spec.job_id, exc)
            self._notify(True)
            if self.records.all_final(self.spec.job_id):
                return
            await asyncio.sleep(self.poll_s)

    def cancel(self) -> None:
        """Tell queued tasks to skip; units already running finish."""
        from .celery_app import cancel_job

        cancel_job(self.spec.job_id, self.broker)

    def collect(self) -> int:
        return self.collector.collect()

    def sync(self, every_s: float) -> None:
        self.collector.sync(every_s)

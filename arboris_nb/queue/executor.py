"""How a book job's units get run: the :class:`Executor` protocol, and
:func:`make_executor` — the one place that reads ``backend="local"|"celery"``.

The job plans (which units are not ok yet), keeps the records and answers questions
(status, frame, export); an executor only runs units and keeps the unit states in the
job's records true while they run:

* :class:`~arboris_nb.queue.local.LocalExecutor` — an asyncio queue in this process;
* :class:`~arboris_nb.queue.celery_executor.CeleryExecutor` — Celery tasks on workers,
  whose results a :class:`~arboris_nb.queue.collector.Collector` copies from Redis.

Either way a unit is ``queued`` until it holds a slot of the limit, ``running`` while it
holds one (so "running" never exceeds the limit), then ``ok``, ``failed`` or ``cancelled``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, Protocol

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..backends.base import Backend
    from ..config import LLMConfig
    from ..limits import Limiter
    from .records import BookRecords
    from .unit import BookSpec

__all__ = ["BackendName", "Executor", "Notify", "Plan", "Unit", "make_executor"]

BackendName = Literal["local", "celery"]
Unit = tuple[int, int]  # (chapter, version)
Plan = Callable[[], list[Unit]]  # the units not ok yet (the job's pending_units)
Notify = Callable[[bool], None]  # "progress may have changed"; True = show it now


class Executor(Protocol):
    """Runs a job's units; the job holds one, chosen once by :func:`make_executor`."""

    @property
    def name(self) -> BackendName:
        """``"local"`` or ``"celery"`` (the job's ``backend``)."""
        ...

    @property
    def limit(self) -> int:
        """Requests in flight allowed now, for the whole job."""
        ...

    async def run(self, plan: Plan) -> None:
        """Run the units ``plan()`` returns until each has ended (ok, failed, cancelled)."""
        ...

    def submit(self, todo: list[Unit]) -> list[str]:
        """Queue ``todo`` and return at once (Celery task ids)."""
        ...

    def cancel(self) -> None:
        """Stop what this executor started outside the job's task (Celery: queued tasks)."""
        ...

    def collect(self) -> int:
        """Bring results made elsewhere into the job's store; how many versions it wrote."""
        ...

    def sync(self, every_s: float) -> None:
        """:meth:`collect` for readers: at most every ``every_s``, never raising on a
        lost connection."""
        ...


def make_executor(
    backend: str,
    *,
    spec: BookSpec,
    records: BookRecords,
    notify: Notify,
    llm: LLMConfig | Backend | None,
    limiter: Limiter | None,
    broker: str | None,
    poll_s: float,
) -> Executor:
    """The executor for ``backend``; a setting that does not apply to it is refused."""
    if backend == "local":
        from .local import LocalExecutor

        if broker is not None:
            raise ConfigError('broker= is for backend="celery"')
        return LocalExecutor(spec, records, notify, llm=llm, limiter=limiter)
    if backend == "celery":
        from .celery_executor import CeleryExecutor

        if limiter is not None:
            raise ConfigError(
                'limiter= is for backend="local": Celery workers share the limit through '
                "Redis (limit=, limit_name=)"
            )
        return CeleryExecutor(spec, records, notify, broker=broker, poll_s=poll_s)
    raise ConfigError(f'backend must be "local" or "celery", got {backend!r}')

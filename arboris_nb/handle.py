"""A run in progress: :class:`RunHandle`, what :func:`~arboris_nb.engine.start_versions`
returns.

The handle is the one place a caller controls a run from: the :class:`Run` exists at once
(``handle.run``: its id and its queued versions) and is live while it streams;
``handle.add_versions(k)`` starts more versions in it, ``handle.cancel_version(i)`` stops
one, ``handle.cancel()`` stops it all; ``await handle`` returns the finished Run. The runner does
the work on a task the handle owns; the resources the handle layer opened for the run
(an owned run store, an owned reply cache) are closed when that task ends, however it
ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Generator, Sequence
from typing import Any

from .errors import AllVersionsFailed
from .results import Run, Version
from .runner import Runner

__all__ = ["RunHandle"]

log = logging.getLogger("arboris_nb")


class RunHandle:
    """A run started by :func:`~arboris_nb.engine.start_versions`.

    * ``run`` — the :class:`Run`, there from the start (every version ``queued``) and
      updated in place as versions stream and finish;
    * ``cancel()`` — stop every version still queued or running; finished ones are kept,
      the rest become ``cancelled``, and ``await handle`` then returns the Run;
    * ``add_versions(k)`` / ``cancel_version(i)`` — the live pool: start k more versions
      of the same prompt in this run, or stop one version (the others go on);
    * ``await handle`` — the finished Run; raises :class:`AllVersionsFailed` (carrying the
      Run) when every version failed and ``raise_on_all_failed`` was set;
    * ``task`` / ``done()`` — the :class:`asyncio.Task` running it. Cancelling that task
      (or the task awaiting the handle) cancels the run too and re-raises
      ``CancelledError``, like cancelling any awaited task.
    """

    __slots__ = ("_closers", "_raise_on_all_failed", "_runner", "run", "task")

    def __init__(
        self,
        runner: Runner,
        *,
        raise_on_all_failed: bool = True,
        closers: Sequence[Callable[[], None]] = (),
    ) -> None:
        self._runner = runner
        self._raise_on_all_failed = raise_on_all_failed
        self._closers = list(closers)
        self.run: Run = runner.run
        self.task: asyncio.Task[Run] = asyncio.get_running_loop().create_task(
            self._drive(), name=f"arboris-run-{self.run.run_id}"
        )
        # A done callback, not a finally: it runs even when the task is cancelled before
        # its first step (then the coroutine body never runs at all).
        self.task.add_done_callback(self._close)

    def __repr__(self) -> str:
        state = "done" if self.task.done() else "running"
        return f"<RunHandle {self.run.run_id} {state}: {self.run.version_count} versions>"

    def __await__(self) -> Generator[Any, None, Run]:
        return self.task.__await__()

    def done(self) -> bool:
        """True once the run has ended (finished, failed or cancelled)."""
        return self.task.done()

    def cancel(self) -> None:
        """Stop every version still queued or running; finished versions are kept.

        Safe at any time, also before the run has started (every version is then
        ``cancelled`` without a request) or after it ended (nothing happens).
        """
        self._runner.cancel()

    def add_versions(self, k: int = 1) -> list[Version]:
        """Start ``k`` more versions of the same prompt in this run; returns them (queued).

        Indices continue after the last version; the run then keeps ``k`` more (the 1–10
        cap on ``version_count`` applies to the versions kept, so ``k`` is at most 10 minus
        ``run.keep``). Raises :class:`~arboris_nb.errors.StateError` once the run has ended,
        :class:`~arboris_nb.errors.ConfigError` for a ``k`` out of range.
        """
        return self._runner.pool.add_versions(k)

    def cancel_version(self, index: int) -> bool:
        """Stop version ``index``; the others go on. Its slot is freed at once (a queued
        version starts), it becomes ``cancelled`` (reason ``stopped``) and what it had
        streamed stays as ``partial`` text, never selectable. False when it had already
        ended; :class:`~arboris_nb.errors.ConfigError` when the run has no such version.
        """
        return self._runner.pool.cancel_version(index)

    async def _drive(self) -> Run:
        await self._runner.run_versions()
        run = self.run
        all_failed = bool(run.versions) and all(v.status == "failed" for v in run.versions)
        if all_failed and self._raise_on_all_failed:
            raise AllVersionsFailed(run)
        return run

    def _close(self, _task: asyncio.Task[Run]) -> None:
        for close in self._closers:
            try:
                close()
            except Exception:  # closing one resource must not keep the others open
                log.exception("closing %r after run %s failed", close, self.run.run_id)

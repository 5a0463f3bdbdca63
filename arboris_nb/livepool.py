"""The live pool: a run's versions while it runs — more added, one stopped, and the
surplus cancelled once the run has the versions it keeps ("keep the first N of N+k").

``add_versions`` and ``cancel_version`` are what :class:`~arboris_nb.handle.RunHandle`
offers; ``one_ok`` runs each time a version ends ok. The version tasks themselves are
the :class:`~arboris_nb.runner.Runner`'s: the pool asks it to queue, start and stop them.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from .config import COUNT_RANGE
from .errors import ConfigError, StateError
from .results import Version

if TYPE_CHECKING:
    from .runner import Runner

__all__ = ["LivePool"]


class LivePool:
    """Adds, stops and keeps the versions of ``runner``'s run."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.run = runner.run
        # Counted, not recounted: ``run.ok`` is a scan of every version, and at N = 2,000
        # one scan per finished version was a measurable share of the run's CPU.
        self.ok_count = len(self.run.ok)

    def add_versions(self, count: int) -> list[Version]:
        """Start ``count`` more versions of the same prompt in this run (indices continue);
        the run then keeps ``count`` more. Raises StateError once the run has ended."""
        runner = self.runner
        if not runner.accepting or runner.stopping:
            raise StateError("this run has ended: start a new run to write more versions")
        keep = self.run.keep_count
        room = COUNT_RANGE[1] - keep
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= room:
            raise ConfigError(
                f"add_versions(k): k must be a whole number from 1 to {room} — the versions "
                f"kept are capped at {COUNT_RANGE[1]} (version_count's range) and this run "
                f"keeps {keep}; got {count!r}"
            )
        first = max((v.index for v in self.run.versions), default=0) + 1
        added = [Version(index=first + i) for i in range(count)]
        self.run.versions.extend(added)
        self.run.keep = keep + count
        if runner.conn is None:  # not started yet: generate_all() queues them with the others
            return added
        for version in added:
            runner.enqueue(version)
            if self.run.parallel:
                runner.spawn(version)
        if not self.run.parallel and all(t.done() for t in runner.tasks):
            runner.tasks.append(asyncio.ensure_future(runner.generate_in_order()))
        return added

    def cancel_version(self, index: int, reason: str = "stopped") -> bool:
        """Stop one version: its slot is freed (a queued version takes it), what it had
        streamed is kept as ``partial``. False when it had already ended."""
        return self._stop(self.find(index), reason)

    def _stop(self, version: Version, reason: str) -> bool:
        if version.done:
            return False
        self.runner.mark_cancelled(version, reason)
        task = self.runner.version_tasks.get(version.index)
        if task is not None:
            task.cancel()
        return True

    def find(self, index: int) -> Version:
        for version in self.run.versions:
            if version.index == index:
                return version
        known = ", ".join(str(v.index) for v in self.run.versions)
        raise ConfigError(f"this run has no version {index!r} (its versions: {known})")

    def one_ok(self) -> None:
        """A version ended ok. Once the run has the versions it keeps, the others are
        surplus: cancel them."""
        self.ok_count += 1
        if self.ok_count < self.run.keep_count:
            return
        for version in self.run.versions:
            self._stop(version, "surplus")

"""Concurrency sweeps: the same batch at several limits, repeated, with a serial baseline.

``await sweep(versions=6, concurrency=[1, 2, 3, 6], repeats=3, llm=...)`` runs every
(N, C) pair ``repeats`` times through :func:`~arboris_nb.engine.generate_versions`,
interleaved (repeat by repeat) so slow drift in the server spreads over all settings
rather than biasing one. Benchmarks go beyond the editor's 1–10 range: ``indices=`` sets N
and a ``FixedLimit(c)`` sets C, so any N ≥ 1 and C ≥ 1 work.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from ..backends.base import Backend, Message
from ..cache import CacheSpec
from ..config import COUNT_RANGE, LLMConfig, WriterSettings
from ..engine import generate_versions
from ..errors import ConfigError
from ..events import EventHandler
from ..limits import FixedLimit
from ..results import Run
from ..retry import RetryPolicy
from ..store import StoreSpec
from .recorder import Recorder

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["DEFAULT_PROMPT", "SweepResult", "plan_sweep", "sweep", "sweep_sync"]

DEFAULT_PROMPT = "Write chapter one: the lighthouse keeper finds a letter in the storm."


@dataclass(frozen=True)
class _Step:
    repeat: int
    n: int
    c: int  # 1 for serial
    parallel: bool


@dataclass
class SweepResult:
    """What a sweep measured: the recorder and its frames (warm-up excluded)."""

    recorder: Recorder
    runs_list: list[Run] = field(default_factory=list)

    @cached_property
    def versions(self) -> pd.DataFrame:
        """One row per version (see ``VERSIONS_COLUMNS``)."""
        return self.recorder.versions_frame()

    @cached_property
    def runs(self) -> pd.DataFrame:
        """One row per run (see ``RUNS_COLUMNS``)."""
        return self.recorder.runs_frame()

    def table(self) -> pd.DataFrame:
        """Per (mode, N, C): runs, failures and mean ± std of the wall time, with the ideal."""
        grouped = self.runs.groupby(["mode", "version_count", "max_parallel_requests"], sort=True)
        table = grouped.agg(
            runs=("run_id", "count"),
            failed=("failed", "sum"),
            elapsed_s=("elapsed_s", "mean"),
            elapsed_std_s=("elapsed_s", "std"),
            ideal_s=("ideal_s", "mean"),
            wall_over_ideal=("wall_over_ideal", "mean"),
            efficiency=("efficiency", "mean"),
        )
        table = table.reset_index()
        serial_first = table["mode"] != "serial"
        return (
            table.assign(_k=serial_first)
            .sort_values(["_k", "version_count", "max_parallel_requests"])
            .drop(columns="_k")
            .reset_index(drop=True)
        )


def _check_counts(name: str, values: int | Sequence[int]) -> list[int]:
    items = [values] if isinstance(values, int) else list(values)
    if not items or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in items):
        raise ConfigError(f"{name} must be whole numbers of 1 or more, got {values!r}")
    return items


def plan_sweep(
    *,
    versions: int | Sequence[int],
    concurrency: Sequence[int],
    repeats: int,
    include_serial: bool,
) -> list[_Step]:
    """The runs of a sweep in the order they execute (validated; for progress and tests)."""
    ns = _check_counts("versions", versions)
    cs = _check_counts("concurrency", concurrency)
    (reps,) = _check_counts("repeats", repeats)
    steps: list[_Step] = []
    for repeat in range(1, reps + 1):
        for n in ns:
            if include_serial:
                steps.append(_Step(repeat, n, 1, parallel=False))
            steps.extend(_Step(repeat, n, c, parallel=True) for c in cs)
    return steps


async def _one(
    prompt: str | Sequence[Message],
    step: _Step,
    *,
    llm: LLMConfig | Backend | None,
    retry: RetryPolicy | None,
    on_event: EventHandler | None,
    store: StoreSpec,
    cache: CacheSpec,
) -> Run:
    high = COUNT_RANGE[1]
    # The settings only carry the mode; N and C come from indices= and the limiter, which
    # have no upper bound (the 1–10 range is the editor's, not the engine's).
    settings = WriterSettings(
        version_count=min(step.n, high),
        parallel=step.parallel,
        max_parallel_requests=min(step.c, high),
    )
    return await generate_versions(
        prompt,
        settings=settings,
        llm=llm,
        retry=retry,
        limiter=FixedLimit(step.c) if step.parallel else None,
        indices=range(1, step.n + 1),
        on_event=on_event,
        raise_on_all_failed=False,
        store=store,
        cache=cache,
    )


def _progress(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="sweep", unit="run", disable=not enabled, leave=False)


async def sweep(
    prompt: str | Sequence[Message] = DEFAULT_PROMPT,
    *,
    versions: int | Sequence[int] = 6,
    concurrency: Sequence[int] = (1, 2, 3, 5, 10),
    repeats: int = 3,
    include_serial: bool = True,
    llm: LLMConfig | Backend | None = None,
    retry: RetryPolicy | None = None,
    warmup: bool = True,
    progress: bool = True,
    label: str = "sweep",
    recorder: Recorder | None = None,
    store: StoreSpec = False,
    cache: CacheSpec = False,
) -> SweepResult:
    """Run every (N, C) ``repeats`` times (plus serial runs) and return the measurements.

    ``versions`` is one N or several; each N ≥ 1, each C ≥ 1 (no upper bound). A warm-up
    run (largest C, smallest N) opens connections and fills caches first and is not
    recorded. Failed versions are recorded, never raised. ``store`` and ``cache`` are
    off by default: measurement runs are not chapters to keep, and a cached reply would
    time the cache instead of the model.
    """
    steps = plan_sweep(
        versions=versions, concurrency=concurrency, repeats=repeats, include_serial=include_serial
    )
    recorder = recorder if recorder is not None else Recorder()
    result = SweepResult(recorder)
    bar = _progress(len(steps) + int(warmup), progress)
    try:
        if warmup:
            first = min(s.n for s in steps)
            top = max(s.c for s in steps)
            bar.set_postfix_str("warm-up")
            warm = _Step(0, first, top, True)
            await _one(prompt, warm, llm=llm, retry=retry, on_event=None, store=store, cache=cache)
            bar.update()
        for step in steps:
            bar.set_postfix_str(f"N={step.n} C={step.c if step.parallel else 'serial'}")
            handler = recorder.label(
                label, repeat=step.repeat, concurrency=step.c if step.parallel else None
            )
            run = await _one(
                prompt, step, llm=llm, retry=retry, on_event=handler, store=store, cache=cache
            )
            result.runs_list.append(run)
            bar.update()
    finally:
        bar.close()
    return result


def sweep_sync(prompt: str | Sequence[Message] = DEFAULT_PROMPT, **kwargs: Any) -> SweepResult:
    """Blocking :func:`sweep`; inside a running loop it uses a worker thread."""
    from .._sync import run_sync

    return run_sync(sweep(prompt, **kwargs))

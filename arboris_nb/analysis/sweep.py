"""Concurrency sweeps: the same batch at several limits, repeated, with a serial baseline.

``await sweep(versions=6, concurrency=[1, 2, 3, 6], repeats=3, llm=...)`` runs every
(N, C) pair ``repeats`` times through :func:`~arboris_nb.engine.generate_versions`,
interleaved (repeat by repeat) so slow drift in the server spreads over all settings
rather than biasing one. Benchmarks go beyond the editor's 1–10 range: ``indices=`` sets N
and a ``FixedLimit(c)`` sets C, so any N ≥ 1 and C ≥ 1 work. ``"auto"`` is one more point:
each of its runs gets a fresh adaptive limit, as ``max_parallel_requests="auto"`` does.

:meth:`SweepResult.recommendation` names the fixed C to use: the best throughput among
the limits whose runs had fewer than 5 % of their requests answered 429.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal, cast

from ..backends.base import Backend, Message
from ..cache import CacheSpec
from ..config import COUNT_RANGE, LLMConfig, WriterSettings
from ..engine import generate_versions
from ..errors import ConfigError
from ..events import EventHandler
from ..limits import AUTO_INITIAL, FixedLimit, Limiter, make_limiter
from ..results import Run
from ..retry import RetryPolicy
from ..store import StoreSpec
from .recorder import Recorder

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["DEFAULT_PROMPT", "Recommendation", "SweepResult", "plan_sweep", "sweep", "sweep_sync"]

DEFAULT_PROMPT = "Write chapter one: the lighthouse keeper finds a letter in the storm."
#: A limit is recommended only if fewer than this share of its requests were answered 429.
MAX_SHARE_429 = 0.05

Concurrency = int | Literal["auto"]  # a whole number ≥ 1, or "auto"


@dataclass(frozen=True)
class _Step:
    repeat: int
    n: int
    c: Concurrency  # 1 for serial
    parallel: bool


@dataclass(frozen=True)
class Recommendation:
    """The fixed limit to use, from a sweep (means over its repeats, at N versions)."""

    max_parallel_requests: int
    versions: int
    versions_per_s: float
    share_429: float
    auto_versions_per_s: float | None = None  # the ``auto`` runs, if the sweep had them
    auto_share_429: float | None = None

    def __str__(self) -> str:
        text = (
            f"recommended: max_parallel_requests={self.max_parallel_requests} "
            f"({self.versions_per_s:.2f} versions/s at N={self.versions}, "
            f"{self.share_429:.1%} of requests answered 429)"
        )
        if self.auto_versions_per_s is not None and self.auto_share_429 is not None:
            ratio = self.auto_versions_per_s / self.versions_per_s
            text += (
                f"; auto: {self.auto_versions_per_s:.2f} versions/s ({ratio:.2f} of it), "
                f"{self.auto_share_429:.1%} answered 429"
            )
        return text


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
        """Per (mode, N, C): runs, failures and mean ± std of the wall time, with the ideal,
        the throughput and the share of requests answered 429 (serial first, auto last)."""
        grouped = self.runs.groupby(["mode", "version_count", "max_parallel_requests"], sort=False)
        table = grouped.agg(
            runs=("run_id", "count"),
            failed=("failed", "sum"),
            elapsed_s=("elapsed_s", "mean"),
            elapsed_std_s=("elapsed_s", "std"),
            ideal_s=("ideal_s", "mean"),
            wall_over_ideal=("wall_over_ideal", "mean"),
            efficiency=("efficiency", "mean"),
            versions_per_s=("requests_per_s", "mean"),
            share_429=("share_429", "mean"),
        )
        table = table.reset_index()
        order = [
            (mode != "serial", n, c == "auto", c if isinstance(c, int) else 0)
            for mode, n, c in table[["mode", "version_count", "max_parallel_requests"]].values
        ]
        ranks = sorted(range(len(order)), key=order.__getitem__)
        return table.iloc[ranks].reset_index(drop=True)

    def recommendation(self, max_share_429: float = MAX_SHARE_429) -> Recommendation | None:
        """The fixed C with the best throughput whose 429 share is under ``max_share_429``,
        at the largest N swept (None without such a run)."""
        table = self.table()
        parallel = table[table["mode"] == "parallel"]
        if parallel.empty:
            return None
        n = int(parallel["version_count"].max())
        rows = parallel[parallel["version_count"] == n]
        auto = rows[rows["max_parallel_requests"] == "auto"]
        fixed = rows[
            (rows["max_parallel_requests"] != "auto") & (rows["share_429"] < max_share_429)
        ]
        fixed = fixed[fixed["versions_per_s"].notna()]
        if fixed.empty:
            return None
        best = fixed.sort_values("versions_per_s", kind="stable").iloc[-1]
        return Recommendation(
            max_parallel_requests=int(best["max_parallel_requests"]),
            versions=n,
            versions_per_s=float(best["versions_per_s"]),
            share_429=float(best["share_429"]),
            auto_versions_per_s=_number(auto["versions_per_s"]),
            auto_share_429=_number(auto["share_429"]),
        )


def _number(column: pd.Series) -> float | None:
    if column.empty or column.isna().all():
        return None
    value = float(column.iloc[0])
    return value if math.isfinite(value) else None


def _check_concurrency(values: Sequence[Concurrency]) -> list[Concurrency]:
    items = cast(list[Concurrency], [values] if isinstance(values, int | str) else list(values))
    bad = [
        v for v in items if v != "auto" and (isinstance(v, bool) or not isinstance(v, int) or v < 1)
    ]
    if not items or bad:
        raise ConfigError(
            f'concurrency must be whole numbers of 1 or more or "auto", got {values!r}'
        )
    return items


def _check_counts(name: str, values: int | Sequence[int]) -> list[int]:
    items = [values] if isinstance(values, int) else list(values)
    if not items or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in items):
        raise ConfigError(f"{name} must be whole numbers of 1 or more, got {values!r}")
    return items


def plan_sweep(
    *,
    versions: int | Sequence[int],
    concurrency: Sequence[Concurrency],
    repeats: int,
    include_serial: bool,
) -> list[_Step]:
    """The runs of a sweep in the order they execute (validated; for progress and tests)."""
    ns = _check_counts("versions", versions)
    cs = _check_concurrency(concurrency)
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
        max_parallel_requests=min(step.c, high) if isinstance(step.c, int) else step.c,
    )
    limiter: Limiter | None = None
    if step.parallel:  # "auto": a fresh adaptive limit per run, as the setting makes
        limiter = FixedLimit(step.c) if isinstance(step.c, int) else make_limiter(step.c)
    return await generate_versions(
        prompt,
        settings=settings,
        llm=llm,
        retry=retry,
        limiter=limiter,
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
    concurrency: Sequence[Concurrency] = (1, 2, 3, 5, 10),
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
    before_run: Callable[[], object] | None = None,
) -> SweepResult:
    """Run every (N, C) ``repeats`` times (plus serial runs) and return the measurements.

    ``versions`` is one N or several; each N ≥ 1, each C ≥ 1 (no upper bound) or
    ``"auto"``. A warm-up run (largest fixed C, smallest N) opens connections and fills
    caches first and is not recorded. Failed versions are recorded, never raised.
    ``store`` and ``cache`` are off by default: measurement runs are not chapters to
    keep, and a cached reply would time the cache instead of the model.
    ``before_run()`` is called before every run, warm-up included: ``bench --mock`` resets
    the mock there, so no run inherits a rate budget an earlier one spent.
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
            top = max((s.c for s in steps if isinstance(s.c, int)), default=AUTO_INITIAL)
            bar.set_postfix_str("warm-up")
            warm = _Step(0, first, top, True)
            if before_run is not None:
                before_run()
            await _one(prompt, warm, llm=llm, retry=retry, on_event=None, store=store, cache=cache)
            bar.update()
        for step in steps:
            bar.set_postfix_str(f"N={step.n} C={step.c if step.parallel else 'serial'}")
            fixed = step.c if step.parallel and isinstance(step.c, int) else None
            handler = recorder.label(label, repeat=step.repeat, concurrency=fixed)
            if before_run is not None:
                before_run()
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

"""Recorder: an ``on_event`` subscriber that turns any number of runs into tidy DataFrames.

``generate_versions(..., on_event=recorder)`` (or ``on_event=recorder.label("warm")``)
records each run; ``versions_frame()`` has one row per version, ``runs_frame()`` one per
run, with the speedup, efficiency and ideal-time figures of :mod:`.metrics`, and
``limits_frame()`` the concurrency trace of each run (the limit, requests in flight and
every 429 over time; see :mod:`.trace`).

Token events arrive once per streamed chunk, so the per-token work is O(1) and allocates
nothing: a counter and the first/last chunk times of the current attempt, kept in a
small slotted object per version. Everything else is read from the live ``Version`` and
``Run`` objects when a frame is built.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..events import Event, LimitChanged, RunFinished, RunStarted, TokenDelta, VersionStarted
from ..results import Run, Version
from . import metrics
from .trace import limit_trace

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["LIMITS_COLUMNS", "RUNS_COLUMNS", "VERSIONS_COLUMNS", "Recorder"]

#: Columns of :meth:`Recorder.versions_frame`, one row per version.
VERSIONS_COLUMNS: dict[str, str] = {
    "run_id": "id of the run",
    "run_index": "0-based order in which the recorder saw the run start",
    "label": "label given with Recorder.label() (None if none)",
    "repeat": "repeat number given with Recorder.label() (None if none)",
    "mode": '"parallel" or "serial"',
    "version_count": "N, versions in the run",
    "max_parallel_requests": 'C, the concurrency limit (1 in serial mode; "auto" if adaptive)',
    "version": "1-based version index",
    "status": '"ok", "failed" or "cancelled"',
    "kept": "True for the versions the run kept (see Run.keep)",
    "cancel_reason": '"surplus", "stopped" or "run_cancelled" when cancelled',
    "hedged": "True when a hedge request was started for it",
    "attempts": "attempts made for this version (a hedge is not one)",
    "queued_s": "queued, seconds after the run started",
    "queue_wait_s": "seconds waiting for a concurrency slot",
    "ttft_s": "seconds from the kept attempt's start to its first token",
    "itl_s": "mean gap between streamed chunks of the kept attempt (None if < 2 chunks)",
    "deltas": "text chunks streamed by the kept attempt",
    "duration_s": "seconds from first admitted to finished (retries included)",
    "output_tokens": "completion tokens (server usage when sent, else counted)",
    "input_tokens": "prompt tokens of the kept reply (its share with fanout n; None: not sent)",
    "cached_input_tokens": "of input_tokens, served from the provider's prompt cache",
    "cost": "US dollars billed for this version, every attempt (None: price or usage unknown)",
    "wasted_tokens": "output tokens billed (else streamed) and not kept (cancelled, losing hedge, "
    "failed attempts)",
    "wasted_cost": "US dollars of the requests whose text was not kept (None: price unknown)",
    "tokens_per_s": "output_tokens / generation time after the first token",
    "start_s": "admitted, seconds after the run started",
    "first_token_s": "first token of the kept attempt, seconds after the run started",
    "finish_s": "finished, seconds after the run started",
    "error_type": "exception class name when not ok",
}

#: Columns of :meth:`Recorder.runs_frame`, one row per run.
RUNS_COLUMNS: dict[str, str] = {
    "run_id": "id of the run",
    "run_index": "0-based order in which the recorder saw the run start",
    "label": "label given with Recorder.label()",
    "repeat": "repeat number given with Recorder.label()",
    "mode": '"parallel" or "serial"',
    "version_count": "N",
    "max_parallel_requests": 'C (1 in serial mode; "auto" if adaptive)',
    "ok": "versions that succeeded",
    "failed": "versions that failed",
    "cancelled": "versions cancelled",
    "keep": "versions the run keeps (N; the rest of N + extra are surplus)",
    "hedges": "hedge requests started",
    "wasted_tokens": "output tokens billed (else streamed) and not kept",
    "wasted_cost": "US dollars of the requests whose text was not kept (None: price unknown)",
    "attempts": "attempts made in all (hedges not counted)",
    "rate_limited": "requests answered 429 (hedges included)",
    "share_429": "rate_limited / requests (0.0–1.0)",
    "elapsed_s": "wall time of the run",
    "mean_duration_s": "L, mean duration of the ok versions",
    "serial_s": "serial wall time: measured (mean of serial runs, same label and N) or estimated",
    "serial_source": '"measured" or "estimated" (sum of this run\'s durations)',
    "speedup": "serial_s / elapsed_s",
    "efficiency": "(serial_s − elapsed_s) / serial_s × 100, in percent",
    "ideal_s": "⌈N/C⌉·L, the best wall time the limit allows (N: the versions kept; None for auto)",
    "gap_s": "elapsed_s − ideal_s",
    "wall_over_ideal": "elapsed_s / ideal_s (1.0 = ideal)",
    "ttft_p50_s": "median time to first token",
    "ttft_p90_s": "90th percentile time to first token",
    "ttft_p99_s": "99th percentile time to first token",
    "duration_p50_s": "median version duration",
    "duration_p90_s": "90th percentile version duration",
    "duration_p99_s": "99th percentile version duration",
    "requests_per_s": "ok versions / elapsed_s",
    "tokens_per_s": "output tokens of ok versions / elapsed_s",
    "input_tokens": "input tokens billed, every attempt (None: some usage unknown)",
    "cached_input_tokens": "of input_tokens, served from the prompt cache (None: not said)",
    "output_tokens": "output tokens billed, every attempt (None: some usage unknown)",
    "cost": "US dollars billed, every attempt (None: a price or some usage unknown)",
}


#: Columns of :meth:`Recorder.limits_frame`, one row per moment of each run's trace.
LIMITS_COLUMNS: dict[str, str] = {
    "run_id": "id of the run",
    "run_index": "0-based order in which the recorder saw the run start",
    "label": "label given with Recorder.label()",
    "repeat": "repeat number given with Recorder.label()",
    "max_parallel_requests": 'C, or "auto" for an adaptive limit',
    "t_s": "seconds after the run started",
    "limit": "the concurrency limit from then on",
    "in_flight": "attempts in flight from then on",
    "rate_limited": "True where an attempt was answered 429",
}


class _Trace:
    """Chunks of a version's current attempt: count and first/last arrival (run offsets)."""

    __slots__ = ("count", "first", "last")

    def __init__(self) -> None:
        self.count = 0
        self.first = 0.0
        self.last = 0.0

    @property
    def itl_s(self) -> float | None:
        return (self.last - self.first) / (self.count - 1) if self.count > 1 else None


@dataclass
class _Record:
    run: Run
    index: int
    label: str | None
    repeat: int | None
    concurrency: int | None
    traces: dict[int, _Trace] = field(default_factory=dict)  # keyed by id(Version)
    limits: list[tuple[float, int]] = field(default_factory=list)  # LimitChanged (t, limit)

    @property
    def adaptive(self) -> bool:
        return self.run.parallel and self.run.max_parallel_requests == "auto"

    @property
    def c(self) -> int:
        if not self.run.parallel:
            return 1
        return self.concurrency if self.concurrency is not None else self.run.concurrency

    @property
    def setting(self) -> int | str:
        """C as the run was configured: a number, or "auto"."""
        return "auto" if self.adaptive and self.concurrency is None else self.c


class Recorder:
    """Collects runs from engine events; call it as an ``on_event`` handler.

    ``label(name, repeat=, concurrency=)`` tags the runs that *start* after it (and
    returns the recorder, so ``on_event=recorder.label("warm")`` works). ``concurrency``
    overrides C when a ``limiter=`` set a limit the run's settings do not show.
    """

    def __init__(self, label: str | None = None) -> None:
        self._records: list[_Record] = []
        self._by_run: dict[int, _Record] = {}  # id(Run) → record
        self._traces: dict[int, _Trace] = {}  # id(Version) → trace, the hot path
        self._label = label
        self._repeat: int | None = None
        self._concurrency: int | None = None

    # -- subscribing ----------------------------------------------------------------
    def label(
        self, name: str | None, *, repeat: int | None = None, concurrency: int | None = None
    ) -> Recorder:
        """Tag the runs that start from now on; returns ``self`` for ``on_event=``."""
        self._label, self._repeat, self._concurrency = name, repeat, concurrency
        return self

    def __call__(self, event: Event) -> None:
        if type(event) is TokenDelta:  # once per chunk: keep it to a lookup and two stores
            trace = self._traces.get(id(event.version))
            if trace is not None:
                if trace.count == 0:
                    trace.first = event.t
                trace.last = event.t
                trace.count += 1
        elif isinstance(event, VersionStarted):
            self._start_attempt(event.run, event.version)
        elif isinstance(event, LimitChanged):
            record = self._by_run.get(id(event.run))
            if record is not None:
                record.limits.append((event.t, event.limit))
        elif isinstance(event, RunStarted):
            self._start_run(event.run)
        elif isinstance(event, RunFinished):
            self._finish_run(event.run)

    def _start_run(self, run: Run) -> None:
        record = _Record(run, len(self._records), self._label, self._repeat, self._concurrency)
        self._records.append(record)
        self._by_run[id(run)] = record

    def _start_attempt(self, run: Run, version: Version) -> None:
        record = self._by_run.get(id(run))
        if record is None:  # subscribed after the run started: nothing to attach to
            return
        trace = _Trace()  # a retry starts a fresh trace: only the kept attempt counts
        record.traces[id(version)] = trace
        self._traces[id(version)] = trace

    def _finish_run(self, run: Run) -> None:
        record = self._by_run.get(id(run))
        if record is not None:
            for key in record.traces:
                self._traces.pop(key, None)

    # -- reading ----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._records)

    @property
    def runs(self) -> list[Run]:
        """The recorded runs, in the order they started."""
        return [r.run for r in self._records]

    def clear(self) -> None:
        """Forget every recorded run."""
        self._records.clear()
        self._by_run.clear()
        self._traces.clear()

    def versions_frame(self) -> pd.DataFrame:
        """One row per version of every recorded run (columns: ``VERSIONS_COLUMNS``)."""
        import pandas as pd

        rows = [_version_row(rec, v) for rec in self._records for v in rec.run.versions]
        return pd.DataFrame(rows, columns=list(VERSIONS_COLUMNS))

    def runs_frame(self) -> pd.DataFrame:
        """One row per recorded run (columns: ``RUNS_COLUMNS``)."""
        import pandas as pd

        serial = self._measured_serial()
        rows = [
            _run_row(rec, serial.get((rec.label, rec.run.version_count))) for rec in self._records
        ]
        return pd.DataFrame(rows, columns=list(RUNS_COLUMNS))

    def limits_frame(self) -> pd.DataFrame:
        """The concurrency trace of every recorded run (columns: ``LIMITS_COLUMNS``): one
        row per limit move, attempt start and attempt end; 429 answers are marked."""
        import pandas as pd

        rows = [
            {
                **{k: v for k, v in _head(rec).items() if k in LIMITS_COLUMNS},
                "t_s": point.t_s,
                "limit": point.limit,
                "in_flight": point.in_flight,
                "rate_limited": point.rate_limited,
            }
            for rec in self._records
            for point in limit_trace(rec.run, rec.limits)
        ]
        return pd.DataFrame(rows, columns=list(LIMITS_COLUMNS))

    def limit_changes(self, run: Run) -> list[tuple[float, int]]:
        """The ``(t, limit)`` pairs a recorded run announced (empty if not recorded)."""
        record = self._by_run.get(id(run))
        return list(record.limits) if record is not None else []

    def _measured_serial(self) -> dict[tuple[str | None, int], float]:
        """Mean elapsed time of the finished serial runs, per (label, N)."""
        found: dict[tuple[str | None, int], list[float]] = {}
        for rec in self._records:
            run = rec.run
            if not run.parallel and run.elapsed_s is not None and run.done:
                found.setdefault((rec.label, run.version_count), []).append(run.elapsed_s)
        return {key: statistics.fmean(values) for key, values in found.items()}

    def to_csv(self, path: str | Path, *, which: Literal["runs", "versions"] = "runs") -> Path:
        """Write the runs (default) or versions frame as CSV; returns the path."""
        frame = self.runs_frame() if which == "runs" else self.versions_frame()
        path = Path(path)
        frame.to_csv(path, index=False)
        return path

    def to_json(self, path: str | Path) -> Path:
        """Write ``{"runs": [...], "versions": [...]}`` (missing values as null)."""
        data = {
            "runs": json.loads(self.runs_frame().to_json(orient="records")),
            "versions": json.loads(self.versions_frame().to_json(orient="records")),
        }
        path = Path(path)
        path.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
        return path


def _head(rec: _Record) -> dict[str, Any]:
    run = rec.run
    return {
        "run_id": run.run_id,
        "run_index": rec.index,
        "label": rec.label,
        "repeat": rec.repeat,
        "mode": run.mode,
        "version_count": run.version_count,
        "max_parallel_requests": rec.setting,
    }


def _version_row(rec: _Record, v: Version) -> dict[str, Any]:
    trace = rec.traces.get(id(v))
    return {
        **_head(rec),
        "version": v.index,
        "status": v.status,
        "kept": v.ok,
        "cancel_reason": v.cancel_reason,
        "hedged": v.hedged,
        "attempts": v.attempt_count,
        "queued_s": v.queued_at,
        "queue_wait_s": v.queue_wait_s,
        "ttft_s": v.ttft_s,
        "itl_s": trace.itl_s if trace else None,
        "deltas": trace.count if trace else 0,
        "duration_s": v.duration_s,
        "output_tokens": v.output_tokens,
        "input_tokens": v.input_tokens,
        "cached_input_tokens": v.cached_input_tokens,
        "cost": v.cost,
        "wasted_tokens": v.wasted_tokens,
        "wasted_cost": v.wasted_cost,
        "tokens_per_s": v.tokens_per_s,
        "start_s": v.started_at,
        "first_token_s": v.first_token_at,
        "finish_s": v.finished_at,
        "error_type": v.error_type,
    }


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def _run_row(rec: _Record, measured_serial: float | None) -> dict[str, Any]:
    run = rec.run
    ok = run.ok
    durations = [v.duration_s for v in ok if v.duration_s is not None]
    mean = statistics.fmean(durations) if durations else None
    elapsed = run.elapsed_s
    if not run.parallel:
        serial, source = elapsed, "measured"
    elif measured_serial is not None:
        serial, source = measured_serial, "measured"
    else:
        serial, source = (sum(durations) if durations else None), "estimated"
    # An adaptive limit has no fixed C, so no ideal to compare with. N: the versions kept.
    ideal = None if rec.setting == "auto" else metrics.ideal_time(run.keep_count, rec.c, mean)
    attempts = [a for v in run.versions for a in v.attempts]
    refused = sum(a.status_code == 429 for a in attempts)
    ttft = metrics.percentiles(v.ttft_s for v in ok)
    dur = metrics.percentiles(durations)
    return {
        **_head(rec),
        "ok": len(ok),
        "failed": len(run.failed),
        "cancelled": sum(v.status == "cancelled" for v in run.versions),
        "keep": run.keep_count,
        "hedges": sum(v.hedged for v in run.versions),
        "wasted_tokens": sum(v.wasted_tokens for v in run.versions),
        "wasted_cost": run.pool_summary()["wasted_cost"],
        "attempts": sum(v.attempt_count for v in run.versions),
        "rate_limited": refused,
        "share_429": _ratio(refused, len(attempts)) if attempts else 0.0,
        "elapsed_s": elapsed,
        "mean_duration_s": mean,
        "serial_s": serial,
        "serial_source": source if serial is not None else None,
        "speedup": metrics.speedup(serial, elapsed),
        "efficiency": metrics.efficiency(serial, elapsed),
        "ideal_s": ideal,
        "gap_s": metrics.gap(elapsed, ideal),
        "wall_over_ideal": _ratio(elapsed, ideal),
        **{f"ttft_{k}_s": value for k, value in ttft.items()},
        **{f"duration_{k}_s": value for k, value in dur.items()},
        "requests_per_s": _ratio(len(ok), elapsed),
        "tokens_per_s": _ratio(sum(v.output_tokens for v in ok), elapsed),
        "input_tokens": run.input_tokens,
        "cached_input_tokens": run.cached_input_tokens,
        "output_tokens": run.output_tokens,
        "cost": run.cost,
    }

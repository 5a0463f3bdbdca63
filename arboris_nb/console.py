"""Plain-text views of a run for terminals: live progress lines and a summary table."""

from __future__ import annotations

import sys
from typing import TextIO

from .events import (
    Event,
    VersionCancelled,
    VersionFailed,
    VersionFinished,
    VersionHedged,
    VersionRetrying,
    VersionStarted,
)
from .results import Run, Version

__all__ = ["ProgressPrinter", "format_summary", "head"]


def _s(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


class ProgressPrinter:
    """An ``on_event`` subscriber printing one line per version state change."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr

    def __call__(self, event: Event) -> None:
        line = self._line(event)
        if line:
            n = event.run.version_count
            print(f"[{event.t:7.2f}s] {line.format(n=n)}", file=self.stream, flush=True)

    def _line(self, event: Event) -> str | None:
        if isinstance(event, VersionStarted):
            return f"v{event.version.index}/{{n}} started (attempt {event.attempt})"
        if isinstance(event, VersionFinished):
            v = event.version
            return f"v{v.index}/{{n}} done in {_s(v.duration_s)} s, {v.output_tokens} tokens" + (
                f", {v.attempts} attempts" if v.attempts > 1 else ""
            )
        if isinstance(event, VersionRetrying):
            return (
                f"v{event.version.index}/{{n}} attempt {event.attempt} failed "
                f"({event.error}); retrying in {event.delay_s:.2f} s"
            )
        if isinstance(event, VersionFailed):
            return f"v{event.version.index}/{{n}} failed: {event.version.error}"
        if isinstance(event, VersionCancelled):
            reason = event.version.cancel_reason
            return f"v{event.version.index}/{{n}} cancelled" + (f" ({reason})" if reason else "")
        if isinstance(event, VersionHedged):
            return f"v{event.version.index}/{{n}} slow to start: hedged (attempt {event.attempt})"
        return None


def head(version: Version, width: int = 72) -> str:
    """The first ``width`` characters of a version's display text, on one line."""
    text = " ".join(version.display_text().split())
    return text if len(text) <= width else text[: width - 1] + "…"


def format_summary(run: Run) -> str:
    """A per-version table and the run's metrics, as the CLI and demo print them."""
    lines = [
        f"run {run.run_id}  mode={run.mode}  N={run.version_count}  "
        f"C={run.concurrency}  model={run.model}",
        f"{'ver':>3}  {'status':<9} {'attempts':>8} {'wait_s':>7} {'ttft_s':>7} "
        f"{'dur_s':>7} {'tokens':>7} {'tok/s':>7}",
    ]
    for v in run.versions:
        lines.append(
            f"{v.index:>3}  {v.status:<9} {v.attempts:>8} {_s(v.queue_wait_s):>7} "
            f"{_s(v.ttft_s):>7} {_s(v.duration_s):>7} {v.output_tokens:>7} "
            f"{_s(v.tokens_per_s, 1):>7}"
        )
    lines.append(f"elapsed {_s(run.elapsed_s)} s · ok {len(run.ok)}/{run.keep_count}")
    if run.parallel:  # a serial run is its own baseline: speedup and efficiency say nothing
        label = "estimated" if run.serial_is_estimated else "measured"
        lines[-1] += (
            f" · serial ({label}) {_s(run.serial_s)} s · speedup {_s(run.speedup)}x · "
            f"efficiency {_s(run.efficiency, 1)} % ({label}) · ideal {_s(run.ideal_s)} s"
        )
    pool = run.pool_summary()
    if pool["extra_versions"] or pool["hedges"] or pool["wasted_tokens"]:
        kept = ",".join(str(v.index) for v in run.kept) or "none"
        ratio = pool["wasted_ratio"]
        lines.append(
            f"kept {kept} (keep {pool['keep_count']}, {pool['extra_versions']} extra) · "
            f"hedges {pool['hedges']} (won {pool['hedges_won']}) · wasted "
            f"{pool['wasted_tokens']} tokens" + (f" ({ratio:.0%})" if ratio is not None else "")
        )
    return "\n".join(lines)

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
from .pricing import format_cost, format_tokens
from .results import Run, Version

__all__ = ["ProgressPrinter", "billed_line", "format_summary", "head", "run_bill", "version_bill"]


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
            return (
                f"v{v.index}/{{n}} done in {_s(v.duration_s)} s, {v.output_tokens} tokens"
                + (f", {v.attempt_count} attempts" if v.attempt_count > 1 else "")
                + (f", {format_cost(v.cost)}" if v.cost is not None else "")
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
        f"{'dur_s':>7} {'in_tok':>7} {'tokens':>7} {'tok/s':>7} {'cost':>9}",
    ]
    for v in run.versions:
        lines.append(
            f"{v.index:>3}  {v.status:<9} {v.attempt_count:>8} {_s(v.queue_wait_s):>7} "
            f"{_s(v.ttft_s):>7} {_s(v.duration_s):>7} {format_tokens(v.input_tokens):>7} "
            f"{v.output_tokens:>7} {_s(v.tokens_per_s, 1):>7} {format_cost(v.cost):>9}"
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
            f"{pool['wasted_tokens']} tokens"
            + (f" ({ratio:.0%})" if ratio is not None else "")
            + (f", {format_cost(pool['wasted_cost'])}" if pool["wasted_cost"] else "")
        )
    lines.append(billed_line(run))
    return "\n".join(lines)


def billed_line(run: Run) -> str:
    """What the run was billed, every attempt: tokens in (cached), out, and the cost."""
    cached = run.cached_input_tokens
    return (
        f"billed: input {format_tokens(run.input_tokens)} tokens"
        + (f" ({format_tokens(cached)} cached)" if cached else "")
        + f" · output {format_tokens(run.output_tokens)} tokens · cost {format_cost(run.cost)}"
    )


def version_bill(version: Version) -> str | None:
    """A finished version's bill, for a panel header: ``"2,000 tok in · $0.0027"`` —
    the input billed over every attempt, and the cost when priced (None before it ends,
    and for a cached reply: nothing was billed)."""
    if not version.done or not version.attempts:
        return None
    parts = [f"{format_tokens(version.billed_input_tokens)} tok in"]
    if version.cost is not None:
        parts.append(format_cost(version.cost))
    return " · ".join(parts)


def run_bill(run: Run) -> str | None:
    """The run's bill so far (attempts that ended), for a progress line:
    ``"6,000 in · 450 out tok · $0.0195"``; None before any attempt ended."""
    ended = [a for v in run.versions for a in v.attempts if a.finished_at is not None]
    if not ended:
        return None
    inputs = [a.input_tokens for a in ended]
    outputs = [a.output_tokens for a in ended]
    costs = [a.cost for a in ended]
    text = f"{format_tokens(_known_sum(inputs))} in · {format_tokens(_known_sum(outputs))} out tok"
    cost = _known_sum(costs)
    return text if cost is None else f"{text} · {format_cost(cost)}"


def _known_sum(values: list[int | None] | list[float | None]) -> float | None:
    """The sum, or None when any part is unknown (never a partial sum shown as whole)."""
    return None if None in values else sum(v for v in values if v is not None)

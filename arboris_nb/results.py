"""Results: a ``Run`` of ``Version``s. Each owns its timings and becomes DataFrame rows.

Timestamps are offsets in seconds from the run's start, read from the engine's clock
(the event loop's monotonic clock), so they are exact under a fake clock in tests.

* ``queue_wait_s``  queued → first admitted by the concurrency limiter
* ``ttft_s``        start of the attempt whose text was kept → its first token
* ``duration_s``    first admitted → finished, retries and their waits included

Tokens and money: each :class:`Attempt` keeps what its request was billed (server usage;
an engine estimate, labelled, when a stream broke before the usage came; this version's
share when one request carried several versions with ``n``). A Version's
``input_tokens`` / ``output_tokens`` / ``cached_input_tokens`` are its kept reply's; its
``billed_*`` counts and ``cost`` add up every attempt, failed ones included (a stream cut
after 300 tokens was paid for). A Run's totals add up its versions'.

One description of the fields: ``to_dict()`` / ``from_dict()`` on :class:`Attempt`,
:class:`Version` and :class:`Run` are derived from the dataclass fields, and the run store's
columns, the book queue's Redis records and the CLI's ``--json`` are built from them — so a
field added here is stored, sent and printed without another edit. ``from_dict`` ignores
keys it does not know (a newer writer's, or the derived metrics ``to_dict`` can add).
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from .decisions import Decision
from .textstats import TEXT_METRIC_COLUMNS, text_metrics

if TYPE_CHECKING:
    import pandas as pd

    from .verdict import Evaluation

__all__ = [
    "CANCEL_REASONS",
    "EDITOR_FIELDS",
    "FINAL",
    "FRAME_COLUMNS",
    "VERSION_METRICS",
    "Attempt",
    "Run",
    "Status",
    "Version",
    "failure_text",
]

Status = Literal["queued", "running", "retrying", "ok", "failed", "cancelled"]
#: The statuses a version ends its run in: it never changes again in that run.
FINAL: frozenset[str] = frozenset({"ok", "failed", "cancelled"})
#: Why a version was cancelled (``Version.cancel_reason``): the run kept the first N to
#: finish; a user stopped this one (``RunHandle.cancel_version``); the whole run was stopped.
CANCEL_REASONS = ("surplus", "stopped", "run_cancelled")
#: Derived figures :meth:`Version.to_dict` adds with ``metrics=True``.
VERSION_METRICS = (
    "attempt_count",
    "queue_wait_s",
    "ttft_s",
    "duration_s",
    "retry_wait_s",
    "tokens_per_s",
    "cost",
    "wasted_tokens",
    "wasted_cost",
)
Num = TypeVar("Num", int, float)
_EDITOR = {"editor": True}  # field metadata: set by an editor, never by generation


@functools.cache
def _field_names(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in fields(cls))


def _known(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``data`` that are fields of ``cls`` (a newer writer may send more)."""
    names = _field_names(cls)
    return {k: v for k, v in data.items() if k in names}


#: Columns of :meth:`Run.to_frame`, one row per version.
FRAME_COLUMNS: dict[str, str] = {
    "run_id": "id of the run",
    "project": "project name given to the run",
    "chapter": "chapter number given to the run",
    "mode": '"parallel" or "serial"',
    "version_count": "N, versions in the run",
    "max_parallel_requests": "C, the concurrency limit (N/A in serial mode: 1)",
    "model": "model name",
    "version": "1-based version index",
    "status": '"ok", "failed" or "cancelled"',
    "kept": "True for the versions the run kept (ok; at most the run's keep count)",
    "cancel_reason": '"surplus" (the first N were kept), "stopped" or "run_cancelled"',
    "attempts": "attempts made for this version (1 = first try; a hedge is not one)",
    "retried": "True when more than one attempt was needed",
    "hedged": "True when a duplicate (hedge) request was started for a slow attempt",
    "hedge_won": "True when the hedge finished first and its text was kept",
    "queue_wait_s": "seconds waiting for a concurrency slot",
    "ttft_s": "seconds from the kept attempt's start to its first token",
    "duration_s": "seconds from first admitted to finished (retries included)",
    "retry_wait_s": "seconds spent waiting between attempts",
    "output_tokens": "completion tokens of the text (server usage when sent, else counted); "
    "for a cancelled version, of its partial text",
    "input_tokens": "prompt tokens of the kept reply (its share with fanout n; None: not sent)",
    "cached_input_tokens": "of input_tokens, served from the provider's prompt cache",
    "cost": "US dollars billed for this version, every attempt (None: price or usage unknown)",
    "wasted_tokens": "output tokens billed (else streamed) and not kept: cancelled versions, "
    "losing hedges, failed attempts",
    "wasted_cost": "US dollars of the requests whose text was not kept (None: price unknown)",
    "tokens_per_s": "output_tokens / generation time after the first token",
    "start_s": "admitted, seconds after the run started",
    "finish_s": "finished, seconds after the run started",
    **TEXT_METRIC_COLUMNS,  # chars, words, paragraphs, dialogue_share, … (textstats.py)
    "partial_chars": "characters a cancelled version had streamed (its partial text)",
    "edited": "True when an editor changed the content after generation",
    "cached": "True when the reply came from the cache (no request, no timings)",
    "key_id": "masked id of the API key that served it",
    "error_type": "exception class name when not ok",
    "error": "error message when not ok",
}


def _total(values: Sequence[Num | None], zero: Num) -> Num | None:
    """The sum (``zero`` for none: nothing billed); None when any part is unknown, since
    a partial sum would pass for the whole."""
    total = zero
    for value in values:
        if value is None:
            return None
        total += value
    return total


def _said(values: list[int | None]) -> int | None:
    """The sum of what was said (None: nothing was); for counts a server may leave out."""
    said = [v for v in values if v is not None]
    return sum(said) if said else None


def failure_text(error: str | None, lang: str = "en") -> str:
    """How display code shows a failed version ("Generation failed: …")."""
    prefix = "生成失败" if lang == "zh" else "Generation failed"
    return f"{prefix}: {error or 'unknown error'}"


@dataclass
class Attempt:
    """One request made for a version."""

    number: int
    started_at: float
    finished_at: float | None = None
    error_type: str | None = None
    status_code: int | None = None
    wait_s: float = 0.0  # backoff waited *after* this attempt, before the next
    retry_after_s: float | None = None  # the server's hint, if it sent one
    # What this request was billed (None: unknown). With ``choices > 1`` (one request
    # for several versions) these are this version's share of the request's usage.
    # ``output_tokens`` is the server's count when it sent usage, else the chunks streamed
    # (an estimate: ``usage_estimated``); set when the request ends.
    input_tokens: int | None = None
    cached_input_tokens: int | None = None
    output_tokens: int | None = None
    usage_estimated: bool = False  # no usage from the server: the engine's estimate
    choices: int = 1  # versions the request carried (n)
    cost: float | None = None  # US dollars; None when the price or a count is unknown
    hedge: bool = False  # a duplicate of attempt ``number``, started because it was slow
    lost: bool = False  # cancelled because the other request of its hedge race finished
    first_token_at: float | None = None

    @property
    def ttft_s(self) -> float | None:
        """Seconds from this request's start to its first token."""
        return None if self.first_token_at is None else self.first_token_at - self.started_at

    def to_dict(self) -> dict[str, Any]:
        """The fields, JSON-ready."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Attempt:
        return cls(**_known(cls, data))


@dataclass
class Version:
    """One candidate chapter. ``content`` is None unless ``status == "ok"``.

    A cancelled version keeps what it had streamed as ``partial`` (never ``content``: it is
    not a finished chapter and cannot be selected) and says why in ``cancel_reason``.
    """

    index: int
    status: Status = "queued"
    content: str | None = None
    title: str | None = None
    summary: str | None = None
    error: str | None = None
    error_type: str | None = None
    queued_at: float = 0.0
    started_at: float | None = None
    first_token_at: float | None = None
    finished_at: float | None = None
    output_tokens: int = 0
    tokens_from_usage: bool = False
    input_tokens: int | None = None  # the kept reply's prompt tokens, as the server said
    cached_input_tokens: int | None = None  # of those, served from the prompt cache
    attempts: list[Attempt] = field(default_factory=list)  # every request made, hedges too
    key_id: str | None = None  # masked id of the API key that served it
    cached: bool = False  # answered by the reply cache: no request, no attempt
    partial: str | None = None  # a cancelled version's streamed text
    cancel_reason: str | None = None  # one of CANCEL_REASONS
    hedged: bool = False  # a hedge request was started for it
    hedge_won: bool = False  # ... and the hedge's text is the one kept
    notes: str | None = None  # an editor's scene notes; a retry sends them (editor.py)
    edited: bool = field(default=False, metadata=_EDITOR)  # changed by an editor
    original_content: str | None = field(default=None, metadata=_EDITOR)  # generated text

    def to_dict(self, *, editor: bool = True, metrics: bool = False) -> dict[str, Any]:
        """The fields, JSON-ready (``attempts`` as a list of dicts).

        ``editor=False`` leaves out the editor's fields (:data:`EDITOR_FIELDS`): what
        generation produced, as a worker or the store's version row records it.
        ``metrics=True`` adds the derived figures (:data:`VERSION_METRICS`), for reading.
        """
        data = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if editor or f.name not in EDITOR_FIELDS
        }
        data["attempts"] = [a.to_dict() for a in self.attempts]
        if metrics:
            data.update({name: getattr(self, name) for name in VERSION_METRICS})
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Version:
        """Read :meth:`to_dict`'s shape, or an older writer's: there ``attempts`` was the
        count (now derived: :attr:`attempt_count`) and the list was ``attempt_log``."""
        known = _known(cls, data)
        attempts = data.get("attempts")
        if not isinstance(attempts, list):
            attempts = data.get("attempt_log") or []
        known["attempts"] = [Attempt.from_dict(a) for a in attempts]
        return cls(**known)

    @property
    def attempt_count(self) -> int:
        """Attempts made: 1 = the first try, 2 = one retry…; a hedge (a duplicate of a
        slow attempt) is not one, and a cached reply or a version cancelled before it
        started made none (0)."""
        return sum(not a.hedge for a in self.attempts)

    @property
    def done(self) -> bool:
        return self.status in FINAL

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def queue_wait_s(self) -> float | None:
        return None if self.started_at is None else self.started_at - self.queued_at

    @property
    def ttft_s(self) -> float | None:
        if self.first_token_at is None or not self.attempts:
            return None
        return self.first_token_at - self._shown_attempt().started_at

    def _shown_attempt(self) -> Attempt:
        """The attempt whose text is shown (kept): with a hedge race, the one whose first
        token is ``first_token_at``; otherwise the last."""
        for attempt in reversed(self.attempts):
            if attempt.first_token_at is not None and attempt.first_token_at == self.first_token_at:
                return attempt
        return self.attempts[-1]

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at

    @property
    def retry_wait_s(self) -> float:
        return sum(a.wait_s for a in self.attempts)

    @property
    def billed_input_tokens(self) -> int | None:
        """Input tokens billed for this version, every attempt (None: one is unknown)."""
        return _total([a.input_tokens for a in self.attempts], 0)

    @property
    def billed_output_tokens(self) -> int | None:
        """Output tokens billed for this version, every attempt (None: one is unknown)."""
        return _total([a.output_tokens for a in self.attempts], 0)

    @property
    def billed_cached_input_tokens(self) -> int | None:
        """Cached input tokens the server reported over every attempt (None: never said)."""
        return _said([a.cached_input_tokens for a in self.attempts])

    @property
    def cost(self) -> float | None:
        """US dollars billed for this version, failed attempts included (a cached reply
        costs 0); None when the price or an attempt's usage is unknown."""
        return _total([a.cost for a in self.attempts], 0.0)

    @property
    def wasted_tokens(self) -> int:
        """Output tokens billed (else streamed) and not kept: every attempt's but the
        kept text's."""
        streamed = sum(a.output_tokens or 0 for a in self.attempts)
        return max(0, streamed - (self.output_tokens if self.ok else 0))

    @property
    def wasted_cost(self) -> float | None:
        """US dollars of the requests whose text was not kept: every attempt of a version
        that was not kept; of a kept one, its failed attempts and a losing hedge."""
        kept = self._kept_attempt()
        return _total([a.cost for a in self.attempts if a is not kept], 0.0)

    def _kept_attempt(self) -> Attempt | None:
        """The attempt whose text is the content (None unless ok, or a cached reply)."""
        if not self.ok:
            return None
        ended_well = [a for a in self.attempts if a.error_type is None and not a.lost]
        return ended_well[-1] if ended_well else None

    @property
    def tokens_per_s(self) -> float | None:
        if self.first_token_at is None or self.finished_at is None or not self.output_tokens:
            return None
        gen = self.finished_at - self.first_token_at
        return self.output_tokens / gen if gen > 0 else None

    def display_text(self, lang: str = "en") -> str:
        """The text to show: the content, or "Generation failed: <error>"."""
        if self.status == "ok":
            return self.content or ""
        if self.status == "failed":
            return failure_text(self.error, lang)
        return ""

    def row(self) -> dict[str, Any]:
        """This version's columns of :meth:`Run.to_frame`."""
        return {
            "version": self.index,
            "status": self.status,
            "kept": self.ok,
            "cancel_reason": self.cancel_reason,
            "attempts": self.attempt_count,
            "retried": self.attempt_count > 1,
            "hedged": self.hedged,
            "hedge_won": self.hedge_won,
            "queue_wait_s": self.queue_wait_s,
            "ttft_s": self.ttft_s,
            "duration_s": self.duration_s,
            "retry_wait_s": self.retry_wait_s,
            "output_tokens": self.output_tokens,
            "input_tokens": self.input_tokens,
            "cached_input_tokens": self.cached_input_tokens,
            "cost": self.cost,
            "wasted_tokens": self.wasted_tokens,
            "wasted_cost": self.wasted_cost,
            "tokens_per_s": self.tokens_per_s,
            "start_s": self.started_at,
            "finish_s": self.finished_at,
            **text_metrics(self.content or ""),
            "partial_chars": len(self.partial or ""),
            "edited": self.edited,
            "cached": self.cached,
            "key_id": self.key_id,
            "error_type": self.error_type,
            "error": self.error,
        }


#: Version fields an editor sets after generation (``Version.to_dict(editor=False)`` omits them).
EDITOR_FIELDS = frozenset(f.name for f in fields(Version) if f.metadata.get("editor"))


@dataclass
class Run:
    """A batch of versions for one prompt, with its metrics.

    A Run is the record of a run, not its control: to stop a run in progress, stop or
    add versions, use the :class:`~arboris_nb.handle.RunHandle` that ``start_versions``
    returned (or cancel the task awaiting ``generate_versions``).

    ``keep`` is how many versions the run keeps: with ``extra_versions`` k it starts
    ``keep + k`` and cancels the rest (reason ``surplus``) once ``keep`` are ok; ``kept``
    lists them. None (a run stored before this existed) keeps every version.
    """

    run_id: str
    versions: list[Version]
    parallel: bool = True
    max_parallel_requests: int | str = 3
    project: str | None = None
    chapter: int | None = None
    model: str | None = None
    created_at: float = 0.0  # wall-clock epoch seconds, for stores and humans
    elapsed_s: float | None = None
    measured_serial_s: float | None = None
    parent_run_id: str | None = None  # a retry: the run and version it regenerates
    parent_index: int | None = None
    keep: int | None = None  # versions to keep (N); None: all of them
    extra_versions: int = 0  # started beyond ``keep`` (k of "keep the first N of N+k")
    # The editor's desk (arboris_nb.decisions): the history of selections, edits, notes
    # and evaluations, oldest first (append-only), and the retry runs of its versions,
    # oldest first — each a linked version, the original kept.
    decisions: list[Decision] = field(default_factory=list)
    retries: list[Run] = field(default_factory=list)

    @property
    def mode(self) -> str:
        return "parallel" if self.parallel else "serial"

    @property
    def version_count(self) -> int:
        return len(self.versions)

    @property
    def ok(self) -> list[Version]:
        return [v for v in self.versions if v.status == "ok"]

    @property
    def failed(self) -> list[Version]:
        return [v for v in self.versions if v.status == "failed"]

    @property
    def cancelled(self) -> list[Version]:
        return [v for v in self.versions if v.status == "cancelled"]

    @property
    def keep_count(self) -> int:
        """How many versions the run keeps (``keep``, else all of them)."""
        return self.version_count if self.keep is None else self.keep

    @property
    def kept(self) -> list[Version]:
        """The versions the run kept: the ok ones (the first ``keep`` to finish)."""
        return self.ok

    @property
    def done(self) -> bool:
        return all(v.done for v in self.versions)

    def _durations(self) -> list[float]:
        return [v.duration_s for v in self.versions if v.ok and v.duration_s is not None]

    @property
    def avg_per_version_s(self) -> float | None:
        durations = self._durations()
        return statistics.fmean(durations) if durations else None

    @property
    def serial_s(self) -> float | None:
        """Serial wall time: measured if a serial run was given, else the sum of durations."""
        if self.measured_serial_s is not None:
            return self.measured_serial_s
        durations = self._durations()
        return sum(durations) if durations else None

    @property
    def serial_is_estimated(self) -> bool:
        return self.measured_serial_s is None

    @property
    def speedup(self) -> float | None:
        serial = self.serial_s
        if serial is None or not self.elapsed_s:
            return None
        return serial / self.elapsed_s

    @property
    def efficiency(self) -> float | None:
        """The seed's figure: (serial − parallel) / serial × 100, in percent."""
        serial = self.serial_s
        if not serial or self.elapsed_s is None:
            return None
        return (serial - self.elapsed_s) / serial * 100.0

    @property
    def concurrency(self) -> int:
        """C as a number: 1 in serial mode; N when the limit is adaptive."""
        if not self.parallel:
            return 1
        limit = self.max_parallel_requests
        return limit if isinstance(limit, int) else self.version_count

    @property
    def input_tokens(self) -> int | None:
        """Input tokens billed for the run, every attempt (None: one is unknown)."""
        return _total([v.billed_input_tokens for v in self.versions], 0)

    @property
    def output_tokens(self) -> int | None:
        """Output tokens billed for the run, every attempt (None: one is unknown)."""
        return _total([v.billed_output_tokens for v in self.versions], 0)

    @property
    def cached_input_tokens(self) -> int | None:
        """Cached input tokens the server reported for the run (None: never said)."""
        return _said([v.billed_cached_input_tokens for v in self.versions])

    @property
    def cost(self) -> float | None:
        """US dollars billed for the run (None: a price or some usage is unknown)."""
        return _total([v.cost for v in self.versions], 0.0)

    @property
    def ideal_s(self) -> float | None:
        """⌈N/C⌉·L with L the mean version duration: the best a limit of C allows (N: the
        versions kept — extras are there to reach this despite stragglers)."""
        mean = self.avg_per_version_s
        if mean is None:
            return None
        return math.ceil(self.keep_count / self.concurrency) * mean

    def to_dict(self, *, metrics: bool = False) -> dict[str, Any]:
        """The fields, JSON-ready, versions included (each :meth:`Version.to_dict`).

        ``metrics=True`` adds :meth:`summary` and each version's derived timings: the
        shape the CLI's ``--json`` prints. :meth:`from_dict` reads either shape back.
        """
        nested = ("versions", "decisions", "retries")
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in nested}
        if metrics:
            data.update(self.summary())
        data["versions"] = [v.to_dict(metrics=metrics) for v in self.versions]
        data["decisions"] = [d.to_dict() for d in self.decisions]
        data["retries"] = [r.to_dict(metrics=metrics) for r in self.retries]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Run:
        known = _known(cls, data)
        known["versions"] = [Version.from_dict(v) for v in data.get("versions", ())]
        known["decisions"] = [Decision.from_dict(d) for d in data.get("decisions", ())]
        known["retries"] = [Run.from_dict(r) for r in data.get("retries", ())]
        return cls(**known)

    # -- the editor's desk ----------------------------------------------------------------
    def _last(self, kind: str) -> Decision | None:
        return next((d for d in reversed(self.decisions) if d.kind == kind), None)

    @property
    def selection(self) -> tuple[str, int] | None:
        """``(run_id, index)`` of the version last selected (run_id: this run's, or the
        retry run's when a retry version was chosen); None when nothing was selected."""
        chosen = self._last("select")
        if chosen is None or chosen.index is None:
            return None
        return chosen.version_run_id or self.run_id, chosen.index

    @property
    def selected_version(self) -> Version | None:
        """The selected version (found in ``versions`` or in ``retries``), or None."""
        selection = self.selection
        return None if selection is None else self.find_version(*selection)

    def find_version(self, run_id: str | None, index: int) -> Version | None:
        """Version ``index`` of this run (``run_id`` None or this run's id) or of its
        retry run ``run_id``; None when there is no such version."""
        holder: Run | None = self
        if run_id not in (None, self.run_id):
            holder = next((r for r in self.retries if r.run_id == run_id), None)
        if holder is None:
            return None
        return next((v for v in holder.versions if v.index == index), None)

    @property
    def evaluation(self) -> Evaluation | None:
        """The last evaluation recorded for this run, or None."""
        from .verdict import Evaluation  # verdict is heavier and not needed otherwise

        judged = self._last("evaluate")
        return None if judged is None else Evaluation.from_dict(judged.data)

    def with_serial_baseline(self, serial: Run | float) -> Run:
        """Use a measured serial run's elapsed time instead of the estimate."""
        self.measured_serial_s = serial if isinstance(serial, float | int) else serial.elapsed_s
        return self

    def summary(self) -> dict[str, Any]:
        """The run's metrics as a plain dict (JSON-ready)."""
        return {
            "run_id": self.run_id,
            "project": self.project,
            "chapter": self.chapter,
            "mode": self.mode,
            "model": self.model,
            "version_count": self.version_count,
            "max_parallel_requests": self.max_parallel_requests,
            "ok": len(self.ok),
            "failed": len(self.failed),
            "cancelled": len(self.cancelled),
            "elapsed_s": self.elapsed_s,
            "avg_per_version_s": self.avg_per_version_s,
            "serial_s": self.serial_s,
            "serial_estimated": self.serial_is_estimated,
            "speedup": self.speedup,
            "efficiency": self.efficiency,
            "ideal_s": self.ideal_s,
            "attempt_count": sum(v.attempt_count for v in self.versions),
            "input_tokens": self.input_tokens,
            "cached_input_tokens": self.cached_input_tokens,
            "output_tokens": self.output_tokens,
            "cost": self.cost,
            **self.pool_summary(),
        }

    def pool_summary(self) -> dict[str, Any]:
        """What keeping the first N and hedging cost: the versions kept, the hedges, the
        tokens (and dollars) billed and thrown away, and the lengths of kept vs discarded
        texts (keeping the fastest can favour shorter texts; these let a user see it)."""
        kept = [v.output_tokens for v in self.kept]
        discarded = [v.output_tokens for v in self.cancelled if v.partial]
        kept_tokens, wasted = sum(kept), sum(v.wasted_tokens for v in self.versions)
        return {
            "keep_count": self.keep_count,
            "extra_versions": self.extra_versions,
            "kept": len(self.kept),
            "surplus": sum(v.cancel_reason == "surplus" for v in self.versions),
            "hedges": sum(v.hedged for v in self.versions),
            "hedges_won": sum(v.hedge_won for v in self.versions),
            "kept_tokens": kept_tokens,
            "wasted_tokens": wasted,
            "wasted_ratio": wasted / kept_tokens if kept_tokens else None,
            "wasted_cost": _total([v.wasted_cost for v in self.versions], 0.0),
            "kept_tokens_mean": statistics.fmean(kept) if kept else None,
            "discarded_tokens_mean": statistics.fmean(discarded) if discarded else None,
        }

    def to_frame(self) -> pd.DataFrame:
        """One row per version; the columns are documented in ``FRAME_COLUMNS``."""
        import pandas as pd

        head = {
            "run_id": self.run_id,
            "project": self.project,
            "chapter": self.chapter,
            "mode": self.mode,
            "version_count": self.version_count,
            "max_parallel_requests": self.concurrency,
            "model": self.model,
        }
        rows = [{**head, **v.row()} for v in self.versions]
        return pd.DataFrame(rows, columns=list(FRAME_COLUMNS))

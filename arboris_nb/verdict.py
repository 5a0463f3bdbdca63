"""The judge's verdict as data: :class:`Evaluation`, with every request that led to it.

An Evaluation keeps what an editor (or a store) needs later: the verdict (best version,
reason, ranking; in pairwise mode the wins, each pair's two answers and the agreement
between the two orders), the context and criteria it was judged by, and each request to
the judge (:class:`JudgeCall`: messages, reply, tokens, attempts, time). ``to_dict()`` is
plain JSON; ``from_dict()`` rebuilds it. No API key is in any of it: requests hold only
messages, never headers or settings. ``to_html()`` escapes all model text.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from .backends.base import Message
from .errors import ArborisError
from .pricing import format_cost, format_tokens
from .prompts import ChapterContext
from .versionkeys import VersionKey, key_order, key_text, parse_key_text, spoken

__all__ = ["Evaluation", "EvaluationError", "JudgeCall", "JudgeMode", "PairVerdict"]

JudgeMode = Literal["all", "pairwise"]


class EvaluationError(ArborisError):
    """No usable verdict: the judge's reply could not be parsed, chose a version that is
    not a candidate, or the judge request failed. ``reply`` holds the reply ("" if none)."""

    def __init__(self, message: str, reply: str) -> None:
        super().__init__(message)
        self.reply = reply


@dataclass(frozen=True)
class JudgeCall:
    """One request to the judge and its outcome.

    ``pair`` is (version shown as A, version shown as B; keys, see
    :mod:`~arboris_nb.versionkeys`) in pairwise mode, None for the
    all-at-once request. ``output_tokens`` is the server's count when
    ``tokens_from_usage``, else the streamed chunks counted. ``duration_s`` covers all
    ``attempts`` (the engine's retries and their waits), and so do ``input_tokens`` and
    ``cost``: what the request was billed (None: unknown, or no price given)."""

    messages: list[Message]
    reply: str
    status: str = "ok"
    error: str | None = None
    output_tokens: int = 0
    tokens_from_usage: bool = False
    attempts: int = 1
    duration_s: float | None = None
    pair: tuple[VersionKey, VersionKey] | None = None
    input_tokens: int | None = None
    cost: float | None = None


@dataclass(frozen=True)
class PairVerdict:
    """Two versions judged in both orders: ``winner_ab`` when ``a`` was shown first,
    ``winner_ba`` when ``b`` was; a winner is a version key (``2``, or ``(2, 1)`` for
    retry 1 of version 2), None for a tie."""

    a: VersionKey
    b: VersionKey
    winner_ab: VersionKey | None
    winner_ba: VersionKey | None
    reason_ab: str = ""
    reason_ba: str = ""

    @property
    def agree(self) -> bool:
        """True when both orders picked the same winner (or both called it a tie)."""
        return self.winner_ab == self.winner_ba


@dataclass(frozen=True)
class Evaluation:
    """Arboris-Novel's evaluation (best version, why, pros/cons per version), plus how it
    was reached. Versions are named by key (:mod:`~arboris_nb.versionkeys`): ``2`` for
    the run's version 2, ``(2, 1)`` for its first linked retry — the judge compares the
    retries too. ``ranking`` lists keys best first (all-at-once: as the judge
    gave it, else just the best). Pairwise: ``wins`` per version (1 per comparison won,
    ½ per tie, out of 2·(n−1)), ``pairs`` and ``agreement``: the share of pairs where
    both orders picked the same winner."""

    best_choice: VersionKey
    reason: str
    versions: dict[VersionKey, dict[str, list[str]]] = field(default_factory=dict)
    raw: str = field(default="", repr=False)
    mode: JudgeMode = "all"
    ranking: tuple[VersionKey, ...] = ()
    wins: dict[VersionKey, float] = field(default_factory=dict)
    pairs: tuple[PairVerdict, ...] = ()
    agreement: float | None = None
    criteria: tuple[str, ...] = ()
    context: ChapterContext | None = None
    calls: tuple[JudgeCall, ...] = field(default=(), repr=False)
    elapsed_s: float | None = None
    created_at: float | None = None  # time.time() when the evaluation started

    @property
    def output_tokens(self) -> int:
        """Tokens the judge wrote, over all its requests."""
        return sum(c.output_tokens for c in self.calls)

    @property
    def input_tokens(self) -> int | None:
        """Input tokens the judge was billed, over all its requests (None: unknown)."""
        counts = [c.input_tokens for c in self.calls]
        return None if None in counts else sum(c for c in counts if c is not None)

    @property
    def cost(self) -> float | None:
        """What the evaluation cost in US dollars (None: a price or a count unknown)."""
        costs = [c.cost for c in self.calls]
        return None if not costs or None in costs else sum(c for c in costs if c is not None)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only; see :meth:`from_dict`. A key is a number, a retry key a
        pair ``[2, 1]``; as an object's key it is text: ``"2"``, ``"2r1"``."""
        data = asdict(replace(self, context=None))
        data["versions"] = {key_text(i): notes for i, notes in self.versions.items()}
        data["wins"] = {key_text(i): w for i, w in self.wins.items()}
        data["context"] = self.context.to_dict() if self.context else None
        return _lists(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Evaluation:
        """An Evaluation from :meth:`to_dict`'s output (e.g. read back from JSON); one
        stored before retries were judged (plain version numbers) reads the same."""
        context = data.get("context")
        return cls(
            best_choice=_key(data["best_choice"]),
            reason=str(data["reason"]),
            versions={_key(i): dict(n) for i, n in data.get("versions", {}).items()},
            raw=data.get("raw", ""),
            mode=data.get("mode", "all"),
            ranking=tuple(_key(i) for i in data.get("ranking", ())),
            wins={_key(i): float(w) for i, w in data.get("wins", {}).items()},
            pairs=tuple(_pair(p) for p in data.get("pairs", ())),
            agreement=data.get("agreement"),
            criteria=tuple(data.get("criteria", ())),
            context=ChapterContext(**context) if context else None,
            calls=tuple(_call(c) for c in data.get("calls", ())),
            elapsed_s=data.get("elapsed_s"),
            created_at=data.get("created_at"),
        )

    def to_html(self) -> str:
        """The evaluation as escaped HTML (CSS class ``arboris-evaluation``)."""
        head = f"<p><b>Best: {spoken(self.best_choice)}</b> — {html.escape(self.reason)}</p>"
        body = _pairwise_html(self) if self.mode == "pairwise" else _notes_html(self)
        return f'<div class="arboris-evaluation">{head}{body}{_cost_html(self)}</div>'


def _cost_html(evaluation: Evaluation) -> str:
    """What the judge's requests cost, when it is known (no line without a price)."""
    if evaluation.cost is None:
        return ""
    n = len(evaluation.calls)
    return (
        f'<p class="arboris-evaluation-cost">Evaluation: {n} request{"s" * (n != 1)}, '
        f"{format_tokens(evaluation.input_tokens)} input and "
        f"{format_tokens(evaluation.output_tokens)} output tokens, "
        f"{format_cost(evaluation.cost)}</p>"
    )


def _lists(value: Any) -> Any:
    """Tuples become lists all the way down, as JSON would give them back."""
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_lists(v) for v in value]
    return value


def _key(value: object) -> VersionKey:
    """A stored key: a number (also as text, ``"2"``), ``"2r1"`` or ``[2, 1]``."""
    key = parse_key_text(value)
    if key is None:
        raise ValueError(f"a stored evaluation names no version: {value!r}")
    return key


def _winner_key(value: object) -> VersionKey | None:
    return None if value is None else _key(value)


def _pair(data: Mapping[str, Any]) -> PairVerdict:
    return PairVerdict(
        **{
            **data,
            "a": _key(data["a"]),
            "b": _key(data["b"]),
            "winner_ab": _winner_key(data.get("winner_ab")),
            "winner_ba": _winner_key(data.get("winner_ba")),
        }
    )


def _call(data: Mapping[str, Any]) -> JudgeCall:
    pair = data.get("pair")
    return JudgeCall(**{**data, "pair": (_key(pair[0]), _key(pair[1])) if pair else None})


def _ranking_html(ranking: Sequence[VersionKey]) -> str:
    if len(ranking) < 2:
        return ""
    order = " › ".join(spoken(i) for i in ranking)
    return f'<p class="arboris-ranking">Ranking: {order}</p>'


def _notes_html(evaluation: Evaluation) -> str:
    rows = []
    for index, notes in sorted(evaluation.versions.items(), key=lambda kv: key_order(kv[0])):
        items = [
            f"<li>{label} {html.escape(point)}</li>"
            for key, label in (("pros", "+"), ("cons", "−"))
            for point in notes.get(key, [])
        ]
        rows.append(f"<p><b>{spoken(index).capitalize()}</b></p><ul>{''.join(items)}</ul>")
    return _ranking_html(evaluation.ranking) + "".join(rows)


_SPACED = "border-spacing: 1em 0.3em; margin-left: -1em"  # columns apart, text aligned


def _winner(winner: VersionKey | None) -> str:
    return "tie" if winner is None else spoken(winner)


def _pairwise_html(evaluation: Evaluation) -> str:
    total = 2 * (len(evaluation.wins) - 1)
    ranks = "".join(
        f"<tr><td>{place}</td><td>{spoken(i)}</td><td>{evaluation.wins.get(i, 0.0):g} "
        f"of {total}</td></tr>"
        for place, i in enumerate(evaluation.ranking, 1)
    )
    agreed = sum(p.agree for p in evaluation.pairs)
    share = f"{evaluation.agreement:.0%}" if evaluation.agreement is not None else "—"
    pairs = "".join(
        f"<tr><td>{key_text(p.a)}&nbsp;vs&nbsp;{key_text(p.b)}</td>"
        f"<td>{_winner(p.winner_ab)} — {html.escape(p.reason_ab)}</td>"
        f"<td>{_winner(p.winner_ba)} — {html.escape(p.reason_ba)}</td>"
        f"<td>{'yes' if p.agree else 'no'}</td></tr>"
        for p in evaluation.pairs
    )
    return (
        f'<table class="arboris-ranking" style="{_SPACED}"><tr><th>rank</th>'
        f"<th>version</th><th>wins</th></tr>{ranks}</table>"
        f'<p class="arboris-agreement">Both orders agreed on {agreed} of '
        f"{len(evaluation.pairs)} pairs ({share}).</p>"
        f'<table class="arboris-pairs" style="{_SPACED}"><tr><th>pair</th>'
        "<th>lower number read first (as A)</th><th>higher number read first (as A)</th>"
        f"<th>agree</th></tr>{pairs}</table>"
    )

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
from .prompts import ChapterContext

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

    ``pair`` is (version shown as A, version shown as B) in pairwise mode, None for the
    all-at-once request. ``output_tokens`` is the server's count when
    ``tokens_from_usage``, else the streamed chunks counted. ``duration_s`` covers all
    ``attempts`` (the engine's retries and their waits)."""

    messages: list[Message]
    reply: str
    status: str = "ok"
    error: str | None = None
    output_tokens: int = 0
    tokens_from_usage: bool = False
    attempts: int = 1
    duration_s: float | None = None
    pair: tuple[int, int] | None = None


@dataclass(frozen=True)
class PairVerdict:
    """Two versions judged in both orders: ``winner_ab`` when ``a`` was shown first,
    ``winner_ba`` when ``b`` was; a winner is a version number, None for a tie."""

    a: int
    b: int
    winner_ab: int | None
    winner_ba: int | None
    reason_ab: str = ""
    reason_ba: str = ""

    @property
    def agree(self) -> bool:
        """True when both orders picked the same winner (or both called it a tie)."""
        return self.winner_ab == self.winner_ba


@dataclass(frozen=True)
class Evaluation:
    """Arboris-Novel's evaluation (best version, why, pros/cons per version), plus how it
    was reached. ``ranking`` lists version numbers best first (all-at-once: as the judge
    gave it, else just the best). Pairwise: ``wins`` per version (1 per comparison won,
    ½ per tie, out of 2·(n−1)), ``pairs`` and ``agreement``: the share of pairs where
    both orders picked the same winner."""

    best_choice: int
    reason: str
    versions: dict[int, dict[str, list[str]]] = field(default_factory=dict)
    raw: str = field(default="", repr=False)
    mode: JudgeMode = "all"
    ranking: tuple[int, ...] = ()
    wins: dict[int, float] = field(default_factory=dict)
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

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only (version numbers as string keys); see :meth:`from_dict`."""
        data = asdict(replace(self, context=None))
        data["versions"] = {str(i): notes for i, notes in self.versions.items()}
        data["wins"] = {str(i): w for i, w in self.wins.items()}
        data["context"] = self.context.to_dict() if self.context else None
        return _lists(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Evaluation:
        """An Evaluation from :meth:`to_dict`'s output (e.g. read back from JSON)."""
        context = data.get("context")
        return cls(
            best_choice=int(data["best_choice"]),
            reason=str(data["reason"]),
            versions={int(i): dict(n) for i, n in data.get("versions", {}).items()},
            raw=data.get("raw", ""),
            mode=data.get("mode", "all"),
            ranking=tuple(data.get("ranking", ())),
            wins={int(i): float(w) for i, w in data.get("wins", {}).items()},
            pairs=tuple(PairVerdict(**p) for p in data.get("pairs", ())),
            agreement=data.get("agreement"),
            criteria=tuple(data.get("criteria", ())),
            context=ChapterContext(**context) if context else None,
            calls=tuple(_call(c) for c in data.get("calls", ())),
            elapsed_s=data.get("elapsed_s"),
            created_at=data.get("created_at"),
        )

    def to_html(self) -> str:
        """The evaluation as escaped HTML (CSS class ``arboris-evaluation``)."""
        head = f"<p><b>Best: version {self.best_choice}</b> — {html.escape(self.reason)}</p>"
        body = _pairwise_html(self) if self.mode == "pairwise" else _notes_html(self)
        return f'<div class="arboris-evaluation">{head}{body}</div>'


def _lists(value: Any) -> Any:
    """Tuples become lists all the way down, as JSON would give them back."""
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_lists(v) for v in value]
    return value


def _call(data: Mapping[str, Any]) -> JudgeCall:
    pair = data.get("pair")
    return JudgeCall(**{**data, "pair": tuple(pair) if pair else None})


def _ranking_html(ranking: Sequence[int]) -> str:
    if len(ranking) < 2:
        return ""
    order = " › ".join(f"version {i}" for i in ranking)
    return f'<p class="arboris-ranking">Ranking: {order}</p>'


def _notes_html(evaluation: Evaluation) -> str:
    rows = []
    for index, notes in sorted(evaluation.versions.items()):
        items = [
            f"<li>{label} {html.escape(point)}</li>"
            for key, label in (("pros", "+"), ("cons", "−"))
            for point in notes.get(key, [])
        ]
        rows.append(f"<p><b>Version {index}</b></p><ul>{''.join(items)}</ul>")
    return _ranking_html(evaluation.ranking) + "".join(rows)


_SPACED = "border-spacing: 1em 0.3em; margin-left: -1em"  # columns apart, text aligned


def _winner(winner: int | None) -> str:
    return "tie" if winner is None else f"version {winner}"


def _pairwise_html(evaluation: Evaluation) -> str:
    total = 2 * (len(evaluation.wins) - 1)
    ranks = "".join(
        f"<tr><td>{place}</td><td>version {i}</td><td>{evaluation.wins.get(i, 0.0):g} "
        f"of {total}</td></tr>"
        for place, i in enumerate(evaluation.ranking, 1)
    )
    agreed = sum(p.agree for p in evaluation.pairs)
    share = f"{evaluation.agreement:.0%}" if evaluation.agreement is not None else "—"
    pairs = "".join(
        f"<tr><td>{p.a}&nbsp;vs&nbsp;{p.b}</td>"
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

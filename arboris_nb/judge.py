"""Evaluate: ask a judge model which version of a chapter is best, with the book's context.

The candidates are every done version the editor has: the run's own and its linked
retries (``Run.retries``), each named by its key (``2``; ``(2, 1)`` for retry 1 of
version 2, headed ``[Version 2r1]`` for the judge; :mod:`~arboris_nb.versionkeys`).

:func:`evaluate` has two modes. ``"all"`` sends every done version in one request and
reads Arboris-Novel's evaluation (best choice, reason, ranking, pros/cons per version).
``"pairwise"`` judges each pair of versions twice, once in each order, so a judge that
favours whichever text it reads first cannot decide the result: versions are ranked by
comparisons won, and ``agreement`` says how often the two orders picked the same winner.

Every request goes through the engine (its retries, timing and limits; never the run
store), and is kept with the result (:class:`~arboris_nb.verdict.JudgeCall`). Offline,
:func:`~arboris_nb.judge_sim.simulated_judge` answers both kinds of request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import fields, replace
from itertools import combinations
from typing import Any

from .backends.base import Backend, Message
from .config import LLMConfig, WriterSettings
from .engine import generate_versions
from .errors import ConfigError, StateError
from .judge_prompts import (
    DEFAULT_CRITERIA,
    evaluation_messages,
    pairwise_messages,
    parse_evaluation,
    parse_pair_reply,
)
from .judge_sim import offline_judge
from .limits import FixedLimit, Limiter
from .prompts import ChapterContext
from .results import Run, Version
from .retry import RetryPolicy
from .verdict import Evaluation, EvaluationError, JudgeCall, JudgeMode, PairVerdict
from .versionkeys import VersionKey, key_order, key_text, linked_versions, spoken

__all__ = ["MODES", "check_mode", "evaluate", "evaluation_candidates", "judge_requests"]

LLM = LLMConfig | Backend | None
#: The modes of :func:`evaluate`.
MODES: tuple[JudgeMode, ...] = ("all", "pairwise")
_MAX_CRITERIA = 12


def evaluation_candidates(run: Run) -> dict[VersionKey, Version]:
    """The versions :func:`evaluate` compares, by key in the order shown: the run's ok
    ones and its ok linked retries (``(2, 1)``: retry 1 of version 2), at least two."""
    candidates = {key: v for key, v in linked_versions(run) if v.ok}
    if len(candidates) < 2:
        raise StateError(
            f"Evaluate needs at least 2 done versions; the run has {len(candidates)}: "
            "retry the failed or cancelled ones first"
        )
    return candidates


def judge_requests(candidates: int, mode: JudgeMode) -> int:
    """How many requests :func:`evaluate` sends for ``candidates`` versions."""
    return 1 if mode == "all" else candidates * (candidates - 1)


async def evaluate(
    run: Run,
    *,
    llm: LLM = None,
    context: ChapterContext | Mapping[str, Any] | None = None,
    criteria: Sequence[str] | None = None,
    mode: JudgeMode = "all",
    goal: str | None = None,
    retry: RetryPolicy | None = None,
    max_parallel: int = 4,
) -> Evaluation:
    """Ask the judge model which of the run's done versions is best; return its verdict.

    The candidates are :func:`evaluation_candidates`: linked retries are judged too, and
    the verdict names them by key (``(2, 1)``).

    ``context``: the chapter's context (a :class:`ChapterContext` or a dict of its
    fields) — blueprint, previous summaries, goal, notes; ``goal=`` alone is a shortcut.
    ``criteria``: what to judge by (default :data:`DEFAULT_CRITERIA`), 1–12 of them.
    ``mode``: ``"all"`` (one request) or ``"pairwise"`` (n·(n−1) requests, at most
    ``max_parallel`` (1–10) at once). Needs at least two done versions. A plain
    :class:`SimulatedLLM` judges offline as ``simulated_judge`` does. Raises
    :class:`EvaluationError` when there is no usable verdict.
    """
    candidates = evaluation_candidates(run)
    chosen = check_mode(mode)
    settings = _Judging(
        context=_as_context(context, goal),
        criteria=_check_criteria(criteria),
        llm=offline_judge(llm),
        retry=retry,
        limiter=FixedLimit(_check_parallel(max_parallel)),
        run_id=f"{run.run_id}-eval",
    )
    started, created = asyncio.get_running_loop().time(), time.time()
    if chosen == "all":
        evaluation = await _all_at_once(candidates, settings)
    else:
        evaluation = await _pairwise(candidates, settings)
    return replace(
        evaluation,
        mode=chosen,
        criteria=settings.criteria,
        context=None if settings.context.empty else settings.context,
        elapsed_s=asyncio.get_running_loop().time() - started,
        created_at=created,
    )


# -- checking what the caller asked for ---------------------------------------------------
def check_mode(mode: object) -> JudgeMode:
    """``mode`` if it is one of :data:`MODES`, else a ConfigError naming them."""
    for known in MODES:
        if mode == known:
            return known
    raise ConfigError(f'mode must be "all" or "pairwise", got {mode!r}')


def _check_criteria(criteria: Sequence[str] | None) -> tuple[str, ...]:
    if criteria is None:
        return DEFAULT_CRITERIA
    if isinstance(criteria, str):
        criteria = [criteria]
    if not all(isinstance(c, str) for c in criteria):
        raise ConfigError("criteria must be a list of strings, e.g. ['pacing', 'prose']")
    chosen = tuple(dict.fromkeys(c.strip() for c in criteria if c.strip()))
    if not 1 <= len(chosen) <= _MAX_CRITERIA:
        raise ConfigError(f"criteria must name 1 to {_MAX_CRITERIA} criteria, got {len(chosen)}")
    return chosen


def _check_parallel(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10:
        raise ConfigError(f"max_parallel must be a whole number from 1 to 10, got {value!r}")
    return value


def _as_context(
    context: ChapterContext | Mapping[str, Any] | None, goal: str | None
) -> ChapterContext:
    if context is None:
        context = ChapterContext()
    elif isinstance(context, Mapping):
        allowed = {f.name for f in fields(ChapterContext)}
        unknown = sorted(set(context) - allowed)
        if unknown:
            raise ConfigError(
                f"context has unknown fields {unknown}; allowed: {', '.join(sorted(allowed))}"
            )
        context = ChapterContext(**context)
    elif not isinstance(context, ChapterContext):
        kind = type(context).__name__
        raise ConfigError(f"context must be a ChapterContext or a dict of its fields, got {kind}")
    if goal and context.goal and goal != context.goal:
        raise ConfigError("the goal is given twice (goal= and context.goal): pass one")
    return replace(context, goal=context.goal or goal or None)


# -- asking --------------------------------------------------------------------------------
class _Judging:
    """What every request of one evaluation shares."""

    def __init__(
        self,
        *,
        context: ChapterContext,
        criteria: tuple[str, ...],
        llm: LLM,
        retry: RetryPolicy | None,
        limiter: Limiter,
        run_id: str,
    ) -> None:
        self.context, self.criteria, self.llm = context, criteria, llm
        self.retry, self.limiter, self.run_id = retry, limiter, run_id

    async def ask(
        self, messages: list[Message], pair: tuple[VersionKey, VersionKey] | None
    ) -> JudgeCall:
        """One request through the engine (retried and timed there; never stored)."""
        suffix = f"-{key_text(pair[0])}v{key_text(pair[1])}" if pair else ""
        judged = await generate_versions(
            messages,
            settings=WriterSettings(version_count=1, max_parallel_requests=1),
            llm=self.llm,
            retry=self.retry,
            limiter=self.limiter,
            run_id=self.run_id + suffix,
            store=False,  # an evaluation is not a run of chapter versions
            raise_on_all_failed=False,  # a failed judge is an EvaluationError, said below
        )
        answer = judged.versions[0]
        return JudgeCall(
            messages=messages,
            reply=answer.content or "",
            status=answer.status,
            error=answer.error,
            output_tokens=answer.output_tokens,
            tokens_from_usage=answer.tokens_from_usage,
            attempts=answer.attempt_count,
            duration_s=answer.duration_s,
            pair=pair,
            input_tokens=answer.billed_input_tokens,
            cost=answer.cost,
        )


def _answered(call: JudgeCall, what: str) -> str:
    if call.status != "ok":
        raise EvaluationError(
            f"the judge model gave no reply{what} ({call.status}: {call.error})", ""
        )
    return call.reply


async def _all_at_once(candidates: dict[VersionKey, Version], judging: _Judging) -> Evaluation:
    messages = evaluation_messages(candidates, context=judging.context, criteria=judging.criteria)
    call = await judging.ask(messages, None)
    reply = _answered(call, "")
    evaluation = parse_evaluation(reply)
    unknown = sorted({evaluation.best_choice, *evaluation.ranking} - set(candidates), key=key_order)
    if unknown:
        raise EvaluationError(
            f"the evaluation chose {spoken(unknown[0])}, which is not an ok version", reply
        )
    shown = {k: evaluation.versions[k] for k in candidates if k in evaluation.versions}
    return replace(evaluation, versions=shown, calls=(call,))  # in the order shown


async def _pairwise(candidates: dict[VersionKey, Version], judging: _Judging) -> Evaluation:
    keys = list(candidates)
    orders = [o for a, b in combinations(keys, 2) for o in ((a, b), (b, a))]
    calls = await asyncio.gather(
        *(
            judging.ask(
                pairwise_messages(
                    candidates[first],
                    candidates[second],
                    context=judging.context,
                    criteria=judging.criteria,
                ),
                (first, second),
            )
            for first, second in orders
        )
    )
    said = {order: _pair_winner(call, *order) for order, call in zip(orders, calls, strict=True)}
    pairs = tuple(
        PairVerdict(a, b, said[a, b][0], said[b, a][0], said[a, b][1], said[b, a][1])
        for a, b in combinations(keys, 2)
    )
    return _ranked(keys, pairs, tuple(calls))


def _pair_winner(
    call: JudgeCall, first: VersionKey, second: VersionKey
) -> tuple[VersionKey | None, str]:
    """(the winning version's key, None for a tie; the reason) of one pair request."""
    one, two = key_text(first), key_text(second)
    reply = _answered(call, f" comparing versions {one} and {two}")
    try:
        letter, reason = parse_pair_reply(reply)
    except EvaluationError as exc:
        raise EvaluationError(
            f"{exc} (versions {one} and {two}, {one} shown first)", reply
        ) from None
    return {"A": first, "B": second, None: None}[letter], reason


def _ranked(
    keys: list[VersionKey], pairs: tuple[PairVerdict, ...], calls: tuple[JudgeCall, ...]
) -> Evaluation:
    wins = dict.fromkeys(keys, 0.0)
    notes: dict[VersionKey, dict[str, list[str]]] = {i: {"pros": [], "cons": []} for i in keys}
    for pair in pairs:
        _count(wins, notes, pair, pair.winner_ab, pair.reason_ab, first=pair.a)
        _count(wins, notes, pair, pair.winner_ba, pair.reason_ba, first=pair.b)
    ranking = tuple(sorted(keys, key=lambda i: (-wins[i], key_order(i))))
    best = ranking[0]
    total = 2 * (len(keys) - 1)
    tied = [i for i in ranking[1:] if wins[i] == wins[best]]
    reason = f"{spoken(best)} won {wins[best]:g} of {total} comparisons"
    if tied:
        names = ", ".join(key_text(i) for i in tied)
        others = spoken(tied[0]) if len(tied) == 1 else f"versions {names}"
        reason += f" (tied with {others}; the lower number is first)"
    agreement = sum(p.agree for p in pairs) / len(pairs)
    return Evaluation(
        best,
        reason,
        notes,
        ranking=ranking,
        wins=wins,
        pairs=pairs,
        agreement=agreement,
        calls=calls,
    )


def _count(
    wins: dict[VersionKey, float],
    notes: dict[VersionKey, dict[str, list[str]]],
    pair: PairVerdict,
    winner: VersionKey | None,
    reason: str,
    *,
    first: VersionKey,
) -> None:
    """Score one answer; its reason goes to the pros of the winner and the cons of the
    loser, saying which letter each was read as (the judge's reason names A and B)."""
    if winner is None:
        wins[pair.a] += 0.5
        wins[pair.b] += 0.5
        return
    loser = pair.b if winner == pair.a else pair.a
    wins[winner] += 1.0
    letter = "A" if winner == first else "B"
    notes[winner]["pros"].append(f"beat {spoken(loser)} (read as {letter}): {reason}")
    notes[loser]["cons"].append(f"lost to {spoken(winner)} (read as {letter}): {reason}")

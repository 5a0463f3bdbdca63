"""What the judge is asked, and how its answer is read.

Two requests, both carrying the chapter's context (the sections of
:class:`~arboris_nb.prompts.ChapterContext`, as :func:`~arboris_nb.prompts.chapter_messages`
writes them) and the editor's criteria:

* all at once (:func:`evaluation_messages`): every version under ``[Version i]`` — a linked
  retry under ``[Version 2r1]`` (retry 1 of version 2; :mod:`~arboris_nb.versionkeys`);
  the reply is Arboris-Novel's evaluation JSON, read by :func:`parse_evaluation`;
* one pair (:func:`pairwise_messages`): two versions as ``[Version A]`` and ``[Version B]``
  (letters, not numbers, so the judge cannot favour a number); the reply names the winner,
  read by :func:`parse_pair_reply`.

A reply that is not the expected shape raises :class:`~arboris_nb.verdict.EvaluationError`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from .backends.base import Message
from .prompts import ChapterContext, strip_think
from .results import Version
from .verdict import Evaluation, EvaluationError
from .versionkeys import VersionKey, key_text, parse_key_text

__all__ = [
    "DEFAULT_CRITERIA",
    "EVALUATION_SYSTEM_PROMPT",
    "PAIRWISE_SYSTEM_PROMPT",
    "evaluation_messages",
    "pairwise_messages",
    "parse_evaluation",
    "parse_pair_reply",
]

#: What the judge weighs unless the editor says otherwise.
DEFAULT_CRITERIA: tuple[str, ...] = (
    "consistency with the outline and the previous chapters",
    "characters",
    "pacing",
    "prose",
)

_BRIEF = (
    "You are a senior fiction editor. Judge the candidate versions of one chapter of a "
    "novel by the criteria under [Criteria], reading them against the book's context when "
    "it is given (world blueprint, previous chapters, this chapter's goal, writing notes). "
)
EVALUATION_SYSTEM_PROMPT = _BRIEF + (
    "Compare all the versions. Reply with JSON only: "
    "Name each version as its heading does (1, 2, or 2r1 for a retry of version 2). "
    '{"best_choice": <version>, "ranking": [<versions, best first>], '
    '"reason_for_choice": "...", "evaluation": {"version1": {"pros": ["..."], '
    '"cons": ["..."], "overall_review": "..."}, ...}}'
)
PAIRWISE_SYSTEM_PROMPT = _BRIEF + (
    "Compare the two versions, A and B. Reply with JSON only: "
    '{"winner": "A" or "B" or "tie", "reason": "..."}'
)

CRITERIA_LABEL = "Criteria"
# The judge (and the simulated judge) finds the versions by these headings.
HEADING_RE = re.compile(r"^\[Version (\d+(?:r\d+)?|A|B)\]$", re.MULTILINE)
CRITERIA_RE = re.compile(rf"^\[{CRITERIA_LABEL}\]$", re.MULTILINE)

Winner = Literal["A", "B"] | None  # None: a tie


def _user_text(context: ChapterContext, criteria: Sequence[str], drafts: list[str]) -> str:
    listed = "\n".join(f"- {c}" for c in criteria)
    parts = [context.text(), f"[{CRITERIA_LABEL}]\n{listed}", *drafts]
    return "\n\n".join(p for p in parts if p)


def evaluation_messages(
    versions: Sequence[Version] | Mapping[VersionKey, Version],
    *,
    context: ChapterContext | None = None,
    criteria: Sequence[str] = DEFAULT_CRITERIA,
) -> list[Message]:
    """The request asking a model to compare all ``versions`` at once: a list (each
    headed by its number) or a dict by key (a linked retry ``(2, 1)`` headed ``2r1``)."""
    named = versions if isinstance(versions, Mapping) else {v.index: v for v in versions}
    drafts = [f"[Version {key_text(k)}]\n{v.content or ''}" for k, v in named.items()]
    user = _user_text(context or ChapterContext(), criteria, drafts)
    return [
        {"role": "system", "content": EVALUATION_SYSTEM_PROMPT},
        {"role": "user", "content": user},
    ]


def pairwise_messages(
    first: Version,
    second: Version,
    *,
    context: ChapterContext | None = None,
    criteria: Sequence[str] = DEFAULT_CRITERIA,
) -> list[Message]:
    """The request asking a model which of two versions is better; ``first`` is shown
    as A. The judge never sees the version numbers."""
    drafts = [f"[Version A]\n{first.content or ''}", f"[Version B]\n{second.content or ''}"]
    user = _user_text(context or ChapterContext(), criteria, drafts)
    return [
        {"role": "system", "content": PAIRWISE_SYSTEM_PROMPT},
        {"role": "user", "content": user},
    ]


# -- reading the replies -----------------------------------------------------------------
def _json_object(text: str) -> Any:
    """The first JSON object in a reply: ``<think>`` and code fences tolerated."""
    clean = strip_think(text)
    start, end = clean.find("{"), clean.rfind("}")
    if start < 0 or end < start:
        return None
    try:
        return json.loads(clean[start : end + 1])
    except json.JSONDecodeError:
        return None


def _version_key(key: object) -> VersionKey | None:
    """``2``, ``"version2"``, ``"2r1"`` (a retry)…: the version a reply names."""
    return parse_key_text(key) if isinstance(key, int | str) else None


def _points(value: object) -> list[str]:
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, list):
        return [str(p) for p in value if str(p).strip()]
    return []


def _ranking(value: object, best: VersionKey, text: str) -> tuple[VersionKey, ...]:
    if value is None:
        return (best,)
    numbers = [_version_key(v) for v in value] if isinstance(value, list) else [None]
    if None in numbers or not numbers or numbers[0] != best:
        raise EvaluationError(
            f"the evaluation reply's ranking {value!r} is not a list of version numbers "
            f"that starts with the best_choice ({best})",
            text,
        )
    return tuple(dict.fromkeys(n for n in numbers if n is not None))


def parse_evaluation(text: str) -> Evaluation:
    """Parse an all-at-once reply; raise :class:`EvaluationError` when it is not usable.

    Accepts ``best_choice`` (or ``best_version``), ``reason_for_choice`` (or ``reason``),
    an optional ``ranking`` (best first) and ``evaluation`` (or ``versions``) keyed
    ``version1`` / ``1`` / ``version_1`` (a retry: ``2r1``, ``version2r1``).
    """
    data = _json_object(text)
    if not isinstance(data, dict):
        raise EvaluationError("the evaluation reply is not a JSON object", text)
    best = _version_key(data.get("best_choice", data.get("best_version", "")))
    if best is None:
        raise EvaluationError("the evaluation reply has no best_choice version number", text)
    reason = str(data.get("reason_for_choice", data.get("reason", "")))
    notes = data.get("evaluation", data.get("versions", {}))
    versions: dict[VersionKey, dict[str, list[str]]] = {}
    if isinstance(notes, dict):
        for key, value in notes.items():
            number = _version_key(key)
            if number is not None and isinstance(value, dict):
                versions[number] = {k: _points(value.get(k)) for k in ("pros", "cons")}
    ranking = _ranking(data.get("ranking"), best, text)
    return Evaluation(best, reason, versions, raw=text, ranking=ranking)


def parse_pair_reply(text: str) -> tuple[Winner, str]:
    """A pairwise reply as (``"A"``, ``"B"`` or None for a tie, the reason).

    Accepts ``winner`` (or ``better``) as ``A`` / ``B`` / ``tie``, also written
    ``"Version A"``; anything else raises :class:`EvaluationError`."""
    data = _json_object(text)
    if not isinstance(data, dict):
        raise EvaluationError("the pairwise reply is not a JSON object", text)
    said = str(data.get("winner", data.get("better", ""))).strip().lower()
    said = said.removeprefix("version").strip()
    if said not in {"a", "b", "tie"}:
        raise EvaluationError(
            f'the pairwise reply\'s winner must be "A", "B" or "tie", got {said!r}', text
        )
    winner: Winner = None if said == "tie" else ("A" if said == "a" else "B")
    return winner, str(data.get("reason", data.get("reason_for_choice", "")))

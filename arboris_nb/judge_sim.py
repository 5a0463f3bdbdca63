"""An offline judge: a :class:`SimulatedLLM` that writes chapters and answers the judge's
requests (:mod:`arboris_nb.judge_prompts`) with deterministic JSON.

Its toy taste: a version scores its share of distinct words (varied vocabulary) plus the
share of the context's key words it uses (fidelity to the blueprint, summaries, goal and
notes). All at once, the best score wins. In a pair, a clear difference wins in either
order, but when the two score within :data:`CLOSE_CALL` of each other the version shown
first wins — the position bias real judges show, so judging both orders matters and the
agreement between the orders depends on the texts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import replace
from itertools import pairwise
from typing import Any

from .backends.base import Backend, ChatRequest
from .backends.simulated import SimulatedLLM
from .config import LLMConfig
from .errors import ConfigError
from .judge_prompts import (
    CRITERIA_RE,
    EVALUATION_SYSTEM_PROMPT,
    HEADING_RE,
    PAIRWISE_SYSTEM_PROMPT,
)
from .prompts import ChapterContext
from .versionkeys import key_order, parse_key_text

__all__ = ["CLOSE_CALL", "offline_judge", "simulated_judge"]

#: Scores closer than this are a close call, which the simulated judge gives to
#: whichever version it read first.
CLOSE_CALL = 0.03

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af"
_WORD = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+")
_CJK_PAIR = re.compile(rf"[{_CJK}]{{2}}")


def _words(text: str) -> list[str]:
    """Words, lowercased; each CJK character is one (there are no spaces to split on)."""
    return _WORD.findall(text.lower())


def _key_words(text: str) -> set[str]:
    """What fidelity is measured on: words of 4+ letters, and CJK character pairs."""
    words = _words(text)
    latin = {w for w in words if len(w) >= 4}  # a CJK "word" is one character
    cjk = {a + b for a, b in pairwise(words) if _CJK_PAIR.fullmatch(a + b)}
    return latin | cjk


def _score(text: str, keys: set[str]) -> tuple[float, float]:
    """(variety, fidelity) of one version, each from 0 to 1."""
    words = _words(text)
    variety = len(set(words)) / max(len(words), 1)
    fidelity = len(keys & _key_words(text)) / len(keys) if keys else 0.0
    return variety, fidelity


def _split(user: str) -> tuple[set[str], dict[str, str]]:
    """The context's key words, and each version's text by its heading (1, 2… or A, B)."""
    headings = list(HEADING_RE.finditer(user))
    criteria = CRITERIA_RE.search(user)
    end = criteria.start() if criteria else (headings[0].start() if headings else len(user))
    context = ChapterContext.from_prompt(user[:end]) if end else ChapterContext()
    keys = _key_words(" ".join(str(body) for _, body in context.sections()))
    drafts = {}
    for pos, match in enumerate(headings):
        stop = headings[pos + 1].start() if pos + 1 < len(headings) else len(user)
        drafts[match.group(1)] = user[match.end() : stop].strip()
    return keys, drafts


def _all_reply(user: str) -> str:
    keys, drafts = _split(user)
    scores = {k: _score(text, keys) for k, text in drafts.items()}  # by label: "2", "2r1"

    def order(label: str) -> tuple[float, tuple[int, int]]:
        key = parse_key_text(label)
        return -sum(scores[label]), key_order(key if key is not None else 0)

    ranking = sorted(scores, key=order)
    best = ranking[0]
    why = "the most varied vocabulary" + (" and fidelity to the context" if keys else "")
    evaluation = {
        f"version{i}": {
            "pros": _pros(variety, fidelity, bool(keys)) if i == best else [],
            "cons": [] if i == best else [f"scores below version {best} on {why}"],
            "overall_review": "simulated review",
        }
        for i, (variety, fidelity) in scores.items()
    }
    verdict = {
        "best_choice": _json_label(best),
        "ranking": [_json_label(i) for i in ranking],
        "reason_for_choice": f"version {best} has {why} (simulated judge)",
        "evaluation": evaluation,
    }
    return json.dumps(verdict, ensure_ascii=False)


def _json_label(label: str) -> int | str:
    """A version's number as a JSON number, a retry's label (``"2r1"``) as text."""
    return int(label) if label.isdigit() else label


def _pros(variety: float, fidelity: float, has_context: bool) -> list[str]:
    pros = [f"{variety:.0%} distinct words"]
    return [*pros, f"uses {fidelity:.0%} of the context's key words"] if has_context else pros


def _pair_reply(user: str) -> str:
    keys, drafts = _split(user)
    a, b = (sum(_score(drafts.get(k, ""), keys)) for k in ("A", "B"))
    if abs(a - b) < CLOSE_CALL:
        winner, reason = "A", "a close call; the first one read slightly better"
    else:
        winner = "A" if a > b else "B"
        reason = "more varied vocabulary" + (" and closer to the context" if keys else "")
    return json.dumps({"winner": winner, "reason": f"{reason} (simulated judge)"})


def _replier(llm: SimulatedLLM) -> Callable[[ChatRequest], str]:
    answers = {EVALUATION_SYSTEM_PROMPT: _all_reply, PAIRWISE_SYSTEM_PROMPT: _pair_reply}

    def reply(request: ChatRequest) -> str:
        system = next((m["content"] for m in request.messages if m["role"] == "system"), "")
        if system in answers:
            return answers[system](request.prompt)
        return llm.prose(request)  # in the model's language (lang=)

    return reply


def simulated_judge(**options: Any) -> SimulatedLLM:
    """A :class:`SimulatedLLM` that writes chapters and also answers evaluation requests.

    Writing requests get the usual simulated prose; the judge's requests (all at once,
    or one pair) get deterministic JSON (see this module's docstring for its taste).
    ``options`` are passed to :class:`SimulatedLLM` (``reply`` is taken).
    """
    if "reply" in options:
        raise ConfigError("simulated_judge sets reply itself; do not pass reply=")
    llm = SimulatedLLM(**options)
    llm.reply = _replier(llm)
    return llm


def offline_judge(llm: LLMConfig | Backend | None) -> LLMConfig | Backend | None:
    """A plain SimulatedLLM writes prose, never a verdict: judge with its simulated_judge
    twin (same timing, seed and faults; requests still recorded in its ``calls``)."""
    if not isinstance(llm, SimulatedLLM) or llm.reply is not None:
        return llm  # a real model, or a scripted reply the caller chose on purpose
    twin = replace(llm)  # shares the `calls` list
    twin.reply = _replier(twin)
    return twin

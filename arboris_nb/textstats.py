"""Text metrics of one chapter version, for English and Chinese alike.

:func:`text_metrics` is a pure function of the text; ``Run.to_frame()`` adds its keys as
columns (documented in :data:`TEXT_METRIC_COLUMNS`). Chinese has no spaces between words,
so counting whitespace-separated words would make a whole paragraph one "word": here each
CJK character counts as one word, as Chinese word counts (字数) do, and runs of letters or
digits count as one word each.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

__all__ = [
    "CJK_CHARS_PER_MIN",
    "TEXT_METRIC_COLUMNS",
    "WORDS_PER_MIN",
    "text_metrics",
]

#: Reading speeds for :func:`text_metrics`' ``reading_min``: CJK characters and other
#: words per minute (common estimates for adult readers of fiction).
CJK_CHARS_PER_MIN = 300
WORDS_PER_MIN = 230

#: The columns :func:`text_metrics` returns (and ``Run.to_frame()`` holds).
TEXT_METRIC_COLUMNS: dict[str, str] = {
    "chars": "characters of content (a CJK character counts one)",
    "words": "words: each CJK character counts one, a run of letters or digits counts one",
    "paragraphs": "non-blank lines of content",
    "dialogue_share": 'share of the words inside quotation marks “…” 「…」 『…』 «…» "…" (0–1)',
    "repeated_phrase_ratio": "share of the words inside a phrase that occurs more than once "
    "(3 words, or 4 CJK characters in Chinese text; 0–1)",
    "reading_min": f"reading time in minutes ({CJK_CHARS_PER_MIN} CJK characters or "
    f"{WORDS_PER_MIN} words a minute)",
}

# Kana, CJK ideographs (extension A, unified, compatibility) and Hangul syllables.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_CJK_CHAR = re.compile(f"[{_CJK}]")
# A CJK character, or letters/digits with inner apostrophes or hyphens ("don't", "well-lit").
_WORD = re.compile(rf"[{_CJK}]|[^\W{_CJK}_]+(?:['’-][^\W{_CJK}_]+)*")
# Opening mark → closing mark. Single quotes are left out: ’ is also the apostrophe.
_QUOTES = {"“": "”", "「": "」", "『": "』", "«": "»", '"': '"'}


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def _quoted(line: str) -> str:
    """The text of ``line`` inside quotation marks (nested quotes included), space-joined.

    A quote still open at the end of the line ends there: in novels a speech that runs over
    several paragraphs reopens its quote at each one.
    """
    open_marks: list[str] = []
    inside: list[str] = []
    for char in line:
        if open_marks and char == _QUOTES[open_marks[-1]]:
            open_marks.pop()
            inside.append(" ")
        elif char in _QUOTES:
            open_marks.append(char)
        elif open_marks:
            inside.append(char)
    return "".join(inside)


def _repeated_share(words: list[str], n: int) -> float:
    """Share of ``words`` covered by an ``n``-word phrase that occurs at least twice."""
    if len(words) < n:
        return 0.0
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    counts = Counter(grams)
    covered = [False] * len(words)
    for start, gram in enumerate(grams):
        if counts[gram] > 1:
            covered[start : start + n] = [True] * n
    return sum(covered) / len(words)


def text_metrics(text: str) -> dict[str, Any]:
    """Length, shape and style metrics of ``text``; the keys are :data:`TEXT_METRIC_COLUMNS`.

    >>> text_metrics("她说：「走吧。」")["words"], text_metrics("“Go,” she said.")["words"]
    (4, 3)
    """
    lines = [line for line in text.splitlines() if line.strip()]
    words = _words(text)
    cjk = sum(1 for w in words if _CJK_CHAR.fullmatch(w))
    spoken = sum(len(_words(_quoted(line))) for line in lines)
    phrase = 4 if cjk * 2 > len(words) else 3  # one CJK character carries less than a word
    return {
        "chars": len(text),
        "words": len(words),
        "paragraphs": len(lines),
        "dialogue_share": spoken / len(words) if words else 0.0,
        "repeated_phrase_ratio": _repeated_share(words, phrase),
        "reading_min": cjk / CJK_CHARS_PER_MIN + (len(words) - cjk) / WORDS_PER_MIN,
    }

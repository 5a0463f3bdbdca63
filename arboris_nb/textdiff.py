"""An inline diff of two texts that reads well in English and in Chinese.

Tokens: a run of letters or digits is one token (an English word); each CJK character is
one token, since Chinese has no spaces to split words on; punctuation and whitespace runs
are tokens too, so the parts re-join to the exact texts. ``difflib`` aligns the tokens.

Aligning characters finds many accidental matches (的, 了, a shared space) inside a
rewritten phrase, and the result alternates change / one character / change. As in
diff-match-patch's semantic cleanup, a short equal run between two changes (at most
``_SHORT`` characters besides spaces, and no longer than the change on either side) is
folded into them, so a rewrite reads as one deletion and one insertion. The cap keeps real
shared words (most Chinese words are two characters or more) and equal runs that hold a
line break are kept too: paragraphs stay visible.
"""

from __future__ import annotations

import difflib
import re
from typing import Literal

from .textstats import _CJK

__all__ = ["DiffOp", "text_diff"]

DiffOp = Literal["equal", "insert", "delete"]
_TOKEN = re.compile(rf"\s+|[^\W{_CJK}]+|.", re.DOTALL)
_SHORT = 2
# A change before cleanup: the deleted and the inserted text between two equal runs.
_Change = tuple[str, str]


def text_diff(a: str, b: str) -> list[tuple[DiffOp, str]]:
    """Diff of ``a`` → ``b`` as (op, text) runs; equal+delete re-join to ``a``, equal+insert
    to ``b``. Within each change the deletion comes before the insertion."""
    left, right = _TOKEN.findall(a), _TOKEN.findall(b)
    matcher = difflib.SequenceMatcher(None, left, right, autojunk=False)
    parts: list[str | _Change] = []  # equal text, or a (deleted, inserted) change
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            parts.append("".join(left[i1:i2]))
        else:
            parts.append(("".join(left[i1:i2]), "".join(right[j1:j2])))
    return _as_ops(_fold(parts))


def _fold(parts: list[str | _Change]) -> list[str | _Change]:
    """Fold short equal runs into the changes around them (see the module docstring)."""
    out: list[str | _Change] = []
    for part in parts:
        if isinstance(part, tuple) and out and isinstance(out[-1], tuple):
            out[-1] = (out[-1][0] + part[0], out[-1][1] + part[1])  # two changes in a row
        else:
            out.append(part)
        while len(out) >= 3 and _foldable(out[-3], out[-2], out[-1]):
            before, same, after = out[-3], out[-2], out[-1]
            assert isinstance(before, tuple) and isinstance(same, str)  # for mypy
            assert isinstance(after, tuple)
            out[-3:] = [(before[0] + same + after[0], before[1] + same + after[1])]
    return out


def _foldable(before: str | _Change, same: str | _Change, after: str | _Change) -> bool:
    if not (isinstance(before, tuple) and isinstance(same, str) and isinstance(after, tuple)):
        return False
    if "\n" in same:
        return False
    size = len(same.strip()) or 1  # a lone space between two changes always goes
    return size <= min(_SHORT, max(map(len, before)), max(map(len, after)))


def _as_ops(parts: list[str | _Change]) -> list[tuple[DiffOp, str]]:
    ops: list[tuple[DiffOp, str]] = []
    for part in parts:
        if isinstance(part, str):
            ops.append(("equal", part))
            continue
        if part[0]:
            ops.append(("delete", part[0]))
        if part[1]:
            ops.append(("insert", part[1]))
    return ops

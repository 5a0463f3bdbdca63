"""How the versions of a run are named once it has linked retries (issue #13).

A Retry never replaces a version: it is a run of its own (``Run.retries``) whose one
version is linked to the version it retries. So a run's versions are named by a *key*:
``2`` is the run's version 2, ``(2, 1)`` the first retry of version 2 — numbered per
version, oldest first, as the widget's panels, :func:`~arboris_nb.render.render_run` and
the judge number them. In text a key is written ``"2"`` or ``"2r1"`` (:func:`key_text`):
what the judge sees in its ``[Version 2r1]`` heading and what a stored verdict holds.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .results import Run, Version

__all__ = [
    "VersionKey",
    "key_order",
    "key_text",
    "linked_versions",
    "parse_key_text",
    "retry_keys",
    "spoken",
]

#: A version of a run: ``i`` (the run's version i) or ``(i, n)`` (retry n of version i).
VersionKey = int | tuple[int, int]

# "2", "2r1", and what a model may write for them: "version 2", "2-r1", "2 retry 1", "2·r1".
_KEY = re.compile(r"(\d+)(?:\s*[-_·.]?\s*r(?:etry)?\s*[-_ ]?\s*(\d+))?", re.IGNORECASE)


def key_text(key: VersionKey) -> str:
    """``key`` as a short label: ``"2"`` or ``"2r1"``."""
    return f"{key[0]}r{key[1]}" if isinstance(key, tuple) else str(key)


def parse_key_text(text: object) -> VersionKey | None:
    """The key a label names (``2``, ``"version2"``, ``"2r1"``, ``"2 · retry 1"``), or
    None when it names none. A list or tuple of two numbers is a retry key (JSON)."""
    if isinstance(text, list | tuple) and len(text) == 2:
        return (int(text[0]), int(text[1]))
    match = _KEY.search(str(text))
    if match is None:
        return None
    index, retry = match.groups()
    return (int(index), int(retry)) if retry else int(index)


def key_order(key: VersionKey) -> tuple[int, int]:
    """Sorts keys as they are shown: version 2, its retries, then version 3."""
    return key if isinstance(key, tuple) else (key, 0)


def spoken(key: VersionKey) -> str:
    """``key`` in words: ``version 2`` or ``version 2 · retry 1``."""
    return f"version {key[0]} · retry {key[1]}" if isinstance(key, tuple) else f"version {key}"


def retry_keys(run: Run) -> list[tuple[tuple[int, int], Run]]:
    """Each linked retry run of ``run`` with its key: numbered per version in
    ``run.retries`` order (oldest first). The one numbering rule: the widget's desk,
    :func:`linked_versions` and so the judge and :func:`~arboris_nb.render.render_run`."""
    counts: dict[int, int] = {}
    keyed: list[tuple[tuple[int, int], Run]] = []
    for sub in run.retries:
        if sub.parent_index is None:
            continue
        n = counts[sub.parent_index] = counts.get(sub.parent_index, 0) + 1
        keyed.append(((sub.parent_index, n), sub))
    return keyed


def linked_versions(run: Run) -> list[tuple[VersionKey, Version]]:
    """Every version of ``run`` in the order shown: each of its own, then its retries.

    A retry run that never began (no version) keeps its number (:func:`retry_keys`)."""
    retries: dict[int, list[tuple[VersionKey, Version]]] = {}
    for key, sub in retry_keys(run):
        if sub.versions:
            retries.setdefault(key[0], []).append((key, sub.versions[0]))
    shown: list[tuple[VersionKey, Version]] = []
    for version in run.versions:
        shown += [(version.index, version), *retries.get(version.index, [])]
    return shown

"""The editor's desk behind :class:`~arboris_nb.widgets.VersionsWidget`: which versions
it shows (the run's own and its linked retries), the decisions stored as they happen,
and reopening a stored run (issue #13).

A version on the desk is named by a *key*: ``2`` is the run's version 2, ``(2, 1)`` the
first retry of version 2 (a version of a run of its own, linked to the run: see
:func:`arboris_nb.editor.retry_version`). Keys are what the widget's methods take
(``w.select((2, 1))``) and what the panels and the Compare tab's choices carry.

Select, Evaluate and scene notes are recorded through :mod:`arboris_nb.runs`
(``record_selection`` / ``record_evaluation`` / ``record_notes``) against the run the
desk shows, in its store (``store=``; off: in memory only). Edits are saved by
:func:`arboris_nb.editor.edit_version` itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from .. import runs
from ..config import COUNT_RANGE, WriterSettings
from ..errors import ConfigError
from ..results import Run, Version
from ..store import StoreSpec, store_session
from ..versionkeys import VersionKey, retry_keys, spoken
from .actions import require_run

if TYPE_CHECKING:
    from ..backends.base import Message
    from ..verdict import Evaluation
    from .versions import VersionsWidget

__all__ = [
    "Desk",
    "VersionKey",
    "key_label",
    "loaded_summary",
    "open_desk",
    "parse_key",
    "settings_of",
    "stored_run",
]

W = TypeVar("W", bound="VersionsWidget")


def key_label(key: VersionKey) -> str:
    """What a person reads for ``key``: ``Version 2`` or ``Version 2 · retry 1`` (the
    words of :func:`~arboris_nb.versionkeys.spoken`, as a title)."""
    return spoken(key).capitalize()


def parse_key(key: object) -> VersionKey:
    """``key`` checked: an int ≥ 1 or a pair of them, else a ConfigError that says so."""
    if isinstance(key, int) and not isinstance(key, bool) and key >= 1:
        return key
    if (
        isinstance(key, tuple | list)
        and len(key) == 2
        and all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in key)
    ):
        return (key[0], key[1])
    raise ConfigError(
        f"a version is named by its number (2) or, for a retry, by (version, retry) "
        f"such as (2, 1); got {key!r}"
    )


@dataclass
class Desk:
    """The run shown, its linked retries by key, and where decisions are stored."""

    store: StoreSpec = None
    run: Run | None = None
    retries: dict[tuple[int, int], Run] = field(default_factory=dict)

    def reset(self, run: Run | None) -> None:
        """Show ``run`` (a new one, or a loaded one with its ``retries``)."""
        self.run = run
        self.retries = dict(retry_keys(run)) if run is not None else {}

    # -- which versions -----------------------------------------------------------------
    def add_retry(self, key: tuple[int, int], sub: Run) -> None:
        """Retry ``key`` runs as ``sub`` (heard from its first event)."""
        self.retries[key] = sub

    def keys(self) -> list[VersionKey]:
        """Every version shown, in order: each of the run's, then its retries."""
        run = require_run(self.run)
        keys: list[VersionKey] = []
        for version in run.versions:
            keys.append(version.index)
            keys += sorted(k for k in self.retries if k[0] == version.index)
        return keys

    def version(self, key: VersionKey) -> Version:
        """The version ``key`` names (ConfigError if the desk has none such)."""
        run = require_run(self.run)
        key = parse_key(key)
        if isinstance(key, int):
            found = [v for v in run.versions if v.index == key]
        else:
            sub = self.retries.get(key)
            found = sub.versions[:1] if sub is not None else []
        if not found:
            raise ConfigError(f"there is no {key_label(key).lower()} (shown: {self._shown()})")
        return found[0]

    def labelled(self) -> list[tuple[VersionKey, str, Version]]:
        """(key, label, version) of every version shown, in order."""
        if self.run is None:
            return []
        return [(k, key_label(k), self.version(k)) for k in self.keys()]

    def where(self, key: VersionKey) -> tuple[str | None, int]:
        """``(version_run_id, index)`` as decisions name a version (None: the run's own)."""
        self.version(key)
        if isinstance(key, tuple):
            return self.retries[key].run_id, key[0]
        return None, key

    def key_of(self, selection: tuple[str, int] | None) -> VersionKey | None:
        """The key of a stored selection ``(run_id, index)``, None if not shown."""
        if selection is None or self.run is None:
            return None
        run_id, index = selection
        if run_id in (None, self.run.run_id):
            return index
        return next((k for k, sub in self.retries.items() if sub.run_id == run_id), None)

    def _shown(self) -> str:
        return ", ".join(key_label(k).removeprefix("Version ") for k in self.keys())

    # -- decisions, stored as they happen ---------------------------------------------------
    def record_selection(self, key: VersionKey) -> None:
        version_run_id, index = self.where(key)
        runs.record_selection(
            require_run(self.run), index, version_run_id=version_run_id, store=self.store
        )

    def record_notes(self, key: VersionKey, notes: str) -> None:
        version = self.version(key)
        version_run_id, index = self.where(key)
        runs.record_notes(
            require_run(self.run),
            index,
            notes,
            version_run_id=version_run_id,
            store=self.store,
        )
        version.notes = notes or None

    def record_evaluation(self, evaluation: Evaluation) -> None:
        runs.record_evaluation(require_run(self.run), evaluation, store=self.store)


def open_desk(cls: type[W], run_id: str, *, store: StoreSpec, **options: Any) -> W:
    """``VersionsWidget.load``: a new widget showing the stored run ``run_id``."""
    run, messages = stored_run(run_id, store)
    options.setdefault("settings", settings_of(run))
    widget = cls(store=store, **options)
    widget._show_stored(run, messages)
    return widget


def settings_of(run: Run) -> WriterSettings:
    """The controls' settings for a stored run: its count, mode and concurrency limit."""
    low, high = COUNT_RANGE
    return WriterSettings(
        version_count=min(max(run.keep_count, low), high),
        parallel=run.parallel,
        max_parallel_requests=run.max_parallel_requests,  # type: ignore[arg-type]
    )


def stored_run(run_id: str, store: StoreSpec) -> tuple[Run, list[Message]]:
    """The stored run (decisions, retries and notes filled in) and its messages.

    An unknown id is :class:`~arboris_nb.runs.RunNotFound`; a store written by a newer
    arboris_nb is refused when it is opened (nothing in it changes)."""
    with store_session(store) as opened:
        if opened is None:
            raise ConfigError(
                "the run store is off (ARBORIS_STORE=off), so there is nothing to load: "
                "set ARBORIS_STORE to a file path or pass store=PATH"
            )
        run = runs.load_run(run_id, store=opened)  # RunNotFound for an unknown id
        record = opened.get_run(run_id)
        assert record is not None  # load_run found it
        return run, list(record.messages)


def loaded_summary(run: Run, desk: Desk, selected: VersionKey | None) -> str:
    """The status line after a load: what was restored, in words."""
    done = sum(v.ok for v in run.versions)
    parts = [f"Loaded run {run.run_id}: {done} of {run.version_count} versions done"]
    if desk.retries:
        parts.append(f"{len(desk.retries)} retr{'y' if len(desk.retries) == 1 else 'ies'}")
    if selected is not None:
        edited = " (edited)" if desk.version(selected).edited else ""
        parts.append(f"selected: {key_label(selected)}{edited}")
    evaluation = run.evaluation
    if evaluation is not None:
        parts.append(f"last evaluation: best is {spoken(evaluation.best_choice)}")
    return "; ".join(parts) + "."

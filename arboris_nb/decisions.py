"""An editor's decisions on a run, as data: what was chosen, written or judged, and when.

A :class:`Decision` is one row of a run's history (``Run.decisions``, oldest first, and
the run store's ``decisions`` table). The history is append-only: re-selecting adds a
"select" after the first, a second edit adds an "edit" holding the new text, so nothing an
editor wrote is ever overwritten. The current state is read from it — the selection is
the last "select", the evaluation the last "evaluate".
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from .errors import ConfigError

__all__ = ["DECISION_KINDS", "Decision", "DecisionKind"]

DecisionKind = Literal["select", "edit", "notes", "evaluate"]
DECISION_KINDS: tuple[str, ...] = get_args(DecisionKind)


@dataclass(frozen=True)
class Decision:
    """One thing an editor did to a run.

    ``index`` is the version it concerns (None for an evaluation of the run);
    ``version_run_id`` the run holding that version: None for the run itself, else the id
    of a retry run linked to it. ``data`` by kind: select ``{}``; edit ``{"text"}``; notes
    ``{"notes"}``; evaluate ``Evaluation.to_dict()``. ``at`` is wall-clock epoch seconds.
    """

    kind: DecisionKind
    at: float
    index: int | None = None
    version_run_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in DECISION_KINDS:
            raise ConfigError(
                f"decision kind must be one of {', '.join(DECISION_KINDS)}, got {self.kind!r}"
            )

    @classmethod
    def now(
        cls,
        kind: DecisionKind,
        index: int | None = None,
        *,
        version_run_id: str | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> Decision:
        """A decision made now (``at`` = ``time.time()``)."""
        return cls(kind, time.time(), index, version_run_id, dict(data or {}))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"kind", "at", "index", "version_run_id", "data"}``."""
        return {
            "kind": self.kind,
            "at": self.at,
            "index": self.index,
            "version_run_id": self.version_run_id,
            "data": dict(self.data),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Decision:
        """A Decision from :meth:`to_dict`'s output (unknown keys are ignored)."""
        index = data.get("index")
        return cls(
            kind=data["kind"],
            at=float(data["at"]),
            index=None if index is None else int(index),
            version_run_id=data.get("version_run_id"),
            data=dict(data.get("data") or {}),
        )

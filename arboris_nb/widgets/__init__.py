"""Jupyter widgets: :class:`VersionsWidget` (live side-by-side versions and editor actions)
and :class:`BookProgress` (a whole-book job's progress)."""

from __future__ import annotations

from .board import PanelBoard
from .book import BookProgress
from .panels import STATUS_WORDS, PanelView, VersionPanel
from .progress import RunProgress
from .stream import DeltaStream
from .timeline import timeline_html
from .versions import VersionsWidget

__all__ = [
    "STATUS_WORDS",
    "BookProgress",
    "DeltaStream",
    "PanelBoard",
    "PanelView",
    "RunProgress",
    "VersionPanel",
    "VersionsWidget",
    "timeline_html",
]

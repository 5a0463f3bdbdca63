"""Jupyter widgets: :class:`VersionsWidget` (live side-by-side versions and editor actions)."""

from __future__ import annotations

from .panels import STATUS_WORDS, VersionPanel
from .timeline import timeline_html
from .versions import VersionsWidget

__all__ = ["STATUS_WORDS", "VersionPanel", "VersionsWidget", "timeline_html"]

"""A matplotlib ``Figure`` that displays itself in Jupyter.

A bare ``Figure`` (built without pyplot) shows as ``<Figure size …>`` text in a fresh
kernel: IPython's PNG formatter for figures is registered only by ``%matplotlib inline``
or when pyplot activates the inline backend. ``_repr_png_`` is IPython's own per-object
hook, so these figures show as images with no magic and no pyplot state, and they are
still ordinary figures for ``savefig``. Kept apart from ``plots.py`` because it imports
matplotlib at import time, which ``import arboris_nb`` must not.
"""

from __future__ import annotations

import io

from matplotlib.figure import Figure

__all__ = ["NotebookFigure"]


class NotebookFigure(Figure):
    """A ``Figure`` with an image repr (PNG) and a text repr naming what it shows."""

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        # facecolor: white even under a dark theme, where a transparent plot is unreadable.
        self.savefig(buffer, format="png", facecolor="white")
        return buffer.getvalue()

    def __repr__(self) -> str:
        # The text a reader without images sees (and the text nbval compares): the titles.
        width, height = (round(v) for v in self.get_size_inches() * self.dpi)
        titles = [ax.get_title() for ax in self.axes if ax.get_title()]
        shown = " | ".join(titles) or "untitled"
        return f"<Figure {width}x{height} px: {shown}>"

"""What every widget action needs: a running loop, the version it acts on, and its
errors told to the person in words, where the action was started.

A button click must never raise into the void (ipywidgets would only log it) nor read
like a traceback: :func:`act` runs the action and shows a failure as a sentence that
says what to do — the message of a :class:`~arboris_nb.errors.StateError` is already
such a sentence; other arboris errors and file-system errors get the action's name in
front; anything else is a bug, named as one and logged with its traceback.
"""

from __future__ import annotations

import asyncio
import html
import logging
from collections.abc import Callable

from ..editor import EvaluationError
from ..errors import ArborisError, ConfigError, StateError
from ..results import Run, Version

__all__ = [
    "act",
    "error_html",
    "explain",
    "note_html",
    "report",
    "require_run",
    "running_loop",
    "version_of",
    "wait_error",
]

log = logging.getLogger("arboris_nb.widgets")

_EVALUATION_HINT = (
    " Press Evaluate to ask again, or pass judge= a model that answers in JSON "
    "(arboris_nb.simulated_judge() works offline)."
)


def running_loop(what: str) -> asyncio.AbstractEventLoop:
    """The kernel's loop, or a StateError saying what to use without one."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        raise StateError(
            f"{what} needs a running event loop (a Jupyter kernel or an async function); "
            "in a plain script use arboris_nb.generate_versions_sync(...) instead"
        ) from None


def require_run(run: Run | None) -> Run:
    """``run``, or a StateError saying to generate first."""
    if run is None:
        raise StateError("Nothing generated yet: press Generate first")
    return run


def wait_error(action: str) -> StateError:
    """The error for ``action`` asked for while a run or another action is in progress."""
    return StateError(
        f"Wait until the run or the action in progress ends (or press Stop), then press {action}"
    )


def version_of(run: Run | None, index: int) -> Version:
    """Version ``index`` of ``run``: StateError before any run, ConfigError if absent."""
    run = require_run(run)
    for version in run.versions:
        if version.index == index:
            return version
    raise ConfigError(f"there is no version {index} (1 to {run.version_count})")


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] if text else text


def explain(exc: BaseException, action: str) -> str:
    """``exc`` as a sentence for the person who pressed ``action`` (plain text)."""
    if isinstance(exc, StateError):
        return _sentence(str(exc))
    if isinstance(exc, EvaluationError):
        return f"{action} failed: {exc}.{_EVALUATION_HINT}"
    if isinstance(exc, ArborisError):
        return f"{action} failed: {exc}"
    if isinstance(exc, OSError):  # a file or folder the system refused: not a bug
        return f"{action} failed: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")
    return (
        f"{action} failed unexpectedly ({type(exc).__name__}: {exc}); this is a bug in "
        "arboris_nb — the details are in the log (logger arboris_nb.widgets)"
    )


def note_html(text: str) -> str:
    """A plain note (escaped)."""
    return f'<span class="arboris-note">{html.escape(text)}</span>'


def error_html(exc: BaseException, action: str) -> str:
    """An error as an escaped, red sentence (see :func:`explain`)."""
    return (
        f'<span class="arboris-error" style="color:#b00020">'
        f"{html.escape(explain(exc, action))}</span>"
    )


def report(exc: BaseException, action: str, show: Callable[[str], None]) -> None:
    """Log ``exc`` and show it through ``show`` (which sets some HTML widget's value)."""
    what = action.lower()
    if isinstance(exc, ArborisError | OSError):
        log.error("%s failed: %s", what, exc)  # expected; the message says it all
    else:
        log.error("%s failed: %s", what, exc, exc_info=exc)
    show(error_html(exc, action))


def act(action: Callable[[], object], name: str, show: Callable[[str], None]) -> None:
    """Run a button's action; a failure is shown through ``show``, never raised."""
    try:
        action()
    except Exception as exc:
        report(exc, name, show)

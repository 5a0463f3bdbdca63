"""arboris_nb — parallel chapter-version generation for Jupyter.

Generate N candidate versions of a chapter at once under a concurrency limit, watch them
stream side by side, and measure what the parallelism bought.
"""

from __future__ import annotations

import importlib as _importlib
import logging
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

from .adaptive import AdaptiveLimit, plot_limit_history
from .analysis import (
    Recorder,
    SweepResult,
    plot_concurrency,
    plot_distributions,
    plot_limit,
    plot_serial_vs_parallel,
    plot_timeline,
    sweep,
    sweep_sync,
)
from .backends import Backend, ChatRequest, SimulatedLLM, Usage
from .cache import RedisCache, SQLiteCache
from .config import LLMConfig, WriterSettings, mask_key
from .decisions import Decision
from .editor import (
    Evaluation,
    EvaluationError,
    diff_html,
    edit_version,
    evaluate,
    export_markdown,
    parse_evaluation,
    retry_version,
    simulated_judge,
    word_diff,
)
from .engine import generate_versions, generate_versions_sync, start_versions
from .errors import (
    AllVersionsFailed,
    ArborisError,
    AuthError,
    BackendError,
    BackendTimeout,
    BadRequest,
    ConfigError,
    ConnectionFailed,
    FanoutRefused,
    RateLimited,
    ServerError,
    StateError,
    StreamInterrupted,
)
from .events import (
    Event,
    LimitChanged,
    RunFinished,
    RunStarted,
    TokenDelta,
    VersionCancelled,
    VersionFailed,
    VersionFinished,
    VersionHedged,
    VersionQueued,
    VersionRetrying,
    VersionStarted,
)
from .handle import RunHandle
from .limits import FixedLimit, Limiter
from .pacing import RateBudget
from .pricing import Price
from .prompts import ChapterContext, chapter_messages, parse_reply
from .queue import BookJob
from .render import render_book, render_run
from .results import Run, Version
from .retry import RetryPolicy
from .runs import (
    export_run,
    list_runs,
    load_run,
    record_evaluation,
    record_notes,
    record_selection,
    resume,
    resume_sync,
)
from .store import RunStore, StoreTooNew
from .textstats import text_metrics
from .verdict import JudgeCall, PairVerdict

# Loaded on first use, so `import arboris_nb` (and so every CLI command) does not pay for
# packages a path may never need: openai (+ aiohttp, pydantic) and ipywidgets (+ IPython).
_LAZY = {
    "BookProgress": ".widgets.book",
    "KeyPool": ".backends.pool",
    "OpenAIBackend": ".backends.openai",
    "VersionsWidget": ".widgets.versions",
}
if _TYPE_CHECKING:
    from .backends.openai import OpenAIBackend
    from .backends.pool import KeyPool
    from .widgets.book import BookProgress
    from .widgets.versions import VersionsWidget

__version__ = "0.1.0"

__all__ = [
    "AdaptiveLimit",
    "AllVersionsFailed",
    "ArborisError",
    "AuthError",
    "Backend",
    "BackendError",
    "BackendTimeout",
    "BadRequest",
    "BookJob",
    "BookProgress",
    "ChapterContext",
    "ChatRequest",
    "ConfigError",
    "ConnectionFailed",
    "Decision",
    "Evaluation",
    "EvaluationError",
    "Event",
    "FanoutRefused",
    "FixedLimit",
    "JudgeCall",
    "KeyPool",
    "LLMConfig",
    "LimitChanged",
    "Limiter",
    "OpenAIBackend",
    "PairVerdict",
    "Price",
    "RateBudget",
    "RateLimited",
    "Recorder",
    "RedisCache",
    "RetryPolicy",
    "Run",
    "RunFinished",
    "RunHandle",
    "RunStarted",
    "RunStore",
    "SQLiteCache",
    "ServerError",
    "SimulatedLLM",
    "StateError",
    "StoreTooNew",
    "StreamInterrupted",
    "SweepResult",
    "TokenDelta",
    "Usage",
    "Version",
    "VersionCancelled",
    "VersionFailed",
    "VersionFinished",
    "VersionHedged",
    "VersionQueued",
    "VersionRetrying",
    "VersionStarted",
    "VersionsWidget",
    "WriterSettings",
    "__version__",
    "chapter_messages",
    "diff_html",
    "edit_version",
    "evaluate",
    "export_markdown",
    "export_run",
    "generate_versions",
    "generate_versions_sync",
    "list_runs",
    "load_ipython_extension",
    "load_run",
    "mask_key",
    "parse_evaluation",
    "parse_reply",
    "plot_concurrency",
    "plot_distributions",
    "plot_limit",
    "plot_limit_history",
    "plot_serial_vs_parallel",
    "plot_timeline",
    "record_evaluation",
    "record_notes",
    "record_selection",
    "render_book",
    "render_run",
    "resume",
    "resume_sync",
    "retry_version",
    "simulated_judge",
    "start_versions",
    "sweep",
    "sweep_sync",
    "text_metrics",
    "unload_ipython_extension",
    "word_diff",
]


def load_ipython_extension(ipython: _Any) -> None:
    """``%load_ext arboris_nb``: registers the ``%%arboris`` cell magic."""
    from .magics import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: _Any) -> None:
    """``%unload_ext arboris_nb``: removes the ``%%arboris`` cell magic."""
    from .magics import unload_ipython_extension as unload

    unload(ipython)


def __getattr__(name: str) -> _Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value  # later look-ups find it directly
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


# A library logs nothing unless the application configures logging.
logging.getLogger("arboris_nb").addHandler(logging.NullHandler())

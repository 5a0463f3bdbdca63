"""arboris_nb — parallel chapter-version generation for Jupyter.

Generate N candidate versions of a chapter at once under a concurrency limit, watch them
stream side by side, and measure what the parallelism bought.
"""

from __future__ import annotations

import logging
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
from .backends import Backend, ChatRequest, OpenAIBackend, SimulatedLLM, Usage
from .backends.pool import KeyPool
from .cache import RedisCache, SQLiteCache
from .config import LLMConfig, WriterSettings, mask_key
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
from .engine import generate_versions, generate_versions_sync
from .errors import (
    AllVersionsFailed,
    ArborisError,
    AuthError,
    BackendError,
    BackendTimeout,
    BadRequest,
    ConfigError,
    ConnectionFailed,
    RateLimited,
    ServerError,
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
    VersionQueued,
    VersionRetrying,
    VersionStarted,
)
from .limits import FixedLimit, Limiter
from .pacing import RateBudget
from .prompts import chapter_messages, parse_reply
from .queue import BookJob
from .results import Run, Version
from .retry import RetryPolicy
from .runs import export_run, list_runs, load_run, resume, resume_sync
from .store import RunStore
from .widgets import VersionsWidget

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
    "ChatRequest",
    "ConfigError",
    "ConnectionFailed",
    "Evaluation",
    "EvaluationError",
    "Event",
    "FixedLimit",
    "KeyPool",
    "LLMConfig",
    "LimitChanged",
    "Limiter",
    "OpenAIBackend",
    "RateBudget",
    "RateLimited",
    "Recorder",
    "RedisCache",
    "RetryPolicy",
    "Run",
    "RunFinished",
    "RunStarted",
    "RunStore",
    "SQLiteCache",
    "ServerError",
    "SimulatedLLM",
    "StreamInterrupted",
    "SweepResult",
    "TokenDelta",
    "Usage",
    "Version",
    "VersionCancelled",
    "VersionFailed",
    "VersionFinished",
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
    "resume",
    "resume_sync",
    "retry_version",
    "simulated_judge",
    "sweep",
    "sweep_sync",
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


# A library logs nothing unless the application configures logging.
logging.getLogger("arboris_nb").addHandler(logging.NullHandler())

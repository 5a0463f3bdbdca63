"""arboris_nb — parallel chapter-version generation for Jupyter.

Generate N candidate versions of a chapter at once under a concurrency limit, watch them
stream side by side, and measure what the parallelism bought.
"""

from __future__ import annotations

import logging

from .backends import Backend, ChatRequest, OpenAIBackend, SimulatedLLM, Usage
from .config import LLMConfig, WriterSettings, mask_key
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
from .prompts import chapter_messages, parse_reply
from .results import Run, Version
from .retry import RetryPolicy

__version__ = "0.1.0"

__all__ = [
    "AllVersionsFailed",
    "ArborisError",
    "AuthError",
    "Backend",
    "BackendError",
    "BackendTimeout",
    "BadRequest",
    "ChatRequest",
    "ConfigError",
    "ConnectionFailed",
    "Event",
    "FixedLimit",
    "LLMConfig",
    "Limiter",
    "OpenAIBackend",
    "RateLimited",
    "RetryPolicy",
    "Run",
    "RunFinished",
    "RunStarted",
    "ServerError",
    "SimulatedLLM",
    "StreamInterrupted",
    "TokenDelta",
    "Usage",
    "Version",
    "VersionCancelled",
    "VersionFailed",
    "VersionFinished",
    "VersionQueued",
    "VersionRetrying",
    "VersionStarted",
    "WriterSettings",
    "__version__",
    "chapter_messages",
    "generate_versions",
    "generate_versions_sync",
    "mask_key",
    "parse_reply",
]

# A library logs nothing unless the application configures logging.
logging.getLogger("arboris_nb").addHandler(logging.NullHandler())

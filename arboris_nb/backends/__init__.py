"""Backends: the narrow protocol, the OpenAI-compatible one and the simulated model.

``OpenAIBackend`` is imported on first use: it loads the ``openai`` package, which the
simulated model and the CLI paths that do not call an API never need.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import (
    Backend,
    ChatRequest,
    ChoiceDelta,
    ChoiceEnd,
    Connection,
    Served,
    StreamItem,
    Usage,
)
from .simulated import SimulatedLLM

if TYPE_CHECKING:
    from .openai import OpenAIBackend

__all__ = [
    "Backend",
    "ChatRequest",
    "ChoiceDelta",
    "ChoiceEnd",
    "Connection",
    "OpenAIBackend",
    "Served",
    "SimulatedLLM",
    "StreamItem",
    "Usage",
]


def __getattr__(name: str) -> Any:
    if name == "OpenAIBackend":
        from .openai import OpenAIBackend

        return OpenAIBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

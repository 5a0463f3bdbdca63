"""Backends: the narrow protocol, the OpenAI-compatible one and the simulated model."""

from .base import Backend, ChatRequest, Connection, Served, StreamItem, Usage
from .openai import OpenAIBackend
from .simulated import SimulatedLLM

__all__ = [
    "Backend",
    "ChatRequest",
    "Connection",
    "OpenAIBackend",
    "Served",
    "SimulatedLLM",
    "StreamItem",
    "Usage",
]

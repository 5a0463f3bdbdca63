"""Any OpenAI-compatible API (OpenAI, DeepSeek, vLLM, Ollama …) through ``AsyncOpenAI``.

The SDK's own retries are off (``max_retries=0``): the engine retries and records every
attempt, so timings stay honest. One client per ``open()``, created on the loop that
uses it and closed on exit — httpx clients must not cross event loops.
"""

from __future__ import annotations

import email.utils
import functools
import ssl
import time
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import openai

try:  # openai >= 3 runs on httpx2; older releases on httpx (same API)
    import httpx2 as _http
except ImportError:  # pragma: no cover
    import httpx as _http  # type: ignore[no-redef]

from .._secrets import redact
from ..config import LLMConfig
from ..errors import (
    AuthError,
    BackendError,
    BackendTimeout,
    BadRequest,
    ConnectionFailed,
    RateLimited,
    ServerError,
    StreamInterrupted,
)
from .base import ChatRequest, Served, StreamItem, Usage

__all__ = ["OpenAIBackend", "parse_retry_after", "tls_context", "translate_error"]

_CONNECT_TIMEOUT_S = 10.0
_PLACEHOLDER_KEY = "not-needed"  # local servers take any key; the SDK insists on one


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One TLS context per process, shared by every client (contexts are thread-safe).

    Building one loads the CA bundle (~20 ms); with a new client per run — required, since
    clients must not cross event loops — that cost would land in every run's timings.
    It honours SSL_CERT_FILE / SSL_CERT_DIR like the SDK's own default.
    """
    return _http.create_ssl_context(trust_env=True)


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or HTTP date)."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    parsed = email.utils.parsedate_tz(value)
    if parsed is None:
        return None
    return max(0.0, email.utils.mktime_tz(parsed) - time.time())


_STATUS_ERRORS: dict[int, type[BackendError]] = {
    400: BadRequest,
    401: AuthError,
    403: AuthError,
    404: BadRequest,
    408: BackendTimeout,
    409: ServerError,
    422: BadRequest,
    429: RateLimited,
}

_ADVICE = {
    AuthError: "check OPENAI_API_KEY",
    BadRequest: "check OPENAI_MODEL_NAME and the request parameters",
}


def _server_message(exc: openai.APIStatusError) -> str:
    """The server's own words (``error.message``), not the SDK's "Error code: N - {…}"."""
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return str(inner["message"])
    return exc.message


def _from_status(exc: openai.APIStatusError, secrets: list[str | None]) -> BackendError:
    status = exc.status_code
    cls = _STATUS_ERRORS.get(status, ServerError if status >= 500 else BadRequest)
    advice = _ADVICE.get(cls)
    message = redact(f"HTTP {status}: {_server_message(exc)}", secrets)
    if advice:
        message += f" ({advice})"
    return cls(message, status=status, retry_after_s=parse_retry_after(exc.response.headers))


def _where(base_url: str | None) -> str:
    """The endpoint for an error message, without any user:password@ part."""
    parts = urllib.parse.urlsplit(base_url or "https://api.openai.com/v1")
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"


def translate_error(
    exc: BaseException, secrets: list[str | None], base_url: str | None = None
) -> BackendError:
    """Map SDK and transport exceptions onto arboris_nb's error tree (keys redacted)."""
    if isinstance(exc, BackendError):
        return exc
    if isinstance(exc, openai.APIStatusError):
        return _from_status(exc, secrets)
    if isinstance(exc, openai.APITimeoutError):
        return BackendTimeout(f"request timed out: {exc}")
    if isinstance(exc, openai.APIConnectionError):
        return ConnectionFailed(
            redact(
                f"connection to {_where(base_url)} failed: {exc} (check OPENAI_API_BASE_URL "
                "and that the server is running)",
                secrets,
            )
        )
    # Mid-stream transport errors (httpx/httpcore) surface unwrapped from the iterator.
    return StreamInterrupted(redact(f"stream interrupted: {type(exc).__name__}: {exc}", secrets))


class OpenAIBackend:
    """Streams chat completions from an OpenAI-compatible endpoint."""

    def __init__(self, config: LLMConfig, *, stream: bool = True) -> None:
        self.config = config
        self.stream_mode = stream
        self.model = config.model

    def __repr__(self) -> str:
        return f"OpenAIBackend({self.config!r}, stream={self.stream_mode})"

    @asynccontextmanager
    async def open(self) -> AsyncIterator[_Connection]:
        client = openai.AsyncOpenAI(
            api_key=self.config.api_key or _PLACEHOLDER_KEY,
            base_url=self.config.base_url,
            max_retries=0,
            timeout=openai.Timeout(self.config.timeout_s, connect=_CONNECT_TIMEOUT_S),
            http_client=openai.DefaultAsyncHttpxClient(verify=tls_context()),
        )
        try:
            yield _Connection(client, self.config, self.stream_mode)
        finally:
            await client.close()


class _Connection:
    def __init__(self, client: openai.AsyncOpenAI, config: LLMConfig, stream: bool) -> None:
        self.client = client
        self.config = config
        self.stream_mode = stream
        self.secrets = [config.api_key]

    def _params(self, request: ChatRequest) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": self.config.model,
            "messages": request.messages,
            "temperature": request.temperature,
            # Lets a server (or our mock) attribute requests to versions and attempts.
            "extra_headers": {
                "X-Arboris-Run": request.run_id,
                "X-Arboris-Version": str(request.version_index),
                "X-Arboris-Attempt": str(request.attempt),
                **({"X-Arboris-Hedge": "1"} if request.hedge else {}),
            },
        }
        if request.max_tokens is not None:
            params["max_tokens"] = request.max_tokens
        return params

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamItem]:
        yield Served(key_id=self.config.key_id)
        try:
            if self.stream_mode:
                async for item in self._streamed(request):
                    yield item
            else:
                async for item in self._whole(request):
                    yield item
        except (openai.OpenAIError, OSError, ValueError) as exc:
            raise translate_error(exc, self.secrets, self.config.base_url) from None
        except Exception as exc:
            if type(exc).__module__.split(".")[0] in {"httpx", "httpx2", "httpcore", "httpcore2"}:
                raise translate_error(exc, self.secrets, self.config.base_url) from None
            raise

    async def _streamed(self, request: ChatRequest) -> AsyncIterator[StreamItem]:
        stream = await self.client.chat.completions.create(
            **self._params(request), stream=True, stream_options={"include_usage": True}
        )
        finished = False
        try:
            async for chunk in stream:
                if chunk.usage is not None:
                    yield Usage(chunk.usage.completion_tokens, chunk.usage.prompt_tokens)
                for choice in chunk.choices:
                    if choice.delta and choice.delta.content:
                        yield choice.delta.content
                    finished = finished or choice.finish_reason is not None
        finally:
            await stream.close()
        if not finished:
            raise StreamInterrupted("the stream ended without a finish_reason")

    async def _whole(self, request: ChatRequest) -> AsyncIterator[StreamItem]:
        reply = await self.client.chat.completions.create(**self._params(request))
        text = reply.choices[0].message.content if reply.choices else None
        if text:
            yield text
        if reply.usage is not None:
            yield Usage(reply.usage.completion_tokens, reply.usage.prompt_tokens)

"""Any OpenAI-compatible API (OpenAI, DeepSeek, vLLM, Ollama …) through ``AsyncOpenAI``.

The SDK's own retries are off (``max_retries=0``): the engine retries and records every
attempt, so timings stay honest. One client per ``open()``, created on the loop that
uses it and closed on exit — httpx clients must not cross event loops.

Usage comes from the stream's last chunk (``stream_options.include_usage``), with
``prompt_tokens_details.cached_tokens`` when the server sends it. A request for ``n > 1``
choices streams them interleaved, each chunk tagged with its choice's ``index``; a server
that answers such a request with 400 about ``n`` (DeepSeek and others take one choice
per request) is remembered for this process per base URL + model, logged once, and later
connections say so with ``accepts_n()``.
"""

from __future__ import annotations

import email.utils
import functools
import logging
import re
import ssl
import time
import urllib.parse
from collections.abc import AsyncIterator, Hashable, Mapping
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
    FanoutRefused,
    RateLimited,
    ServerError,
    StreamInterrupted,
)
from ..limit_memory import config_endpoint
from ..pacing import PROVIDER_PREFIX, RateBudget, request_key
from .base import ChatRequest, ChoiceDelta, ChoiceEnd, Served, StreamItem, Usage

__all__ = ["OpenAIBackend", "parse_retry_after", "tls_context", "translate_error"]

log = logging.getLogger("arboris_nb")

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
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or HTTP date).

    A LiteLLM proxy sends no Retry-After of its own and forwards the provider's as
    ``llm_provider-retry-after(-ms)``: both forms count, and the longer wait wins.
    """
    waits = [_retry_after(headers, prefix) for prefix in ("", PROVIDER_PREFIX)]
    found = [wait for wait in waits if wait is not None]
    return max(found) if found else None


def _retry_after(headers: Mapping[str, str], prefix: str) -> float | None:
    millis = headers.get(f"{prefix}retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000.0)
        except ValueError:
            pass
    value = headers.get(f"{prefix}retry-after")
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


# (base URL, model) pairs whose server refused n > 1 with a 400, for this process.
_REFUSED_N: set[tuple[str | None, str]] = set()
# "n", 'n' or `n` as a word: how servers name the parameter in a 400's message.
_N_WORD = re.compile(r"(?<![\w-])['\"`]?n['\"`]?(?![\w-])")


def _refuses_n(exc: openai.APIStatusError) -> bool:
    """A 400 about the ``n`` parameter (the body's ``param``, else its message)."""
    if exc.status_code != 400:
        return False
    body = exc.body if isinstance(exc.body, dict) else {}
    inner = body.get("error", body)
    if isinstance(inner, dict) and inner.get("param") == "n":
        return True
    return bool(_N_WORD.search(_server_message(exc)))


def _usage(usage: Any) -> Usage:
    """The SDK's usage object as a Usage (cached tokens when the server says)."""
    details = getattr(usage, "prompt_tokens_details", None)
    cached = getattr(details, "cached_tokens", None) if details is not None else None
    return Usage(usage.completion_tokens, usage.prompt_tokens, cached)


class OpenAIBackend:
    """Streams chat completions from an OpenAI-compatible endpoint.

    ``budget`` paces requests on the answers' ``x-ratelimit-*`` headers and closes on a
    429's Retry-After (:mod:`arboris_nb.pacing`); by default the process-wide budget of
    this key and endpoint, so every run on one key paces together.
    """

    def __init__(
        self, config: LLMConfig, *, stream: bool = True, budget: RateBudget | None = None
    ) -> None:
        self.config = config
        self.stream_mode = stream
        self.model = config.model
        self.budget = budget or RateBudget.for_key(config.base_url, config.api_key)

    def __repr__(self) -> str:
        return f"OpenAIBackend({self.config!r}, stream={self.stream_mode})"

    @property
    def limit_endpoint(self) -> str:
        """Where ``auto``'s learned limit is remembered (:mod:`arboris_nb.limit_memory`)."""
        return config_endpoint(self.config)

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
            yield _Connection(client, self.config, self.stream_mode, self.budget)
        finally:
            await client.close()


class _Connection:
    def __init__(
        self, client: openai.AsyncOpenAI, config: LLMConfig, stream: bool, budget: RateBudget
    ) -> None:
        self.client = client
        self.config = config
        self.stream_mode = stream
        self.budget = budget
        self.secrets = [config.api_key]

    async def ready(self, request: ChatRequest) -> None:
        """Wait until this key's budget takes ``request`` and no Retry-After gate is closed."""
        await self.budget.acquire(request)

    def accepts_n(self) -> bool:
        """False once this server refused ``n > 1`` for this model (in this process)."""
        return (self.config.base_url, self.config.model) not in _REFUSED_N

    def _refused_n(self, exc: openai.APIStatusError) -> FanoutRefused:
        key = (self.config.base_url, self.config.model)
        if key not in _REFUSED_N:  # say so once per server and model
            _REFUSED_N.add(key)
            log.warning(
                "%s refused n > 1 for model %s (%s); asking with one request per version "
                "from now on",
                _where(self.config.base_url),
                self.config.model,
                redact(_server_message(exc), self.secrets),
            )
        return FanoutRefused(
            redact(f"HTTP 400: {_server_message(exc)} (n > 1 refused)", self.secrets), status=400
        )

    def _params(self, request: ChatRequest) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": self.config.model,
            "messages": request.messages,
            "temperature": request.temperature,
            # Lets a server (or our mock) attribute requests to versions and attempts.
            "extra_headers": {
                "X-Arboris-Run": request.run_id,
                "X-Arboris-Version": ",".join(map(str, request.choice_versions))
                or str(request.version_index),
                "X-Arboris-Attempt": str(request.attempt),
                **({"X-Arboris-Hedge": "1"} if request.hedge else {}),
            },
        }
        if request.max_tokens is not None:
            params["max_tokens"] = request.max_tokens
        if request.n > 1:
            params["n"] = request.n
        return params

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamItem]:
        yield Served(key_id=self.config.key_id)
        key = request_key(request)
        try:
            if self.stream_mode:
                async for item in self._streamed(request, key):
                    yield item
            else:
                async for item in self._whole(request, key):
                    yield item
        except (openai.OpenAIError, OSError, ValueError) as exc:
            raise self._failed(exc, key, request) from None
        except Exception as exc:
            if type(exc).__module__.split(".")[0] in {"httpx", "httpx2", "httpcore", "httpcore2"}:
                raise self._failed(exc, key, request) from None
            raise
        finally:
            self.budget.release(key)  # unanswered (cancelled, cut): no longer in flight

    def _failed(self, exc: BaseException, key: Hashable, request: ChatRequest) -> BackendError:
        """The error to raise; a 429's headers feed the budget and close its gate."""
        if isinstance(exc, openai.APIStatusError):
            self.budget.update(exc.response.headers, key)
            if request.n > 1 and _refuses_n(exc):
                return self._refused_n(exc)
        error = translate_error(exc, self.secrets, self.config.base_url)
        if isinstance(error, RateLimited) and error.retry_after_s:
            self.budget.block(error.retry_after_s)
        return error

    def _noted(self, request: ChatRequest, reported: Any) -> Usage:
        """The SDK's usage as a Usage, also taught to the budget (output size, prompt ratio)."""
        usage = _usage(reported)
        self.budget.note_usage(request, usage)
        return usage

    async def _streamed(self, request: ChatRequest, key: Hashable) -> AsyncIterator[StreamItem]:
        stream = await self.client.chat.completions.create(
            **self._params(request), stream=True, stream_options={"include_usage": True}
        )
        self.budget.update(stream.response.headers, key)
        seen: set[int] = set()
        finished: set[int] = set()
        try:
            async for chunk in stream:
                if chunk.usage is not None:
                    yield self._noted(request, chunk.usage)
                for choice in chunk.choices:
                    seen.add(choice.index)
                    text = choice.delta.content if choice.delta else None
                    if text:
                        yield text if request.n == 1 else ChoiceDelta(choice.index, text)
                    if choice.finish_reason is not None and choice.index not in finished:
                        finished.add(choice.index)
                        if request.n > 1:
                            yield ChoiceEnd(choice.index, choice.finish_reason)
        finally:
            await stream.close()
        # Every choice that began must end (a server that ignored n sends only one).
        if not finished or seen - finished:
            raise StreamInterrupted("the stream ended without a finish_reason")

    async def _whole(self, request: ChatRequest, key: Hashable) -> AsyncIterator[StreamItem]:
        raw = await self.client.chat.completions.with_raw_response.create(**self._params(request))
        self.budget.update(raw.headers, key)
        reply = raw.parse()
        for choice in reply.choices:
            text = choice.message.content
            if request.n == 1:
                if text:
                    yield text
                break
            if text:
                yield ChoiceDelta(choice.index, text)
            yield ChoiceEnd(choice.index, choice.finish_reason or "stop")
        if reply.usage is not None:
            yield self._noted(request, reply.usage)

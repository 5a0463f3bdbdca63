"""The real OpenAIBackend (AsyncOpenAI, SDK retries off) over HTTP against the mock on 127.0.0.1."""

from __future__ import annotations

from typing import Any

import pytest

from arboris_nb import (
    AuthError,
    BackendError,
    BackendTimeout,
    BadRequest,
    LLMConfig,
    OpenAIBackend,
    RateLimited,
    ServerError,
    WriterSettings,
    generate_versions,
)
from arboris_nb.backends.base import ChatRequest, Served, StreamItem, Usage
from arboris_nb.mockserver import MockServer

REPLY = "The lantern swung in the rain, and the harbor waited."
FAST: dict[str, Any] = {"ttft_s": 0.01, "tokens_per_s": 2000.0}
KEY = "sk-backend-test-0123456789abcd"


async def collect(backend: OpenAIBackend, **request: Any) -> list[StreamItem]:
    req = ChatRequest(messages=[{"role": "user", "content": "hi there"}], **request)
    async with backend.open() as conn:
        return [item async for item in conn.stream(req)]


def text_of(items: list[StreamItem]) -> str:
    return "".join(i for i in items if isinstance(i, str))


@pytest.mark.parametrize("stream", [True, False])
async def test_text_usage_and_served(stream: bool) -> None:
    server = MockServer(reply=REPLY, **FAST)
    with server as url:
        backend = OpenAIBackend(LLMConfig(api_key=KEY, base_url=url, model="m"), stream=stream)
        items = await collect(backend, run_id="r1", version_index=2, attempt=3)
        stats = server.stats()
    assert items[0] == Served("sk-…abcd")
    assert text_of(items) == REPLY
    usage = items[-1]
    assert isinstance(usage, Usage)
    assert usage.output_tokens == len(REPLY.split())
    assert usage.input_tokens == 2
    if stream:
        assert sum(isinstance(i, str) for i in items) > 1  # several deltas, not one blob
    (entry,) = stats["log"]
    assert (entry["run"], entry["version"], entry["attempt"]) == ("r1", "2", "3")
    assert entry["stream"] is stream
    assert entry["key_id"] == "sk-…abcd"
    assert stats["in_flight"] == 0


async def test_max_tokens_is_sent() -> None:
    with MockServer(reply=REPLY, **FAST) as url:
        backend = OpenAIBackend(LLMConfig(base_url=url, model="m", max_tokens=3))
        items = await collect(backend, max_tokens=3)
    assert text_of(items) == "The lantern swung "
    assert items[-1] == Usage(3, 2, 0)  # the mock always says how much was cached


async def test_json_replies_and_think_blocks_through_the_engine() -> None:
    with MockServer(reply_format="json", output_tokens=40, **FAST) as url:
        run = await generate_versions(
            "p", settings=WriterSettings(version_count=2), llm=LLMConfig(base_url=url, model="m")
        )
    for v in run.versions:
        assert v.title and v.summary and v.content
        assert not v.content.lstrip().startswith("{")  # the chapter text, not the JSON
    reply = "<think>plan: kill the captain</think>The captain lived."
    with MockServer(reply=reply, **FAST) as url:
        run = await generate_versions(
            "p", settings=WriterSettings(version_count=1), llm=LLMConfig(base_url=url, model="m")
        )
    assert run.versions[0].content == "The captain lived."


@pytest.mark.parametrize(
    ("status", "cls", "retryable"),
    [
        (400, BadRequest, False),
        (401, AuthError, False),
        (403, AuthError, False),
        (404, BadRequest, False),
        (408, BackendTimeout, True),
        (429, RateLimited, True),
        (500, ServerError, True),
        (503, ServerError, True),
    ],
)
@pytest.mark.parametrize("stream", [True, False])
async def test_error_mapping(
    status: int, cls: type[BackendError], retryable: bool, stream: bool
) -> None:
    with MockServer(fail_requests={1: status}, retry_after_s=0.25, **FAST) as url:
        backend = OpenAIBackend(LLMConfig(api_key=KEY, base_url=url, model="m"), stream=stream)
        with pytest.raises(cls) as caught:
            await collect(backend)
    error = caught.value
    assert error.status == status
    assert error.retryable is retryable
    assert f"HTTP {status}" in str(error)
    assert error.retry_after_s == (0.25 if status == 429 else None)


async def test_auth_failure_message_hides_the_key() -> None:
    with MockServer(require_key="sk-the-right-key-000000", **FAST) as url:
        backend = OpenAIBackend(LLMConfig(api_key=KEY, base_url=url, model="m"))
        with pytest.raises(AuthError) as caught:
            await collect(backend)
    text = f"{caught.value} {caught.value!r} {backend!r}"
    assert KEY not in text
    assert "OPENAI_API_KEY" in str(caught.value)
    assert "sk-…abcd" in repr(backend)


async def test_a_cut_stream_is_a_retryable_error() -> None:
    with MockServer(reply=REPLY, disconnect_rate=1.0, **FAST) as url:
        backend = OpenAIBackend(LLMConfig(base_url=url, model="m"))
        with pytest.raises(BackendError) as caught:
            await collect(backend)
    assert caught.value.retryable
    assert type(caught.value).__name__ in {"StreamInterrupted", "ConnectionFailed"}

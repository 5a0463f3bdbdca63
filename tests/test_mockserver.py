"""The mock OpenAI server, exercised over real HTTP on 127.0.0.1 (aiohttp and openai clients)."""

from __future__ import annotations

import asyncio
import json
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from arboris_nb.mockserver import MockConfig, MockServer

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Write chapter one."}]
FAST: dict[str, Any] = {"ttft_s": 0.01, "tokens_per_s": 2000.0, "output_tokens": 12}
KEY = "sk-test-0123456789abcdefXYZ9"


@pytest.fixture
def mock() -> Iterator[Callable[..., MockServer]]:
    """Start thread-mode servers with ``FAST`` latencies overridden by keyword fields."""
    started: list[MockServer] = []

    def start(**fields: Any) -> MockServer:
        srv = MockServer(**{**FAST, **fields})
        srv.start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post(
    http: aiohttp.ClientSession, srv: MockServer, body: dict[str, Any], **headers: str
) -> tuple[int, dict[str, str], str]:
    async with http.post(srv.base_url + "/chat/completions", json=body, headers=headers) as r:
        return r.status, dict(r.headers), await r.text()


def sse_events(text: str) -> list[str]:
    lines = [line for line in text.split("\n") if line]
    assert all(line.startswith("data: ") for line in lines), lines
    return [line[len("data: ") :] for line in lines]


# --------------------------------------------------------------------------- configuration


def test_config_validation_names_field_and_range() -> None:
    with pytest.raises(ValueError, match=r"tokens_per_s must be a number > 0"):
        MockConfig(tokens_per_s=0)
    with pytest.raises(ValueError, match=r"error_rate must be in \[0, 1\]"):
        MockConfig(error_rate=1.5)
    with pytest.raises(ValueError, match="capacity"):
        MockConfig(capacity=0)
    with pytest.raises(ValueError, match="fail_requests"):
        MockConfig(fail_requests={0: 500})
    with pytest.raises(ValueError, match="reply_format"):
        MockConfig(reply_format="xml")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        MockConfig(0.2)  # type: ignore[call-arg]  # keyword-only


def test_config_is_frozen_and_picklable() -> None:
    cfg = MockConfig(fail_requests={2: 500})
    with pytest.raises(TypeError):
        cfg.fail_requests[3] = 429  # type: ignore[index]
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    assert MockConfig(**cfg.to_kwargs()) == cfg


# --------------------------------------------------------------------------- protocol


async def test_sse_stream_format(
    mock: Callable[..., MockServer], http: aiohttp.ClientSession
) -> None:
    server = mock(output_tokens=20)
    body = {"model": "m", "messages": MESSAGES, "stream": True}
    body["stream_options"] = {"include_usage": True}
    status, headers, text = await post(http, server, body)
    assert status == 200
    assert headers["Content-Type"].startswith("text/event-stream")
    events = sse_events(text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    finish = chunks[-2]["choices"][0]
    assert finish["finish_reason"] == "stop"
    assert finish["delta"] == {}
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 20
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-2])
    # Same prompt and seed: the non-streaming reply has the same text.
    status, _, whole = await post(http, server, {"messages": MESSAGES})
    assert status == 200
    reply = json.loads(whole)
    assert reply["object"] == "chat.completion"
    assert reply["choices"][0]["message"]["content"] == streamed
    assert reply["usage"]["completion_tokens"] == 20
    assert len(streamed.split()) == 20


async def test_stream_without_usage_has_no_usage_chunk(
    mock: Callable[..., MockServer], http: aiohttp.ClientSession
) -> None:
    server = mock()
    _, _, text = await post(http, server, {"messages": MESSAGES, "stream": True})
    chunks = [json.loads(e) for e in sse_events(text)[:-1]]
    assert all(c["choices"] and "usage" not in c for c in chunks)


async def test_openai_client_stream_and_whole(mock: Callable[..., MockServer]) -> None:
    server = mock(output_tokens=25)
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0)
    try:
        stream = await client.chat.completions.create(
            model="m",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
        parts: list[str] = []
        usage = None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
            usage = chunk.usage or usage
        assert usage is not None
        assert usage.completion_tokens == 25
        whole = await client.chat.completions.create(model="m", messages=MESSAGES)
        assert whole.choices[0].message.content == "".join(parts)
        assert whole.choices[0].finish_reason == "stop"
        assert whole.usage is not None
        assert whole.usage.total_tokens > 25
        capped = await client.chat.completions.create(
            model="m",
            messages=MESSAGES,
            max_tokens=5,
        )
        assert capped.choices[0].finish_reason == "length"
        assert capped.usage is not None
        assert capped.usage.completion_tokens == 5
        models = await client.models.list()
        assert [m.id for m in models.data] == ["mock-model"]
    finally:
        await client.close()


async def test_json_reply_format(
    mock: Callable[..., MockServer], http: aiohttp.ClientSession
) -> None:
    server = mock(reply_format="json", output_tokens=80)
    _, _, text = await post(http, server, {"messages": MESSAGES})
    reply = json.loads(text)
    data = json.loads(reply["choices"][0]["message"]["content"])
    assert set(data) == {"title", "summary", "full_content"}
    assert all(isinstance(v, str) and v for v in data.values())
    assert abs(reply["usage"]["completion_tokens"] - 80) <= 3


async def test_fixed_reply_and_versions(
    mock: Callable[..., MockServer], http: aiohttp.ClientSession
) -> None:
    server = mock(reply="Hello there, writer.")
    _, _, text = await post(http, server, {"messages": MESSAGES})
    assert json.loads(text)["choices"][0]["message"]["content"] == "Hello there, writer."
    assert json.loads(text)["usage"]["completion_tokens"] == 3


async def test_versions_differ_retries_repeat(
    mock: Callable[..., MockServer], http: aiohttp.ClientSession
) -> None:
    server = mock()

    async def content(version: str) -> str:
        _, _, text = await post(
            http, server, {"messages": MESSAGES}, **{"X-Arboris-Version": version}
        )
        return str(json.loads(text)["choices"][0]["message"]["content"])

    assert await content("1") == await content("1")
    assert await content("1") != await content("2")


async def test_bad_body_gets_400(
    mock: Callable[..., MockServer], http: aiohttp.ClientSession
) -> None:
    server = mock()
    bodies: list[dict[str, Any]] = [{}, {"messages": []}, {"messages": MESSAGES, "max_tokens": 0}]
    for body in bodies:
        status, _, text = await post(http, server, body)
        assert status == 400
        err = json.loads(text)["error"]
        assert err["type"] == "invalid_request_error"
        assert err["message"]
        assert "code" in err
    async with http.post(server.base_url + "/chat/completions", data=b"{not json") as r:
        assert r.status == 400
        assert (await r.json())["error"]["code"] == "invalid_json"
    assert server.stats()["by_status"] == {"400": 4}


async def test_require_key(mock: Callable[..., MockServer], http: aiohttp.ClientSession) -> None:
    server = mock(require_key=KEY)
    status, _, text = await post(http, server, {"messages": MESSAGES})
    assert status == 401
    assert json.loads(text)["error"]["code"] == "invalid_api_key"
    status, _, _ = await post(http, server, {"messages": MESSAGES}, Authorization="Bearer nope")
    assert status == 401
    status, _, _ = await post(http, server, {"messages": MESSAGES}, Authorization=f"Bearer {KEY}")
    assert status == 200


# --------------------------------------------------------------------------- latency and load


async def test_latency_is_respected(
    mock: Callable[..., MockServer], http: aiohttp.ClientSession
) -> None:
    server = mock(ttft_s=0.15, tokens_per_s=100.0, output_tokens=10)
    start = time.perf_counter()
    first = None
    async with http.post(
        server.base_url + "/chat/completions", json={"messages": MESSAGES, "stream": True}
    ) as r:
        async for line in r.content:
            if first is None and b'"content": "' in line and b'"content": ""' not in line:
                first = time.perf_counter() - start
    total = time.perf_counter() - start
    assert first is not None
    assert 0.15 <= first < 0.6
    assert 0.15 + 0.09 <= total < 1.0  # 9 inter-token gaps of 10 ms after the first token


async def test_capacity_queue(mock: Callable[..., MockServer], http: aiohttp.ClientSession) -> None:
    server = mock(ttft_s=0.1, output_tokens=1, capacity=2)
    start = time.perf_counter()
    results = await asyncio.gather(*(post(http, server, {"messages": MESSAGES}) for _ in range(6)))
    elapsed = time.perf_counter() - start
    assert [r[0] for r in results] == [200] * 6
    assert elapsed >= 0.3  # three waves of two
    stats = server.stats()
    assert stats["max_in_flight"] == 6
    assert stats["max_queued"] == 4
    assert stats["in_flight"] == stats["queued"] == 0
    # FIFO: requests start generating in arrival order.
    log = sorted(stats["log"], key=lambda e: e["n"])
    firsts = [e["first_token_s"] for e in log]
    assert firsts == sorted(firsts)


async def test_slowdown_stretches_latency() -> None:
    fields: dict[str, Any] = {
        "ttft_s": 0.05,
        "tokens_per_s": 100.0,
        "output_tokens": 5,
        "slowdown": 1.0,
    }
    with MockServer(**fields) as base:
        async with aiohttp.ClientSession() as http:

            async def one() -> float:
                t = time.perf_counter()
                async with http.post(base + "/chat/completions", json={"messages": MESSAGES}) as r:
                    await r.read()
                return time.perf_counter() - t

            alone = await one()
            together = await asyncio.gather(*(one() for _ in range(4)))
    # 4 in flight without capacity: factor 1 + 1.0 * (4 - 1) = 4
    assert min(together) > 2.0 * alone


async def test_max_concurrent_gives_429_with_retry_headers(
    mock: Callable[..., MockServer], http: aiohttp.ClientSession
) -> None:
    server = mock(ttft_s=0.2, max_concurrent=2, retry_after_s=1.5)
    slow = [asyncio.create_task(post(http, server, {"messages": MESSAGES})) for _ in range(2)]
    await asyncio.sleep(0.08)
    status, headers, text = await post(http, server, {"messages": MESSAGES})
    assert status == 429
    assert headers["Retry-After"] == "2"
    assert headers["retry-after-ms"] == "1500"
    err = json.loads(text)["error"]
    assert err["code"] == "rate_limit_exceeded"
    assert err["type"]
    assert err["message"]
    assert [r[0] for r in await asyncio.gather(*slow)] == [200, 200]
    stats = server.stats()
    assert stats["max_in_flight"] == 2  # the rejected request is not counted
    assert stats["by_status"] == {"200": 2, "429": 1}


async def test_rpm_limit(mock: Callable[..., MockServer], http: aiohttp.ClientSession) -> None:
    server = mock(rpm_limit=2)
    statuses = [(await post(http, server, {"messages": MESSAGES}))[0] for _ in range(3)]
    assert statuses == [200, 200, 429]


async def test_many_parallel_streams_are_not_throttled_by_the_server() -> None:
    """100 concurrent streams of 40 tokens at 100 tok/s: ideally 0.05 + 0.39 s."""
    fields: dict[str, Any] = {"ttft_s": 0.05, "tokens_per_s": 100.0, "output_tokens": 40}
    with MockServer(**fields) as base:
        connector = aiohttp.TCPConnector(limit=200)
        async with aiohttp.ClientSession(connector=connector) as http:

            async def one() -> int:
                body: dict[str, Any] = {"messages": MESSAGES, "stream": True}
                async with http.post(base + "/chat/completions", json=body) as r:
                    return (await r.text()).count("\n\n")

            start = time.perf_counter()
            counts = await asyncio.gather(*(one() for _ in range(100)))
            elapsed = time.perf_counter() - start
    assert all(c >= 3 for c in counts)
    assert elapsed < 2.0


# --------------------------------------------------------------------------- faults


async def test_fail_requests_by_arrival_order(
    mock: Callable[..., MockServer], http: aiohttp.ClientSession
) -> None:
    server = mock(fail_requests={2: 500, 3: 429, 5: 503})
    results = [await post(http, server, {"messages": MESSAGES}) for _ in range(6)]
    assert [r[0] for r in results] == [200, 500, 429, 200, 503, 200]
    assert "Retry-After" in results[2][1]
    assert "retry-after-ms" in results[2][1]
    assert json.loads(results[1][2])["error"]["type"] == "server_error"
    server.reset()  # numbering restarts, so the script replays
    assert (await post(http, server, {"messages": MESSAGES}))[0] == 200
    assert (await post(http, server, {"messages": MESSAGES}))[0] == 500


async def test_disconnect_mid_stream(
    mock: Callable[..., MockServer], http: aiohttp.ClientSession
) -> None:
    server = mock(disconnect_rate=1.0, output_tokens=30, tokens_per_s=500.0)
    body: dict[str, Any] = {"messages": MESSAGES, "stream": True}
    received: list[bytes] = []

    async def read_all() -> None:
        async with http.post(server.base_url + "/chat/completions", json=body) as r:
            async for data in r.content.iter_any():
                received.append(data)

    with pytest.raises(aiohttp.ClientPayloadError):
        await read_all()
    received_bytes = b"".join(received)
    assert b'"content"' in received_bytes
    assert b"[DONE]" not in received_bytes

    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0)
    try:

        async def consume() -> None:
            stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
            async for _ in stream:
                pass

        # openai 3.x wraps the transport's "incomplete chunked read" as a connection error
        with pytest.raises(openai.APIConnectionError):
            await consume()
    finally:
        await client.close()
    stats = server.stats()
    assert stats["disconnects"] == 2
    assert all(e["outcome"] == "disconnect" and 0 < e["tokens"] < 30 for e in stats["log"])


async def test_disconnect_spares_non_streaming(
    mock: Callable[..., MockServer], http: aiohttp.ClientSession
) -> None:
    server = mock(disconnect_rate=1.0)
    status, _, _ = await post(http, server, {"messages": MESSAGES})
    assert status == 200


async def test_error_rate_is_reproducible_with_seed() -> None:
    async def statuses(seed: int) -> list[int]:
        with MockServer(**FAST, error_rate=0.5, seed=seed) as base:
            async with aiohttp.ClientSession() as http:
                out = []
                for _ in range(20):
                    body: dict[str, Any] = {"messages": MESSAGES}
                    async with http.post(base + "/chat/completions", json=body) as r:
                        out.append(r.status)
                return out

    first, again, other = await statuses(7), await statuses(7), await statuses(8)
    assert first == again
    assert first != other
    assert set(first) == {200, 500}


async def test_client_abort_is_logged_and_frees_the_slot(
    mock: Callable[..., MockServer], http: aiohttp.ClientSession
) -> None:
    server = mock(ttft_s=0.5)
    task = asyncio.create_task(post(http, server, {"messages": MESSAGES, "stream": True}))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(50):
        stats = server.stats()
        if stats["in_flight"] == 0 and stats["log"][0]["status"] is not None:
            break
        await asyncio.sleep(0.05)
    assert stats["in_flight"] == 0
    assert stats["log"][0]["status"] == 499
    assert stats["log"][0]["outcome"] == "client_closed"


# --------------------------------------------------------------------------- stats


async def test_stats_log_headers_and_masked_key(
    mock: Callable[..., MockServer], http: aiohttp.ClientSession
) -> None:
    server = mock()
    headers = {
        "Authorization": f"Bearer {KEY}",
        "X-Arboris-Version": "3",
        "X-Arboris-Attempt": "2",
        "X-Arboris-Run": "run-42",
    }
    await post(http, server, {"messages": MESSAGES, "stream": True}, **headers)
    async with http.get(server.url + "/stats") as r:
        raw = await r.text()
    assert KEY not in raw
    assert KEY[3:] not in raw
    stats = json.loads(raw)
    assert stats["requests"] == 1
    assert stats["by_status"] == {"200": 1}
    assert stats["completion_tokens"] == FAST["output_tokens"]
    (entry,) = stats["log"]
    assert entry["n"] == 1
    assert entry["status"] == 200
    assert entry["stream"] is True
    assert (entry["version"], entry["attempt"], entry["run"]) == ("3", "2", "run-42")
    assert entry["key_id"] == "sk-…XYZ9"
    assert len(entry["prompt_sha"]) == 12
    assert 0 <= entry["arrival_s"] <= entry["first_token_s"] <= entry["end_s"]
    server.reset()
    stats = server.stats()
    assert stats["requests"] == 0
    assert stats["log"] == []
    assert stats["by_status"] == {}
    assert "log" not in server.stats(log=False)


# --------------------------------------------------------------------------- process and CLI


def test_process_mode() -> None:
    srv = MockServer(process=True, **FAST)
    with srv as base:
        assert base == srv.base_url
        assert srv.port > 0
        client = openai.OpenAI(base_url=base, api_key="x", max_retries=0)
        try:
            reply = client.chat.completions.create(model="m", messages=MESSAGES)
        finally:
            client.close()
        assert reply.usage is not None
        assert reply.usage.completion_tokens == 12
        assert srv.stats()["by_status"] == {"200": 1}
        srv.reset()
        assert srv.stats()["requests"] == 0
    assert not srv.running


CLI_WRAPPER = """
import argparse, sys
from arboris_nb.cli import serve_mock
parser = argparse.ArgumentParser(prog="arboris-nb")
serve_mock.register(parser.add_subparsers(dest="command", required=True))
args = parser.parse_args(sys.argv[1:])
sys.exit(args.func(args))
"""


def test_cli_serve_mock() -> None:
    argv = [sys.executable, "-c", CLI_WRAPPER, "serve-mock", "--port", "0", "--ttft", "0.01"]
    argv += ["--tokens-per-s", "1000", "--output-tokens", "7", "--fail-requests", "2:503"]
    argv += ["--model", "cli-model", "--reply-format", "json"]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        base = line[line.index("http://") :].split()[0]
        client = openai.OpenAI(base_url=base, api_key="x", max_retries=0)
        try:
            reply = client.chat.completions.create(model="x", messages=MESSAGES)
            assert json.loads(reply.choices[0].message.content or "")["full_content"]
            with pytest.raises(openai.InternalServerError):
                client.chat.completions.create(model="x", messages=MESSAGES)
            assert [m.id for m in client.models.list().data] == ["cli-model"]
        finally:
            client.close()
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()
    assert code == 0


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--error-rate", "2"], "error_rate"),
        (["--require-key-env", "ARBORIS_TEST_UNSET_KEY_VAR"], "ARBORIS_TEST_UNSET_KEY_VAR"),
    ],
)
def test_cli_rejects_bad_values(flags: list[str], message: str) -> None:
    argv = [sys.executable, "-c", CLI_WRAPPER, "serve-mock", *flags]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert message in done.stderr

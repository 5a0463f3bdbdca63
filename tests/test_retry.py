"""Retries verified against faults: the mock server over real HTTP, and exact timing on
looptime's fake clock with the simulated model or a small scripted backend."""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from arboris_nb import (
    BackendError,
    LLMConfig,
    RateLimited,
    RetryPolicy,
    Run,
    ServerError,
    SimulatedLLM,
    WriterSettings,
    generate_versions,
)
from arboris_nb.backends.base import ChatRequest, StreamItem
from arboris_nb.backends.openai import parse_retry_after
from arboris_nb.mockserver import MockServer

FAST: dict[str, Any] = {"ttft_s": 0.02, "tokens_per_s": 1000.0, "output_tokens": 12}
QUICK = RetryPolicy(base_delay_s=0.05, max_delay_s=0.2, seed=7)


def llm(url: str, **kwargs: Any) -> LLMConfig:
    return LLMConfig(base_url=url, model="mock-model", **kwargs)


def settings(n: int = 1, c: int = 3) -> WriterSettings:
    return WriterSettings(version_count=n, max_parallel_requests=c)


async def generate(url: str, n: int = 1, c: int = 3, **kwargs: Any) -> Run:
    kwargs.setdefault("retry", QUICK)
    kwargs.setdefault("raise_on_all_failed", False)
    llm_config = kwargs.pop("llm", None) or llm(url)
    return await generate_versions("p", settings=settings(n, c), llm=llm_config, **kwargs)


def log_of(server: MockServer) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = server.stats()["log"]
    return entries


# -- which errors are retried (real HTTP) --------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (429, "RateLimited"),
        (408, "BackendTimeout"),
        (409, "ServerError"),
        (500, "ServerError"),
        (502, "ServerError"),
        (503, "ServerError"),
    ],
)
async def test_transient_statuses_are_retried_and_recorded(status: int, error_type: str) -> None:
    server = MockServer(fail_requests={1: status}, retry_after_s=0.05, **FAST)
    with server as url:
        run = await generate(url)
        log = log_of(server)
    (version,) = run.versions
    assert version.status == "ok"
    assert version.attempt_count == 2
    first = version.attempts[0]
    assert (first.status_code, first.error_type) == (status, error_type)
    assert first.wait_s > 0
    assert [(e["attempt"], e["status"]) for e in log] == [("1", status), ("2", 200)]
    row = run.to_frame().iloc[0]
    assert (row["attempts"], bool(row["retried"])) == (2, True)
    assert row["retry_wait_s"] == pytest.approx(first.wait_s)
    assert run.summary()["attempt_count"] == 2


@pytest.mark.parametrize(
    ("status", "advice"),
    [
        (400, "OPENAI_MODEL_NAME"),
        (401, "OPENAI_API_KEY"),
        (403, "OPENAI_API_KEY"),
        (404, "OPENAI_MODEL_NAME"),
    ],
)
async def test_client_errors_are_not_retried_and_say_what_to_fix(status: int, advice: str) -> None:
    server = MockServer(fail_requests={1: status}, **FAST)
    with server as url:
        run = await generate(url)
        log = log_of(server)
    (version,) = run.versions
    assert version.status == "failed"
    assert version.attempt_count == 1
    assert len(log) == 1
    assert f"HTTP {status}" in (version.error or "")
    assert advice in (version.error or "")
    assert version.content is None


async def test_attempts_are_configurable_and_all_recorded() -> None:
    server = MockServer(fail_requests={1: 500, 2: 500, 3: 500, 4: 500}, **FAST)
    with server as url:
        run = await generate(url, retry=RetryPolicy(attempts=4, base_delay_s=0.01, seed=1))
    (version,) = run.versions
    assert version.status == "failed"
    assert [a.status_code for a in version.attempts] == [500] * 4
    assert [a.wait_s > 0 for a in version.attempts] == [True, True, True, False]
    assert version.error_type == "ServerError"


async def test_default_policy_makes_three_attempts() -> None:
    assert RetryPolicy().attempts == 3
    server = MockServer(fail_requests={1: 503, 2: 503, 3: 503, 4: 503}, **FAST)
    with server as url:
        run = await generate(url, retry=RetryPolicy(base_delay_s=0.01, seed=1))
        assert len(log_of_url(url)) == 3
    assert run.versions[0].attempt_count == 3


async def wait_until_idle(server: MockServer, within_s: float = 5.0) -> None:
    for _ in range(int(within_s / 0.05)):
        if server.stats(log=False)["in_flight"] == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the mock still has requests in flight")


def log_of_url(url: str) -> list[dict[str, Any]]:
    import json
    import urllib.request

    with urllib.request.urlopen(url.removesuffix("/v1") + "/stats", timeout=10) as resp:
        entries: list[dict[str, Any]] = json.load(resp)["log"]
    return entries


async def test_read_timeouts_are_retried() -> None:
    server = MockServer(ttft_s=0.6, tokens_per_s=100.0, output_tokens=5)
    with server as url:
        run = await generate(url, llm=llm(url, timeout_s=0.2))
        stats = server.stats()
        # aiohttp does not cancel a handler whose client left; let them notice and end.
        await wait_until_idle(server)
    (version,) = run.versions
    assert version.status == "failed"
    assert version.attempt_count == 3
    assert {a.error_type for a in version.attempts} == {"BackendTimeout"}
    assert stats["requests"] == 3


async def test_mid_stream_disconnects_are_retried_without_mixing_text() -> None:
    # The mock's text depends on prompt, seed and version only, so a clean server with
    # the same seed gives the exact text each version must end with.
    with MockServer(seed=5, **FAST) as clean_url:
        reference = await generate(clean_url, n=6, c=6)
    server = MockServer(seed=5, disconnect_rate=0.5, **FAST)
    with server as url:
        run = await generate(url, n=6, c=6, retry=RetryPolicy(attempts=8, base_delay_s=0.01))
        log = log_of(server)
    cut = [e for e in log if e["outcome"] == "disconnect"]
    assert cut, "the seed should cut at least one stream"
    assert [v.status for v in run.versions] == ["ok"] * 6
    assert [v.content for v in run.versions] == [v.content for v in reference.versions]
    for entry in cut:
        version = run.versions[int(entry["version"]) - 1]
        assert version.attempt_count > int(entry["attempt"])
        failed = version.attempts[int(entry["attempt"]) - 1]
        assert failed.error_type in {"StreamInterrupted", "ConnectionFailed"}
    assert sum(v.attempt_count for v in run.versions) == len(log)


# -- Retry-After and slots (real HTTP) ----------------------------------------------------


async def test_retry_never_comes_before_retry_after() -> None:
    server = MockServer(fail_requests={1: 429, 2: 429}, retry_after_s=0.4, **FAST)
    with server as url:
        run = await generate(url, retry=RetryPolicy(base_delay_s=0.01, seed=3))
        log = log_of(server)
    assert [e["status"] for e in log] == [429, 429, 200]
    for before, after in itertools.pairwise(log):
        assert after["arrival_s"] - before["end_s"] >= 0.4
    assert [a.retry_after_s for a in run.versions[0].attempts[:2]] == [0.4, 0.4]


async def test_a_waiting_retry_holds_no_slot_and_the_gate_holds_everyone() -> None:
    # C=1: version 1 gets a 429 with Retry-After 0.5 s. Its wait holds no slot, so version
    # 2 takes the slot; but the Retry-After gate holds version 2 too until the 0.5 s end.
    server = MockServer(fail_requests={1: 429}, retry_after_s=0.5, **FAST)
    with server as url:
        run = await generate(url, n=2, c=1)
        log = log_of(server)
    order = [(e["version"], e["attempt"], e["status"]) for e in log]
    assert order == [("1", "1", 429), ("2", "1", 200), ("1", "2", 200)]
    refused, v2, v1_retry = log
    assert v2["arrival_s"] - refused["end_s"] >= 0.5 - 0.01
    assert v2["end_s"] <= v1_retry["arrival_s"]
    assert [v.status for v in run.versions] == ["ok", "ok"]
    # The gate is queue time for version 2, not part of its attempt.
    assert run.versions[1].queue_wait_s is not None and run.versions[1].queue_wait_s >= 0.45
    assert run.versions[1].ttft_s is not None and run.versions[1].ttft_s < 0.3


def test_parse_retry_after_headers() -> None:
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < (parse_retry_after({"retry-after": later}) or 0) <= 30


def test_delay_is_never_below_retry_after_and_grows() -> None:
    policy = RetryPolicy(base_delay_s=0.5, max_delay_s=30, jitter=0.25)
    rng = random.Random(0)
    hinted = RateLimited("429", status=429, retry_after_s=4.0)
    plain = ServerError("500", status=500)
    for attempt in range(1, 6):
        assert 4.0 <= policy.delay(attempt, hinted, rng) <= max(4.0, 0.5 * 2**4) * 1.25
    base = [RetryPolicy(jitter=0).delay(a, plain, rng) for a in (1, 2, 3, 4)]
    assert base == [0.5, 1.0, 2.0, 4.0]
    assert RetryPolicy(jitter=0, max_delay_s=3).delay(10, plain, rng) == 3


# -- exact timing on the fake clock ------------------------------------------------------


class Scripted:
    """A backend whose attempt *n* of every version runs ``script[n - 1]``."""

    model = "scripted"

    def __init__(self, *script: Callable[[], AsyncIterator[StreamItem]]) -> None:
        self.script = script
        self.starts: list[tuple[int, int, float]] = []

    @asynccontextmanager
    async def open(self) -> AsyncIterator[Scripted]:
        yield self

    def stream(self, request: ChatRequest) -> AsyncIterator[StreamItem]:
        loop = asyncio.get_running_loop()
        self.starts.append((request.version_index, request.attempt, loop.time()))
        return self.script[min(request.attempt, len(self.script)) - 1]()


def fail_with(error: BackendError, after_s: float = 0.0) -> Callable[[], AsyncIterator[str]]:
    async def gen() -> AsyncIterator[str]:
        await asyncio.sleep(after_s)
        raise error
        yield ""  # pragma: no cover - makes this an async generator

    return gen


def reply(*parts: str, gap_s: float = 0.1, stall_after: int | None = None) -> Any:
    async def gen() -> AsyncIterator[str]:
        for i, part in enumerate(parts):
            await asyncio.sleep(gap_s)
            if stall_after is not None and i == stall_after:
                await asyncio.sleep(3600)
            yield part

    return gen


@pytest.mark.looptime
async def test_retry_waits_exactly_retry_after_on_the_fake_clock() -> None:
    backend = Scripted(
        fail_with(RateLimited("429", status=429, retry_after_s=7.0), 1.0), reply("ok")
    )
    policy = RetryPolicy(base_delay_s=0.5, jitter=0.0)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    run = await generate_versions("p", settings=settings(), llm=backend, retry=policy)
    (v,) = run.versions
    assert [round(t - t0, 6) for _, _, t in backend.starts] == [0.0, 8.0]
    assert v.attempts[0].wait_s == 7.0
    assert v.retry_wait_s == 7.0
    assert v.duration_s == pytest.approx(8.1)


@pytest.mark.looptime
async def test_stall_abandons_an_attempt_and_keeps_no_partial_text() -> None:
    backend = Scripted(reply("PARTIAL ", "never", stall_after=1), reply("clean ", "text."))
    policy = RetryPolicy(stall_s=1.0, base_delay_s=0.5, jitter=0.0)
    run = await generate_versions("p", settings=settings(), llm=backend, retry=policy)
    (v,) = run.versions
    assert v.content == "clean text."
    first = v.attempts[0]
    assert first.error_type == "BackendTimeout"
    assert first.finished_at == pytest.approx(1.1)  # last token at 0.1 s, then 1 s of silence
    assert v.attempts[1].started_at == pytest.approx(1.6)
    assert v.ttft_s == pytest.approx(0.1)  # of the kept attempt, not the abandoned one


@pytest.mark.looptime
async def test_deadline_caps_the_whole_version() -> None:
    backend = Scripted(reply("slow", gap_s=100.0))
    policy = RetryPolicy(deadline_s=3.0, jitter=0.0)
    run = await generate_versions(
        "p", settings=settings(), llm=backend, retry=policy, raise_on_all_failed=False
    )
    (v,) = run.versions
    assert v.status == "failed" and v.error_type == "BackendTimeout"
    assert "deadline of 3 s" in (v.error or "")
    assert v.finished_at == pytest.approx(3.0)
    assert v.attempt_count == 1


@pytest.mark.looptime
async def test_no_retry_is_started_that_the_deadline_would_cut() -> None:
    # A Retry-After of 5 s with 2 s of deadline left: fail now, naming the deadline.
    backend = Scripted(fail_with(RateLimited("HTTP 429", status=429, retry_after_s=5.0), 1.0))
    policy = RetryPolicy(deadline_s=3.0, jitter=0.0)
    run = await generate_versions(
        "p", settings=settings(), llm=backend, retry=policy, raise_on_all_failed=False
    )
    (v,) = run.versions
    assert v.attempt_count == 1
    assert v.finished_at == pytest.approx(1.0)
    assert "RetryPolicy.deadline_s" in (v.error or "") and "HTTP 429" in (v.error or "")


@pytest.mark.looptime
async def test_a_clean_version_is_not_reported_as_retried() -> None:
    llm_ = SimulatedLLM(ttft_s=0.5, fail_versions=(), fail_rate=0.5, seed=3)
    run = await generate_versions(
        "p", settings=settings(6, 6), llm=llm_, retry=RetryPolicy(attempts=10, seed=1)
    )
    frame = run.to_frame()
    assert frame["retried"].any() and not frame["retried"].all()
    for row, v in zip(frame.itertuples(), run.versions, strict=True):
        assert row.retried == (len(v.attempts) > 1) == (row.attempts > 1)
        assert (row.retry_wait_s > 0) == row.retried
    calls = {(c.version_index, c.attempt) for c in llm_.calls}
    assert len(calls) == int(frame["attempts"].sum())

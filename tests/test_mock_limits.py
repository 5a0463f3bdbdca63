"""The mock's provider behaviours: rate-limit window, request and token budgets, headers.

The arithmetic is checked on the limits object with a fake clock; the headers and the
429 answers over real HTTP on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from arboris_nb.mockserver import MockConfig, MockServer
from arboris_nb.mockserver._ratelimit import Limits, format_duration

FAST: dict[str, Any] = {"ttft_s": 0.01, "tokens_per_s": 2000.0, "output_tokens": 12}
BODY = {"messages": [{"role": "user", "content": "Write chapter one."}], "max_tokens": 40}
PROMPT_TOKENS = 3  # the mock counts the words of the messages


class Clock:
    def __init__(self) -> None:
        self.t = 50.0

    def __call__(self) -> float:
        return self.t


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.12, "120ms"), (0.0, "0ms"), (1.0, "1s"), (1.5, "1.5s"), (360.0, "6m0s"),
     (3723.25, "1h2m3.25s"), (59.9994, "1m0s"), (0.0001, "1ms")],
)  # fmt: skip
def test_reset_durations_look_like_openai(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_a_refusal_opens_a_window_that_refuses_everyone_until_it_ends() -> None:
    clock = Clock()
    limits = Limits(MockConfig(max_concurrent=2, window_s=3.0, retry_after_s=1.0), clock)
    assert limits.admit(in_flight=1, tokens=10).refused is None
    over = limits.admit(in_flight=2, tokens=10)
    assert over.refused is not None and "window of 3 s" in over.refused
    assert over.retry_after_s == 3.0
    clock.t += 1.0
    # Under the cap again, but the window is open: refused, told to come at its end.
    inside = limits.admit(in_flight=0, tokens=10)
    assert inside.refused is not None and inside.retry_after_s == pytest.approx(2.0)
    clock.t += 2.0
    assert limits.admit(in_flight=0, tokens=10).refused is None
    assert limits.windows == 1


def test_without_a_window_the_cap_refuses_only_the_excess() -> None:
    limits = Limits(MockConfig(max_concurrent=2, retry_after_s=0.5), Clock())
    assert limits.admit(in_flight=2, tokens=1).retry_after_s == 0.5
    assert limits.admit(in_flight=1, tokens=1).refused is None
    assert limits.windows == 0


def test_budgets_refill_continuously_and_say_when_a_request_fits() -> None:
    clock = Clock()
    cfg = MockConfig(request_budget=10, token_budget=1000, budget_period_s=10.0)
    limits = Limits(cfg, clock)
    first = limits.admit(in_flight=0, tokens=400)
    assert first.headers == {
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-remaining-requests": "9",
        "x-ratelimit-reset-requests": "1s",  # one request back at 1 per second
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "600",
        "x-ratelimit-reset-tokens": "4s",  # 400 tokens back at 100 per second
    }
    assert limits.admit(in_flight=1, tokens=400).refused is None
    refused = limits.admit(in_flight=2, tokens=400)  # 200 left: 200 more needed, 2 s
    assert refused.refused is not None and "tokens" in refused.refused
    assert refused.retry_after_s == pytest.approx(2.0)
    assert refused.headers["x-ratelimit-remaining-tokens"] == "200"
    clock.t += 2.0
    assert limits.admit(in_flight=0, tokens=400).refused is None


def test_request_budget_alone_and_headers_off() -> None:
    clock = Clock()
    limits = Limits(
        MockConfig(request_budget=2, budget_period_s=1.0, ratelimit_headers=False), clock
    )
    assert [limits.admit(in_flight=0, tokens=5).refused is None for _ in range(3)] == [
        True, True, False,
    ]  # fmt: skip
    clock.t += 0.25
    late = limits.admit(in_flight=0, tokens=5)
    assert late.retry_after_s == pytest.approx(0.25)  # half a request back of the one needed
    assert late.headers == {}


def test_reset_refills_and_closes_the_window() -> None:
    clock = Clock()
    limits = Limits(MockConfig(request_budget=1, window_s=60.0), clock)
    limits.admit(in_flight=0, tokens=1)
    assert limits.admit(in_flight=0, tokens=1).refused is not None
    limits.reset()
    assert limits.admit(in_flight=0, tokens=1).refused is None
    assert limits.windows == 0


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"window_s": 0}, "window_s must be None or a number > 0"),
        ({"request_budget": 0}, "request_budget must be None or >= 1"),
        ({"token_budget": 2.5}, "token_budget must be None or >= 1"),
        ({"budget_period_s": -1}, "budget_period_s must be a number > 0"),
        ({"ratelimit_headers": "yes"}, "ratelimit_headers must be True or False"),
    ],
)
def test_limit_options_are_validated(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MockConfig(**fields)


# -- over HTTP ------------------------------------------------------------------------------


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post(
    http: aiohttp.ClientSession, srv: MockServer, body: dict[str, Any]
) -> tuple[int, dict[str, str]]:
    async with http.post(srv.base_url + "/chat/completions", json=body) as resp:
        await resp.read()
        return resp.status, dict(resp.headers)


@pytest.mark.parametrize("stream", [False, True])
async def test_every_answer_carries_the_budget_headers(
    http: aiohttp.ClientSession, stream: bool
) -> None:
    cost = PROMPT_TOKENS + BODY["max_tokens"]  # type: ignore[operator]
    server = MockServer(token_budget=2 * cost, request_budget=100, budget_period_s=60, **FAST)
    with server:
        answers = [await post(http, server, {**BODY, "stream": stream}) for _ in range(3)]
    assert [status for status, _ in answers] == [200, 200, 429]
    assert [h["x-ratelimit-remaining-tokens"] for _, h in answers] == [str(cost), "0", "0"]
    assert [h["x-ratelimit-remaining-requests"] for _, h in answers] == ["99", "98", "98"]
    assert all(h["x-ratelimit-limit-tokens"] == str(2 * cost) for _, h in answers)
    # 43 tokens refill at 86 per minute: 30 s
    assert 29_000 < int(answers[2][1]["retry-after-ms"]) <= 30_000
    assert answers[2][1]["Retry-After"] == "30"
    assert re.fullmatch(r"1m0s|59\.\d+s", answers[1][1]["x-ratelimit-reset-tokens"])


async def test_window_over_http_counts_down_to_one_moment(http: aiohttp.ClientSession) -> None:
    server = MockServer(
        max_concurrent=1, window_s=0.6, **{**FAST, "ttft_s": 0.3, "output_tokens": 2}
    )
    with server:
        slow = asyncio.create_task(post(http, server, BODY))
        await asyncio.sleep(0.1)
        status, first = await post(http, server, BODY)
        await slow
        await asyncio.sleep(0.2)
        later_status, later = await post(http, server, BODY)  # nothing in flight, still refused
        await asyncio.sleep(0.45)
        after, _ = await post(http, server, BODY)
        stats = server.stats(log=False)
    assert (status, later_status, after) == (429, 429, 200)
    assert first["retry-after-ms"] == "600" and first["Retry-After"] == "1"
    assert 50 <= int(later["retry-after-ms"]) <= 450  # the same end, counted down
    assert stats["windows"] == 1
    assert stats["by_status"] == {"200": 2, "429": 2}


async def test_stats_reset_refills_the_budgets(http: aiohttp.ClientSession) -> None:
    server = MockServer(request_budget=1, budget_period_s=600, **FAST)
    with server:
        assert (await post(http, server, BODY))[0] == 200
        assert (await post(http, server, BODY))[0] == 429
        server.reset()
        status, headers = await post(http, server, BODY)
    assert status == 200
    assert re.fullmatch(r"10m0s|9m59\.\d+s", headers["x-ratelimit-reset-requests"])

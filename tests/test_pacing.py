"""Header-aware pacing: the budget on a fake clock, then the whole path over real HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from arboris_nb import KeyPool, LLMConfig, RetryPolicy, WriterSettings, generate_versions
from arboris_nb.backends.base import ChatRequest, Usage
from arboris_nb.backends.openai import OpenAIBackend, parse_retry_after
from arboris_nb.limits import FixedLimit
from arboris_nb.mockserver import MockServer
from arboris_nb.pacing import (
    RateBudget,
    estimate_tokens,
    parse_duration,
    provider_headers,
    request_key,
)

KEY = "sk-pacing-0123456789abcd"
FAST: dict[str, Any] = {"ttft_s": 0.02, "tokens_per_s": 1000.0, "output_tokens": 10}

# What a LiteLLM proxy (1.108) answers when the provider behind it refused: no Retry-After
# of its own, the provider's headers forwarded with the llm_provider- prefix.
LITELLM_429 = {
    "llm_provider-retry-after": "1",
    "llm_provider-retry-after-ms": "1000",
    "llm_provider-x-ratelimit-limit-requests": "60",
    "llm_provider-x-ratelimit-remaining-requests": "0",
    "llm_provider-x-ratelimit-reset-requests": "1s",
    "llm_provider-x-ratelimit-limit-tokens": "150000",
    "llm_provider-x-ratelimit-remaining-tokens": "149000",
    "llm_provider-x-ratelimit-reset-tokens": "120ms",
}


class Clock:
    def __init__(self) -> None:
        self.t = 10.0

    def __call__(self) -> float:
        return self.t


def request(max_tokens: int | None = 100, text: str = "hi") -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": text}], max_tokens=max_tokens)


def tokens_headers(remaining: int, reset: str, limit: int = 1000) -> dict[str, str]:
    return {
        "x-ratelimit-limit-tokens": str(limit),
        "x-ratelimit-remaining-tokens": str(remaining),
        "x-ratelimit-reset-tokens": reset,
    }


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1.0), ("6m0s", 360.0), ("120ms", 0.12), ("1h2m3.5s", 3723.5), ("2.5", 2.5),
     ("0s", 0.0), ("20ms", 0.02), (" 1M30S ", 90.0), ("soon", None), ("1x", None), (None, None),
     ("", None)],
)  # fmt: skip
def test_reset_values(text: str | None, seconds: float | None) -> None:
    assert parse_duration(text) == (pytest.approx(seconds) if seconds is not None else None)


def test_prompt_estimate_counts_wide_characters_one_each() -> None:
    english = estimate_tokens([{"role": "user", "content": "a" * 400}])
    chinese = estimate_tokens([{"role": "user", "content": "灯塔守护者" * 20}])
    assert english == 100 + 4
    assert chinese == 100 + 4


def test_the_litellm_header_set_is_honoured() -> None:
    assert parse_retry_after(LITELLM_429) == 1.0
    assert provider_headers(LITELLM_429, "retry-after") == ["1"]
    # Both forms present: the longer wait wins, so a retry never comes early.
    assert parse_retry_after({"retry-after": "2", "llm_provider-retry-after-ms": "2500"}) == 2.5
    clock = Clock()
    budget = RateBudget(clock=clock)
    budget.update(LITELLM_429)
    # No request left for the provider; its bucket refills 60 a second (from below: 59).
    assert budget.wait_s(budget.cost(request())) == pytest.approx(1 / 59)
    budget.block(parse_retry_after(LITELLM_429) or 0.0)
    assert budget.wait_s(budget.cost(request())) == pytest.approx(1.0)


def test_without_headers_nothing_waits() -> None:
    budget = RateBudget(clock=Clock())
    budget.reserve("a", 10_000)
    assert budget.wait_s(10_000) == 0.0


def test_a_request_that_does_not_fit_waits_for_the_refill() -> None:
    clock = Clock()
    budget = RateBudget(clock=clock)
    budget.update(tokens_headers(remaining=100, reset="9s"))
    cost = budget.cost(request(max_tokens=145))
    assert cost == 150  # "hi": 1 token and 4 for the message
    # From below: 100 left, refilling (1000 - 100 - 1) / 9 s = 99.9 tokens/s.
    assert budget.wait_s(cost) == pytest.approx(50 / 99.888, rel=1e-3)
    assert budget.wait_s(90) == 0.0
    budget.reserve("a", 90)  # sent, not answered: it counts against what is left
    assert budget.wait_s(90) == pytest.approx(80 / 99.888, rel=1e-3)
    budget.release("a")  # failed before an answer: no longer in flight
    assert budget.wait_s(90) == 0.0
    clock.t += 9.0
    assert budget.wait_s(1000) == 0.0  # reset passed: the bucket is full


def test_answers_in_any_order_keep_the_lowest_figure() -> None:
    """Each request has its own connection: answers arrive out of order, so a higher
    remaining figure may be older than what we hold. Only a lower one replaces it."""
    clock = Clock()
    budget = RateBudget(clock=clock)
    for key in "abc":
        budget.reserve(key, 300)  # three sent at once, no answer yet
    assert budget.wait_s(1) == 0.0  # no headers yet: nothing known to wait for
    budget.update(tokens_headers(remaining=100, reset="9s"), key="c")  # admitted last
    # b and a still pending: counted again against the 100 (cautious until they answer)
    assert budget.wait_s(1) > 0
    budget.update(tokens_headers(remaining=700, reset="3s"), key="a")  # admitted first
    budget.update(tokens_headers(remaining=400, reset="6s"), key="b")
    assert budget.wait_s(100) == 0.0  # nothing pending; the lowest figure (100) stands
    assert budget.wait_s(101) > 0
    clock.t += 9.0
    assert budget.wait_s(1000) == 0.0
    # A changed limit (the provider raised it) replaces the figure whatever it says.
    budget.update(tokens_headers(remaining=1500, reset="0s", limit=2000))
    assert budget.wait_s(1500) == 0.0


def test_the_retry_after_gate_holds_everyone() -> None:
    clock = Clock()
    budget = RateBudget(clock=clock)
    budget.block(2.0)
    assert budget.wait_s(1) == 2.0
    clock.t += 1.5
    assert budget.wait_s(1) == pytest.approx(0.5)
    budget.block(0.1)  # a shorter wait does not reopen the gate early
    assert budget.wait_s(1) == pytest.approx(0.5)


def test_after_the_gate_one_request_goes_first() -> None:
    """The pilot: the first request after a gate goes alone; the rest follow its answer,
    or wait for the next gate when its answer was another 429."""
    clock = Clock()
    budget = RateBudget(clock=clock)
    budget.block(1.0)
    clock.t += 1.0
    assert budget.wait_s(1) == 0.0
    budget.reserve("a", 1)  # the pilot
    assert budget.wait_s(1) > 0  # the others wait for its answer …
    budget.update({}, key="a")  # … a status line (its stream began): all may go
    assert budget.wait_s(1) == 0.0
    budget.reserve("b", 1)
    budget.reserve("c", 1)  # no gate since: no pilot, no waiting
    assert budget.wait_s(1) == 0.0
    budget.block(1.0)
    clock.t += 1.0
    budget.reserve("d", 1)
    budget.update({}, key="d")  # the pilot was refused too: its 429 closes the gate again
    budget.block(0.5)
    assert budget.wait_s(1) == pytest.approx(0.5)


def test_a_lost_pilot_holds_nobody_for_long() -> None:
    clock = Clock()
    budget = RateBudget(clock=clock)
    budget.block(1.0)
    clock.t += 1.0
    budget.reserve("a", 1)  # reserved, then cancelled before it was sent: never answered
    assert budget.wait_s(1) > 0
    clock.t += 1.01
    assert budget.wait_s(1) == 0.0


async def test_requests_behind_the_pilot_start_on_its_answer() -> None:
    budget = RateBudget()
    budget.block(0.01)
    await asyncio.sleep(0.02)
    pilot = ChatRequest(messages=[{"role": "user", "content": "p"}], max_tokens=1, version_index=1)
    await budget.acquire(pilot)
    behind = [
        asyncio.create_task(
            budget.acquire(
                ChatRequest(
                    messages=[{"role": "user", "content": "p"}], max_tokens=1, version_index=i
                )
            )
        )
        for i in (2, 3)
    ]
    await asyncio.sleep(0.05)
    assert not any(task.done() for task in behind)
    budget.update({}, key=request_key(pilot))
    await asyncio.wait_for(asyncio.gather(*behind), 0.5)


def test_clear_forgets_answers_reservations_and_the_gate() -> None:
    budget = RateBudget(clock=Clock())
    budget.update(tokens_headers(remaining=0, reset="30s"))
    budget.reserve("a", 10)
    budget.block(5.0)
    assert budget.wait_s(1) > 0
    budget.clear()
    assert budget.wait_s(1000) == 0.0


def test_expected_output_and_prompt_size_are_learned() -> None:
    budget = RateBudget(clock=Clock())
    bare = request(max_tokens=None, text="x" * 40)  # estimated 10 + 4
    assert budget.cost(bare) == 14 + 1024  # nothing seen yet: assume a long reply
    budget.note_usage(bare, Usage(output_tokens=300, input_tokens=28))
    budget.note_usage(bare, Usage(output_tokens=200, input_tokens=28))
    assert budget.cost(bare) == 28 + 300  # the largest recent reply; the prompt as counted


def test_a_fanout_request_counts_the_output_of_each_choice() -> None:
    budget = RateBudget(clock=Clock())
    messages = [{"role": "user", "content": "x" * 40}]  # estimated 10 + 4
    capped = ChatRequest(messages=messages, max_tokens=100, choice_versions=(1, 2, 3))
    assert budget.cost(capped) == 14 + 3 * 100  # the prompt once, n x max_tokens
    bare = ChatRequest(messages=messages, choice_versions=(1, 2, 3))
    # One usage covers all three choices: the reply size learned is one choice's.
    budget.note_usage(bare, Usage(output_tokens=900, input_tokens=14))
    assert budget.cost(bare) == 14 + 3 * 300
    assert budget.cost(ChatRequest(messages=messages)) == 14 + 300


def test_a_hedge_is_reserved_apart_from_the_attempt_it_duplicates() -> None:
    budget = RateBudget(clock=Clock())
    budget.update(tokens_headers(remaining=100, reset="60s"))
    primary = request(max_tokens=40)  # 5 + 40 tokens
    hedge = ChatRequest(messages=primary.messages, max_tokens=40, hedge=True)
    for sent in (primary, hedge):  # both in flight at once
        budget.reserve(request_key(sent), budget.cost(sent))
    assert budget.wait_s(11) > 0  # 90 pending + 11 > 100
    budget.release(request_key(primary))  # the original answered: the hedge still counts
    assert budget.wait_s(11) == 0 and budget.wait_s(56) > 0


def test_budgets_are_per_key_and_endpoint() -> None:
    a = RateBudget.for_key("http://127.0.0.1:1/v1", "sk-a")
    assert RateBudget.for_key("http://127.0.0.1:1/v1", "sk-a") is a
    assert RateBudget.for_key("http://127.0.0.1:1/v1", "sk-b") is not a
    assert RateBudget.for_key("http://127.0.0.1:2/v1", "sk-a") is not a
    assert "sk-a" not in repr(a)


async def test_the_pool_sends_on_the_member_whose_budget_fits() -> None:
    configs = [
        LLMConfig(base_url="http://127.0.0.1:9/v1", api_key=f"sk-pool-{i}" * 3) for i in (1, 2)
    ]
    pool = KeyPool(configs)
    empty, full = pool.budget_of(0), pool.budget_of(1)
    assert empty is not None and full is not None and empty is not full
    empty.update(tokens_headers(remaining=0, reset="30s"))
    full.update(tokens_headers(remaining=100, reset="60s"))
    first = ChatRequest(messages=[{"role": "user", "content": "p"}], max_tokens=10, version_index=1)
    async with pool.open() as conn:
        await asyncio.wait_for(conn.ready(first), 1.0)  # type: ignore[attr-defined]
        assert conn.pinned == {("", 1, 1, False): 1}  # type: ignore[attr-defined]
    # reserved on the member that takes it: 15 tokens ("p" and max_tokens 10) of its 100
    assert (full.wait_s(85), empty.wait_s(500) > 0) == (0.0, True)
    assert full.wait_s(86) > 0
    shared = KeyPool(configs, shared_budget=True)
    assert shared.budget_of(0) is shared.budget_of(1)


# -- over HTTP -------------------------------------------------------------------------------


async def test_token_budget_paced_on_headers_earns_no_429() -> None:
    """20 versions charged ~33 tokens each against 300 tokens per 1.5 s: the run must pace."""
    server = MockServer(token_budget=300, budget_period_s=1.5, **FAST)
    with server as url:
        llm = LLMConfig(base_url=url, api_key=KEY + "a", max_tokens=30)
        run = await generate_versions(
            "Write the chapter.",
            settings=WriterSettings(version_count=10),
            llm=llm,
            limiter=FixedLimit(8),
            indices=range(1, 21),
            retry=RetryPolicy(attempts=5, base_delay_s=0.1),
            store=False,
        )
        stats = server.stats()
    assert len(run.ok) == 20
    assert stats["by_status"] == {"200": 20}
    assert run.elapsed_s is not None and run.elapsed_s > 1.0  # waited for refills
    assert OpenAIBackend(llm).budget.waits > 0


async def test_no_version_sends_before_a_retry_after_ends() -> None:
    server = MockServer(fail_requests={1: 429}, retry_after_s=0.5, **FAST)
    with server as url:
        run = await generate_versions(
            "Write the chapter.",
            settings=WriterSettings(version_count=6),
            llm=LLMConfig(base_url=url, api_key=KEY + "b"),
            limiter=FixedLimit(3),
            retry=RetryPolicy(attempts=3, base_delay_s=0.05),
            store=False,
        )
        log = server.stats()["log"]
    assert len(run.ok) == 6
    refused = next(e for e in log if e["status"] == 429)
    later = [e for e in log if e["n"] > 3]  # everything after the first three, sent at once
    assert later and all(e["arrival_s"] >= refused["end_s"] + 0.5 - 0.02 for e in later)


@pytest.fixture
async def litellm_like() -> AsyncIterator[str]:
    """A stand-in for a LiteLLM proxy: the first request gets the proxy's 429, then replies."""
    calls = {"n": 0}

    async def chat(request: web.Request) -> web.Response:
        calls["n"] += 1
        if calls["n"] == 1:
            error = {"error": {"message": "429: rate limited", "type": None, "code": "429"}}
            return web.json_response(error, status=429, headers=LITELLM_429)
        reply = {
            "id": "x", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "Once upon a time."}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
        }  # fmt: skip
        return web.json_response(reply)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    finally:
        await runner.cleanup()


async def test_behind_a_litellm_proxy_the_retry_waits_the_providers_second(
    litellm_like: str,
) -> None:
    llm = LLMConfig(base_url=litellm_like, api_key=KEY + "c")
    backend = OpenAIBackend(llm, stream=False)
    run = await generate_versions(
        "p",
        settings=WriterSettings(version_count=1),
        llm=backend,
        retry=RetryPolicy(attempts=2, base_delay_s=0.01, jitter=0.0),
        store=False,
    )
    (version,) = run.versions
    assert version.ok
    first = version.attempts[0]
    assert (first.status_code, first.retry_after_s) == (429, 1.0)
    second = version.attempts[1]
    assert second.started_at - (first.finished_at or 0.0) >= 1.0

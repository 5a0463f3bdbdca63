"""Stragglers over real HTTP on 127.0.0.1: the mock's heavy tail, and the engine's answers
to it (keep the first N of N+k, hedged requests, stopping a version) end to end."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from arboris_nb import LLMConfig, RetryPolicy, WriterSettings, start_versions
from arboris_nb.events import Event, VersionStarted
from arboris_nb.mockserver import MockConfig, MockServer

MESSAGES = [{"role": "user", "content": "Write chapter one."}]
# 10 tokens: ~0.05 s first token + 9 gaps of 10 ms ≈ 0.14 s; a straggler (×8) ≈ 1.1 s.
QUICK: dict[str, Any] = {"ttft_s": 0.05, "tokens_per_s": 100.0, "output_tokens": 10}


def test_straggler_options_are_validated_with_their_names() -> None:
    with pytest.raises(ValueError, match=r"straggler_rate must be in \[0, 1\], got 1.5"):
        MockConfig(straggler_rate=1.5)
    with pytest.raises(ValueError, match=r"straggler_factor must be a number >= 1, got 0\.5"):
        MockConfig(straggler_factor=0.5)


async def first_token_times(server: MockServer, count: int) -> list[float]:
    """Seconds to the first streamed token of ``count`` requests sent one after another."""
    times = []
    async with aiohttp.ClientSession() as http:
        for _ in range(count):
            start = time.perf_counter()
            body = {"messages": MESSAGES, "stream": True}
            async with http.post(server.base_url + "/chat/completions", json=body) as r:
                first = None
                async for line in r.content:
                    if first is None and b'"content": "' in line and b'"content": ""' not in line:
                        first = time.perf_counter() - start
            assert first is not None
            times.append(first)
    return times


async def test_a_seeded_fraction_of_requests_is_slower_and_logged_as_stragglers() -> None:
    config = {**QUICK, "straggler_rate": 0.3, "straggler_factor": 8.0}
    server = MockServer(**config, seed=3)
    with server:
        times = await first_token_times(server, 12)
        log = server.stats()["log"]
    slow = [entry["straggler"] for entry in log]
    assert 0 < sum(slow) < len(slow)  # some, not all
    for took, straggler in zip(times, slow, strict=True):
        if straggler:
            assert took >= 0.05 * 8  # the first token comes 8× later
        else:
            assert took < 0.05 * 8 * 0.75
    # Seeded per request (here by arrival: no X-Arboris headers): the same again.
    again = MockServer(**config, seed=3)
    with again:
        await first_token_times(again, 12)
        assert [e["straggler"] for e in again.stats()["log"]] == slow


async def test_hedged_request_beats_a_straggler_over_http() -> None:
    # The mock draws per request (run id, version, attempt, hedge): with seed 3, rate 0.5
    # and this run id, the version's request is a straggler and its hedge is not.
    server = MockServer(**QUICK, straggler_rate=0.5, straggler_factor=20.0, seed=3)
    with server as url:
        handle = start_versions(
            "p",
            settings=WriterSettings(version_count=1, max_parallel_requests=2),
            llm=LLMConfig(base_url=url, model="m"),
            retry=RetryPolicy(hedge_after_s=0.2),
            run_id="hedge-0",
            store=False,
        )
        run = await handle
        log = server.stats()["log"]
    assert [(e["straggler"], e["hedge"]) for e in log] == [(True, False), (False, True)]
    version = run.versions[0]
    assert version.ok and version.hedged and version.hedge_won
    # Done long before the straggler's first token (at 0.05 × 20 = 1 s after it started).
    assert version.duration_s is not None and version.duration_s < 0.05 * 20
    primary, hedge = version.attempts
    assert primary.lost and not hedge.lost and hedge.hedge
    assert [e["outcome"] for e in log] == ["client_closed", "ok"]  # the loser was cancelled


async def test_stop_frees_the_slot_for_a_queued_version_over_http() -> None:
    server = MockServer(**{**QUICK, "output_tokens": 200})  # ~2 s a version
    started: dict[int, float] = {}

    def on_event(event: Event) -> None:
        if isinstance(event, VersionStarted):
            started[event.version.index] = time.perf_counter()

    with server as url:
        handle = start_versions(
            "p",
            settings=WriterSettings(version_count=3, max_parallel_requests=2),
            llm=LLMConfig(base_url=url, model="m"),
            on_event=on_event,
            store=False,
        )
        run = handle.run
        for _ in range(200):  # until version 1 streams (bounded: 2 s)
            if run.versions[0].first_token_at is not None:
                break
            await asyncio.sleep(0.01)
        assert run.versions[2].status == "queued"
        stopped_at = time.perf_counter()
        assert handle.cancel_version(1)
        await asyncio.sleep(0.2)
        handle.cancel()
        await handle
    assert started[3] - stopped_at < 0.1  # the stopped version's slot went to version 3
    first = run.versions[0]
    assert first.status == "cancelled" and first.cancel_reason == "stopped"
    assert first.content is None and first.partial


async def test_runs_with_the_same_id_meet_the_same_stragglers() -> None:
    # What makes benchmarks/hedging.py a side-by-side comparison: the draw is keyed by the
    # request (run id, version, attempt), not by when it arrived.
    async def slow_versions(versions: int) -> list[str]:
        server = MockServer(**QUICK, straggler_rate=0.5, straggler_factor=2.0, seed=1)
        with server as url:
            await start_versions(
                "p",
                settings=WriterSettings(version_count=versions, max_parallel_requests=4),
                llm=LLMConfig(base_url=url, model="m"),
                run_id="same",
                store=False,
            )
            return sorted(e["version"] for e in server.stats()["log"] if e["straggler"])

    three, four = await slow_versions(3), await slow_versions(4)
    assert three == [v for v in four if v != "4"]
    assert 0 < len(four) < 4

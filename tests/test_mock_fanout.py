"""The mock's ``n``, ``reject_n``, ``prefill`` and billed-token counts, over real HTTP."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from arboris_nb.mockserver import MockConfig, MockServer

MESSAGES = [{"role": "user", "content": "Write chapter one of the harbor story."}]  # 7 words
FAST: dict[str, Any] = {"ttft_s": 0.01, "tokens_per_s": 2000.0, "output_tokens": 12}


async def post(url: str, body: dict[str, Any], **headers: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(url + "/chat/completions", json=body, headers=headers) as r,
    ):
        return r.status, await r.text()


def chunks_of(text: str) -> list[dict[str, Any]]:
    events = [line[len("data: ") :] for line in text.split("\n") if line]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


async def test_n_choices_stream_interleaved_and_the_prompt_counts_once() -> None:
    server = MockServer(**FAST)
    with server as url:
        body = {"messages": MESSAGES, "stream": True, "n": 3}
        body["stream_options"] = {"include_usage": True}
        status, text = await post(url, body, **{"X-Arboris-Version": "4,5,6"})
        # The same versions asked one at a time give the same texts.
        alone = []
        for version in ("4", "5", "6"):
            _, reply = await post(url, {"messages": MESSAGES}, **{"X-Arboris-Version": version})
            alone.append(json.loads(reply)["choices"][0]["message"]["content"])
        stats = server.stats()
    assert status == 200
    chunks = chunks_of(text)
    order = [c["choices"][0]["index"] for c in chunks if c["choices"]]
    assert order[:3] == [0, 1, 2]  # each choice's first chunk before any choice's second
    texts = ["", "", ""]
    finishes: dict[int, list[str]] = {0: [], 1: [], 2: []}
    for chunk in chunks:
        for choice in chunk["choices"]:
            texts[choice["index"]] += choice["delta"].get("content", "")
            if choice["finish_reason"]:
                finishes[choice["index"]].append(choice["finish_reason"])
    assert texts == alone
    assert finishes == {0: ["stop"], 1: ["stop"], 2: ["stop"]}
    usage = chunks[-1]["usage"]
    assert usage["prompt_tokens"] == 7  # once, for three choices
    assert usage["completion_tokens"] == 3 * 12
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0}
    assert stats["log"][0]["choices"] == 3
    assert stats["prompt_tokens"] == 7 * 4  # the n request once, then three requests
    assert stats["completion_tokens"] == 6 * 12


async def test_n_without_streaming() -> None:
    with MockServer(**FAST) as url:
        status, text = await post(url, {"messages": MESSAGES, "n": 2})
    reply = json.loads(text)
    assert status == 200
    assert [c["index"] for c in reply["choices"]] == [0, 1]
    assert reply["choices"][0]["message"]["content"] != reply["choices"][1]["message"]["content"]
    assert reply["usage"]["prompt_tokens"] == 7
    assert reply["usage"]["completion_tokens"] == 24


@pytest.mark.parametrize("n", [0, 129, "3", 2.5])
async def test_a_bad_n_is_a_400(n: object) -> None:
    with MockServer(**FAST) as url:
        status, text = await post(url, {"messages": MESSAGES, "n": n})
    assert status == 400
    assert json.loads(text)["error"]["param"] == "n"


async def test_reject_n_answers_400_about_n_and_bills_nothing() -> None:
    server = MockServer(**FAST, reject_n=True)
    with server as url:
        refused, text = await post(url, {"messages": MESSAGES, "n": 2})
        single, _ = await post(url, {"messages": MESSAGES, "n": 1})
        stats = server.stats(log=False)
    error = json.loads(text)["error"]
    assert (refused, single) == (400, 200)
    assert error["param"] == "n" and "n > 1" in error["message"]
    assert stats["prompt_tokens"] == 7  # only the request that was answered


async def test_prefill_reads_prompts_one_after_another() -> None:
    # 7 prompt tokens at 35 a second: 0.2 s to read each prompt, server-wide.
    server = MockServer(ttft_s=0.0, tokens_per_s=2000.0, output_tokens=4, prefill=35.0)
    with server as url:
        body = {"messages": MESSAGES, "stream": True}
        await post(url, body)
        first = server.stats()["log"][0]
        server.reset()
        await asyncio.gather(*(post(url, body) for _ in range(3)))
        apart = server.stats()["log"]
        server.reset()
        await post(url, {**body, "n": 3})
        shared = server.stats()["log"][0]
    assert first["first_token_s"] - first["arrival_s"] >= 0.19
    waits = sorted(e["first_token_s"] - e["arrival_s"] for e in apart)
    assert waits[2] >= 0.55  # the third prompt waited for two others to be read
    assert shared["first_token_s"] - shared["arrival_s"] >= 0.19
    assert shared["prompt_tokens"] == 7


def test_new_options_are_validated() -> None:
    with pytest.raises(ValueError, match=r"MockConfig.prefill must be None or a number > 0"):
        MockConfig(prefill=0)
    with pytest.raises(ValueError, match=r"MockConfig.reject_n must be True or False"):
        MockConfig(reject_n=1)  # type: ignore[arg-type]

"""The engine through the real OpenAIBackend, over HTTP, against the mock on 127.0.0.1.

These are the core issue's acceptance checks: with a fixed latency L, three parallel versions
take about L and serial about 3·L; the server never sees more requests at once than the limit;
a version the server rejects leaves the others ok. Wall-clock bounds are generous on purpose.
"""

from __future__ import annotations

import pytest

from arboris_nb import LLMConfig, WriterSettings, generate_versions
from arboris_nb.mockserver import MockServer

# L ≈ 0.3 s to first token + 19 tokens at 50/s ≈ 0.68 s.
LATENCY = {"ttft_s": 0.3, "tokens_per_s": 50.0, "output_tokens": 20}


def llm(base_url: str) -> LLMConfig:
    return LLMConfig(base_url=base_url, model="mock-model")


async def test_parallel_takes_about_l_and_serial_about_3l() -> None:
    with MockServer(**LATENCY) as base_url:
        serial = await generate_versions(
            "p", settings=WriterSettings(3, parallel=False), llm=llm(base_url)
        )
        parallel = await generate_versions("p", settings=WriterSettings(3), llm=llm(base_url))
    latency = serial.elapsed_s / 3
    assert latency > 0.6
    assert parallel.elapsed_s < 1.5 * latency  # about L, not 3·L
    assert serial.elapsed_s > 2.5 * parallel.elapsed_s
    assert all(v.tokens_from_usage and v.output_tokens == 20 for v in parallel.versions)


@pytest.mark.parametrize(("n", "c"), [(7, 3), (6, 2), (4, 1)])
async def test_server_never_sees_more_than_the_limit(n: int, c: int) -> None:
    mock = MockServer(ttft_s=0.1, tokens_per_s=200.0, output_tokens=10)
    with mock as base_url:
        settings = WriterSettings(version_count=n, max_parallel_requests=c)
        run = await generate_versions("p", settings=settings, llm=llm(base_url))
        stats = mock.stats()
    assert len(run.ok) == n
    assert stats["max_in_flight"] == c  # reached, never exceeded
    assert stats["requests"] == n


async def test_a_rejected_version_leaves_the_others_ok() -> None:
    mock = MockServer(ttft_s=0.05, tokens_per_s=500.0, output_tokens=10, fail_requests={2: 400})
    with mock as base_url:
        run = await generate_versions(
            "p", settings=WriterSettings(3, max_parallel_requests=1), llm=llm(base_url)
        )
    assert [v.status for v in run.versions] == ["ok", "failed", "ok"]
    failed = run.versions[1]
    assert failed.error_type == "BadRequest" and failed.attempt_count == 1
    assert "HTTP 400" in (failed.error or "")

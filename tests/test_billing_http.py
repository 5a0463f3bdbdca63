"""Usage and cost through the real OpenAIBackend, over HTTP, against the mock on 127.0.0.1:
every token the server billed is in some attempt (the run's sums equal the mock's
``/stats``), for separate requests and for one request with ``n``; cached input tokens
are read; a server that refuses ``n > 1`` is remembered and said so once."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from typing import Any

import pytest

from arboris_nb import (
    BookJob,
    BookProgress,
    LLMConfig,
    RetryPolicy,
    WriterSettings,
    evaluate,
    generate_versions,
    load_run,
)
from arboris_nb.analysis import Recorder
from arboris_nb.mockserver import MockServer
from arboris_nb.queue.job import _projection
from arboris_nb.results import Attempt, Run, Version

PROMPT = " ".join(f"word{i}" for i in range(600))  # 600 prompt tokens as the mock counts
FAST: dict[str, Any] = {"ttft_s": 0.01, "tokens_per_s": 2000.0, "output_tokens": 30}
QUICK_RETRY = RetryPolicy(attempts=3, base_delay_s=0.01, max_delay_s=0.05, jitter=0.0)


def llm(url: str, model: str = "mock-model") -> LLMConfig:
    return LLMConfig(base_url=url, model=model, price_in=2.0, price_out=8.0, price_cached_in=1.0)


def assert_billed_as_the_server_counted(run: Run, stats: dict[str, Any]) -> None:
    assert run.input_tokens == stats["prompt_tokens"]
    assert run.output_tokens == stats["completion_tokens"]
    assert run.cached_input_tokens == stats["cached_prompt_tokens"]
    # And the same, request by request, from the attempts' own counts.
    attempts = [a for v in run.versions for a in v.attempts]
    assert sum(a.input_tokens or 0 for a in attempts) == stats["prompt_tokens"]


@pytest.mark.parametrize("fanout", ["requests", "n"])
async def test_the_run_is_billed_what_the_server_counted(fanout: str) -> None:
    # Request 1 is refused (429, billed nothing): a retry in requests mode, the fallback
    # to separate requests in n mode.
    server = MockServer(**FAST, fail_requests={1: 429}, retry_after_s=0.01)
    with server as url:
        run = await generate_versions(
            PROMPT,
            settings=WriterSettings(3, fanout=fanout),  # type: ignore[arg-type]
            llm=llm(url),
            retry=QUICK_RETRY,
            store=False,
        )
        stats = server.stats(log=False)
    assert [v.status for v in run.versions] == ["ok"] * 3
    assert_billed_as_the_server_counted(run, stats)
    refused = next(v for v in run.versions if v.attempts[0].status_code == 429)
    assert refused.attempts[0].input_tokens == 0  # a refused request costs nothing
    assert refused.attempts[0].cost == 0.0
    assert run.cost == pytest.approx(
        (stats["prompt_tokens"] * 2.0 + stats["completion_tokens"] * 8.0) / 1e6
    )


async def test_with_n_the_prompt_is_billed_once() -> None:
    costs = {}
    server = MockServer(**FAST)
    with server as url:
        for fanout in ("requests", "n"):
            server.reset()
            run = await generate_versions(
                PROMPT,
                settings=WriterSettings(3, fanout=fanout),  # type: ignore[arg-type]
                llm=llm(url),
                store=False,
            )
            stats = server.stats(log=False)
            assert_billed_as_the_server_counted(run, stats)
            costs[fanout] = run
    assert costs["n"].input_tokens == 600
    assert costs["requests"].input_tokens == 3 * 600
    assert stats["requests"] == 1  # the last run, with n: one request
    assert [v.content for v in costs["n"].versions] == [
        v.content for v in costs["requests"].versions
    ]


async def test_a_cut_stream_is_billed_an_estimate_that_matches_the_server() -> None:
    # seed 3 cuts request 1 and spares the retry. 50 tokens/s is one token per chunk,
    # so the chunks counted are the tokens the server sent before the cut.
    server = MockServer(
        ttft_s=0.01, tokens_per_s=50.0, output_tokens=12, disconnect_rate=0.5, seed=3
    )
    with server as url:
        run = await generate_versions(
            PROMPT, settings=WriterSettings(1), llm=llm(url), retry=QUICK_RETRY, store=False
        )
        stats = server.stats()
    assert [e["outcome"] for e in stats["log"]] == ["disconnect", "ok"]
    cut, kept = run.versions[0].attempts
    # openai 3.x reports a cut mid-stream as a dropped connection.
    assert (cut.error_type, cut.usage_estimated, kept.usage_estimated) == (
        "ConnectionFailed",
        True,
        False,
    )
    assert cut.output_tokens == stats["log"][0]["tokens"] > 0  # paid for, and counted
    assert cut.input_tokens == 600  # the prompt's size, from the retry's usage
    assert_billed_as_the_server_counted(run, stats)
    assert run.versions[0].cost == pytest.approx(cut.cost + kept.cost)  # type: ignore[operator]


async def test_cached_input_tokens_are_read_and_priced() -> None:
    server = MockServer(**FAST, prompt_cache=True)
    with server as url:
        run = await generate_versions(
            PROMPT, settings=WriterSettings(3, parallel=False), llm=llm(url), store=False
        )
        stats = server.stats(log=False)
    assert [v.cached_input_tokens for v in run.versions] == [0, 600, 600]
    assert_billed_as_the_server_counted(run, stats)
    second = run.versions[1]
    assert second.cost == pytest.approx((600 * 1.0 + second.output_tokens * 8.0) / 1e6)


async def test_a_server_refusing_n_is_remembered_per_model_and_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = MockServer(**FAST, reject_n=True)
    with server as url, caplog.at_level(logging.WARNING, logger="arboris_nb"):
        first = await generate_versions(
            PROMPT, settings=WriterSettings(3, fanout="n"), llm=llm(url), store=False
        )
        second = await generate_versions(
            PROMPT, settings=WriterSettings(3, fanout="n"), llm=llm(url), store=False
        )
        other_model = await generate_versions(
            PROMPT, settings=WriterSettings(2, fanout="n"), llm=llm(url, "other"), store=False
        )
        stats = server.stats()
    for run in (first, second, other_model):
        assert all(v.ok for v in run.versions)
    refusal = first.versions[0].attempts[0]
    assert (refusal.error_type, refusal.status_code, refusal.input_tokens) == (
        "FanoutRefused",
        400,
        0,
    )
    assert [v.attempt_count for v in second.versions] == [1, 1, 1]  # not asked with n again
    assert [e["choices"] for e in stats["log"]] == [3, 1, 1, 1, 1, 1, 1, 2, 1, 1]
    said = [r for r in caplog.records if "refused n > 1" in r.getMessage()]
    assert len(said) == 2  # once for each model
    assert "mock-model" in said[0].getMessage() and "other" in said[1].getMessage()


async def test_usage_is_stored_and_framed(tmp_path: Any) -> None:
    store = tmp_path / "runs.sqlite3"
    recorder = Recorder()
    with MockServer(**FAST) as url:
        run = await generate_versions(
            PROMPT,
            settings=WriterSettings(2, fanout="n"),
            llm=llm(url),
            store=store,
            on_event=recorder,
        )
    loaded = load_run(run.run_id, store=store)
    assert [v.input_tokens for v in loaded.versions] == [300, 300]
    assert loaded.cost == pytest.approx(run.cost)
    assert loaded.versions[0].attempts[0].choices == 2
    versions = recorder.versions_frame()
    assert versions["input_tokens"].tolist() == [300, 300]
    assert versions["cost"].sum() == pytest.approx(run.cost)
    runs = recorder.runs_frame()
    assert runs.loc[0, "input_tokens"] == 600
    assert run.to_frame()["cost"].sum() == pytest.approx(run.cost)


def test_cli_fanout_n_json_bills_the_prompt_once_and_prices_it(tmp_path: Any) -> None:
    prices = tmp_path / "prices.toml"
    prices.write_text('["mock-model"]\nprice_in = 2.0\nprice_out = 8.0\n', encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "WRITER_"))}
    env.update(ARBORIS_PRICES=str(prices), ARBORIS_STORE="off")
    with MockServer(**FAST) as url:
        argv = ["generate", "--versions", "3", "--fanout", "n", "--json", "--base-url", url]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "arboris_nb",
                *argv,
                "--model",
                "mock-model",
                "--prompt",
                PROMPT,
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert [v["status"] for v in data["versions"]] == ["ok"] * 3
    assert data["input_tokens"] == 600  # billed once for three versions
    assert data["output_tokens"] == 3 * 30
    assert data["cost"] == pytest.approx((600 * 2.0 + 90 * 8.0) / 1e6)
    assert [v["input_tokens"] for v in data["versions"]] == [200, 200, 200]
    assert sum(v["cost"] for v in data["versions"]) == pytest.approx(data["cost"])


async def test_evaluate_reports_its_own_cost() -> None:
    reply = '{"best_choice": 2, "ranking": [2, 1], "reason_for_choice": "r", "evaluation": {}}'
    run = Run(
        run_id="r1",
        versions=[Version(index=i, status="ok", content=t) for i, t in ((1, "one"), (2, "two"))],
    )
    server = MockServer(**FAST, reply=reply)
    with server as url:
        evaluation = await evaluate(run, llm=llm(url))
        stats = server.stats(log=False)
    assert evaluation.input_tokens == stats["prompt_tokens"] > 0
    expected = (stats["prompt_tokens"] * 2.0 + stats["completion_tokens"] * 8.0) / 1e6
    assert evaluation.cost == pytest.approx(expected)
    assert "Evaluation: 1 request," in evaluation.to_html()
    assert evaluation.to_dict()["calls"][0]["cost"] == pytest.approx(expected)
    # Without a price, no cost line (the cost is unknown, not zero).
    with MockServer(**FAST, reply=reply) as url:
        unpriced = await evaluate(run, llm=LLMConfig(base_url=url, model="mock-model"))
    assert unpriced.cost is None and "arboris-evaluation-cost" not in unpriced.to_html()


async def test_a_book_job_shows_its_cost_so_far_and_projected() -> None:
    server = MockServer(**FAST)
    with server as url:
        job = BookJob(
            "priced",
            chapters=range(1, 4),
            versions_per_chapter=2,
            prompts="Write chapter {chapter} of the harbor story.",
            llm=llm(url),
            limit=2,
        )
        assert (job.status()["cost"], job.status()["projected_cost"]) == (None, None)
        status = await job.run()
        stats = server.stats(log=False)
        # Resumed from the stored spec (as a worker would): the price travels with it.
        again = BookJob.load(job.job_id)
    expected = (stats["prompt_tokens"] * 2.0 + stats["completion_tokens"] * 8.0) / 1e6
    assert status["cost"] == pytest.approx(expected)
    assert status["projected_cost"] == pytest.approx(expected)  # nothing left to do
    assert job.frame()["cost"].sum() == pytest.approx(expected)
    assert again.status()["cost"] == pytest.approx(expected)
    line = BookProgress(job).line.value
    assert f"cost ${expected:.4f} so far, ${expected:.4f} projected" in line


def test_the_projection_adds_the_mean_finished_unit_for_each_unit_left() -> None:
    def stored(status: str, cost: float | None) -> Version:
        return Version(index=1, status=status, attempts=[Attempt(1, 0.0, 1.0, cost=cost)])  # type: ignore[arg-type]

    units = [stored("ok", 0.10), stored("failed", 0.20), stored("cancelled", 0.05)]
    spent, projected = _projection(units, 6)
    assert spent == pytest.approx(0.35)
    assert projected == pytest.approx(0.35 + 0.15 * 4)  # 4 units not finished
    assert _projection([stored("cancelled", 0.05)], 6) == (pytest.approx(0.05), None)
    assert _projection([*units, stored("ok", None)], 6) == (None, None)  # a price unknown

"""The engine on the simulated model, timed exactly on looptime's fake loop clock."""

from __future__ import annotations

import asyncio
import logging
import math

import pytest

from arboris_nb import (
    AllVersionsFailed,
    AuthError,
    ConfigError,
    RetryPolicy,
    SimulatedLLM,
    WriterSettings,
    generate_versions,
    start_versions,
)
from arboris_nb.events import (
    Event,
    RunFinished,
    RunStarted,
    TokenDelta,
    VersionFinished,
    VersionQueued,
    VersionStarted,
)

# ttft 1 s + 9 further tokens at 10 tokens/s = 1.9 s a version, exactly on the fake clock.
L = 1.9


def model(**kwargs: object) -> SimulatedLLM:
    defaults: dict[str, object] = {
        "ttft_s": 1.0,
        "tokens_per_s": 10.0,
        "reply": "a b c d e f g h i j",
    }
    defaults.update(kwargs)
    return SimulatedLLM(**defaults)  # type: ignore[arg-type]


def settings(n: int, c: int = 3, parallel: bool = True) -> WriterSettings:
    return WriterSettings(version_count=n, max_parallel_requests=c, parallel=parallel)


@pytest.mark.looptime
@pytest.mark.parametrize(("n", "c"), [(3, 3), (5, 2), (4, 1), (2, 3), (10, 4)])
async def test_parallel_wall_time_is_ceil_n_over_c_times_latency(n: int, c: int) -> None:
    run = await generate_versions("p", settings=settings(n, c), llm=model())
    assert run.elapsed_s == pytest.approx(math.ceil(n / c) * L)
    assert run.ideal_s == pytest.approx(run.elapsed_s)
    assert [v.index for v in run.versions] == list(range(1, n + 1))


@pytest.mark.looptime
async def test_serial_runs_one_after_another() -> None:
    run = await generate_versions("p", settings=settings(3, parallel=False), llm=model())
    assert run.mode == "serial"
    assert run.elapsed_s == pytest.approx(3 * L)
    assert [v.queue_wait_s for v in run.versions] == pytest.approx([0, L, 2 * L])
    assert run.efficiency == pytest.approx(0.0, abs=1e-9)


@pytest.mark.looptime
async def test_timings_per_version_under_a_limit() -> None:
    run = await generate_versions("p", settings=settings(3, c=2), llm=model())
    v1, _, v3 = run.versions
    assert v1.queue_wait_s == pytest.approx(0.0)
    assert v3.queue_wait_s == pytest.approx(L)  # waited for a slot
    assert v3.ttft_s == pytest.approx(1.0)
    assert v3.duration_s == pytest.approx(L)
    assert v3.output_tokens == 10 and v3.tokens_from_usage
    assert v3.tokens_per_s == pytest.approx(10 / 0.9)


@pytest.mark.looptime
async def test_efficiency_matches_the_seed_formula() -> None:
    serial = await generate_versions("p", settings=settings(3, parallel=False), llm=model())
    parallel = await generate_versions("p", settings=settings(3), llm=model())
    assert parallel.serial_is_estimated
    assert parallel.efficiency == pytest.approx((3 * L - L) / (3 * L) * 100)
    parallel.with_serial_baseline(serial)
    assert not parallel.serial_is_estimated
    assert parallel.speedup == pytest.approx(3.0)
    summary = parallel.summary()
    assert summary["ok"] == 3 and summary["serial_estimated"] is False


async def test_versions_differ_and_are_deterministic() -> None:
    llm = SimulatedLLM(ttft_s=0, tokens_per_s=1e6)
    first = await generate_versions("Write chapter 3", settings=settings(3), llm=llm)
    again = await generate_versions("Write chapter 3", settings=settings(3), llm=llm)
    texts = [v.content for v in first.versions]
    assert len(set(texts)) == 3
    assert texts == [v.content for v in again.versions]


@pytest.mark.looptime
async def test_one_failing_version_never_stops_the_others() -> None:
    llm = model(fail_versions={2}, fail_error=AuthError)
    run = await generate_versions("p", settings=settings(3), llm=llm)
    assert [v.status for v in run.versions] == ["ok", "failed", "ok"]
    failed = run.versions[1]
    assert failed.content is None
    assert failed.error_type == "AuthError" and "version 2" in (failed.error or "")
    assert failed.display_text().startswith("Generation failed: ")
    assert failed.attempt_count == 1  # an auth error is not retried
    assert run.elapsed_s == pytest.approx(L)


@pytest.mark.looptime
async def test_all_failed_raises_with_the_run_attached() -> None:
    llm = model(fail_versions={1, 2}, fail_error=AuthError)
    with pytest.raises(AllVersionsFailed, match="OPENAI_API_BASE_URL") as caught:
        await generate_versions("p", settings=settings(2), llm=llm)
    assert [v.status for v in caught.value.run.versions] == ["failed", "failed"]
    run = await generate_versions("p", settings=settings(2), llm=llm, raise_on_all_failed=False)
    assert len(run.failed) == 2


@pytest.mark.looptime
async def test_transient_failures_are_retried_and_recorded() -> None:
    llm = model(fail_rate=0.5, seed=3)
    retry = RetryPolicy(attempts=6, base_delay_s=1.0, jitter=0.0)
    run = await generate_versions("p", settings=settings(6, c=6), llm=llm, retry=retry)
    assert all(v.ok for v in run.versions)
    retried = [v for v in run.versions if v.attempt_count > 1]
    assert retried, "with fail_rate=0.5 some version must need a retry"
    for v in retried:
        assert [a.number for a in v.attempts] == list(range(1, v.attempt_count + 1))
        assert all(a.error_type == "ServerError" for a in v.attempts[:-1])
        assert v.attempts[-1].error_type is None
        assert v.retry_wait_s == pytest.approx(sum(2**i for i in range(v.attempt_count - 1)))
    frame = run.to_frame()
    assert frame.loc[frame["attempts"] > 1, "retried"].all()
    assert not frame.loc[frame["attempts"] == 1, "retried"].any()


@pytest.mark.looptime
async def test_handle_cancel_keeps_finished_versions() -> None:
    llm = model()
    slow = SimulatedLLM(ttft_s=0.5, tokens_per_s=1.0, reply="x " * 20)

    def on_event(event: Event) -> None:
        if isinstance(event, VersionFinished):
            handle.cancel()

    speeds = {1: llm, 2: slow}

    class Mixed(SimulatedLLM):
        async def stream(self, request):  # type: ignore[no-untyped-def,override]
            async for item in speeds[1 if request.version_index == 1 else 2].stream(request):
                yield item

    handle = start_versions("p", settings=settings(3), llm=Mixed(), on_event=on_event)
    run = await handle
    assert [v.status for v in run.versions] == ["ok", "cancelled", "cancelled"]
    assert run.versions[0].content and run.versions[1].content is None
    assert run.elapsed_s == pytest.approx(L)
    assert handle.run is run and handle.done()


@pytest.mark.looptime
async def test_the_handle_has_the_run_at_once_and_live() -> None:
    seen: list[tuple[str, ...]] = []
    handle = start_versions("p", settings=settings(2), llm=model(), run_id="r1")
    run = handle.run
    assert (run.run_id, [v.status for v in run.versions]) == ("r1", ["queued", "queued"])
    assert not handle.done() and "r1" in repr(handle)
    while not handle.done():
        seen.append(tuple(v.status for v in run.versions))
        await asyncio.sleep(0.5)
    assert ("running", "running") in seen
    assert await handle is run
    assert [v.status for v in run.versions] == ["ok", "ok"]


@pytest.mark.looptime
async def test_cancel_before_the_start_requests_nothing() -> None:
    llm = model()
    handle = start_versions("p", settings=settings(3), llm=llm)
    handle.cancel()
    run = await handle
    assert [v.status for v in run.versions] == ["cancelled"] * 3
    assert llm.calls == []
    handle.cancel()  # after the end: nothing happens
    assert [v.status for v in run.versions] == ["cancelled"] * 3


@pytest.mark.looptime
async def test_awaiting_the_handle_raises_when_every_version_failed() -> None:
    handle = start_versions("p", settings=settings(2), llm=model(fail_versions=[1, 2]))
    with pytest.raises(AllVersionsFailed) as caught:
        await handle
    assert caught.value.run is handle.run
    quiet = start_versions(
        "p", settings=settings(2), llm=model(fail_versions=[1, 2]), raise_on_all_failed=False
    )
    assert [v.status for v in (await quiet).versions] == ["failed", "failed"]


def test_start_versions_outside_a_loop_says_what_to_use() -> None:
    with pytest.raises(RuntimeError, match="generate_versions_sync"):
        start_versions("p", llm=model())


@pytest.mark.looptime
async def test_cancelling_the_task_marks_the_rest_cancelled_and_reraises() -> None:
    seen: list[Event] = []
    task = asyncio.ensure_future(
        generate_versions("p", settings=settings(4, c=2), llm=model(), on_event=seen.append)
    )
    await asyncio.sleep(L + 0.5)  # versions 1-2 done, 3-4 running
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    run = seen[0].run
    assert [v.status for v in run.versions] == ["ok", "ok", "cancelled", "cancelled"]
    assert isinstance(seen[-1], RunFinished)


@pytest.mark.looptime
async def test_events_arrive_in_order() -> None:
    seen: list[Event] = []
    await generate_versions("p", settings=settings(2), llm=model(), on_event=seen.append)
    kinds = [type(e) for e in seen]
    assert kinds[0] is RunStarted and kinds[-1] is RunFinished
    assert kinds.count(VersionQueued) == 2 and kinds.count(VersionStarted) == 2
    tokens = [e for e in seen if isinstance(e, TokenDelta) and e.version.index == 1]
    assert "".join(e.text for e in tokens) == "a b c d e f g h i j"
    assert [e.t for e in seen] == sorted(e.t for e in seen)


async def test_a_broken_subscriber_does_not_break_the_run(caplog: pytest.LogCaptureFixture) -> None:
    def broken(event: Event) -> None:
        raise RuntimeError("subscriber bug")

    llm = SimulatedLLM(ttft_s=0, tokens_per_s=1e6)
    run = await generate_versions("p", settings=settings(2), llm=llm, on_event=broken)
    assert len(run.ok) == 2
    assert "subscriber bug" in caplog.text


@pytest.mark.looptime
async def test_stall_is_abandoned_and_retried_without_mixing_text() -> None:
    class StallsOnce(SimulatedLLM):
        async def stream(self, request):  # type: ignore[no-untyped-def,override]
            if request.attempt == 1:
                yield "partial "
                await asyncio.sleep(100)
            async for item in super().stream(request):
                yield item

    retry = RetryPolicy(stall_s=5.0, base_delay_s=1.0, jitter=0.0)
    run = await generate_versions(
        "p", settings=settings(1), llm=StallsOnce(ttft_s=0, reply="clean text"), retry=retry
    )
    (version,) = run.versions
    assert version.content == "clean text"
    assert version.attempt_count == 2 and version.attempts[0].error_type == "BackendTimeout"
    assert run.elapsed_s == pytest.approx(5.0 + 1.0 + 1 / 200)  # stall, backoff, 1 more token


@pytest.mark.looptime
async def test_deadline_caps_a_version() -> None:
    retry = RetryPolicy(deadline_s=3.0)
    slow = SimulatedLLM(ttft_s=10.0)
    run = await generate_versions(
        "p", settings=settings(1), llm=slow, retry=retry, raise_on_all_failed=False
    )
    (version,) = run.versions
    assert version.status == "failed" and "deadline" in (version.error or "")
    assert run.elapsed_s == pytest.approx(3.0)


async def test_reply_json_and_think_are_parsed() -> None:
    reply = '<think>plan</think>{"title": "T", "summary": "S", "full_content": "Body."}'
    run = await generate_versions(
        "p", settings=settings(1), llm=SimulatedLLM(ttft_s=0, reply=reply)
    )
    (version,) = run.versions
    assert (version.title, version.summary, version.content) == ("T", "S", "Body.")


async def test_messages_and_indices() -> None:
    llm = SimulatedLLM(ttft_s=0, tokens_per_s=1e6)
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    run = await generate_versions(messages, settings=settings(3), llm=llm, indices=[2], run_id="r1")
    assert [v.index for v in run.versions] == [2]
    assert run.run_id == "r1"
    assert llm.calls[0].messages == messages and llm.calls[0].version_index == 2


@pytest.mark.parametrize("prompt", ["", "   ", []])
async def test_empty_prompt_is_refused(prompt: object) -> None:
    with pytest.raises(ConfigError, match="prompt"):
        await generate_versions(prompt, llm=SimulatedLLM())  # type: ignore[arg-type]


async def test_no_api_configured_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    for name in ("OPENAI_API_KEY", "OPENAI_API_BASE_URL", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="OPENAI_API_KEY or OPENAI_API_BASE_URL"):
        await generate_versions("p", settings=settings(1))


async def test_logging_uses_the_seed_lines(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger="arboris_nb")
    llm = SimulatedLLM(ttft_s=0, tokens_per_s=1e6)
    await generate_versions("p", settings=settings(2), llm=llm, project="P", chapter=3)
    assert "project P chapter 3: 2 versions planned (parallel: True)" in caplog.text
    assert "all versions done in" in caplog.text
    monkeypatch.setenv("ARBORIS_LANG", "zh")
    caplog.clear()
    await generate_versions("p", settings=settings(2), llm=llm, project="P", chapter=3)
    assert "项目 P 第 3 章计划生成 2 个版本（并行模式：True）" in caplog.text
    assert not [r for r in caplog.records if r.getMessage().startswith("token")]


@pytest.mark.looptime
async def test_a_subscriber_that_wants_no_tokens_hears_everything_else() -> None:
    class Quiet:
        wants_tokens = False

        def __init__(self) -> None:
            self.kinds: list[type] = []

        def __call__(self, event: Event) -> None:
            self.kinds.append(type(event))

    quiet, loud = Quiet(), []
    await generate_versions("p", settings=settings(2), llm=model(), on_event=[quiet, loud.append])
    assert TokenDelta not in quiet.kinds
    assert [k for k in map(type, loud) if k is not TokenDelta] == quiet.kinds
    assert sum(isinstance(e, TokenDelta) for e in loud) == 20  # 10 words, 2 versions

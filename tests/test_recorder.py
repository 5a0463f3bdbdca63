"""The Recorder on the simulated model, timed exactly on looptime's fake loop clock."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pandas as pd
import pytest

from arboris_nb import (
    FixedLimit,
    RetryPolicy,
    ServerError,
    SimulatedLLM,
    WriterSettings,
    generate_versions,
)
from arboris_nb.analysis import RUNS_COLUMNS, VERSIONS_COLUMNS, Recorder
from arboris_nb.backends.base import ChatRequest, StreamItem, Usage


def model(**kwargs: object) -> SimulatedLLM:
    """1 s a version: ttft 0.1 s, then 9 more tokens 0.1 s apart."""
    defaults: dict[str, object] = {
        "ttft_s": 0.1,
        "tokens_per_s": 10.0,
        "reply": "a b c d e f g h i j",
    }
    defaults.update(kwargs)
    return SimulatedLLM(**defaults)  # type: ignore[arg-type]


def settings(n: int, c: int = 3, parallel: bool = True) -> WriterSettings:
    return WriterSettings(version_count=n, max_parallel_requests=c, parallel=parallel)


@pytest.mark.looptime
async def test_versions_frame_has_exact_timings_per_version() -> None:
    recorder = Recorder()
    run = await generate_versions("p", settings=settings(5, 2), llm=model(), on_event=recorder)
    frame = recorder.versions_frame()
    assert list(frame.columns) == list(VERSIONS_COLUMNS)
    assert len(frame) == 5
    assert set(frame["run_id"]) == {run.run_id}
    assert frame["version"].tolist() == [1, 2, 3, 4, 5]
    assert (frame["status"] == "ok").all()
    assert frame["queue_wait_s"].tolist() == pytest.approx([0, 0, 1, 1, 2])
    assert frame["start_s"].tolist() == pytest.approx([0, 0, 1, 1, 2])
    assert frame["finish_s"].tolist() == pytest.approx([1, 1, 2, 2, 3])
    assert frame["first_token_s"].tolist() == pytest.approx([0.1, 0.1, 1.1, 1.1, 2.1])
    assert frame["ttft_s"].tolist() == pytest.approx([0.1] * 5)
    assert frame["duration_s"].tolist() == pytest.approx([1.0] * 5)
    assert frame["deltas"].tolist() == [10] * 5
    assert frame["itl_s"].tolist() == pytest.approx([0.1] * 5)  # from the chunk timestamps
    assert frame["output_tokens"].tolist() == [10] * 5
    assert (frame["mode"] == "parallel").all()
    assert (frame["max_parallel_requests"] == 2).all()


@pytest.mark.looptime
async def test_runs_frame_percentiles_and_throughput() -> None:
    recorder = Recorder()
    await generate_versions("p", settings=settings(3, 3), llm=model(), on_event=recorder)
    runs = recorder.runs_frame()
    assert list(runs.columns) == list(RUNS_COLUMNS)
    row = runs.iloc[0]
    assert (row["ok"], row["failed"], row["cancelled"], row["attempts"]) == (3, 0, 0, 3)
    assert row["elapsed_s"] == pytest.approx(1.0)
    assert row["ttft_p50_s"] == pytest.approx(0.1)
    assert row["ttft_p99_s"] == pytest.approx(0.1)
    assert row["duration_p90_s"] == pytest.approx(1.0)
    assert row["requests_per_s"] == pytest.approx(3.0)
    assert row["tokens_per_s"] == pytest.approx(30.0)
    assert row["wall_over_ideal"] == pytest.approx(1.0)


@pytest.mark.looptime
async def test_measured_serial_baseline_matches_label_and_n() -> None:
    recorder = Recorder()
    llm = model()
    on = recorder.label("a")
    await generate_versions("p", settings=settings(3, parallel=False), llm=llm, on_event=on)
    await generate_versions("p", settings=settings(3, 3), llm=llm, on_event=on)
    await generate_versions("p", settings=settings(2, 2), llm=llm, on_event=on)  # other N
    await generate_versions("p", settings=settings(3, 3), llm=llm, on_event=recorder.label("b"))
    runs = recorder.runs_frame()
    assert runs["label"].tolist() == ["a", "a", "a", "b"]
    assert runs["mode"].tolist() == ["serial", "parallel", "parallel", "parallel"]
    serial, parallel, other_n, other_label = (runs.iloc[i] for i in range(4))
    assert serial["serial_source"] == "measured"
    assert serial["efficiency"] == pytest.approx(0.0)
    assert serial["max_parallel_requests"] == 1
    assert parallel["serial_source"] == "measured"
    assert parallel["serial_s"] == pytest.approx(3.0)
    assert parallel["efficiency"] == pytest.approx(200 / 3)  # the seed's 30 → 10 minutes
    assert parallel["speedup"] == pytest.approx(3.0)
    assert other_n["serial_source"] == "estimated"
    assert other_n["serial_s"] == pytest.approx(2.0)
    assert other_label["serial_source"] == "estimated"


@pytest.mark.looptime
async def test_label_tags_repeat_and_overrides_concurrency_beyond_ten() -> None:
    recorder = Recorder()
    await generate_versions(
        "p",
        settings=settings(10, 10),
        llm=model(),
        indices=range(1, 41),
        limiter=FixedLimit(20),
        on_event=recorder.label("load", repeat=2, concurrency=20),
    )
    row = recorder.runs_frame().iloc[0]
    assert (row["label"], row["repeat"], row["version_count"]) == ("load", 2, 40)
    assert row["max_parallel_requests"] == 20
    assert row["elapsed_s"] == pytest.approx(2.0)
    assert row["ideal_s"] == pytest.approx(2.0)
    assert len(recorder.versions_frame()) == 40


class FlakyFirstAttempt:
    """A backend whose first attempt streams three chunks, then breaks."""

    model = "flaky"

    @asynccontextmanager
    async def open(self) -> AsyncIterator[FlakyFirstAttempt]:
        yield self

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamItem]:
        import asyncio

        await asyncio.sleep(0.2)
        for i in range(3 if request.attempt == 1 else 5):
            if i:
                await asyncio.sleep(0.5 if request.attempt == 1 else 0.25)
            yield f"w{i} "
        if request.attempt == 1:
            raise ServerError("cut", status=500)
        yield Usage(output_tokens=5)


@pytest.mark.looptime
async def test_a_retry_starts_a_fresh_token_trace() -> None:
    recorder = Recorder()
    await generate_versions(
        "p",
        settings=settings(1, 1),
        llm=FlakyFirstAttempt(),
        retry=RetryPolicy(attempts=2, base_delay_s=1.0, jitter=0.0),
        on_event=recorder,
    )
    row = recorder.versions_frame().iloc[0]
    assert row["attempts"] == 2
    assert row["deltas"] == 5  # the kept attempt's chunks, not 3 + 5
    assert row["itl_s"] == pytest.approx(0.25)
    assert row["ttft_s"] == pytest.approx(0.2)


@pytest.mark.looptime
async def test_failed_versions_keep_their_error_type() -> None:
    recorder = Recorder()
    await generate_versions(
        "p",
        settings=settings(3, 3),
        llm=model(fail_versions={2}),
        retry=RetryPolicy(attempts=1),
        on_event=recorder,
    )
    frame = recorder.versions_frame()
    assert frame["status"].tolist() == ["ok", "failed", "ok"]
    assert frame["error_type"].tolist()[1] == "ServerError"
    run = recorder.runs_frame().iloc[0]
    assert (run["ok"], run["failed"]) == (2, 1)
    assert run["requests_per_s"] == pytest.approx(2.0)


@pytest.mark.looptime
async def test_csv_and_json_round_trip(tmp_path: Path) -> None:
    recorder = Recorder(label="io")
    await generate_versions("p", settings=settings(2, 2), llm=model(), on_event=recorder)
    runs_csv = recorder.to_csv(tmp_path / "runs.csv")
    versions_csv = recorder.to_csv(tmp_path / "versions.csv", which="versions")
    assert pd.read_csv(runs_csv)["elapsed_s"].tolist() == pytest.approx([1.0])
    assert pd.read_csv(versions_csv)["version"].tolist() == [1, 2]
    data = json.loads(recorder.to_json(tmp_path / "all.json").read_text(encoding="utf-8"))
    assert data["runs"][0]["label"] == "io"
    assert data["runs"][0]["repeat"] is None  # missing values are null, not NaN
    assert [v["status"] for v in data["versions"]] == ["ok", "ok"]


@pytest.mark.looptime
async def test_recorder_sits_beside_other_handlers_and_clears() -> None:
    recorder = Recorder()
    seen: list[str] = []
    await generate_versions(
        "p",
        settings=settings(2, 2),
        llm=model(),
        on_event=[recorder, lambda e: seen.append(type(e).__name__)],
    )
    assert len(recorder) == 1
    assert recorder.runs[0].version_count == 2
    assert seen.count("TokenDelta") == 20
    recorder.clear()
    assert len(recorder) == 0
    assert recorder.runs_frame().empty

"""Concurrency sweeps on the simulated model, exact on looptime's fake clock."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from arboris_nb import ConfigError, RetryPolicy, SimulatedLLM, sweep, sweep_sync
from arboris_nb.analysis import plan_sweep
from tests.fixtures.capped import CappedLLM


def model() -> SimulatedLLM:
    """1 s a version: ttft 0.1 s, then 9 more tokens 0.1 s apart."""
    return SimulatedLLM(ttft_s=0.1, tokens_per_s=10.0, reply="a b c d e f g h i j")


@pytest.mark.looptime
async def test_sweep_runs_each_setting_per_repeat_and_drops_the_warmup() -> None:
    llm = model()
    result = await sweep("p", versions=5, concurrency=[1, 2, 5], repeats=2, llm=llm, progress=False)
    runs = result.runs
    # 2 repeats × (1 serial + 3 limits); the warm-up's 5 requests are not in the frames.
    assert len(runs) == 8
    assert len(llm.calls) == 5 + 8 * 5
    assert runs["repeat"].tolist() == [1, 1, 1, 1, 2, 2, 2, 2]
    assert runs["mode"].tolist() == ["serial", "parallel", "parallel", "parallel"] * 2
    assert runs["max_parallel_requests"].tolist() == [1, 1, 2, 5] * 2
    assert runs["elapsed_s"].tolist() == pytest.approx([5, 5, 3, 1] * 2)
    assert (runs["serial_source"] == "measured").all()
    assert runs["efficiency"].tolist() == pytest.approx([0, 0, 40, 80] * 2)
    assert len(result.versions) == 8 * 5
    assert len(result.runs_list) == 8


@pytest.mark.looptime
async def test_table_aggregates_repeats_serial_first() -> None:
    result = await sweep(
        "p", versions=[2, 4], concurrency=[2], repeats=3, llm=model(), progress=False
    )
    table = result.table()
    assert table[["mode", "version_count", "max_parallel_requests"]].values.tolist() == [
        ["serial", 2, 1],
        ["serial", 4, 1],
        ["parallel", 2, 2],
        ["parallel", 4, 2],
    ]
    assert table["runs"].tolist() == [3, 3, 3, 3]
    assert table["elapsed_s"].tolist() == pytest.approx([2, 4, 1, 2])
    assert table["wall_over_ideal"].tolist() == pytest.approx([1, 1, 1, 1])


@pytest.mark.looptime
async def test_load_sizes_beyond_the_editor_range() -> None:
    result = await sweep(
        "p",
        versions=25,
        concurrency=[10, 25],
        repeats=1,
        include_serial=False,
        warmup=False,
        llm=model(),
        progress=False,
    )
    runs = result.runs
    assert runs["version_count"].tolist() == [25, 25]
    assert runs["max_parallel_requests"].tolist() == [10, 25]
    assert runs["elapsed_s"].tolist() == pytest.approx([3.0, 1.0])
    assert (runs["serial_source"] == "estimated").all()
    assert result.versions["version"].max() == 25


@pytest.mark.looptime
async def test_progress_bar_counts_runs(capsys: pytest.CaptureFixture[str]) -> None:
    await sweep("p", versions=2, concurrency=[2], repeats=1, llm=model(), progress=True)
    err = capsys.readouterr().err
    assert "sweep" in err
    assert "/3 " in err  # warm-up + serial + one parallel run
    assert "warm-up" in err


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"versions": 0}, "versions"),
        ({"versions": [3, -1]}, "versions"),
        ({"concurrency": []}, "concurrency"),
        ({"concurrency": [2, 0]}, "concurrency"),
        ({"repeats": 0}, "repeats"),
        ({"concurrency": [True]}, "concurrency"),
        ({"concurrency": [2, "fast"]}, "concurrency"),
    ],
)
async def test_bad_settings_name_the_argument(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{name} must be whole numbers of 1 or more"):
        await sweep("p", llm=model(), progress=False, **kwargs)  # type: ignore[arg-type]


def test_plan_interleaves_repeats() -> None:
    steps = plan_sweep(versions=[1, 2], concurrency=[3], repeats=2, include_serial=False)
    assert [(s.repeat, s.n, s.c, s.parallel) for s in steps] == [
        (1, 1, 3, True),
        (1, 2, 3, True),
        (2, 1, 3, True),
        (2, 2, 3, True),
    ]


def test_sweep_keeps_nothing_in_the_run_store() -> None:
    fast = SimulatedLLM(ttft_s=0.001, tokens_per_s=1000.0, output_tokens=3)
    result = sweep_sync("p", versions=2, concurrency=[2], repeats=1, llm=fast, progress=False)
    assert len(result.runs) == 2
    # conftest points ARBORIS_STORE at a fresh file: measurement runs are not chapters
    assert not Path(os.environ["ARBORIS_STORE"]).exists()


@pytest.mark.looptime
async def test_auto_is_one_more_point_and_the_recommendation_avoids_429s() -> None:
    """A cap of 2: C=3 is no faster and draws 429s; auto finds the cap — on its first,
    cold run; the second starts from what the first learned, and is shown apart."""
    capped = CappedLLM(cap=2, inner=model(), retry_after_s=0.5)
    capped.limit_endpoint = "capped-sweep"  # type: ignore[attr-defined]  # remembered
    result = await sweep(
        "p",
        versions=8,
        concurrency=[1, 2, 3, "auto"],
        repeats=2,
        include_serial=False,
        llm=capped,
        retry=RetryPolicy(attempts=10, base_delay_s=0.1, jitter=0.0),
        progress=False,
    )
    assert result.runs["max_parallel_requests"].tolist() == [1, 2, 3, "auto"] * 2
    assert result.runs["auto_start"].tolist() == ["", "", "", "cold", "", "", "", "warm"]
    table = result.table()
    assert table["max_parallel_requests"].tolist() == [1, 2, 3, "auto", "auto"]
    assert table["auto_start"].tolist() == ["", "", "", "cold", "warm"]
    shares = dict(zip(table["max_parallel_requests"], table["share_429"], strict=False))
    assert shares[1] == shares[2] == 0.0
    assert shares[3] > 0.05
    rec = result.recommendation()
    assert rec is not None
    assert (rec.max_parallel_requests, rec.versions, rec.share_429) == (2, 8, 0.0)
    assert rec.versions_per_s == pytest.approx(2.0)  # two at a time, 1 s each
    assert rec.auto_versions_per_s is not None and rec.auto_share_429 is not None
    assert rec.auto_share_429 > 0  # the cold run found the cap with 429s …
    assert rec.auto_warm_share_429 == 0.0  # … the warm one started at it
    assert rec.auto_warm_versions_per_s == pytest.approx(2.0)
    assert str(rec).startswith("recommended: max_parallel_requests=2 (2.00 versions/s at N=8")
    assert "; auto cold: " in str(rec) and "; auto warm: 2.00 versions/s (1.00 of it)" in str(rec)


@pytest.mark.looptime
async def test_no_recommendation_when_every_limit_draws_429s() -> None:
    result = await sweep(
        "p",
        versions=4,
        concurrency=[3],
        repeats=1,
        include_serial=False,
        llm=CappedLLM(cap=1, inner=model(), retry_after_s=0.5),
        retry=RetryPolicy(attempts=10, base_delay_s=0.1, jitter=0.0),
        progress=False,
    )
    assert result.recommendation() is None

"""The pure metric functions, with exact numbers, and the same figures off a fake-clock run."""

from __future__ import annotations

import math

import pytest

from arboris_nb import SimulatedLLM, WriterSettings, generate_versions
from arboris_nb.analysis import Recorder
from arboris_nb.analysis.metrics import (
    efficiency,
    gap,
    ideal_time,
    percentile,
    percentiles,
    speedup,
    waves,
)


def test_percentile_interpolates_between_ranks_like_numpy() -> None:
    data = [4.0, 1.0, 3.0, 2.0]  # unsorted on purpose
    assert percentile(data, 0) == 1.0
    assert percentile(data, 100) == 4.0
    assert percentile(data, 50) == pytest.approx(2.5)
    assert percentile(data, 90) == pytest.approx(3.7)  # rank 2.7: 3 + 0.7 × (4 − 3)
    assert percentile([7.0], 99) == 7.0


def test_percentile_skips_missing_values_and_refuses_bad_q() -> None:
    assert percentile([None, float("nan"), 2.0, 4.0], 50) == pytest.approx(3.0)
    assert percentile([], 50) is None
    assert percentile([None], 50) is None
    with pytest.raises(ValueError, match="percentile q must be from 0 to 100"):
        percentile([1.0], 101)


def test_percentiles_names_its_keys() -> None:
    got = percentiles([float(i) for i in range(1, 101)])
    assert list(got) == ["p50", "p90", "p99"]
    assert got["p50"] == pytest.approx(50.5)
    assert got["p90"] == pytest.approx(90.1)
    assert got["p99"] == pytest.approx(99.01)


@pytest.mark.parametrize(
    ("n", "c", "expected"), [(5, 2, 3), (3, 3, 1), (3, 10, 1), (10, 3, 4), (500, 100, 5), (1, 1, 1)]
)
def test_waves_and_ideal_time(n: int, c: int, expected: int) -> None:
    assert waves(n, c) == expected
    assert ideal_time(n, c, 1.5) == pytest.approx(expected * 1.5)


def test_ideal_time_refuses_a_zero_limit_and_passes_unknown_latency() -> None:
    with pytest.raises(ValueError, match="concurrency c must be at least 1"):
        ideal_time(3, 0, 1.0)
    with pytest.raises(ValueError, match="version count n"):
        waves(-1, 1)
    assert ideal_time(3, 1, None) is None


def test_seed_figures_thirty_minutes_to_ten() -> None:
    assert speedup(30.0, 10.0) == pytest.approx(3.0)
    assert efficiency(30.0, 10.0) == pytest.approx(200 / 3)
    assert efficiency(20.0, 10.0) == pytest.approx(50.0)
    assert efficiency(10.0, 12.0) == pytest.approx(-20.0)  # slower than serial: negative
    assert gap(10.5, 10.0) == pytest.approx(0.5)


def test_missing_inputs_give_none_not_zero() -> None:
    assert speedup(None, 1.0) is None
    assert speedup(1.0, 0.0) is None
    assert efficiency(0.0, 1.0) is None
    assert efficiency(1.0, None) is None
    assert gap(None, 1.0) is None


# ttft 0.1 s + 9 further tokens at 10 tokens/s: exactly 1 s a version on the fake clock.
def one_second_model() -> SimulatedLLM:
    return SimulatedLLM(ttft_s=0.1, tokens_per_s=10.0, reply="a b c d e f g h i j")


@pytest.mark.looptime
async def test_five_versions_at_two_take_three_seconds_which_is_ideal() -> None:
    recorder = Recorder()
    await generate_versions(
        "p",
        settings=WriterSettings(version_count=5, max_parallel_requests=2),
        llm=one_second_model(),
        on_event=recorder,
    )
    row = recorder.runs_frame().iloc[0]
    assert row["elapsed_s"] == pytest.approx(3.0)
    assert row["mean_duration_s"] == pytest.approx(1.0)
    assert row["ideal_s"] == pytest.approx(3.0)
    assert row["gap_s"] == pytest.approx(0.0, abs=1e-9)
    assert row["serial_s"] == pytest.approx(5.0)  # estimated: the sum of the durations
    assert row["efficiency"] == pytest.approx(40.0)
    assert row["speedup"] == pytest.approx(5 / 3)
    assert math.isclose(row["requests_per_s"], 5 / 3)

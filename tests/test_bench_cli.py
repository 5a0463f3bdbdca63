"""``arboris-nb bench`` as a user runs it: a real subprocess, the mock server over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from arboris_nb.cli import main
from arboris_nb.cli.bench import JSON_KEYS
from arboris_nb.mockserver import MockServer

# A fast mock: 20 ms to the first token, 10 tokens at 1000 tokens/s (about 30 ms a version).
KEY = "sk-bench-0123456789abcd"
FAST = ("--mock-ttft", "0.02", "--mock-tokens-per-s", "1000", "--mock-output-tokens", "10")
# Slow enough (L ≈ 0.1 s) that process noise on a loaded 2-core machine can't hide speedup.
STEADY = ("--mock-ttft", "0.1", "--mock-tokens-per-s", "1000", "--mock-output-tokens", "10")


def bench(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "WRITER_"))}
    base.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "arboris_nb", "bench", *args],
        capture_output=True,
        text=True,
        env=base,
        cwd=cwd,
        timeout=120,
        check=False,
    )


def test_json_lists_one_summary_per_run(tmp_path: Path) -> None:
    result = bench(
        "--mock", "--versions", "3", "--concurrency", "1,3", "--repeats", "2",
        "--serial-baseline", "--json", *STEADY, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    runs = json.loads(result.stdout)
    assert len(runs) == 2 * 3  # per repeat: serial, C=1, C=3
    assert all(list(r) == list(JSON_KEYS) for r in runs)
    assert [r["mode"] for r in runs[:3]] == ["serial", "parallel", "parallel"]
    assert [r["max_parallel_requests"] for r in runs[:3]] == [1, 1, 3]
    assert [r["repeat"] for r in runs] == [1, 1, 1, 2, 2, 2]
    assert all(r["ok"] == 3 and r["failed"] == 0 for r in runs)
    assert all(r["serial_source"] == "measured" for r in runs)
    parallel3 = [r for r in runs if r["max_parallel_requests"] == 3]
    # generous: C=3 runs the three versions at once, so it beats serial by a wide margin
    assert all(r["efficiency"] > 30 for r in parallel3)
    assert all(r["elapsed_s"] < r["ideal_s"] * 3 for r in runs)
    # 12 recorded + 3 warm-up requests reached the server
    assert "mock server: 21 requests, statuses {'200': 21}" in result.stderr


def test_table_csv_and_plot(tmp_path: Path) -> None:
    out, png = tmp_path / "results.csv", tmp_path / "bench.png"
    result = bench(
        "--mock", "--versions", "12", "--concurrency", "4,12", "--repeats", "1",
        "--out", str(out), "--plot", str(png), "--no-warmup", *FAST, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].split()[:4] == ["mode", "version_count", "max_parallel_requests", "runs"]
    assert [line.split()[:3] for line in lines[1:-1]] == [
        ["parallel", "12", "4"],
        ["parallel", "12", "12"],
    ]
    assert lines[-1].startswith("recommended: max_parallel_requests=")
    frame = pd.read_csv(out)
    assert frame["version_count"].tolist() == [12, 12]  # N beyond the editor's 10
    assert frame["max_parallel_requests"].tolist() == [4, 12]
    assert frame["ok"].tolist() == [12, 12]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_run_inherits_a_budget_an_earlier_one_spent(tmp_path: Path) -> None:
    """6 requests a minute, 6 versions a run: without the reset before every run, the
    warm-up alone would leave every measured run a minute of 429s."""
    result = bench(
        "--mock", "--mock-rpm-limit", "6", "--versions", "6", "--concurrency", "3,auto",
        "--repeats", "2", "--json", *FAST, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    runs = json.loads(result.stdout)
    assert [r["max_parallel_requests"] for r in runs] == [3, "auto", 3, "auto"]
    assert all(r["ok"] == 6 and r["share_429"] == 0.0 for r in runs)
    assert "reset before every run" in result.stderr


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (("--mock", "--concurrency", "0"), "--concurrency"),
        (("--mock", "--concurrency", "2,x"), "--concurrency"),
        (("--mock", "--versions", "-3"), "--versions"),
        (("--mock", "--repeats", "0"), "--repeats"),
        (("--mock", "--mock-ttft", "nan"), "--mock-ttft"),
        (("--mock", "--mock-output-tokens", "1.5"), "--mock-output-tokens"),
    ],
)
def test_bad_values_exit_2_naming_the_flag(
    capsys: pytest.CaptureFixture[str], args: tuple[str, ...], flag: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", *args])
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert f"argument {flag}: {flag} must be" in err
    assert out == ""


def test_without_an_api_it_says_what_to_pass(tmp_path: Path) -> None:
    result = bench("--versions", "2", cwd=tmp_path)
    assert result.returncode == 2
    assert "bench needs --mock, --base-url or OPENAI_API_KEY" in result.stderr


def test_base_url_measures_an_external_server(tmp_path: Path) -> None:
    server = MockServer(ttft_s=0.02, tokens_per_s=1000.0, output_tokens=10)
    with server as url:
        result = bench(
            "--base-url", url, "--model", "m", "--versions", "2", "--concurrency", "2",
            "--repeats", "1", "--json", cwd=tmp_path, env={"OPENAI_API_KEY": KEY},
        )  # fmt: skip
        stats = server.stats()
    assert result.returncode == 0, result.stderr
    (run,) = json.loads(result.stdout)
    assert (run["version_count"], run["ok"]) == (2, 2)
    assert stats["requests"] == 4  # warm-up and the measured run, two versions each
    assert {e["key_id"] for e in stats["log"]} == {"sk-…abcd"}
    assert KEY not in result.stdout + result.stderr


def test_auto_is_a_sweep_point_with_a_recommendation(tmp_path: Path) -> None:
    """A cap of 2: C=3 draws 429s, so 2 is recommended; auto is one more row."""
    png = tmp_path / "limits.png"
    result = bench(
        "--mock", "--mock-max-concurrent", "2", "--mock-retry-after", "0.05",
        "--versions", "6", "--concurrency", "1,2,3,auto", "--repeats", "1", "--json",
        "--plot", str(png), *FAST, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    runs = json.loads(result.stdout)
    assert [r["max_parallel_requests"] for r in runs] == [1, 2, 3, "auto"]
    assert all(r["ok"] == 6 for r in runs)
    share = {r["max_parallel_requests"]: r["share_429"] for r in runs}
    assert share[1] == share[2] == 0.0 and share[3] > 0.05
    assert "recommended: max_parallel_requests=2 (" in result.stderr
    assert "; auto: " in result.stderr
    # With auto swept, --plot draws its limit trace; the wall-time plot goes beside it.
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "limits-concurrency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mock_behaviour_flags_reach_the_server(tmp_path: Path) -> None:
    result = bench(
        "--mock", "--mock-token-budget", "200", "--mock-budget-period", "0.5",
        "--mock-window", "0.2", "--versions", "8", "--concurrency", "8", "--repeats", "1",
        "--no-warmup", *FAST, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # ~110 tokens a request against 200 per half second: the run had to pace on headers.
    assert "statuses {'200': 8}" in result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-1].startswith("recommended: max_parallel_requests=8 (")


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (("--mock", "--concurrency", "2,fast"), "--concurrency"),
        (("--mock", "--mock-window", "0"), "--mock-window"),
        (("--mock", "--mock-token-budget", "1.5"), "--mock-token-budget"),
        (("--mock", "--mock-slowdown", "-1"), "--mock-slowdown"),
    ],
)
def test_bad_behaviour_values_exit_2_naming_the_flag(
    capsys: pytest.CaptureFixture[str], args: tuple[str, ...], flag: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", *args])
    assert exit_info.value.code == 2
    assert f"argument {flag}: {flag} must be" in capsys.readouterr().err

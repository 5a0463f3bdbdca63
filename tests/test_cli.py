"""``arboris-nb generate`` as a user runs it: a real subprocess, real exit codes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from arboris_nb.results import Run

SENTINEL = "sk-SENTINEL-cli-0123456789wxyz"


def cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "WRITER_"))}
    base.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "arboris_nb", *args],
        capture_output=True,
        text=True,
        env=base,
        cwd=cwd,
        timeout=60,
        check=False,
    )


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_json_output_has_the_contract_keys(tmp_path: Path) -> None:
    result = cli(
        "generate",
        "--prompt",
        "Write chapter 3",
        "--versions",
        "3",
        "--max-parallel",
        "2",
        "--simulated",
        "--project",
        "demo",
        "--chapter",
        "3",
        "--json",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) >= {
        "run_id",
        "project",
        "chapter",
        "mode",
        "version_count",
        "max_parallel_requests",
        "elapsed_s",
        "ok",
        "failed",
        "versions",
    }
    assert (data["mode"], data["version_count"], data["max_parallel_requests"]) == (
        "parallel",
        3,
        2,
    )
    assert (data["project"], data["chapter"], data["ok"], data["failed"]) == ("demo", 3, 3, 0)
    assert set(data["versions"][0]) >= {
        "index",
        "status",
        "content",
        "error",
        "queue_wait_s",
        "ttft_s",
        "duration_s",
        "output_tokens",
        "attempts",
        "attempt_count",
    }
    assert [v["index"] for v in data["versions"]] == [1, 2, 3]
    # Versions are Version.to_dict(metrics=True): every field, so they read back as Versions.
    assert {"attempts", "cached", "key_id", "title"} <= set(data["versions"][0])
    back = Run.from_dict(data)
    assert [v.content for v in back.versions] == [v["content"] for v in data["versions"]]
    assert "v1/3 done" in result.stderr  # live progress goes to stderr


def test_no_key_no_url_falls_back_to_simulated_and_says_so(tmp_path: Path) -> None:
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Write chapter 1")
    out = tmp_path / "out"
    result = cli(
        "generate", "--prompt-file", str(prompt), "--serial", "--out", str(out), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "simulated" in result.stderr
    assert "mode=serial" in result.stdout and "elapsed" in result.stdout
    assert "efficiency" not in result.stdout  # a serial run is its own baseline
    assert sorted(p.name for p in out.iterdir()) == ["version-1.md", "version-2.md"]


def test_settings_come_from_dotenv(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "WRITER_CHAPTER_VERSION_COUNT=4\nWRITER_PARALLEL_GENERATION=false\n"
    )
    result = cli("generate", "--prompt", "x", "--simulated", "--json", cwd=tmp_path)
    data = json.loads(result.stdout)
    assert (data["version_count"], data["mode"]) == (4, "serial")


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["--versions", "0"], {}, "--versions (WRITER_CHAPTER_VERSION_COUNT) must be from 1 to 10"),
        (
            ["--versions", "x"],
            {},
            "--versions (WRITER_CHAPTER_VERSION_COUNT) must be a whole number",
        ),
        (
            ["--max-parallel", "11"],
            {},
            "--max-parallel (WRITER_MAX_PARALLEL_REQUESTS) must be from 1 to 10",
        ),
        (
            [],
            {"WRITER_CHAPTER_VERSION_COUNT": "42"},
            "WRITER_CHAPTER_VERSION_COUNT) must be from 1 to 10",
        ),
        ([], {"WRITER_PARALLEL_GENERATION": "perhaps"}, "WRITER_PARALLEL_GENERATION"),
        (["--base-url", "127.0.0.1:1"], {}, "OPENAI_API_BASE_URL) must start with http"),
        (["--api-key-env", "NO_SUCH_VAR"], {}, "NO_SUCH_VAR is not set"),
        (["--prompt-file", "/nonexistent/p.txt"], {}, "--prompt-file"),
    ],
)
def test_bad_settings_exit_2_naming_the_setting(
    args: list[str], env: dict[str, str], needle: str, tmp_path: Path
) -> None:
    prompt = [] if "--prompt-file" in args else ["--prompt", "x"]
    result = cli("generate", *prompt, *args, env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert needle in result.stderr


def test_all_failed_exits_3_with_json_and_advice_and_no_key(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    result = cli(
        "generate",
        "--prompt",
        "x",
        "--versions",
        "2",
        "--base-url",
        url,
        "--json",
        env={"OPENAI_API_KEY": SENTINEL},
        cwd=tmp_path,
    )
    assert result.returncode == 3, result.stderr
    data = json.loads(result.stdout)
    assert data["failed"] == 2 and data["ok"] == 0
    assert all(v["status"] == "failed" and v["content"] is None for v in data["versions"])
    assert all(v["attempt_count"] == 3 for v in data["versions"])  # connection errors are retried
    assert "Check the network and the API configuration" in result.stderr
    assert SENTINEL not in result.stdout + result.stderr


def test_openai_api_keys_form_a_round_robin_pool(tmp_path: Path) -> None:
    from arboris_nb.mockserver import MockServer

    keys = ["sk-pool-key-one-0001aaaa", "sk-pool-key-two-0002bbbb"]
    mock = MockServer(ttft_s=0.01, tokens_per_s=1000.0, output_tokens=5)
    with mock as base_url:
        result = cli(
            "generate",
            "--prompt",
            "x",
            "--versions",
            "4",
            "--base-url",
            base_url,
            "--json",
            env={"OPENAI_API_KEYS": ",".join(keys)},
            cwd=tmp_path,
        )
        log = mock.stats()["log"]
    assert result.returncode == 0, result.stderr
    served = {int(entry["version"]): entry["key_id"] for entry in log}
    assert served == {1: "sk-…aaaa", 2: "sk-…bbbb", 3: "sk-…aaaa", 4: "sk-…bbbb"}
    for key in keys:
        assert key not in result.stdout + result.stderr


SUBCOMMANDS = (
    ["generate", "--prompt", "p"],
    ["runs", "resume", "r1"],
    ["book", "submit", "--chapters", "1"],
    ["bench"],
)


@pytest.mark.parametrize("argv", SUBCOMMANDS, ids=lambda argv: " ".join(argv[:2]))
def test_every_subcommand_takes_the_same_api_flags(argv: list[str]) -> None:
    from arboris_nb.cli import build_parser

    parser = build_parser()
    flags = ["--model", "m", "--base-url", "http://127.0.0.1:1", "--api-key-env", "MY_KEY"]
    args = parser.parse_args([*argv, *flags])
    assert (args.model, args.base_url, args.api_key_env) == ("m", "http://127.0.0.1:1", "MY_KEY")
    offline = "--mock" if argv[0] == "bench" else "--simulated"
    with pytest.raises(SystemExit) as exited:  # offline and a base URL contradict each other
        parser.parse_args([*argv, offline, "--base-url", "http://127.0.0.1:1"])
    assert exited.value.code == 2


def test_openai_api_keys_make_a_pool_unless_a_key_variable_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from arboris_nb.cli import build_parser
    from arboris_nb.cli._api import llm_from_args

    monkeypatch.setenv("OPENAI_API_KEYS", "sk-pool-aaaa-0001,sk-pool-bbbb-0002")
    monkeypatch.setenv("MY_KEY", "sk-single-cccc-0003")
    parser = build_parser()
    pool = llm_from_args(parser.parse_args(["runs", "resume", "r1"]))
    assert isinstance(pool, list)
    assert [c.api_key for c in pool] == ["sk-pool-aaaa-0001", "sk-pool-bbbb-0002"]
    named = llm_from_args(parser.parse_args(["runs", "resume", "r1", "--api-key-env", "MY_KEY"]))
    assert not isinstance(named, list) and named.api_key == "sk-single-cccc-0003"

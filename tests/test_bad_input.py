"""Bad input gets a clear error naming the setting and its range; nothing generated is lost."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from arboris_nb import (
    AllVersionsFailed,
    ConfigError,
    LLMConfig,
    RetryPolicy,
    WriterSettings,
    generate_versions,
)
from arboris_nb.cli import main
from arboris_nb.config import load_env
from arboris_nb.mockserver import MockServer

FAST: dict[str, Any] = {"ttft_s": 0.01, "tokens_per_s": 2000.0, "output_tokens": 8}


@pytest.mark.parametrize("value", [-1, 0, 11, "abc", "2.5", None])
def test_bad_version_counts(value: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        WriterSettings(version_count=value)
    message = str(caught.value)
    assert "version_count" in message and "WRITER_CHAPTER_VERSION_COUNT" in message
    assert "1" in message and "10" in message


@pytest.mark.parametrize("value", [-2, 0, 99, "fast", "automatic"])
def test_bad_parallel_limits(value: Any) -> None:
    with pytest.raises(ConfigError, match=r"max_parallel_requests.*WRITER_MAX_PARALLEL_REQUESTS"):
        WriterSettings(max_parallel_requests=value)


def test_auto_limit_is_read_like_the_environment_reads_it() -> None:
    assert WriterSettings(max_parallel_requests="Auto ").max_parallel_requests == "auto"


def test_bad_environment_values_name_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"WRITER_CHAPTER_VERSION_COUNT.*-3"):
        WriterSettings.from_env({"WRITER_CHAPTER_VERSION_COUNT": "-3"})
    with pytest.raises(ConfigError, match="WRITER_PARALLEL_GENERATION"):
        WriterSettings.from_env({"WRITER_PARALLEL_GENERATION": "maybe"})
    with pytest.raises(ConfigError, match="OPENAI_API_BASE_URL"):
        LLMConfig.from_env({"OPENAI_API_BASE_URL": "localhost:8000"})
    with pytest.raises(ConfigError, match="retry attempts must be from 1 to 20"):
        RetryPolicy(attempts=0)


@pytest.mark.parametrize(
    "argv", [["--versions", "-1"], ["--versions", "x"], ["--max-parallel", "0"]]
)
def test_cli_refuses_bad_counts(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["generate", "--prompt", "p", "--simulated", *argv])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert argv[0] in err and "1" in err and "10" in err


@pytest.mark.parametrize("prompt", ["", "   \n", []])
async def test_empty_prompts(prompt: Any) -> None:
    with pytest.raises(ConfigError, match="prompt must not be"):
        await generate_versions(prompt, llm=LLMConfig(base_url="http://127.0.0.1:9/v1"))


def test_malformed_env_file_names_file_and_line(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text('WRITER_CHAPTER_VERSION_COUNT=3\nOPENAI_MODEL_NAME="unterminated\n')
    with pytest.raises(ConfigError) as caught:
        load_env(env)
    assert str(env) in str(caught.value) and "line 2" in str(caught.value)


def test_malformed_env_file_in_the_cli_is_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("WRITER_MAX_PARALLEL_REQUESTS=lots\n")
    monkeypatch.delenv("WRITER_MAX_PARALLEL_REQUESTS", raising=False)
    assert main(["generate", "--prompt", "p", "--simulated"]) == 2
    assert "WRITER_MAX_PARALLEL_REQUESTS" in capsys.readouterr().err


async def test_unknown_model_fails_that_version_and_keeps_the_others() -> None:
    # The mock does not know model names; a scripted 404 is what an unknown model returns.
    with MockServer(fail_requests={2: 404}, **FAST) as url:
        run = await generate_versions(
            "p",
            settings=WriterSettings(version_count=3, max_parallel_requests=1),
            llm=LLMConfig(base_url=url, model="no-such-model"),
        )
    assert [v.status for v in run.versions] == ["ok", "failed", "ok"]
    failed = run.versions[1]
    assert failed.attempt_count == 1 and "OPENAI_MODEL_NAME" in (failed.error or "")
    assert run.versions[0].content and run.versions[2].content


async def test_unreachable_base_url_fails_after_retries_with_a_clear_message() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(AllVersionsFailed) as caught:
        await generate_versions(
            "p",
            settings=WriterSettings(version_count=2),
            llm=LLMConfig(base_url=url),
            retry=RetryPolicy(base_delay_s=0.01, seed=1),
        )
    for v in caught.value.run.versions:
        assert v.error_type == "ConnectionFailed" and v.attempt_count == 3
        assert url in (v.error or "") and "OPENAI_API_BASE_URL" in (v.error or "")
    assert "OPENAI_API_BASE_URL" in str(caught.value)


async def test_a_bad_second_run_loses_nothing_of_the_first() -> None:
    with MockServer(**FAST) as url:
        first = await generate_versions(
            "p", settings=WriterSettings(version_count=2), llm=LLMConfig(base_url=url)
        )
    contents = [v.content for v in first.versions]
    with pytest.raises(ConfigError):
        await generate_versions("p", settings=WriterSettings(version_count=2), llm="not a config")  # type: ignore[arg-type]
    assert [v.content for v in first.versions] == contents
    assert all(contents)

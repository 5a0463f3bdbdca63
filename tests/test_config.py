"""Settings: precedence, aliases, ranges, .env parsing and key masking."""

from __future__ import annotations

from pathlib import Path

import pytest

from arboris_nb import ConfigError, LLMConfig, WriterSettings, mask_key
from arboris_nb.config import load_env, parse_bool

SENTINEL = "sk-SENTINEL-config-0123456789abcd"


def test_defaults() -> None:
    settings = WriterSettings.from_env({})
    assert (settings.version_count, settings.parallel, settings.max_parallel_requests) == (
        2,
        True,
        3,
    )
    assert LLMConfig.from_env({}).model == "gpt-4o-mini"


def test_environment_names_and_alias() -> None:
    env = {
        "WRITER_CHAPTER_VERSIONS": "4",
        "WRITER_PARALLEL_GENERATION": "off",
        "WRITER_MAX_PARALLEL_REQUESTS": "5",
    }
    assert WriterSettings.from_env(env) == WriterSettings(4, False, 5)
    env["WRITER_CHAPTER_VERSION_COUNT"] = "6"  # the primary name wins over the alias
    assert WriterSettings.from_env(env).version_count == 6


def test_precedence_argument_then_environment_then_dotenv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        "WRITER_CHAPTER_VERSION_COUNT=7\nWRITER_MAX_PARALLEL_REQUESTS=2\n"
        "OPENAI_BASE_URL=http://127.0.0.1:9/v1\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WRITER_CHAPTER_VERSION_COUNT", raising=False)
    monkeypatch.delenv("OPENAI_API_BASE_URL", raising=False)
    monkeypatch.setenv("WRITER_MAX_PARALLEL_REQUESTS", "9")
    settings = WriterSettings.from_env()
    assert settings.version_count == 7  # from .env
    assert settings.max_parallel_requests == 9  # environment beats .env
    assert WriterSettings.from_env(version_count=1).version_count == 1  # argument beats both
    assert LLMConfig.from_env().base_url == "http://127.0.0.1:9/v1"  # alias read from .env


@pytest.mark.parametrize("raw", ["1", "true", "YES", "On"])
def test_true_words(raw: str) -> None:
    assert parse_bool("X", raw) is True


@pytest.mark.parametrize("raw", ["0", "false", "No", "OFF"])
def test_false_words(raw: str) -> None:
    assert parse_bool("X", raw) is False


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"WRITER_CHAPTER_VERSION_COUNT": "0"}, "WRITER_CHAPTER_VERSION_COUNT.*1 to 10"),
        ({"WRITER_CHAPTER_VERSION_COUNT": "11"}, "WRITER_CHAPTER_VERSION_COUNT.*1 to 10"),
        ({"WRITER_CHAPTER_VERSION_COUNT": "-3"}, "WRITER_CHAPTER_VERSION_COUNT.*1 to 10"),
        ({"WRITER_CHAPTER_VERSIONS": "two"}, "WRITER_CHAPTER_VERSIONS.*whole number"),
        ({"WRITER_MAX_PARALLEL_REQUESTS": "12"}, "WRITER_MAX_PARALLEL_REQUESTS.*1 to 10"),
        ({"WRITER_PARALLEL_GENERATION": "maybe"}, "WRITER_PARALLEL_GENERATION.*boolean"),
    ],
)
def test_bad_environment_names_the_setting_and_range(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        WriterSettings.from_env(env)


@pytest.mark.parametrize("value", [0, 11, -1, 2.5, "x", True])
def test_bad_arguments_are_refused(value: object) -> None:
    with pytest.raises(ConfigError, match="version_count"):
        WriterSettings(version_count=value)  # type: ignore[arg-type]


def test_unknown_option_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown WriterSettings option"):
        WriterSettings.from_env({}, versions=3)


def test_malformed_dotenv_line_is_named(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("WRITER_CHAPTER_VERSION_COUNT=3\nthis is not a setting\n")
    with pytest.raises(ConfigError, match=r"line 2.*this is not a setting"):
        load_env(dotenv)


def test_base_url_without_key_is_configured() -> None:
    config = LLMConfig.from_env({"OPENAI_API_BASE_URL": "http://127.0.0.1:8000/v1"})
    assert config.configured and config.api_key is None


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"base_url": "localhost:8000"}, "OPENAI_API_BASE_URL"),
        ({"model": " "}, "OPENAI_MODEL_NAME"),
        ({"temperature": 3}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
    ],
)
def test_bad_llm_config(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        LLMConfig(**kwargs)  # type: ignore[arg-type]


def test_key_is_masked_everywhere() -> None:
    config = LLMConfig.from_env({"OPENAI_API_KEY": SENTINEL})
    assert config.api_key == SENTINEL
    for text in (repr(config), str(config), config.key_id, repr(config.with_(model="m"))):
        assert SENTINEL not in text
    assert mask_key(SENTINEL) == "sk-…abcd"
    assert mask_key(None) == "<none>"
    assert mask_key("short") == "****"
    assert mask_key("medium-key") == "…ey"

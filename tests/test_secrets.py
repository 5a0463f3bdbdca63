"""A sentinel API key must never leave the process: not in output, logs, errors, frames,
reprs or the run store. Every path runs for real against the mock on 127.0.0.1."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from arboris_nb import (
    AllVersionsFailed,
    KeyPool,
    LLMConfig,
    OpenAIBackend,
    RetryPolicy,
    Run,
    WriterSettings,
    generate_versions,
)
from arboris_nb.cli import main
from arboris_nb.mockserver import MockServer

SENTINEL = "sk-SENTINEL-7f3a9c2e5b1d8h4k6m0q"
SENTINEL_2 = "sk-SENTINEL-second-key-0000zz99"
FAST: dict[str, Any] = {"ttft_s": 0.01, "tokens_per_s": 2000.0, "output_tokens": 8}


def assert_clean(*texts: object) -> None:
    for text in texts:
        blob = text if isinstance(text, str) else repr(text)
        assert SENTINEL not in blob and SENTINEL_2 not in blob
        # Nor a long piece of it (a key cut in half is still a leak).
        assert "SENTINEL-7f3a9c2e" not in blob and "second-key-0000" not in blob


def store_bytes(store: Path) -> str:
    """Everything the SQLite store wrote (main file, WAL, journal), as text."""
    return "".join(
        p.read_bytes().decode("latin-1") for p in store.parent.glob(store.name + "*") if p.is_file()
    )


def everything_about(run: Run) -> list[object]:
    frame = run.to_frame()
    return [
        run,
        run.versions,
        [v.attempts for v in run.versions],
        frame.to_csv(),
        frame.to_string(),
        json.dumps(run.summary(), default=str),
    ]


@pytest.fixture
def store(_private_run_store: Path) -> Path:
    """The run store file conftest gives this test (runs are saved there by default)."""
    return _private_run_store


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)  # every logger: ours, openai, httpx, asyncio
    return caplog


async def test_success_path(debug_logs: pytest.LogCaptureFixture, store: Path) -> None:
    config = LLMConfig(api_key=SENTINEL, model="m")
    with MockServer(require_key=SENTINEL, **FAST) as url:
        config = config.with_(base_url=url)
        backend = OpenAIBackend(config)
        run = await generate_versions("p", settings=WriterSettings(version_count=2), llm=config)
    assert [v.status for v in run.versions] == ["ok", "ok"]  # the key did reach the server
    assert run.versions[0].key_id == "sk-…6m0q"
    assert_clean(config, backend, *everything_about(run), debug_logs.text)
    assert debug_logs.records, "DEBUG logging was captured"
    stored = store_bytes(store)
    assert run.run_id in stored  # the run was stored, so the check below means something
    assert_clean(stored)


async def test_auth_failure_path(debug_logs: pytest.LogCaptureFixture, store: Path) -> None:
    with MockServer(require_key="sk-the-right-one-00000000", **FAST) as url:
        config = LLMConfig(api_key=SENTINEL, base_url=url, model="m")
        with pytest.raises(AllVersionsFailed) as caught:
            await generate_versions("p", settings=WriterSettings(version_count=2), llm=config)
    run = caught.value.run
    assert all(v.error_type == "AuthError" for v in run.versions)
    assert_clean(str(caught.value), repr(caught.value), *everything_about(run), debug_logs.text)
    assert_clean(store_bytes(store))


async def test_pool_path(debug_logs: pytest.LogCaptureFixture) -> None:
    with MockServer(fail_requests={1: 429}, retry_after_s=0.05, **FAST) as url:
        pool = KeyPool(
            [LLMConfig(api_key=k, base_url=url, model="m") for k in (SENTINEL, SENTINEL_2)]
        )
        run = await generate_versions(
            "p", settings=WriterSettings(version_count=4), llm=pool, retry=RetryPolicy(seed=1)
        )
    assert len({v.key_id for v in run.versions}) == 2
    assert_clean(pool, pool.status(), *everything_about(run), debug_logs.text)


@pytest.mark.parametrize("good_key", [True, False])
def test_cli_output(
    good_key: bool,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    store: Path,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", SENTINEL)
    monkeypatch.delenv("OPENAI_API_KEYS", raising=False)
    required = SENTINEL if good_key else "sk-the-right-one-00000000"
    with MockServer(require_key=required, **FAST) as url:
        for extra in ([], ["--json"]):
            code = main(["generate", "--prompt", "p", "--base-url", url, "--model", "m", *extra])
            out, err = capsys.readouterr()
            assert code == (0 if good_key else 3)
            assert_clean(out, err)
            assert out.strip()
    assert_clean(store_bytes(store))


def test_reprs_of_configs() -> None:
    config = LLMConfig(api_key=SENTINEL, base_url="http://127.0.0.1:9/v1")
    env = {
        "OPENAI_API_KEYS": f"{SENTINEL},{SENTINEL_2}",
        "OPENAI_API_BASE_URL": "http://127.0.0.1:9/v1",
    }
    pool = KeyPool.from_env(env)
    assert_clean(config, str(config), config.key_id, OpenAIBackend(config), pool, pool.labels)

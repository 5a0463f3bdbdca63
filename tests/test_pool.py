"""KeyPool over real HTTP: mock servers on 127.0.0.1 log the masked key of every request."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from arboris_nb import (
    AllVersionsFailed,
    ConfigError,
    KeyPool,
    LLMConfig,
    RetryPolicy,
    WriterSettings,
    generate_versions,
    mask_key,
)
from arboris_nb.backends import pool as pool_module
from arboris_nb.config import load_api_keys
from arboris_nb.engine import resolve_backend
from arboris_nb.mockserver import MockServer

KEY_A = "sk-pool-aaaaaaaaaaaaaaaa1111"
KEY_B = "sk-pool-bbbbbbbbbbbbbbbb2222"
FAST = {"ttft_s": 0.01, "tokens_per_s": 2000.0, "output_tokens": 8}


@pytest.fixture
def mock() -> Iterator[MockServer]:
    server = MockServer(**FAST)  # type: ignore[arg-type]
    with server:
        yield server


def configs(server: MockServer, *keys: str) -> list[LLMConfig]:
    return [LLMConfig(api_key=k, base_url=server.base_url, model="mock-model") for k in keys]


def served_by(server: MockServer) -> list[tuple[str, str, str | None, int]]:
    """(version, attempt, key_id, status) per request, in arrival order."""
    log: list[dict[str, Any]] = server.stats()["log"]
    return [(e["version"], e["attempt"], e["key_id"], e["status"]) for e in log]


async def run(llm: Any, n: int, c: int, **kwargs: Any) -> Any:
    settings = WriterSettings(version_count=n, max_parallel_requests=c)
    return await generate_versions("p", settings=settings, llm=llm, **kwargs)


async def test_round_robin_by_version_and_key_recorded(
    mock: MockServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool_module, "_warned_shared_account", False)
    with caplog.at_level(logging.WARNING, logger="arboris_nb"):
        pool = KeyPool(configs(mock, KEY_A, KEY_B))
        KeyPool(configs(mock, KEY_A, KEY_B))
    warnings = [r for r in caplog.records if "share that account's rate limit" in r.message]
    assert len(warnings) == 1  # once per process
    result = await run(pool, 4, 4)
    a, b = mask_key(KEY_A), mask_key(KEY_B)
    assert [v.key_id for v in result.versions] == [a, b, a, b]
    by_version = {(ver, key) for ver, _, key, _ in served_by(mock)}
    assert by_version == {("1", a), ("2", b), ("3", a), ("4", b)}
    assert list(result.to_frame()["key_id"]) == [a, b, a, b]
    assert [s["served"] for s in pool.status()] == [2, 2]


async def test_a_rate_limited_key_cools_down_and_is_skipped() -> None:
    # Request 1 (version 1 on key A) gets 429 with Retry-After 0.3 s.
    with MockServer(fail_requests={1: 429}, retry_after_s=0.3, **FAST) as url:  # type: ignore[arg-type]
        server_cfg = [LLMConfig(api_key=k, base_url=url, model="m") for k in (KEY_A, KEY_B)]
        pool = KeyPool(server_cfg)
        result = await run(pool, 3, 1, retry=RetryPolicy(seed=1))
        log = served_by_url(url)
    a, b = mask_key(KEY_A), mask_key(KEY_B)
    assert log[0] == ("1", "1", a, 429)
    # Version 3 would go to key A, but A is cooling down: key B takes it.
    assert ("3", "1", b, 200) in log
    assert all(key == b for ver, _, key, _ in log[1:] if ver != "1")
    assert [v.status for v in result.versions] == ["ok"] * 3
    assert result.versions[0].attempt_count == 2


def served_by_url(url: str) -> list[tuple[str, str, str | None, int]]:
    import json
    import urllib.request

    with urllib.request.urlopen(url.removesuffix("/v1") + "/stats", timeout=10) as resp:
        log = json.load(resp)["log"]
    return [(e["version"], e["attempt"], e["key_id"], e["status"]) for e in log]


async def test_a_refused_key_fails_over_at_once_and_stays_benched() -> None:
    with MockServer(require_key=KEY_B, **FAST) as url:  # type: ignore[arg-type]
        pool = KeyPool([LLMConfig(api_key=k, base_url=url, model="m") for k in (KEY_A, KEY_B)])
        result = await run(pool, 4, 2)
        log = served_by_url(url)
    a, b = mask_key(KEY_A), mask_key(KEY_B)
    assert [v.status for v in result.versions] == ["ok"] * 4
    assert [v.attempt_count for v in result.versions] == [1] * 4  # failover is not a retry
    assert {v.key_id for v in result.versions} == {b}
    assert [status for _, _, key, status in log if key == a] == [401]
    assert pool.status()[0]["auth_failed"] is True
    assert pool.status()[0]["cooling_s"] > 500


async def test_every_key_refused_is_one_clear_error(mock: MockServer) -> None:
    with MockServer(require_key="sk-the-right-one-000000", **FAST) as url:  # type: ignore[arg-type]
        pool = KeyPool([LLMConfig(api_key=k, base_url=url, model="m") for k in (KEY_A, KEY_B)])
        with pytest.raises(AllVersionsFailed) as caught:
            await run(pool, 2, 2)
    message = str(caught.value)
    assert "OPENAI_API_KEYS" in message or "OPENAI_API_KEY" in message
    assert KEY_A not in message and KEY_B not in message
    versions = caught.value.run.versions
    assert all(v.error_type == "AuthError" and v.attempt_count == 1 for v in versions)


async def test_endpoint_pool_least_busy_spreads_over_servers() -> None:
    with MockServer(**FAST) as url1, MockServer(**FAST) as url2:  # type: ignore[arg-type]
        members = [LLMConfig(base_url=u, model="m") for u in (url1, url2)]
        pool = KeyPool(members, strategy="least_busy")
        result = await run(pool, 6, 6)
        counts = [len(served_by_url(u)) for u in (url1, url2)]
    assert counts == [3, 3]
    hosts = {u.split("//")[1].split("/")[0] for u in (url1, url2)}
    assert {v.key_id for v in result.versions} == hosts


def test_keys_from_env_and_clear_errors() -> None:
    env = {
        "OPENAI_API_KEYS": f" {KEY_A} , {KEY_B} ",
        "OPENAI_API_BASE_URL": "http://127.0.0.1:9/v1",
    }
    assert load_api_keys(env) == [KEY_A, KEY_B]
    pool = KeyPool.from_env(env)
    assert pool.labels == [mask_key(KEY_A), mask_key(KEY_B)]
    assert KEY_A not in repr(pool) and KEY_B not in repr(pool)
    assert load_api_keys({"OPENAI_API_KEY": KEY_A}) == [KEY_A]
    assert load_api_keys({}) == []
    with pytest.raises(ConfigError, match=r"OPENAI_API_KEYS: entry 2 of 3 is empty"):
        load_api_keys({"OPENAI_API_KEYS": f"{KEY_A},,{KEY_B}"})
    with pytest.raises(ConfigError, match=r"OPENAI_API_KEYS: entry 2 repeats entry 1") as err:
        load_api_keys({"OPENAI_API_KEYS": f"{KEY_A},{KEY_A}"})
    assert KEY_A not in str(err.value)
    with pytest.raises(ConfigError, match="strategy"):
        KeyPool(configs_for("http://127.0.0.1:9/v1"), strategy="random")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="at least one"):
        KeyPool([])


def configs_for(url: str) -> list[LLMConfig]:
    return [LLMConfig(api_key=KEY_A, base_url=url)]


def test_resolve_backend_builds_pools(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("OPENAI_API_KEYS", f"{KEY_A},{KEY_B}")
    monkeypatch.setenv("OPENAI_API_BASE_URL", "http://127.0.0.1:9/v1")
    assert isinstance(resolve_backend(None), KeyPool)
    assert isinstance(resolve_backend(configs_for("http://127.0.0.1:9/v1") * 1), KeyPool)

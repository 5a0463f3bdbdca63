"""The opt-in reply cache: keys, honesty about hits, bypass, clear, SQLite and Redis."""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path

import pytest

from arboris_nb import LLMConfig, SimulatedLLM, WriterSettings, generate_versions
from arboris_nb.cache import (
    CachedReply,
    RedisCache,
    SQLiteCache,
    cache_key,
    open_cache,
)
from arboris_nb.errors import ConfigError
from arboris_nb.mockserver import MockServer
from arboris_nb.results import Run
from arboris_nb.runs import load_run

BASE = {
    "model": "m",
    "messages": [{"role": "user", "content": "p"}],
    "temperature": 0.75,
    "max_tokens": None,
    "version_index": 1,
}


async def twice(cache: object, n: int = 3, **llm_options: object) -> tuple[Run, Run, SimulatedLLM]:
    """Generate the same request twice with one SimulatedLLM; return both runs and it."""
    llm = SimulatedLLM(**llm_options)  # type: ignore[arg-type]
    settings = WriterSettings(n)
    first = await generate_versions("chapter", settings=settings, llm=llm, cache=cache)
    second = await generate_versions("chapter", settings=settings, llm=llm, cache=cache)
    return first, second, llm


def assert_served_from_cache(first: Run, second: Run) -> None:
    for fresh, cached in zip(first.versions, second.versions, strict=True):
        assert cached.status == "ok"
        assert (cached.content, cached.title, cached.summary) == (
            fresh.content,
            fresh.title,
            fresh.summary,
        )
        assert cached.output_tokens == fresh.output_tokens
        # Marked honestly: no request, no attempt, no timings that could pass as one.
        assert cached.cached and cached.key_id is None
        assert cached.attempt_count == 0
        assert cached.attempts == []
        assert cached.duration_s is None
        assert cached.ttft_s is None
        assert cached.queue_wait_s is None


def test_key_covers_model_messages_parameters_and_version_index() -> None:
    key = cache_key(**BASE)  # type: ignore[arg-type]
    assert key == cache_key(**BASE)  # type: ignore[arg-type]
    changes = {
        "model": "other",
        "messages": [{"role": "user", "content": "q"}],
        "temperature": 0.2,
        "max_tokens": 100,
        "version_index": 2,
    }
    for field, value in changes.items():
        assert cache_key(**{**BASE, field: value}) != key, field  # type: ignore[arg-type]
    assert cache_key(**BASE, endpoint="http://127.0.0.1:1/v1") != key  # type: ignore[arg-type]


@pytest.mark.looptime
async def test_second_identical_run_is_served_from_the_cache(tmp_path: Path) -> None:
    cache = SQLiteCache(tmp_path / "cache.sqlite3")
    first, second, llm = await twice(cache)
    assert len(llm.calls) == 3  # only the first run asked the model
    assert len(cache) == 3  # N candidates are N entries, not one
    assert len({v.content for v in second.versions}) == 3
    assert_served_from_cache(first, second)
    # A cached version adds nothing to the timing metrics.
    assert second.avg_per_version_s is None
    assert second.summary()["attempt_count"] == 0
    cache.close()


@pytest.mark.looptime
async def test_cached_versions_are_stored_as_cached(tmp_path: Path) -> None:
    store = tmp_path / "runs.sqlite3"
    llm = SimulatedLLM()
    for _ in range(2):
        run = await generate_versions(
            "p", settings=WriterSettings(2), llm=llm, store=store, cache=f"sqlite:///{store}"
        )
    conn = sqlite3.connect(store)
    flags = conn.execute("SELECT cached, key_id FROM versions WHERE run_id = ?", (run.run_id,))
    assert sorted(flags) == [(1, None), (1, None)]
    conn.close()
    assert [v.cached for v in load_run(run.run_id, store=store).versions] == [True] * 2


@pytest.mark.looptime
async def test_only_ok_versions_are_cached(tmp_path: Path) -> None:
    cache = SQLiteCache(tmp_path / "cache.sqlite3")
    _, second, llm = await twice(cache, fail_versions=[2])
    assert len(cache) == 2
    assert [v.status for v in second.versions] == ["ok", "failed", "ok"]
    assert [v.cached for v in second.versions] == [True, False, True]
    assert [v.key_id for v in second.versions] == [None, "simulated", None]
    # Version 2 was asked for again (3 attempts in each run); 1 and 3 only once.
    assert sorted(c.version_index for c in llm.calls) == [1, 2, 2, 2, 2, 2, 2, 3]
    cache.close()


@pytest.mark.looptime
async def test_refresh_asks_again_and_replaces_the_entry(tmp_path: Path) -> None:
    cache = SQLiteCache(tmp_path / "cache.sqlite3")
    await generate_versions("p", settings=WriterSettings(1), llm=SimulatedLLM(), cache=cache)
    new = SimulatedLLM(reply="A different answer.")
    run = await generate_versions(
        "p", settings=WriterSettings(1), llm=new, cache=cache, refresh=True
    )
    assert len(new.calls) == 1
    assert run.versions[0].key_id == "simulated"
    again = await generate_versions(
        "p", settings=WriterSettings(1), llm=SimulatedLLM(), cache=cache
    )
    assert again.versions[0].content == "A different answer."
    cache.close()


@pytest.mark.looptime
async def test_cache_false_bypasses_even_when_the_env_asks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ARBORIS_CACHE", "1")
    _, second, llm = await twice(False, n=2)
    assert len(llm.calls) == 4
    assert all(v.key_id == "simulated" for v in second.versions)


@pytest.mark.looptime
async def test_cache_is_off_by_default_and_on_with_arboris_cache(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, _, llm = await twice(None, n=2)
    assert len(llm.calls) == 4  # off by default
    monkeypatch.setenv("ARBORIS_CACHE", "1")
    first, second, llm = await twice(None, n=2)
    assert len(llm.calls) == 2
    assert_served_from_cache(first, second)


def test_clear_empties_the_cache(tmp_path: Path) -> None:
    cache = SQLiteCache(tmp_path / "cache.sqlite3")
    for i in range(3):
        cache.put(f"k{i}", CachedReply(content=f"text {i}", output_tokens=2))
    assert cache.get("k1") == CachedReply(content="text 1", output_tokens=2)
    assert cache.clear() == 3
    assert cache.get("k1") is None
    assert len(cache) == 0
    cache.close()


def test_bad_cache_settings_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="unsupported URL"):
        open_cache("memcached://127.0.0.1:11211")
    with pytest.raises(ConfigError, match="cache must be"):
        open_cache(3.5)  # type: ignore[arg-type]
    monkeypatch.setenv("ARBORIS_STORE", "off")
    with pytest.raises(ConfigError, match="ARBORIS_CACHE_URL"):
        open_cache(True)
    monkeypatch.setenv("ARBORIS_CACHE", "maybe")
    with pytest.raises(ConfigError, match="ARBORIS_CACHE"):
        open_cache(None)


async def test_cache_key_separates_endpoints_over_http() -> None:
    """The same model name on two servers is two different caches' worth of answers."""
    with MockServer(ttft_s=0.01, tokens_per_s=500.0, output_tokens=6, seed=1) as url_a:
        a = await generate_versions(
            "p",
            settings=WriterSettings(1),
            llm=LLMConfig(base_url=url_a, model="mock-model"),
            cache=True,
        )
        a_again = await generate_versions(
            "p",
            settings=WriterSettings(1),
            llm=LLMConfig(base_url=url_a, model="mock-model"),
            cache=True,
        )
    with MockServer(ttft_s=0.01, tokens_per_s=500.0, output_tokens=6, seed=2) as url_b:
        b = await generate_versions(
            "p",
            settings=WriterSettings(1),
            llm=LLMConfig(base_url=url_b, model="mock-model"),
            cache=True,
        )
    assert a_again.versions[0].cached
    assert a_again.versions[0].content == a.versions[0].content
    assert not b.versions[0].cached


# -- Redis --------------------------------------------------------------------------------


@pytest.mark.looptime
async def test_redis_cache_serves_the_second_run(redis_url: str) -> None:
    cache = RedisCache(redis_url, prefix="test:")
    first, second, llm = await twice(cache)
    assert len(llm.calls) == 3
    assert_served_from_cache(first, second)
    assert sorted(k.decode()[:5] for k in cache.client.keys("*")) == ["test:"] * 3
    assert cache.clear() == 3
    assert cache.client.keys("*") == []
    cache.close()


@pytest.mark.looptime
async def test_arboris_cache_url_selects_redis(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ARBORIS_CACHE_URL", redis_url)
    cache, owned = open_cache(None)
    assert isinstance(cache, RedisCache)
    assert owned
    first, second, llm = await twice(None, n=2)
    assert len(llm.calls) == 2
    assert_served_from_cache(first, second)
    assert cache.clear() == 2
    cache.close()


def test_redis_clear_leaves_other_keys(redis_url: str) -> None:
    cache = RedisCache(redis_url, prefix="mine:")
    cache.client.set("theirs:1", "keep")
    cache.put("a", CachedReply(content="x"))
    assert cache.clear() == 1
    assert cache.client.get("theirs:1") == b"keep"
    cache.close()


def test_redis_repr_hides_the_password() -> None:
    cache = RedisCache("redis://user:s3cret-pass@127.0.0.1:1/0")
    assert "s3cret" not in repr(cache)
    cache.close()


@pytest.mark.looptime
async def test_an_unreachable_cache_is_a_miss_not_a_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cache = RedisCache(f"redis://127.0.0.1:{port}/0", timeout_s=0.5)
    run = await generate_versions("p", settings=WriterSettings(2), llm=SimulatedLLM(), cache=cache)
    assert [v.status for v in run.versions] == ["ok", "ok"]
    assert "look-up failed" in caplog.text
    assert "could not store" in caplog.text
    cache.close()

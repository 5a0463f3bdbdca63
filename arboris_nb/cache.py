"""An opt-in reply cache: the same request for the same version index is answered once.

The key is a SHA-256 of the model, the endpoint (base URL, or the backend's class for
offline backends), the messages, temperature, max_tokens **and the version index** — so
N candidates of one prompt are N cache entries and never collapse into one answer.
Only ``ok`` versions are stored.

Why an engine check and not a ``CachedBackend`` wrapper: a wrapper would replay the reply
as a stream, and the engine would then count it as a fresh request — one attempt, a
near-zero duration in the averages, a concurrency slot held, and a fast "success" fed to
the adaptive limiter. Checking before the request keeps the engine honest with a few
lines: a hit becomes an ``ok`` version with ``cached=True``, ``attempts == 0``, no key_id,
no attempt log and no start/first-token time (so no duration, ttft or queue wait), which
the timing metrics already leave out.

Backends: :class:`SQLiteCache` (a table in the run store's file) and :class:`RedisCache`
(redis-py). Look-ups run on the event loop thread, once per version, not per token; both
are local and sub-millisecond, and a cache that errors is logged and treated as a miss,
never as a failed version.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .backends.base import Message
from .config import cache_setting, store_setting
from .errors import ConfigError
from .events import Event, VersionFinished
from .results import Version
from .store import RunStore

__all__ = [
    "BoundCache",
    "CacheSpec",
    "CachedReply",
    "RedisCache",
    "ReplyCache",
    "SQLiteCache",
    "bind_cache",
    "cache_key",
    "open_cache",
]

log = logging.getLogger("arboris_nb")


@dataclass(frozen=True)
class CachedReply:
    """What a cache hit restores: the parsed reply and its token count."""

    content: str
    title: str | None = None
    summary: str | None = None
    output_tokens: int = 0
    model: str | None = None
    created_at: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> CachedReply:
        return cls(**json.loads(text))


def cache_key(
    *,
    model: str | None,
    messages: Sequence[Message],
    temperature: float | None,
    max_tokens: int | None,
    version_index: int,
    endpoint: str | None = None,
) -> str:
    """The hex SHA-256 of the request's canonical JSON (sorted keys, no whitespace)."""
    payload = {
        "model": model,
        "endpoint": endpoint,
        "messages": list(messages),
        "temperature": temperature,
        "max_tokens": max_tokens,
        "version": version_index,
    }
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@runtime_checkable
class ReplyCache(Protocol):
    """Where replies are kept. ``get`` returns None on a miss."""

    def get(self, key: str) -> CachedReply | None: ...

    def put(self, key: str, reply: CachedReply) -> None: ...

    def clear(self) -> int:
        """Remove every entry; returns how many were removed."""
        ...

    def close(self) -> None: ...


class SQLiteCache:
    """The ``cache`` table of a run store file (the default cache location)."""

    def __init__(self, store: RunStore | str | os.PathLike[str]) -> None:
        self._owned = not isinstance(store, RunStore)
        self.store = store if isinstance(store, RunStore) else RunStore(store)

    def __repr__(self) -> str:
        return f"SQLiteCache({str(self.store.path)!r})"

    def get(self, key: str) -> CachedReply | None:
        row = (
            self.store.connection()
            .execute("SELECT reply FROM cache WHERE key = ?", (key,))
            .fetchone()
        )
        return None if row is None else CachedReply.from_json(row[0])

    def put(self, key: str, reply: CachedReply) -> None:
        with self.store.transaction() as tx:
            tx.execute(
                "INSERT OR REPLACE INTO cache (key, reply, model, created_at) VALUES (?, ?, ?, ?)",
                (key, reply.to_json(), reply.model, reply.created_at),
            )

    def clear(self) -> int:
        with self.store.transaction() as tx:
            return int(tx.execute("DELETE FROM cache").rowcount)

    def __len__(self) -> int:
        return int(self.store.connection().execute("SELECT COUNT(*) FROM cache").fetchone()[0])

    def close(self) -> None:
        if self._owned:
            self.store.close()


class RedisCache:
    """Replies in Redis under ``prefix + key``; ``ttl_s`` expires them (None = never)."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "arboris_nb:cache:",
        ttl_s: float | None = None,
        timeout_s: float = 2.0,
    ) -> None:
        try:
            import redis
        except ImportError:  # pragma: no cover - redis is in the [celery] and [dev] extras
            raise ConfigError(
                "ARBORIS_CACHE_URL is a redis:// URL but redis-py is not installed "
                "(pip install 'arboris-nb[celery]')"
            ) from None
        self.prefix = prefix
        self.ttl_s = ttl_s
        # Short socket timeouts: look-ups run on the event loop, so a dead server must
        # cost at most a couple of seconds, after which the look-up counts as a miss.
        self.client = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self._display = _without_password(url)

    def __repr__(self) -> str:
        return f"RedisCache({self._display!r}, prefix={self.prefix!r})"

    def get(self, key: str) -> CachedReply | None:
        raw = self.client.get(self.prefix + key)
        return None if raw is None else CachedReply.from_json(raw)

    def put(self, key: str, reply: CachedReply) -> None:
        expire = None if self.ttl_s is None else max(1, round(self.ttl_s))
        self.client.set(self.prefix + key, reply.to_json(), ex=expire)

    def clear(self) -> int:
        removed = 0
        batch: list[Any] = []
        for name in self.client.scan_iter(match=self.prefix + "*", count=500):
            batch.append(name)
            if len(batch) >= 500:
                removed += int(self.client.delete(*batch))
                batch = []
        if batch:
            removed += int(self.client.delete(*batch))
        return removed

    def close(self) -> None:
        self.client.close()


def _without_password(url: str) -> str:
    """A Redis URL fit for a repr: any ``user:password@`` part is dropped."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep else url


#: What ``generate_versions(cache=…)`` accepts: None = the environment (off unless
#: ``ARBORIS_CACHE``/``ARBORIS_CACHE_URL``), False = off, True = on (env URL or the run
#: store's file), a URL (``redis://…``, ``sqlite:///path``), a path, or a ReplyCache.
CacheSpec = ReplyCache | str | os.PathLike[str] | bool | None


def open_cache(spec: CacheSpec = None) -> tuple[ReplyCache | None, bool]:
    """Resolve a ``cache=`` value to ``(cache, owned)``; ``owned`` means close it after."""
    if spec is None:
        spec = cache_setting()  # off unless ARBORIS_CACHE / ARBORIS_CACHE_URL
    elif spec is True:
        url = cache_setting()
        spec = url if isinstance(url, str) else True
    if spec is False:
        return None, False
    if spec is True:
        path, _ = store_setting()
        if path is None:
            raise ConfigError(
                "the reply cache needs a place: set ARBORIS_CACHE_URL (redis://… or a path) "
                "or leave ARBORIS_STORE on"
            )
        return SQLiteCache(path), True
    if isinstance(spec, str | os.PathLike):
        return _cache_from_location(os.fspath(spec)), True
    if isinstance(spec, ReplyCache):
        return spec, False
    raise ConfigError(
        "cache must be a ReplyCache, a URL or path, True/False or None (ARBORIS_CACHE_URL), "
        f"got {type(spec).__name__}"
    )


def _cache_from_location(location: str) -> ReplyCache:
    if location.startswith(("redis://", "rediss://", "unix://")):
        return RedisCache(location)
    if location.startswith("sqlite:///"):
        return SQLiteCache(Path(location.removeprefix("sqlite:///")))
    if "://" in location:
        raise ConfigError(
            f"ARBORIS_CACHE_URL / cache: unsupported URL {_without_password(location)!r} "
            "(use redis://…, rediss://…, sqlite:///path or a file path)"
        )
    return SQLiteCache(Path(location))


class BoundCache:
    """The reply cache bound to one run's request: the engine's view of it.

    ``lookup(index)`` answers before a version's request (None = ask the model);
    as an ``on_event`` subscriber it stores each fresh ``ok`` version.
    """

    def __init__(
        self,
        cache: ReplyCache,
        *,
        model: str | None,
        endpoint: str | None,
        messages: Sequence[Message],
        temperature: float | None,
        max_tokens: int | None,
        refresh: bool = False,
        owns_cache: bool = False,
    ) -> None:
        self.cache = cache
        self.model = model
        self.endpoint = endpoint
        self.messages = list(messages)
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.refresh = refresh
        self.owns_cache = owns_cache
        self.hits = 0

    def key(self, index: int) -> str:
        return cache_key(
            model=self.model,
            endpoint=self.endpoint,
            messages=self.messages,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            version_index=index,
        )

    def lookup(self, index: int) -> CachedReply | None:
        """The stored reply for version ``index``; None on a miss, refresh or error."""
        if self.refresh:
            return None
        try:
            reply = self.cache.get(self.key(index))
        except Exception as exc:  # a broken cache must never fail a version
            log.warning("reply cache %r: look-up failed (%s); asking the model", self.cache, exc)
            return None
        if reply is not None:
            self.hits += 1
        return reply

    def store(self, version: Version) -> None:
        reply = CachedReply(
            content=version.content or "",
            title=version.title,
            summary=version.summary,
            output_tokens=version.output_tokens,
            model=self.model,
            created_at=time.time(),
        )
        try:
            self.cache.put(self.key(version.index), reply)
        except Exception as exc:
            log.warning(
                "reply cache %r: could not store version %d (%s)", self.cache, version.index, exc
            )

    wants_tokens = False  # only VersionFinished matters; TokenDelta is not delivered

    def __call__(self, event: Event) -> None:
        if isinstance(event, VersionFinished):
            version = event.version
            if version.ok and not version.cached and version.content:
                self.store(version)

    def close(self) -> None:
        """Close the cache if it was opened for this run (the engine calls this at the end)."""
        if self.owns_cache:
            self.cache.close()


def _endpoint(backend: object) -> str:
    """Where requests go: the configured base URL, else the backend's class name."""
    config = getattr(backend, "config", None)
    base_url = getattr(config, "base_url", None)
    return str(base_url) if base_url else type(backend).__name__


def bind_cache(
    spec: CacheSpec,
    *,
    backend: object,
    messages: Sequence[Message],
    temperature: float | None,
    max_tokens: int | None,
    refresh: bool = False,
) -> BoundCache | None:
    """The engine's hook for ``generate_versions(cache=spec, refresh=…)``; None = no cache."""
    cache, owned = open_cache(spec)
    if cache is None:
        return None
    return BoundCache(
        cache,
        model=getattr(backend, "model", None),
        endpoint=_endpoint(backend),
        messages=messages,
        temperature=temperature,
        max_tokens=max_tokens,
        refresh=refresh,
        owns_cache=owned,
    )

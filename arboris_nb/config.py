"""Settings, read in one place: explicit argument > environment > ``.env`` > default.

``WriterSettings`` keeps the original Arboris-Novel names (``WRITER_*``), ``LLMConfig``
the OpenAI ones. Every range is enforced here, and every error names the setting, its
environment variable and the allowed range. The API key is masked in every repr.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from dotenv.parser import parse_stream

from .errors import ConfigError
from .pricing import PRICE_FIELDS, Price, check_price

__all__ = [
    "DEFAULT_MODEL",
    "EXTRA_RANGE",
    "FANOUTS",
    "Fanout",
    "LLMConfig",
    "WriterSettings",
    "cache_setting",
    "default_store_path",
    "load_api_keys",
    "load_env",
    "mask_key",
    "parse_bool",
    "parse_count",
    "parse_extra",
    "parse_fanout",
    "parse_limit",
    "store_setting",
]

DEFAULT_MODEL = "gpt-4o-mini"
COUNT_RANGE = (1, 10)
#: ``extra_versions``: versions started beyond the ones kept (keep the first N of N+k).
EXTRA_RANGE = (0, 5)
#: How N versions are asked for: N separate requests, or one request with ``n = N``.
Fanout = Literal["requests", "n"]
FANOUTS: tuple[Fanout, ...] = ("requests", "n")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def mask_key(key: str | None) -> str:
    """A key's printable id: ``sk-…a1b2``. Never more than the last four characters."""
    if not key:
        return "<none>"
    if len(key) < 8:  # too short to show any of it safely
        return "****"
    if len(key) < 12:
        return "…" + key[-2:]
    prefix = key.split("-", 1)[0] + "-" if "-" in key[:4] else ""
    return f"{prefix}…{key[-4:]}"


def load_env(dotenv_path: str | os.PathLike[str] | None = ".env") -> dict[str, str]:
    """The process environment laid over the ``.env`` file (environment wins).

    A malformed ``.env`` line is an error that names the file and the line, rather than
    a silently ignored setting.
    """
    values: dict[str, str] = {}
    path = Path(dotenv_path) if dotenv_path else None
    if path is not None and path.is_file():
        with path.open(encoding="utf-8") as stream:
            for binding in parse_stream(stream):
                if binding.error:
                    raise ConfigError(
                        f"{path} line {binding.original.line}: cannot parse "
                        f"{binding.original.string.strip()!r} (expected NAME=value)"
                    )
                if binding.key is not None and binding.value is not None:
                    values[binding.key] = binding.value
    values.update(os.environ)
    return values


def parse_bool(name: str, raw: str) -> bool:
    """Parse true/false/1/0/yes/no/on/off (any case) or fail naming the setting."""
    word = raw.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean (use true/false, 1/0, yes/no, on/off)")


def parse_count(name: str, env: str, value: object, bounds: tuple[int, int] = COUNT_RANGE) -> int:
    """A whole number in ``bounds`` (1–10 by default), or a ConfigError naming ``name``
    (``env``) and the range."""
    low, high = bounds
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            value = int(str(value).strip())
        except ValueError:
            raise ConfigError(
                f"{name} ({env}) must be a whole number from {low} to {high}, got {value!r}"
            ) from None
    if not low <= value <= high:
        raise ConfigError(f"{name} ({env}) must be from {low} to {high}, got {value}")
    return value


def parse_extra(name: str, env: str, value: object) -> int:
    """``extra_versions``: a 0–5 count."""
    return parse_count(name, env, value, EXTRA_RANGE)


def parse_limit(name: str, env: str, value: object) -> int | Literal["auto"]:
    """``max_parallel_requests``: a 1–10 count or ``"auto"`` (adaptive)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        return parse_count(name, env, value)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (or auto)") from None


def parse_fanout(name: str, env: str, value: object) -> Fanout:
    """``fanout``: ``"requests"`` or ``"n"``, or a ConfigError naming the setting."""
    word = value.strip().lower() if isinstance(value, str) else value
    if word not in FANOUTS:
        raise ConfigError(f"{name} ({env}) must be 'requests' or 'n', got {value!r}")
    return "n" if word == "n" else "requests"


def _first(env: Mapping[str, str], *names: str) -> tuple[str, str] | None:
    for name in names:
        raw = env.get(name)
        if raw is not None and raw.strip() != "":
            return name, raw
    return None


@dataclass(frozen=True)
class WriterSettings:
    """How many versions to write and how many requests may run at once.

    ``max_parallel_requests`` is a whole number 1–10, or ``"auto"`` for adaptive
    concurrency (see :mod:`arboris_nb.limits`). ``fanout``: ``"requests"`` sends one
    request per version; ``"n"`` sends one request asking for ``n = N`` choices, so the
    prompt is billed once (servers that refuse ``n > 1`` get separate requests).
    ``extra_versions`` (0–5) starts that many versions more and keeps the first
    ``version_count`` to finish: the rest are cancelled (reason ``surplus``), so one slow
    request no longer holds the run.
    """

    version_count: int = 2
    parallel: bool = True
    max_parallel_requests: int | Literal["auto"] = 3
    fanout: Fanout = "requests"
    extra_versions: int = 0

    def __post_init__(self) -> None:
        count = parse_count("version_count", "WRITER_CHAPTER_VERSION_COUNT", self.version_count)
        object.__setattr__(self, "version_count", count)
        if not isinstance(self.parallel, bool):
            object.__setattr__(
                self,
                "parallel",
                parse_bool("parallel (WRITER_PARALLEL_GENERATION)", str(self.parallel)),
            )
        limit = parse_limit(
            "max_parallel_requests", "WRITER_MAX_PARALLEL_REQUESTS", self.max_parallel_requests
        )
        object.__setattr__(self, "max_parallel_requests", limit)
        fanout = parse_fanout("fanout", "WRITER_FANOUT", self.fanout)
        object.__setattr__(self, "fanout", fanout)
        if fanout == "n" and not self.parallel:
            raise ConfigError(
                "fanout='n' (WRITER_FANOUT) needs parallel=True: one request streams all N "
                "versions at once, which is parallel generation; serial mode writes one "
                "version after another, one request each (use fanout='requests')"
            )
        extra = parse_extra("extra_versions", "WRITER_EXTRA_VERSIONS", self.extra_versions)
        object.__setattr__(self, "extra_versions", extra)
        if fanout == "n" and extra:
            raise ConfigError(
                "extra_versions (WRITER_EXTRA_VERSIONS) needs fanout='requests': one request "
                "for n choices cannot stop the surplus ones early, so every extra would be "
                "written and billed in full (use extra_versions=0 with fanout='n')"
            )

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        dotenv_path: str | None = ".env",
        **overrides: Any,
    ) -> WriterSettings:
        """Read ``WRITER_*`` variables; keyword arguments that are not None win."""
        env = load_env(dotenv_path) if env is None else env
        values: dict[str, Any] = {}
        found = _first(env, "WRITER_CHAPTER_VERSION_COUNT", "WRITER_CHAPTER_VERSIONS")
        if found:
            values["version_count"] = parse_count("version_count", found[0], found[1])
        if found := _first(env, "WRITER_PARALLEL_GENERATION"):
            values["parallel"] = parse_bool(*found)
        if found := _first(env, "WRITER_MAX_PARALLEL_REQUESTS"):
            values["max_parallel_requests"] = parse_limit("max_parallel_requests", *found)
        if found := _first(env, "WRITER_FANOUT"):
            values["fanout"] = parse_fanout("fanout", *found)
        if found := _first(env, "WRITER_EXTRA_VERSIONS"):
            values["extra_versions"] = parse_extra("extra_versions", *found)
        _refuse_unknown(cls, overrides)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


@dataclass(frozen=True)
class LLMConfig:
    """Where and how to call an OpenAI-compatible API. The key never shows in a repr.

    ``price_in`` / ``price_out`` / ``price_cached_in``: what the model costs, in US
    dollars per million input / output / cached input tokens (see
    :mod:`arboris_nb.pricing`); unset, the price table (``ARBORIS_PRICES``) is used.
    """

    api_key: str | None = field(default=None, repr=False)
    base_url: str | None = None
    model: str = DEFAULT_MODEL
    temperature: float = 0.75
    max_tokens: int | None = None
    timeout_s: float = 600.0
    price_in: float | None = None
    price_out: float | None = None
    price_cached_in: float | None = None

    def __post_init__(self) -> None:
        if not self.model or not str(self.model).strip():
            raise ConfigError("model (OPENAI_MODEL_NAME) must not be empty")
        if not 0.0 <= float(self.temperature) <= 2.0:
            raise ConfigError(f"temperature must be from 0 to 2, got {self.temperature}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if not self.timeout_s > 0:
            raise ConfigError(f"timeout_s must be above 0, got {self.timeout_s}")
        if self.base_url is not None and not str(self.base_url).startswith(("http://", "https://")):
            raise ConfigError(
                f"base_url (OPENAI_API_BASE_URL) must start with http:// or https://, "
                f"got {self.base_url!r}"
            )
        self._check_prices()

    def _check_prices(self) -> None:
        for name in PRICE_FIELDS:
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, check_price(name, value))
        if (self.price_in is None) != (self.price_out is None):
            raise ConfigError("price_in and price_out are given together (USD per million tokens)")
        if self.price_cached_in is not None and self.price_in is None:
            raise ConfigError("price_cached_in needs price_in and price_out too")

    @property
    def price(self) -> Price | None:
        """This config's own price, if it was given one."""
        if self.price_in is None or self.price_out is None:
            return None
        return Price(self.price_in, self.price_out, self.price_cached_in)

    def __repr__(self) -> str:
        prices = "".join(
            f", {name}={getattr(self, name)}"
            for name in PRICE_FIELDS
            if getattr(self, name) is not None
        )
        return (
            f"LLMConfig(api_key={mask_key(self.api_key)!r}, base_url={self.base_url!r}, "
            f"model={self.model!r}, temperature={self.temperature}, "
            f"max_tokens={self.max_tokens}, timeout_s={self.timeout_s}{prices})"
        )

    @property
    def key_id(self) -> str:
        """The masked key, safe to print and store."""
        return mask_key(self.api_key)

    @property
    def configured(self) -> bool:
        """True when a key or a base URL says where to send requests."""
        return bool(self.api_key or self.base_url)

    def with_(self, **changes: Any) -> LLMConfig:
        """A copy with some fields changed (None values are ignored)."""
        _refuse_unknown(type(self), changes)
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        dotenv_path: str | None = ".env",
        api_key_env: str = "OPENAI_API_KEY",
        **overrides: Any,
    ) -> LLMConfig:
        """Read ``OPENAI_API_KEY``, ``OPENAI_API_BASE_URL`` (or ``OPENAI_BASE_URL``) and
        ``OPENAI_MODEL_NAME``; keyword arguments that are not None win."""
        env = load_env(dotenv_path) if env is None else env
        values: dict[str, Any] = {}
        if found := _first(env, api_key_env):
            values["api_key"] = found[1].strip()
        if found := _first(env, "OPENAI_API_BASE_URL", "OPENAI_BASE_URL"):
            values["base_url"] = found[1].strip()
        if found := _first(env, "OPENAI_MODEL_NAME"):
            values["model"] = found[1].strip()
        _refuse_unknown(cls, overrides)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def load_api_keys(env: Mapping[str, str] | None = None) -> list[str]:
    """The keys of ``OPENAI_API_KEYS`` (comma-separated), else ``[OPENAI_API_KEY]``.

    An empty or repeated entry is an error naming the setting (a stray comma would
    otherwise silently drop a key, a repeated key would skew round-robin).
    """
    env = load_env() if env is None else env
    raw = env.get("OPENAI_API_KEYS", "").strip()
    if not raw:
        single = env.get("OPENAI_API_KEY", "").strip()
        return [single] if single else []
    keys = [part.strip() for part in raw.split(",")]
    for position, key in enumerate(keys, 1):
        if not key:
            raise ConfigError(
                f"OPENAI_API_KEYS: entry {position} of {len(keys)} is empty "
                "(expected comma-separated keys: key1,key2)"
            )
        if keys.index(key) != position - 1:
            raise ConfigError(
                f"OPENAI_API_KEYS: entry {position} repeats entry {keys.index(key) + 1} "
                f"({mask_key(key)})"
            )
    return keys


def _refuse_unknown(cls: type, options: Mapping[str, Any]) -> None:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} option(s): {', '.join(unknown)}")


_OFF = {"off", "none", "0", "false", "no"}


def default_store_path(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_DATA_HOME/arboris_nb/runs.sqlite3`` (``~/.local/share/…`` when unset)."""
    env = os.environ if env is None else env
    base = env.get("XDG_DATA_HOME", "").strip()
    root = Path(base) if base else Path.home() / ".local" / "share"
    return root / "arboris_nb" / "runs.sqlite3"


def store_setting(env: Mapping[str, str] | None = None) -> tuple[Path | None, bool]:
    """Where runs are stored: ``ARBORIS_STORE`` (a path; ``off``/``none`` disables).

    Returns ``(path, explicit)``: ``path`` is None when persistence is off; ``explicit``
    says the path came from ``ARBORIS_STORE`` rather than the default.
    """
    env = load_env() if env is None else env
    raw = env.get("ARBORIS_STORE", "").strip()
    if not raw:
        return default_store_path(env), False
    if raw.lower() in _OFF:
        return None, True
    return Path(raw).expanduser(), True


def cache_setting(env: Mapping[str, str] | None = None) -> str | bool:
    """The reply cache asked for by the environment (it is off by default).

    ``ARBORIS_CACHE_URL`` (``redis://…``, ``sqlite:///path`` or a path) wins; otherwise
    ``ARBORIS_CACHE`` is a boolean: true means "in the run store's SQLite file".
    """
    env = load_env() if env is None else env
    url = env.get("ARBORIS_CACHE_URL", "").strip()
    if url:
        return url
    raw = env.get("ARBORIS_CACHE", "").strip()
    return parse_bool("ARBORIS_CACHE", raw) if raw else False

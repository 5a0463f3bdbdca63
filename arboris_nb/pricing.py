"""Prices and costs: US dollars per million tokens, per model — given by the user.

Nothing is built in: prices change, and a table shipped with the package would go
stale without anyone noticing. A model's price comes from, first match first:

1. the ``LLMConfig`` itself: ``LLMConfig(price_in=…, price_out=…, price_cached_in=…)``;
2. the ``prices`` argument of ``start_versions`` / ``generate_versions``: a mapping
   model → :class:`Price` (or a dict of the three names), or the path of a price file;
3. the price file named by ``ARBORIS_PRICES`` — TOML or JSON, model → prices::

       ["gpt-4o-mini"]          # {"gpt-4o-mini": {"price_in": 0.15, …}} in JSON
       price_in = 0.15          # input (prompt) tokens
       price_out = 0.60         # output (completion) tokens
       price_cached_in = 0.075  # cached input tokens (optional: else price_in)

A model missing from the table matches the entry ``"*"`` if there is one; otherwise its
cost is None (unknown), never a guess.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = [
    "PRICE_FIELDS",
    "Price",
    "PriceSpec",
    "check_price",
    "format_cost",
    "format_tokens",
    "load_prices",
    "price_for",
    "price_table",
]

#: The three prices, in US dollars per million tokens (the names LLMConfig uses too).
PRICE_FIELDS = ("price_in", "price_out", "price_cached_in")
_PER_TOKENS = 1_000_000


def check_price(name: str, value: object) -> float:
    """A price: a number >= 0, or a ConfigError naming the setting."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a number >= 0 (USD per million tokens), got {value!r}")
    if value < 0:
        raise ConfigError(f"{name} must be >= 0 (USD per million tokens), got {value}")
    return float(value)


@dataclass(frozen=True)
class Price:
    """What a model costs, in US dollars per million tokens.

    ``price_cached_in`` is for input tokens the provider served from its prompt cache;
    None bills them at ``price_in`` (no discount assumed, so a cost is never too low).
    """

    price_in: float
    price_out: float
    price_cached_in: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "price_in", check_price("price_in", self.price_in))
        object.__setattr__(self, "price_out", check_price("price_out", self.price_out))
        if self.price_cached_in is not None:
            cached = check_price("price_cached_in", self.price_cached_in)
            object.__setattr__(self, "price_cached_in", cached)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str) -> Price:
        """A Price from ``{"price_in": …, "price_out": …, "price_cached_in": …}``."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: expected a table of {', '.join(PRICE_FIELDS)}")
        unknown = sorted(set(data) - set(PRICE_FIELDS))
        missing = [name for name in PRICE_FIELDS[:2] if name not in data]
        if unknown or missing:
            wrong = f"unknown {', '.join(unknown)}" if unknown else f"missing {', '.join(missing)}"
            raise ConfigError(f"{where}: {wrong} (expected {', '.join(PRICE_FIELDS)})")
        try:
            return cls(**data)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    def cost(
        self,
        input_tokens: int | None,
        output_tokens: int | None,
        cached_input_tokens: int | None = None,
    ) -> float | None:
        """Dollars for these counts; None when a count is unknown. Cached input tokens
        are part of ``input_tokens`` (as OpenAI reports them), billed at their price."""
        if input_tokens is None or output_tokens is None:
            return None
        cached = min(cached_input_tokens or 0, input_tokens)
        cached_price = self.price_in if self.price_cached_in is None else self.price_cached_in
        dollars = (
            (input_tokens - cached) * self.price_in
            + cached * cached_price
            + output_tokens * self.price_out
        )
        return dollars / _PER_TOKENS


PriceSpec = Mapping[str, "Price | Mapping[str, Any]"] | str | os.PathLike[str] | None


def _parse(path: Path, text: str) -> Any:
    if path.suffix.lower() == ".json":
        return json.loads(text)
    if path.suffix.lower() != ".toml":
        raise ConfigError(f"{path}: a price file ends in .toml or .json")
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise ConfigError(f"{path}: TOML needs Python 3.11 or `tomli`; or use JSON") from None
    return tomllib.loads(text)


@functools.lru_cache(maxsize=8)
def _load(path: Path, _mtime_ns: int) -> dict[str, Price]:
    # Keyed by the file's mtime: an edited file is read again, an unchanged one is not.
    try:
        data = _parse(path, path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read the price file {path}: {exc.strerror}") from None
    except ValueError as exc:  # json.JSONDecodeError, tomllib.TOMLDecodeError
        raise ConfigError(f"price file {path} is not valid: {exc}") from None
    return _table(data, str(path))


def load_prices(path: str | os.PathLike[str]) -> dict[str, Price]:
    """Read a TOML or JSON price file: model → ``{price_in, price_out, price_cached_in}``."""
    path = Path(path).expanduser()
    try:
        mtime = path.stat().st_mtime_ns
    except OSError as exc:
        raise ConfigError(f"cannot read the price file {path}: {exc.strerror}") from None
    return dict(_load(path, mtime))


def _table(data: object, where: str) -> dict[str, Price]:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of model names to prices")
    return {
        str(model): price
        if isinstance(price, Price)
        else Price.from_mapping(price, f"{where}: model {model!r}")
        for model, price in data.items()
    }


def price_table(spec: PriceSpec = None, env: Mapping[str, str] | None = None) -> dict[str, Price]:
    """The table ``spec`` gives (a mapping or a file), else ``ARBORIS_PRICES``'s (or {})."""
    if isinstance(spec, Mapping):
        return _table(spec, "prices")
    if spec is not None:
        return load_prices(spec)
    env = os.environ if env is None else env
    path = env.get("ARBORIS_PRICES", "").strip()
    if not path:
        return {}
    try:
        return load_prices(path)
    except ConfigError as exc:
        raise ConfigError(f"ARBORIS_PRICES: {exc}") from None


def price_for(model: str | None, table: Mapping[str, Price]) -> Price | None:
    """The model's price in ``table`` (exact name, else ``"*"``), or None."""
    if model is not None and model in table:
        return table[model]
    return table.get("*")


def format_cost(dollars: float | None) -> str:
    """``$0.0123`` (four decimals below a dollar, cents above); ``-`` when unknown."""
    if dollars is None:
        return "-"
    return f"${dollars:.4f}" if dollars < 1 else f"${dollars:,.2f}"


def format_tokens(count: float | None) -> str:
    """``6,000``; ``-`` when unknown."""
    return "-" if count is None else f"{round(count):,}"

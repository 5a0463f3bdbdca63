"""Prices: validation that names the setting, files in TOML and JSON, which price a run
uses, and what a count costs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from arboris_nb import ConfigError, LLMConfig, SimulatedLLM
from arboris_nb.engine import resolve_price
from arboris_nb.pricing import Price, format_cost, load_prices, price_for, price_table

TOML = """
["gpt-4o-mini"]
price_in = 0.15
price_out = 0.6
price_cached_in = 0.075

["*"]
price_in = 1
price_out = 2
"""


def test_cost_per_million_tokens_with_cached_input_at_its_own_price() -> None:
    price = Price(2.5, 10.0, 1.25)
    # 6,000 input of which 1,000 cached, 500 output.
    assert price.cost(6000, 500, 1000) == pytest.approx((5000 * 2.5 + 1000 * 1.25 + 500 * 10) / 1e6)
    # Without a cached price, cached tokens are billed as input: never an under-estimate.
    assert Price(2.5, 10.0).cost(6000, 500, 1000) == pytest.approx((6000 * 2.5 + 500 * 10) / 1e6)
    assert price.cost(None, 500) is None
    assert price.cost(100, None) is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"price_in": -1, "price_out": 1}, "price_in must be >= 0"),
        ({"price_in": "cheap", "price_out": 1}, "price_in must be a number >= 0"),
        ({"price_in": 1, "price_out": float("nan")}, "price_out must be a number"),
        ({"price_in": 1}, "price_in and price_out are given together"),
        ({"price_cached_in": 0.5}, "price_cached_in needs price_in and price_out"),
        ({"price_in": 1, "price_out": 2, "price_cached_in": True}, "price_cached_in must be"),
    ],
)
def test_llmconfig_prices_are_checked_and_named(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        LLMConfig(**kwargs)  # type: ignore[arg-type]


def test_llmconfig_price_shows_in_its_repr_and_the_key_does_not() -> None:
    config = LLMConfig(api_key="sk-secret-0123456789abcd", price_in=1, price_out=4)
    assert config.price == Price(1.0, 4.0)
    assert "price_in=1.0" in repr(config)
    assert "secret" not in repr(config)
    assert LLMConfig().price is None


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_price_files_in_toml_and_json(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"prices{suffix}"
    if suffix == ".toml":
        path.write_text(TOML, encoding="utf-8")
    else:
        data = {
            "gpt-4o-mini": {"price_in": 0.15, "price_out": 0.6, "price_cached_in": 0.075},
            "*": {"price_in": 1, "price_out": 2},
        }
        path.write_text(json.dumps(data), encoding="utf-8")
    table = load_prices(path)
    assert price_for("gpt-4o-mini", table) == Price(0.15, 0.6, 0.075)
    assert price_for("some-other-model", table) == Price(1.0, 2.0)  # the "*" entry
    assert price_for("x", {}) is None


def test_an_edited_price_file_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"m": {"price_in": 1, "price_out": 2}}), encoding="utf-8")
    assert load_prices(path)["m"] == Price(1, 2)
    path.write_text(json.dumps({"m": {"price_in": 3, "price_out": 4}}), encoding="utf-8")
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    assert load_prices(path)["m"] == Price(3, 4)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("p.toml", "[m]\nprice_in = -2\nprice_out = 1\n", r"model 'm': price_in must be >= 0"),
        ("p.json", '{"m": {"price_in": "x", "price_out": 1}}', "price_in must be a number"),
        ("p.json", '{"m": {"price_in": 1}}', "missing price_out"),
        ("p.json", '{"m": {"price_in": 1, "price_out": 1, "input": 2}}', "unknown input"),
        ("p.json", '{"m": 3}', "expected a table"),
        ("p.json", "[1, 2]", "expected a mapping of model names"),
        ("p.json", "{not json", "is not valid"),
        ("p.toml", "[m\n", "is not valid"),
        ("p.yaml", "m: 1", "ends in .toml or .json"),
    ],
)
def test_bad_price_files_name_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, text: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    monkeypatch.setenv("ARBORIS_PRICES", str(path))
    with pytest.raises(ConfigError, match="ARBORIS_PRICES") as info:
        price_table()
    assert info.match(message)


def test_an_unreadable_price_file_names_the_setting_and_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "nowhere.toml"
    monkeypatch.setenv("ARBORIS_PRICES", str(missing))
    with pytest.raises(ConfigError, match=r"ARBORIS_PRICES: cannot read the price file .*nowhere"):
        price_table()


def test_which_price_a_run_uses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(TOML, encoding="utf-8")
    monkeypatch.setenv("ARBORIS_PRICES", str(path))
    sim = SimulatedLLM(model="gpt-4o-mini")
    # The file, by the backend's model name.
    assert resolve_price(sim, sim) == Price(0.15, 0.6, 0.075)
    # A prices= mapping wins over the file; a config's own price wins over both.
    assert resolve_price(sim, sim, {"gpt-4o-mini": {"price_in": 9, "price_out": 9}}) == Price(9, 9)
    config = LLMConfig(
        base_url="http://127.0.0.1:9/v1", model="gpt-4o-mini", price_in=5, price_out=6
    )
    assert resolve_price(config, sim, {"gpt-4o-mini": Price(9, 9)}) == Price(5, 6)
    monkeypatch.delenv("ARBORIS_PRICES")
    assert resolve_price(sim, sim) is None  # nothing set: the cost is unknown, not guessed


def test_cost_and_token_formats() -> None:
    assert format_cost(None) == "-"
    assert format_cost(0.00672) == "$0.0067"
    assert format_cost(12.3456) == "$12.35"

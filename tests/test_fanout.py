"""``fanout="n"``: one request for N versions on the simulated model (looptime's fake clock),
the settings that choose it, and the billing arithmetic behind the shares."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from arboris_nb import (
    ConfigError,
    SimulatedLLM,
    WriterSettings,
    generate_versions,
    start_versions,
)
from arboris_nb.backends.base import ChatRequest
from arboris_nb.billing import split
from arboris_nb.cli import main
from arboris_nb.events import Event, TokenDelta, VersionRetrying
from arboris_nb.pricing import Price

PROMPT = "Write chapter seven: the harbor at night, the letter, the storm"  # 11 words
PROMPT_TOKENS = 11
# ttft 1 s, then 9 more tokens at 10 a second: 1.9 s a reply, exactly on the fake clock.
REPLY = "a b c d e f g h i j"
L = 1.9


def model(**kwargs: Any) -> SimulatedLLM:
    return SimulatedLLM(**{"ttft_s": 1.0, "tokens_per_s": 10.0, "output_tokens": 10, **kwargs})


def fan(n: int = 3, c: int = 3) -> WriterSettings:
    return WriterSettings(version_count=n, max_parallel_requests=c, fanout="n")


# --------------------------------------------------------------------------- settings


def test_fanout_setting_and_its_errors() -> None:
    assert WriterSettings().fanout == "requests"
    assert WriterSettings.from_env({"WRITER_FANOUT": " N "}).fanout == "n"
    with pytest.raises(ConfigError, match=r"fanout \(WRITER_FANOUT\) must be 'requests' or 'n'"):
        WriterSettings.from_env({"WRITER_FANOUT": "maybe"})
    with pytest.raises(ConfigError, match="needs parallel=True: one request streams all N"):
        WriterSettings(parallel=False, fanout="n")


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--fanout", "maybe"], "--fanout (WRITER_FANOUT) must be 'requests' or 'n'"),
        (["--fanout", "n", "--serial"], "needs parallel=True"),
    ],
)
def test_cli_refuses_a_bad_fanout(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code = main(["generate", "--simulated", "--prompt", "p", *argv])
    except SystemExit as exc:  # argparse's own refusal
        code = exc.code  # type: ignore[assignment]
    assert code == 2
    assert needle in capsys.readouterr().err


# --------------------------------------------------------------------------- the shares


@pytest.mark.parametrize(
    ("total", "weights"),
    [(6001, [1, 1, 1]), (10, [3, 0, 7]), (7, [0, 0, 0]), (0, [1, 2]), (100, [33, 33, 34])],
)
def test_shares_add_up_to_the_whole(total: int, weights: list[int]) -> None:
    shares = split(total, weights)
    assert sum(s for s in shares if s is not None) == total
    assert all(s is not None and s >= 0 for s in shares)
    if any(weights):
        assert all(s == 0 for s, w in zip(shares, weights, strict=True) if w == 0)
    assert split(None, weights) == [None] * len(weights)


# --------------------------------------------------------------------------- the engine


@pytest.mark.looptime
async def test_one_request_bills_the_prompt_once_and_writes_the_same_versions() -> None:
    price = {"simulated": Price(2.0, 8.0)}
    llm = model()
    shared = await generate_versions(PROMPT, settings=fan(), llm=llm, prices=price, store=False)
    apart = await generate_versions(
        PROMPT, settings=WriterSettings(3), llm=model(), prices=price, store=False
    )
    assert [c.choice_versions for c in llm.calls] == [(1, 2, 3)]
    assert [v.content for v in shared.versions] == [v.content for v in apart.versions]
    assert shared.input_tokens == PROMPT_TOKENS  # once, however many versions
    assert apart.input_tokens == 3 * PROMPT_TOKENS
    assert shared.output_tokens == apart.output_tokens
    # Each version carries its share; the shares add up to the request's usage.
    assert [v.input_tokens for v in shared.versions] == [4, 4, 3]
    assert all(v.attempts[0].choices == 3 for v in shared.versions)
    assert shared.cost == pytest.approx(
        (PROMPT_TOKENS * 2.0 + shared.output_tokens * 8.0) / 1e6  # type: ignore[operator]
    )
    assert shared.cost < apart.cost  # type: ignore[operator]


@pytest.mark.looptime
async def test_choices_stream_into_their_own_panels() -> None:
    streamed: dict[int, list[str]] = {1: [], 2: [], 3: []}

    def collect(event: Event) -> None:
        if isinstance(event, TokenDelta):
            streamed[event.version.index].append(event.text)

    run = await generate_versions(PROMPT, settings=fan(), llm=model(), on_event=collect)
    for version in run.versions:
        assert "".join(streamed[version.index]) == version.content
        assert version.ttft_s == pytest.approx(1.0)
    assert len({v.content for v in run.versions}) == 3
    # "Version i." and ten words: 12 tokens, side by side, so 1 s + 11 × 0.1 s in all.
    assert run.elapsed_s == pytest.approx(2.1)


@pytest.mark.looptime
async def test_one_request_holds_one_slot() -> None:
    one = await generate_versions(PROMPT, settings=fan(3, c=1), llm=model(reply=REPLY))
    apart = await generate_versions(
        PROMPT, settings=WriterSettings(3, max_parallel_requests=1), llm=model(reply=REPLY)
    )
    assert one.elapsed_s == pytest.approx(L)
    assert apart.elapsed_s == pytest.approx(3 * L)


def empty_for_version_2_first(request: ChatRequest) -> str:
    return "" if request.version_index == 2 and request.attempt == 1 else REPLY


@pytest.mark.looptime
async def test_a_choice_that_ends_badly_gets_its_own_request() -> None:
    llm = model(reply=empty_for_version_2_first)
    events: list[Event] = []
    run = await generate_versions(PROMPT, settings=fan(), llm=llm, on_event=events.append)
    assert [v.status for v in run.versions] == ["ok", "ok", "ok"]
    assert [v.attempt_count for v in run.versions] == [1, 2, 1]
    first, second = run.versions[1].attempts
    assert (first.error_type, first.choices, second.choices) == ("ServerError", 3, 1)
    assert [(c.n, c.version_index, c.attempt) for c in llm.calls] == [(3, 1, 1), (1, 2, 2)]
    # The request itself was fine: no retry wait before asking again.
    assert not any(isinstance(e, VersionRetrying) for e in events)
    assert run.elapsed_s == pytest.approx(2 * L)
    # Every token billed is in some attempt: the shared request's prompt once, then again.
    assert run.input_tokens == 2 * PROMPT_TOKENS


@pytest.mark.looptime
async def test_failure_stays_per_version() -> None:
    run = await generate_versions(
        PROMPT, settings=fan(), llm=model(fail_versions={3}), raise_on_all_failed=False
    )
    assert [v.status for v in run.versions] == ["ok", "ok", "failed"]
    assert run.versions[2].attempt_count == 3  # the shared request, then its own retries


@pytest.mark.looptime
async def test_cancel_keeps_the_choices_that_ended() -> None:
    def short_first(request: ChatRequest) -> str:
        return "a b" if request.version_index == 1 else REPLY

    handle = start_versions(PROMPT, settings=fan(), llm=model(reply=short_first), store=False)
    await asyncio.sleep(1.5)  # choice 1 ended at 1.1 s; the others are mid-stream
    handle.cancel()
    run = await handle
    assert [v.status for v in run.versions] == ["ok", "cancelled", "cancelled"]
    assert run.versions[0].content == "a b"
    # Cut before the usage came: billed the chunks streamed, labelled an estimate.
    attempts = [v.attempts[0] for v in run.versions]
    assert all(a.usage_estimated for a in attempts)
    assert [a.output_tokens for a in attempts] == [2, 5, 5]
    assert attempts[1].error_type == "CancelledError"


@pytest.mark.looptime
async def test_cached_versions_are_left_out_of_the_request(tmp_path: Any) -> None:
    store = tmp_path / "runs.sqlite3"
    await generate_versions(
        PROMPT, settings=WriterSettings(2), llm=model(), store=store, cache=True
    )
    llm = model()
    run = await generate_versions(PROMPT, settings=fan(), llm=llm, store=store, cache=True)
    assert [v.cached for v in run.versions] == [True, True, False]
    assert [(c.n, c.version_index) for c in llm.calls] == [(1, 3)]  # one left: no n
    # A cached reply was not paid for again: nothing billed, whatever the price.
    assert (run.versions[0].billed_input_tokens, run.versions[0].cost) == (0, 0.0)


@pytest.mark.looptime
async def test_the_widget_shows_each_versions_bill_and_the_runs_total(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from arboris_nb import VersionsWidget

    prices = tmp_path / "prices.json"
    prices.write_text('{"simulated": {"price_in": 2, "price_out": 8}}', encoding="utf-8")
    monkeypatch.setenv("ARBORIS_PRICES", str(prices))
    widget = VersionsWidget(llm=model(), settings=fan())
    run = await widget.generate(PROMPT)
    first = run.versions[0]
    header = widget.panel(1).stats
    assert f"{first.billed_input_tokens} tok in · ${first.cost:.4f}" in header
    total = f"{PROMPT_TOKENS} in · {run.output_tokens} out tok · ${run.cost:.4f}"
    assert total in widget.progress.text

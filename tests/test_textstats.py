"""Text metrics of English and Chinese chapters, and their columns in ``Run.to_frame()``."""

from __future__ import annotations

import pytest

from arboris_nb import RetryPolicy, SimulatedLLM, WriterSettings, generate_versions
from arboris_nb.results import FRAME_COLUMNS
from arboris_nb.textstats import (
    CJK_CHARS_PER_MIN,
    TEXT_METRIC_COLUMNS,
    WORDS_PER_MIN,
    text_metrics,
)

ENGLISH = """The keeper climbed the stairs. "Who's there?" she called.

No one answered; the well-lit room was empty at 3 a.m."""

# 34 CJK characters; the speech is 「你回来了？」 (4) and “嗯，回来了。” (4).
CHINESE = (
    "她推开灯塔的门，风雨一下子涌了进来。\n「你回来了？」姐姐问。\n“嗯，回来了。”她把信放在桌上。"
)


def test_english_counts_words_paragraphs_and_speech() -> None:
    m = text_metrics(ENGLISH)
    assert set(m) == set(TEXT_METRIC_COLUMNS)
    # The keeper climbed the stairs / Who's there / she called / No one answered / the
    # well-lit room was empty at 3 a m: contractions and hyphenated words are one word.
    assert m["words"] == 5 + 2 + 2 + 3 + 9
    assert m["chars"] == len(ENGLISH)
    assert m["paragraphs"] == 2
    assert m["dialogue_share"] == pytest.approx(2 / 21)
    assert m["reading_min"] == pytest.approx(21 / WORDS_PER_MIN)


def test_chinese_counts_each_character_as_a_word() -> None:
    m = text_metrics(CHINESE)
    cjk = sum("\u4e00" <= c <= "\u9fff" for c in CHINESE)
    assert m["words"] == cjk == 34  # not 3, as splitting on whitespace would say
    assert m["paragraphs"] == 3
    assert m["dialogue_share"] == pytest.approx(8 / 34)  # 「…」 and “…” both count
    assert m["reading_min"] == pytest.approx(34 / CJK_CHARS_PER_MIN)


def test_a_quote_left_open_ends_with_its_paragraph() -> None:
    # Novels reopen a long speech at each paragraph without closing the previous one.
    text = "“I waited all winter,\n“and you never came.”\nShe left."
    m = text_metrics(text)
    assert m["words"] == 10
    assert m["dialogue_share"] == pytest.approx(8 / 10)
    # A closing mark with nothing open is not speech; nested quotes stay inside.
    assert text_metrics("a ” b c")["dialogue_share"] == 0.0
    assert text_metrics("「他说『走』了」")["dialogue_share"] == 1.0


def test_repeated_phrases_english_by_three_words() -> None:
    # "the old man" occurs twice: 6 of the 11 words sit inside a repeated 3-word phrase.
    text = "the old man sat. Then the old man slept and dreamed"
    assert text_metrics(text)["repeated_phrase_ratio"] == pytest.approx(6 / 11)
    assert text_metrics("every word here differs from all others")["repeated_phrase_ratio"] == 0


def test_repeated_phrases_chinese_by_four_characters() -> None:
    # 他走了又 (4 characters) repeats; 3-character matches like 回来了 alone do not count.
    loop = "他走了又回来。他走了又停下。"
    assert text_metrics(loop)["repeated_phrase_ratio"] == pytest.approx(8 / 12)
    assert text_metrics("回来了，我回来了")["repeated_phrase_ratio"] == 0.0
    assert text_metrics("雨。雨。雨。")["repeated_phrase_ratio"] == 0.0  # shorter than a phrase


def test_empty_text_has_zero_metrics() -> None:
    assert text_metrics("") == dict.fromkeys(TEXT_METRIC_COLUMNS, 0)
    assert text_metrics("  \n\n ")["paragraphs"] == 0


@pytest.mark.looptime
async def test_run_frame_holds_the_metrics_of_each_version() -> None:
    run = await generate_versions(
        "p", settings=WriterSettings(version_count=2), retry=RetryPolicy(attempts=1),
        llm=SimulatedLLM(reply=CHINESE, fail_versions={2}),
    )  # fmt: skip
    frame = run.to_frame()
    assert list(frame.columns) == list(FRAME_COLUMNS)
    assert set(TEXT_METRIC_COLUMNS) <= set(frame.columns)
    ok, failed = frame.to_dict("records")
    assert {k: ok[k] for k in TEXT_METRIC_COLUMNS} == text_metrics(CHINESE)
    assert ok["words"] == 34
    assert (failed["status"], failed["words"], failed["chars"]) == ("failed", 0, 0)

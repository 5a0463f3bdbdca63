"""The inline diff: exact in English and Chinese, grouped so a rewrite reads as one change."""

from __future__ import annotations

import itertools
import random

import pytest

from arboris_nb import diff_html
from arboris_nb.textdiff import text_diff


def rebuilt(ops: list[tuple[str, str]]) -> tuple[str, str]:
    old = "".join(t for op, t in ops if op != "insert")
    new = "".join(t for op, t in ops if op != "delete")
    return old, new


def test_random_mixed_texts_rebuild_exactly() -> None:
    rng = random.Random(7)
    alphabet = [*"雨夜的了她他。，「」", " ", "\n", "rain", "old", "a"]
    for _ in range(300):
        a = "".join(rng.choices(alphabet, k=rng.randrange(0, 30)))
        b = "".join(rng.choices(alphabet, k=rng.randrange(0, 30)))
        ops = text_diff(a, b)
        assert rebuilt(ops) == (a, b)
        assert all(text for _op, text in ops)  # no empty runs
        assert all(x[0] != "equal" or y[0] != "equal" for x, y in itertools.pairwise(ops))


def test_chinese_marks_only_the_changed_characters() -> None:
    # No spaces in Chinese: a whitespace diff would mark the whole sentence.
    assert text_diff("她走进了雨中。", "她走进了夜色中。") == [
        ("equal", "她走进了"),
        ("delete", "雨"),
        ("insert", "夜色"),
        ("equal", "中。"),
    ]


def test_chinese_rewrite_is_one_change_not_character_confetti() -> None:
    # 地 and 回 match by accident inside the rewritten phrase; they fold into the change.
    assert text_diff("他慢慢地走回家，天黑了。", "她飞快地跑回了家，天黑了。") == [
        ("delete", "他慢慢地走回"),
        ("insert", "她飞快地跑回了"),
        ("equal", "家，天黑了。"),
    ]


def test_shared_words_and_line_breaks_stay_visible() -> None:
    ops = text_diff("他在灯塔里读完了姐姐的信。", "她在码头上读完了妹妹写来的信。")
    assert ("equal", "读完了") in ops  # three characters: a real shared word
    assert ("equal", "的信。") in ops
    assert text_diff("甲\n乙", "丙\n丁") == [
        ("delete", "甲"),
        ("insert", "丙"),
        ("equal", "\n"),
        ("delete", "乙"),
        ("insert", "丁"),
    ]


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (
            "he walked slowly home",
            "he ran very fast home",
            [("equal", "he "), ("delete", "walked slowly"), ("insert", "ran very fast"),
             ("equal", " home")],
        ),
        (
            "The rain fell on the old city.",
            "The rain fell softly on the city!",
            [("equal", "The rain fell "), ("insert", "softly "), ("equal", "on the "),
             ("delete", "old "), ("equal", "city"), ("delete", "."), ("insert", "!")],
        ),
    ],
)  # fmt: skip
def test_english_goes_by_whole_words(a: str, b: str, expected: list[tuple[str, str]]) -> None:
    assert text_diff(a, b) == expected


def test_diff_html_of_chinese_escapes_and_marks() -> None:
    out = diff_html("「走吧」<b>", "「走」<i>")
    assert "<del>吧</del>" in out
    assert "&lt;<del>b</del><ins>i</ins>&gt;" in out and "<b>" not in out and "<i>" not in out

"""Editor actions as plain functions: retry, edit, diff, evaluate, export (no widgets)."""

from __future__ import annotations

import html
import re

import pytest

from arboris_nb import (
    ConfigError,
    EvaluationError,
    SimulatedLLM,
    WriterSettings,
    diff_html,
    edit_version,
    evaluate,
    export_markdown,
    generate_versions,
    parse_evaluation,
    retry_version,
    simulated_judge,
    word_diff,
)
from arboris_nb.editor import Evaluation, retry_messages
from arboris_nb.results import Run, Version

XSS = "<script>alert(1)</script> <img src=x onerror=alert(2)>"


def ok_run(*texts: str) -> Run:
    versions = [Version(index=i, status="ok", content=t) for i, t in enumerate(texts, 1)]
    return Run(run_id="r1", versions=versions)


def fast(**kwargs: object) -> SimulatedLLM:
    return SimulatedLLM(ttft_s=0.0, tokens_per_s=10_000.0, output_tokens=20, **kwargs)  # type: ignore[arg-type]


# -- retry ------------------------------------------------------------------------------
def test_retry_messages_append_the_instruction_as_a_user_message() -> None:
    base = [{"role": "system", "content": "s"}, {"role": "user", "content": "write"}]
    assert retry_messages(base, "  darker ending ") == [
        *base,
        {"role": "user", "content": "darker ending"},
    ]
    assert retry_messages(base, "   ") == base
    assert retry_messages("write") == [{"role": "user", "content": "write"}]


async def test_retry_version_replaces_one_version_in_the_same_run() -> None:
    llm = fast()
    run = await generate_versions("Write", settings=WriterSettings(version_count=3), llm=llm)
    before = [v.content for v in run.versions]
    new = await retry_version(run, 2, "Write", instruction="more rain", llm=llm)
    assert run.versions[1] is new and new.ok and new.index == 2
    assert new.content != before[1]
    assert [run.versions[0].content, run.versions[2].content] == [before[0], before[2]]
    request = llm.calls[-1]
    assert (request.run_id, request.version_index) == (run.run_id, 2)
    assert request.messages == [
        {"role": "user", "content": "Write"},
        {"role": "user", "content": "more rain"},
    ]


async def test_retry_version_refuses_an_unknown_index() -> None:
    with pytest.raises(ConfigError, match="version 7 is not in run r1"):
        await retry_version(ok_run("a", "b"), 7, "p", llm=fast())


# -- edit -------------------------------------------------------------------------------
def test_edit_version_replaces_content_of_ok_versions_only() -> None:
    run = ok_run("old")
    assert not run.versions[0].edited
    assert edit_version(run.versions[0], "new text").content == "new text"
    assert run.versions[0].edited
    assert run.to_frame()["edited"].tolist()[0] is True
    with pytest.raises(ConfigError, match="must not be empty"):
        edit_version(run.versions[0], "  ")
    failed = Version(index=2, status="failed", error="boom")
    with pytest.raises(ConfigError, match="version 2 is failed"):
        edit_version(failed, "x")


# -- diff -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("The rain fell on the old city.", "The rain fell softly on the city!"),
        ("她走进了雨中", "他走进了夜色中"),
        ("", "all new"),
        ("line one\nline two", "line one\nline 2\n"),
    ],
)
def test_word_diff_rebuilds_both_texts(a: str, b: str) -> None:
    ops = word_diff(a, b)
    assert "".join(t for op, t in ops if op != "insert") == a
    assert "".join(t for op, t in ops if op != "delete") == b


def test_word_diff_groups_a_rewritten_phrase() -> None:
    ops = word_diff("he walked slowly home", "he ran very fast home")
    assert ops == [
        ("equal", "he "),
        ("delete", "walked slowly"),
        ("insert", "ran very fast"),
        ("equal", " home"),
    ]


def test_diff_html_marks_changes_and_escapes_model_text() -> None:
    new = "safe " + XSS
    out = diff_html("safe <b>old</b> text", new)
    assert "<del>" in out and "<ins>" in out
    assert "<script" not in out and "<img" not in out and "<b>" not in out
    # Without the deletions and the markup, the reader sees exactly the new text.
    assert html.unescape(re.sub(r"<del>.*?</del>|<[^>]+>", "", out)) == new


# -- evaluate ---------------------------------------------------------------------------
ARBORIS_REPLY = """<think>compare them</think>
```json
{"best_choice": 2, "reason_for_choice": "tighter pacing",
 "evaluation": {"version1": {"pros": ["vivid"], "cons": ["slow"], "overall_review": "ok"},
                "version2": {"pros": ["tight", "clear"], "cons": []}}}
```"""


def test_parse_evaluation_reads_arboris_shape_through_fences_and_think() -> None:
    ev = parse_evaluation(ARBORIS_REPLY)
    assert ev.best_choice == 2 and ev.reason == "tighter pacing"
    assert ev.versions == {
        1: {"pros": ["vivid"], "cons": ["slow"]},
        2: {"pros": ["tight", "clear"], "cons": []},
    }


def test_parse_evaluation_accepts_plain_keys() -> None:
    ev = parse_evaluation(
        '{"best_version": "version 3", "reason": "r", "versions": {"3": {"pros": "one"}}}'
    )
    assert (ev.best_choice, ev.reason, ev.versions) == (3, "r", {3: {"pros": ["one"], "cons": []}})


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        ("Version 2 is better.", "not a JSON object"),
        ('{"best_choice": 1', "not a JSON object"),
        ('{"reason": "no choice"}', "no best_choice"),
    ],
)
def test_parse_evaluation_errors_are_clear_and_keep_the_reply(reply: str, message: str) -> None:
    with pytest.raises(EvaluationError, match=message) as info:
        parse_evaluation(reply)
    assert info.value.reply == reply


async def test_evaluate_with_the_simulated_judge_picks_the_most_varied_version() -> None:
    run = ok_run("a a a a a a", "rain falls on the old stone gate", "b b c c b b")
    ev = await evaluate(run, llm=simulated_judge(ttft_s=0.0, tokens_per_s=10_000.0))
    assert ev.best_choice == 2
    assert set(ev.versions) == {1, 2, 3}
    assert ev.versions[1]["cons"] and not ev.versions[2]["cons"]


async def test_evaluate_refuses_unparseable_or_impossible_verdicts() -> None:
    run = ok_run("one text", "two text")
    with pytest.raises(EvaluationError, match="not a JSON object"):
        await evaluate(run, llm=fast())  # plain prose, not a verdict
    with pytest.raises(EvaluationError, match="version 9, which is not an ok version"):
        await evaluate(run, llm=fast(reply='{"best_choice": 9, "reason_for_choice": "x"}'))
    with pytest.raises(ConfigError, match="at least 2 ok versions"):
        await evaluate(ok_run("alone"), llm=fast())


def test_simulated_judge_still_writes_chapters_and_refuses_reply() -> None:
    with pytest.raises(ConfigError, match="reply"):
        simulated_judge(reply="x")


def test_evaluation_html_is_escaped() -> None:
    ev = Evaluation(best_choice=1, reason=XSS, versions={1: {"pros": [XSS], "cons": [XSS]}})
    out = ev.to_html()
    assert "<script" not in out and "<img" not in out
    assert out.count("&lt;script&gt;") == 3


# -- export -----------------------------------------------------------------------------
def test_export_markdown_writes_heading_and_text(tmp_path: pytest.TempPathFactory) -> None:
    run = ok_run("First.", "Second text.\n")
    run.chapter = 3
    path = export_markdown(run.versions[1], tmp_path / "out" / "ch3.md", run=run)  # type: ignore[operator]
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# Chapter 3 — Version 2\n")
    assert text.endswith("Second text.\n") and "run r1, version 2" in text


def test_export_markdown_refuses_failed_versions_and_directories(tmp_path: object) -> None:
    with pytest.raises(ConfigError, match="only ok versions export"):
        export_markdown(Version(index=1, status="failed"), "x.md")
    with pytest.raises(ConfigError, match="is a directory"):
        export_markdown(ok_run("t").versions[0], tmp_path)  # type: ignore[arg-type]

"""Chapter messages and reply parsing."""

from __future__ import annotations

import pytest

from arboris_nb import ConfigError, chapter_messages, parse_reply
from arboris_nb.prompts import as_messages, strip_think


def test_plain_prompt_is_one_user_message() -> None:
    assert as_messages("Write") == [{"role": "user", "content": "Write"}]


def test_message_list_is_validated() -> None:
    with pytest.raises(ConfigError, match="message 0"):
        as_messages([{"content": "x"}])


def test_chapter_messages_sections_in_arboris_order() -> None:
    messages = chapter_messages(
        chapter=3,
        title="The Letter",
        goal="She finds the letter.",
        blueprint={"title": "Harbor", "genre": "mystery"},
        previous_summary="Ch2 summary",
        previous_tail="…the door closed.",
        notes="Keep it quiet.",
    )
    assert [m["role"] for m in messages] == ["system", "user"]
    user = messages[1]["content"]
    order = [
        user.index(label)
        for label in (
            "[World blueprint]",
            "[Previous chapter summary]",
            "[Previous chapter ending]",
            "[This chapter's goal]",
            "[Writing notes]",
        )
    ]
    assert order == sorted(order)
    assert "Chapter 3: The Letter" in user and '"genre": "mystery"' in user


def test_chapter_messages_leave_out_missing_sections() -> None:
    user = chapter_messages(chapter=1, goal="Open.")[1]["content"]
    assert "[Previous chapter summary]" not in user and "Chapter 1" in user
    with pytest.raises(ConfigError, match="goal"):
        chapter_messages(chapter=1, goal=" ")


@pytest.mark.parametrize(
    ("reply", "content", "title"),
    [
        ('{"title": "T", "summary": "S", "full_content": "Body"}', "Body", "T"),
        ('```json\n{"content": "Body"}\n```', "Body", None),
        ('{"chapter_content": "Body"}', "Body", None),
        ("<think>hmm</think>\nPlain text.", "Plain text.", None),
        ("<THINK>unclosed reasoning", "", None),
        ('{"other": 1}', '{"other": 1}', None),
        ("{not json", "{not json", None),
    ],
)
def test_parse_reply(reply: str, content: str, title: str | None) -> None:
    parsed = parse_reply(reply)
    assert (parsed.content, parsed.title) == (content, title)


def test_strip_think_keeps_the_rest() -> None:
    assert strip_think("a<think>x</think>b") == "ab"

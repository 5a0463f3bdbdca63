"""Chapter messages the way Arboris-Novel builds them, and parsing of the replies.

Plain prompts stay the simple path (``as_messages("Write chapter 3 …")``);
``chapter_messages`` reproduces Arboris-Novel's writing request: a system prompt, then a
user message of labelled sections (blueprint, previous summary and tail, this chapter's
goal, writing notes). Replies may be plain text or the JSON that prompt asks for
(``{title, summary, full_content}``, also ``content`` / ``chapter_content``);
``<think>…</think>`` reasoning is stripped either way.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .backends.base import Message
from .errors import ConfigError

__all__ = [
    "WRITING_SYSTEM_PROMPT",
    "ParsedReply",
    "as_messages",
    "chapter_messages",
    "parse_reply",
    "strip_think",
]

WRITING_SYSTEM_PROMPT = (
    "You are a novelist writing one chapter of a long novel. Follow the blueprint and the "
    "chapter goal strictly, keep continuity with the previous chapter, and write vivid, "
    "complete prose. Reply with JSON: "
    '{"title": "...", "summary": "...", "full_content": "..."}'
)

_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)
_CONTENT_KEYS = ("full_content", "content", "chapter_content")


def as_messages(prompt: str | Sequence[Mapping[str, str]]) -> list[Message]:
    """A prompt string becomes one user message; a message list is checked and copied."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ConfigError("prompt must not be empty")
        return [{"role": "user", "content": prompt}]
    messages = [dict(m) for m in prompt]
    if not messages:
        raise ConfigError("prompt must not be an empty message list")
    for i, message in enumerate(messages):
        if "role" not in message or "content" not in message:
            raise ConfigError(f"prompt message {i} needs 'role' and 'content'")
    if not any(str(m["content"]).strip() for m in messages):
        raise ConfigError("prompt must not be empty")
    return messages


def _section(label: str, body: Any) -> str:
    if isinstance(body, Mapping | list):
        body = json.dumps(body, ensure_ascii=False, indent=2)
    return f"[{label}]\n{body}"


def chapter_messages(
    *,
    chapter: int,
    goal: str,
    blueprint: Mapping[str, Any] | str | None = None,
    previous_summary: str | None = None,
    previous_tail: str | None = None,
    title: str | None = None,
    notes: str | None = None,
    system_prompt: str = WRITING_SYSTEM_PROMPT,
) -> list[Message]:
    """The messages Arboris-Novel sends to write ``chapter`` (None sections are left out)."""
    if not goal or not goal.strip():
        raise ConfigError("goal (the chapter's outline) must not be empty")
    heading = f"Chapter {chapter}" + (f": {title}" if title else "")
    sections = [
        ("World blueprint", blueprint),
        ("Previous chapter summary", previous_summary),
        ("Previous chapter ending", previous_tail),
        ("This chapter's goal", f"{heading}\n{goal}"),
        ("Writing notes", notes),
    ]
    user = "\n\n".join(_section(label, body) for label, body in sections if body)
    return [{"role": "system", "content": system_prompt}, {"role": "user", "content": user}]


@dataclass(frozen=True)
class ParsedReply:
    content: str
    title: str | None = None
    summary: str | None = None


def strip_think(text: str) -> str:
    """Remove reasoning blocks (``<think>…</think>``, also an unclosed one)."""
    return _THINK.sub("", text).strip()


def parse_reply(text: str) -> ParsedReply:
    """The chapter text of a reply: JSON ``full_content`` (or ``content``…), else the text."""
    clean = strip_think(text)
    fenced = _FENCE.match(clean)
    candidate = fenced.group(1) if fenced else clean
    if candidate.startswith("{"):
        try:
            data = json.loads(candidate)
        except json.JSONDecodeError:
            data = None
        if isinstance(data, dict):
            for key in _CONTENT_KEYS:
                if isinstance(data.get(key), str):
                    return ParsedReply(data[key].strip(), data.get("title"), data.get("summary"))
    return ParsedReply(clean)

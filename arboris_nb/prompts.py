"""Chapter messages the way Arboris-Novel builds them, and parsing of the replies.

Plain prompts stay the simple path (``as_messages("Write chapter 3 …")``);
``chapter_messages`` reproduces Arboris-Novel's writing request: a system prompt, then a
user message of labelled sections (blueprint, previous summary and tail, this chapter's
goal, writing notes), which :class:`ChapterContext` holds — the judge gets the same
sections, and ``ChapterContext.from_prompt`` reads them back. Replies may be plain text
or the JSON that prompt asks for (``{title, summary, full_content}``, also ``content`` /
``chapter_content``);
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
    "ChapterContext",
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


# The labelled sections of a chapter request, in Arboris-Novel's order. The judge's
# request reuses them, and ChapterContext.from_prompt reads them back.
_BLUEPRINT = "World blueprint"
_SUMMARY = "Previous chapter summary"
_SUMMARIES = "Previous chapters' summaries, oldest first"
_TAIL = "Previous chapter ending"
_GOAL = "This chapter's goal"
_NOTES = "Writing notes"
_LABELS = (_BLUEPRINT, _SUMMARY, _SUMMARIES, _TAIL, _GOAL, _NOTES)
_LABEL_RE = re.compile(r"^\[(" + "|".join(map(re.escape, _LABELS)) + r")\]$", re.MULTILINE)
_HEADING_RE = re.compile(r"^Chapter (\d+)(?:: (.*))?$")
_NUMBERED = re.compile(r"^\d+\. ", re.MULTILINE)


@dataclass(frozen=True)
class ChapterContext:
    """What a chapter is written against: the blueprint (outline), the previous chapters'
    summaries (oldest first) and ending, this chapter's goal, and writing notes.

    :func:`chapter_messages` writes these sections for the model that writes the chapter;
    the judge (:func:`arboris_nb.evaluate`) gets the same sections, so it reads each
    version against the book, not on its own. Every field may be left out.
    """

    goal: str | None = None
    blueprint: Mapping[str, Any] | str | None = None
    previous_summaries: Sequence[str] = ()
    previous_tail: str | None = None
    notes: str | None = None
    chapter: int | None = None
    title: str | None = None

    def __post_init__(self) -> None:
        summaries = self.previous_summaries
        if isinstance(summaries, str):  # one summary, not a sequence of its characters
            summaries = [summaries]
        if not all(isinstance(s, str) for s in summaries):
            raise ConfigError("previous_summaries must be a list of strings, oldest first")
        cleaned = tuple(s.strip() for s in summaries if s.strip())
        object.__setattr__(self, "previous_summaries", cleaned)
        chapter = self.chapter
        if chapter is not None and (isinstance(chapter, bool) or not isinstance(chapter, int)):
            raise ConfigError(f"chapter must be a whole number 1 or more, got {chapter!r}")
        if chapter is not None and chapter < 1:
            raise ConfigError(f"chapter must be a whole number 1 or more, got {chapter}")

    @property
    def empty(self) -> bool:
        """True when there is nothing to send (no section at all)."""
        return not self.sections()

    def sections(self) -> list[tuple[str, Any]]:
        """The (label, body) sections that are given, in Arboris-Novel's order."""
        summaries = self.previous_summaries
        if len(summaries) > 1:
            numbered = "\n".join(f"{n}. {s}" for n, s in enumerate(summaries, 1))
            summary: tuple[str, Any] = (_SUMMARIES, numbered)
        else:
            summary = (_SUMMARY, summaries[0] if summaries else None)
        sections = [
            (_BLUEPRINT, self.blueprint),
            summary,
            (_TAIL, self.previous_tail),
            (_GOAL, self.goal_text),
            (_NOTES, self.notes),
        ]
        return [(label, body) for label, body in sections if body]

    def text(self) -> str:
        """The sections as the labelled text a request carries ("" when empty)."""
        return "\n\n".join(_section(label, body) for label, body in self.sections())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``ChapterContext(**d)`` rebuilds it)."""
        blueprint = self.blueprint
        return {
            "goal": self.goal,
            "blueprint": dict(blueprint) if isinstance(blueprint, Mapping) else blueprint,
            "previous_summaries": list(self.previous_summaries),
            "previous_tail": self.previous_tail,
            "notes": self.notes,
            "chapter": self.chapter,
            "title": self.title,
        }

    @classmethod
    def from_prompt(cls, text: str | None) -> ChapterContext:
        """Read the context back from a request's user text: the labelled sections
        :func:`chapter_messages` writes; any other prompt is the goal as a whole."""
        text = (text or "").strip()
        found = list(_LABEL_RE.finditer(text))
        if not found:
            return cls(goal=text or None)
        bodies: dict[str, str] = {}
        for pos, match in enumerate(found):
            end = found[pos + 1].start() if pos + 1 < len(found) else len(text)
            bodies[match.group(1)] = text[match.end() : end].strip()
        summaries = _NUMBERED.split(bodies.get(_SUMMARIES, ""))
        chapter, title, goal = _split_heading(bodies.get(_GOAL))
        return cls(
            goal=goal,
            blueprint=bodies.get(_BLUEPRINT),
            previous_summaries=[*([bodies[_SUMMARY]] if _SUMMARY in bodies else []), *summaries],
            previous_tail=bodies.get(_TAIL),
            notes=bodies.get(_NOTES),
            chapter=chapter,
            title=title,
        )

    @property
    def goal_text(self) -> str | None:
        """The goal as sent: under a ``Chapter 3: Title`` line when the chapter is known."""
        if self.chapter is None:
            return self.goal
        heading = f"Chapter {self.chapter}" + (f": {self.title}" if self.title else "")
        return f"{heading}\n{self.goal}" if self.goal else heading


def _split_heading(body: str | None) -> tuple[int | None, str | None, str | None]:
    """``Chapter 3: Title`` on the goal's first line → (3, "Title", the rest)."""
    if not body:
        return None, None, None
    first, _, rest = body.partition("\n")
    match = _HEADING_RE.match(first.strip())
    if match is None:
        return None, None, body
    return int(match.group(1)), match.group(2), rest.strip() or None


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
    context = ChapterContext(
        goal=goal,
        blueprint=blueprint,
        previous_summaries=[previous_summary] if previous_summary else [],
        previous_tail=previous_tail,
        notes=notes,
        chapter=chapter,
        title=title,
    )
    return [
        {"role": "system", "content": system_prompt},
        {"role": "user", "content": context.text()},
    ]


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
